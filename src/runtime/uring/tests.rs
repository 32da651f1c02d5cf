//! The driver on a real ring over loopback (127.0.0.1 only, no mocks): what each
//! op hands back, and the ownership rules the types promise.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Accept,
    Connect,
    Recv(u8),
    Send,
    Shutdown,
    Cancel,
    Close,
}

fn ring(recv_buffers: u16) -> Uring<Tok> {
    Uring::new(UringConfig {
        entries: 32,
        sqpoll: false,
        recv_buffers,
        recv_buffer_size: 4096,
    })
    .expect("io_uring is needed by these tests (and by terminus)")
}

/// Completions reaped but not asked for yet.
struct Reaper(Vec<Completion<Tok>>);

impl Reaper {
    fn new() -> Self {
        Reaper(Vec::new())
    }

    fn next(&mut self, u: &mut Uring<Tok>, t: Tok) -> Completion<Tok> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.0.iter().position(|c| c.token() == t) {
                return self.0.remove(i);
            }
            assert!(Instant::now() < deadline, "no completion for {t:?}");
            u.submit_and_wait(Duration::from_millis(20)).unwrap();
            u.drain(&mut self.0);
        }
    }
}

/// A connected pair: (the server side as accepted by the ring, the client).
fn accepted_pair(u: &mut Uring<Tok>, r: &mut Reaper) -> (TcpListener, OwnedFd, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let acc = u.accept_multi(l.as_fd(), Tok::Accept);
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let c = r.next(u, Tok::Accept);
    assert!(c.more(), "multishot accept stays armed");
    let Event::Accepted(fd) = c.into_event() else {
        panic!("accept failed")
    };
    u.cancel(acc, Tok::Cancel);
    r.next(u, Tok::Cancel);
    let last = r.next(u, Tok::Accept);
    assert!(!last.more());
    assert!(matches!(
        last.into_event(),
        Event::Failed(OpError::Cancelled)
    ));
    (l, fd, client)
}

#[test]
fn multishot_accept_hands_out_each_socket_once() {
    let mut u = ring(4);
    let mut r = Reaper::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let acc = u.accept_multi(l.as_fd(), Tok::Accept);
    let _c1 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _c2 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let mut fds = Vec::new();
    for _ in 0..2 {
        let c = r.next(&mut u, Tok::Accept);
        assert!(c.more());
        match c.into_event() {
            Event::Accepted(fd) => fds.push(fd),
            e => panic!("{e:?}"),
        }
    }
    assert_ne!(fds[0].as_raw_fd(), fds[1].as_raw_fd());
    // Still armed: one op in flight until cancelled.
    assert_eq!(u.ops_in_flight(), 1);
    u.cancel(acc, Tok::Cancel);
    assert!(matches!(
        r.next(&mut u, Tok::Cancel).into_event(),
        Event::CancelAccepted
    ));
    let last = r.next(&mut u, Tok::Accept);
    assert!(!last.more());
    assert!(matches!(
        last.into_event(),
        Event::Failed(OpError::Cancelled)
    ));
    assert_eq!(u.ops_in_flight(), 0);
}

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

#[test]
fn recv_is_bounded_by_its_length() {
    let mut u = ring(2);
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    client.write_all(&[7u8; 1000]).unwrap();
    u.recv(server.as_fd(), 300, Tok::Recv(0));
    match r.next(&mut u, Tok::Recv(0)).into_event() {
        Event::Received(b) => assert_eq!(b.len(), 300),
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_buffer_outlives_the_ring() {
    let mut u = ring(2);
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    client.write_all(b"kept").unwrap();
    u.recv(server.as_fd(), 16, Tok::Recv(0));
    let Event::Received(b) = r.next(&mut u, Tok::Recv(0)).into_event() else {
        panic!("no bytes")
    };
    drop(u);
    assert_eq!(&b[..], b"kept");
}

#[test]
fn send_hands_the_buffer_back() {
    let mut u = ring(2);
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    let buf = b"0123456789".to_vec();
    let heap = buf.as_ptr();
    u.send(server.as_fd(), buf, 4, Tok::Send);
    let Event::Sent(s) = r.next(&mut u, Tok::Send).into_event() else {
        panic!("send failed")
    };
    assert_eq!(s.remaining(), 0);
    let (back, end) = s.into_parts();
    assert_eq!(
        (back.as_ptr(), end, &back[..]),
        (heap, 10, &b"0123456789"[..])
    );
    let mut got = [0u8; 6];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"456789");
}

#[test]
fn shutdown_then_eof_and_cancel() {
    let mut u = ring(2);
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    // A receive with nothing to read waits; a cancel ends it.
    let id = u.recv(server.as_fd(), 16, Tok::Recv(0));
    u.submit_and_wait(Duration::ZERO).unwrap();
    u.cancel(id, Tok::Cancel);
    assert!(matches!(
        r.next(&mut u, Tok::Cancel).into_event(),
        Event::CancelAccepted | Event::Failed(OpError::Already)
    ));
    assert!(matches!(
        r.next(&mut u, Tok::Recv(0)).into_event(),
        Event::Failed(OpError::Cancelled)
    ));
    // A cancel naming a finished op finds nothing (the generation is in the id).
    u.cancel(id, Tok::Cancel);
    assert!(matches!(
        r.next(&mut u, Tok::Cancel).into_event(),
        Event::Failed(OpError::NotFound)
    ));
    // Our half-close reaches the client; its half-close is our EOF.
    u.shutdown_write(server.as_fd(), Tok::Shutdown);
    assert!(matches!(
        r.next(&mut u, Tok::Shutdown).into_event(),
        Event::ShutDown
    ));
    assert_eq!(client.read(&mut [0u8; 4]).unwrap(), 0);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    u.recv(server.as_fd(), 16, Tok::Recv(1));
    assert!(matches!(
        r.next(&mut u, Tok::Recv(1)).into_event(),
        Event::Eof
    ));
    u.close(server, Tok::Close);
    assert!(matches!(
        r.next(&mut u, Tok::Close).into_event(),
        Event::Closed
    ));
    assert_eq!(u.ops_in_flight(), 0);
}

#[test]
fn connect_succeeds_or_fails_typed() {
    let mut u = ring(2);
    let mut r = Reaper::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fd = crate::runtime::sock::upstream_socket(addr).unwrap();
    u.connect(fd.as_fd(), addr, Tok::Connect);
    assert!(matches!(
        r.next(&mut u, Tok::Connect).into_event(),
        Event::Connected
    ));
    drop(l);
    // Nothing listens there any more.
    let fd = crate::runtime::sock::upstream_socket(addr).unwrap();
    u.connect(fd.as_fd(), addr, Tok::Connect);
    match r.next(&mut u, Tok::Connect).into_event() {
        Event::Failed(e) => assert_eq!(e.errno(), libc::ECONNREFUSED),
        e => panic!("{e:?}"),
    }
}

#[test]
fn errno_values_decode_by_name() {
    for (errno, e) in [
        (libc::ECANCELED, OpError::Cancelled),
        (libc::ENOBUFS, OpError::NoBuffers),
        (libc::EMFILE, OpError::OutOfFds),
        (libc::ENFILE, OpError::OutOfFds),
        (libc::EALREADY, OpError::Already),
        (libc::ENOENT, OpError::NotFound),
        (libc::ECONNRESET, OpError::Os(libc::ECONNRESET)),
    ] {
        assert_eq!(OpError::from_errno(errno), e);
    }
    assert_eq!(OpError::Os(libc::EPIPE).errno(), libc::EPIPE);
}
