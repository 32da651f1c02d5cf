//! io_uring-only behaviour of the driver (the provided buffer ring); what both
//! backends share is tested in `runtime/driver_tests.rs`.

use super::*;
use crate::runtime::driver_tests::{accepted_pair, ring, Reaper, Tok};
use std::io::Write;
use std::os::fd::AsFd;

#[test]
fn recv_lends_a_buffer_that_goes_back_to_the_ring_when_dropped() {
    // Two buffers: hold both, and the ring is dry.
    let mut u = ring(2);
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    client.write_all(b"abc").unwrap();
    let mut held = Vec::new();
    for (i, want) in [b"a", b"b"].into_iter().enumerate() {
        u.recv(server.as_fd(), 1, Tok::Recv(i as u8));
        match r.next(&mut u, Tok::Recv(i as u8)).into_event() {
            Event::Received(b) => {
                assert_eq!(&b[..], want);
                held.push(b);
            }
            e => panic!("{e:?}"),
        }
    }
    u.recv(server.as_fd(), 1, Tok::Recv(2));
    assert!(matches!(
        r.next(&mut u, Tok::Recv(2)).into_event(),
        Event::Failed(OpError::NoBuffers)
    ));
    // Dropping returns both; the next submit publishes them.
    drop(held);
    u.recv(server.as_fd(), 16, Tok::Recv(3));
    match r.next(&mut u, Tok::Recv(3)).into_event() {
        Event::Received(b) => assert_eq!(&b[..], b"c"),
        e => panic!("{e:?}"),
    }
    // And again, many times over: every buffer keeps coming back.
    for i in 0..8u8 {
        client.write_all(&[i]).unwrap();
        u.recv(server.as_fd(), 16, Tok::Recv(4));
        match r.next(&mut u, Tok::Recv(4)).into_event() {
            Event::Received(b) => assert_eq!(&b[..], &[i]),
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(u.ops_in_flight(), 0);
}
