//! sock: the few plain socket calls the worker makes beside the ring.
//!
//! Owns nothing. Together with [`crate::runtime::uring`] this is the worker's whole
//! I/O boundary: creating an upstream socket, reading a socket's addresses, turning
//! a close into a reset, and discarding unread bytes before a close. Each is a
//! non-blocking syscall on a descriptor the caller owns; an epoll backend would
//! reuse them as they are.
//!
//! I/O contract: `socket`, `setsockopt`, `getpeername`/`getsockname`, and a
//! non-blocking `recv(MSG_TRUNC)`; never blocks.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

/// A fresh non-blocking TCP socket for connecting to `addr`, with TCP_NODELAY.
pub fn upstream_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    let _ = sock.set_nodelay(true);
    Ok(OwnedFd::from(sock))
}

/// Make the coming close send a RST (SO_LINGER 0): a reset on one leg becomes a
/// reset on the other.
pub fn reset_on_close(fd: impl AsFd) {
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

pub fn peer_addr(fd: impl AsFd) -> Option<SocketAddr> {
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

pub fn local_addr(fd: impl AsFd) -> Option<SocketAddr> {
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// Drop what the client sent and we never read, so that closing sends a FIN after
/// the alert or close_notify we just sent, not a RST (Linux resets a socket closed
/// with unread data, and a client may then lose the alert it has not read yet).
/// Bounded: a client still streaming gets the RST it asks for.
pub fn discard_unread(fd: impl AsFd) {
    let sock = socket2::SockRef::from(&fd);
    let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
    for _ in 0..64 {
        match sock.recv_with_flags(&mut sink, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}
