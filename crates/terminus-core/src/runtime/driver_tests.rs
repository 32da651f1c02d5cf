//! Both drivers on real sockets over loopback (127.0.0.1 only, no mocks): what each
//! op hands back and the ownership rules the types promise, written once and run
//! on io_uring and on epoll (the `backends!` list at the end).

use super::driver::{Completion, Driver, Event, OpError};
use super::epoll::Epoll;
use super::uring::{Uring, UringConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tok {
    Accept,
    Connect,
    Recv(u8),
    Send,
    Shutdown,
    Cancel,
    Close,
}

pub(super) fn ring(recv_buffers: u16) -> Uring<Tok> {
    Uring::new(UringConfig {
        entries: 32,
        sqpoll: false,
        recv_buffers,
        recv_buffer_size: 4096,
    })
    .expect("io_uring is needed by these tests (and by terminus)")
}

fn epoll() -> Epoll<Tok> {
    Epoll::new(4096).expect("epoll_create1")
}

/// Completions reaped but not asked for yet.
pub(super) struct Reaper<B>(Vec<Completion<Tok, B>>);

impl<B> Reaper<B> {
    pub(super) fn new() -> Self {
        Reaper(Vec::new())
    }

    pub(super) fn next<D: Driver<Tok, Buf = B>>(
        &mut self,
        u: &mut D,
        t: Tok,
    ) -> Completion<Tok, B> {
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
pub(super) fn accepted_pair<D: Driver<Tok>>(
    u: &mut D,
    r: &mut Reaper<D::Buf>,
) -> (TcpListener, OwnedFd, TcpStream) {
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

fn multishot_accept_hands_out_each_socket_once<D: Driver<Tok>>(mut u: D) {
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

fn recv_is_bounded_by_its_length<D: Driver<Tok>>(mut u: D) {
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    client.write_all(&[7u8; 1000]).unwrap();
    u.recv(server.as_fd(), 300, Tok::Recv(0));
    match r.next(&mut u, Tok::Recv(0)).into_event() {
        Event::Received(b) => assert_eq!(b.len(), 300),
        e => panic!("{e:?}"),
    }
}

fn a_buffer_outlives_the_ring<D: Driver<Tok>>(mut u: D) {
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

fn send_hands_the_buffer_back<D: Driver<Tok>>(mut u: D) {
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

fn shutdown_then_eof_and_cancel<D: Driver<Tok>>(mut u: D) {
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

fn connect_succeeds_or_fails_typed<D: Driver<Tok>>(mut u: D) {
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

fn a_large_send_arrives_whole_and_in_order<D: Driver<Tok>>(mut u: D) {
    let mut r = Reaper::new();
    let (_l, server, mut client) = accepted_pair(&mut u, &mut r);
    // Far more than the socket buffers hold: the send waits for the reader.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let want = data.clone();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });
    let (mut buf, mut off) = (data, 0);
    // As the worker does: a short send (io_uring may make one) goes out again.
    for _ in 0..1000 {
        u.send(server.as_fd(), buf, off, Tok::Send);
        let Event::Sent(s) = r.next(&mut u, Tok::Send).into_event() else {
            panic!("send failed")
        };
        if s.remaining() == 0 {
            break;
        }
        (buf, off) = s.into_parts();
    }
    u.close(server, Tok::Close);
    r.next(&mut u, Tok::Close);
    assert!(reader.join().unwrap() == want, "bytes differ");
    assert_eq!(u.ops_in_flight(), 0);
}

fn an_accept_burst_is_taken_whole<D: Driver<Tok>>(mut u: D) {
    let mut r = Reaper::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let acc = u.accept_multi(l.as_fd(), Tok::Accept);
    // More than epoll's per-turn share (ACCEPTS_PER_TURN), all queued at once.
    let n = 3 * super::epoll::ACCEPTS_PER_TURN / 2;
    let clients: Vec<_> = (0..n)
        .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    let mut fds = Vec::new();
    for _ in 0..n {
        let c = r.next(&mut u, Tok::Accept);
        assert!(c.more());
        let Event::Accepted(fd) = c.into_event() else {
            panic!("accept failed")
        };
        fds.push(fd);
    }
    let distinct: std::collections::HashSet<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    assert_eq!(distinct.len(), n, "each socket handed out once");
    for fd in fds {
        u.close(fd, Tok::Close);
        r.next(&mut u, Tok::Close);
    }
    u.cancel(acc, Tok::Cancel);
    r.next(&mut u, Tok::Cancel);
    assert!(!r.next(&mut u, Tok::Accept).more());
    assert_eq!(u.ops_in_flight(), 0);
    drop(clients);
}

#[test]
fn epoll_close_ends_the_ops_still_waiting_on_the_socket() {
    let mut u = epoll();
    let mut r = Reaper::new();
    let (_l, server, _client) = accepted_pair(&mut u, &mut r);
    u.recv(server.as_fd(), 16, Tok::Recv(0));
    u.submit_and_wait(Duration::ZERO).unwrap();
    u.close(server, Tok::Close);
    assert!(matches!(
        r.next(&mut u, Tok::Recv(0)).into_event(),
        Event::Failed(OpError::Cancelled)
    ));
    assert!(matches!(
        r.next(&mut u, Tok::Close).into_event(),
        Event::Closed
    ));
    assert_eq!(u.ops_in_flight(), 0);
}

/// Each listed test, once per backend: `uring::NAME` and `epoll::NAME`.
macro_rules! backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name(super::ring(4)) })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name(super::epoll()) })*
        }
    };
}

backends!(
    multishot_accept_hands_out_each_socket_once,
    recv_is_bounded_by_its_length,
    a_buffer_outlives_the_ring,
    send_hands_the_buffer_back,
    shutdown_then_eof_and_cancel,
    connect_succeeds_or_fails_typed,
    a_large_send_arrives_whole_and_in_order,
    an_accept_burst_is_taken_whole,
);
