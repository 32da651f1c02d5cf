//! sock: the plain socket calls beside the ring: binding listeners (start-up and
//! `check`) and the few calls the worker makes.
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

/// A non-blocking listening socket for a worker (see [`bind_with`]).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<socket2::Socket> {
    bind_with(addr, backlog, true)
}

/// A listening socket with SO_REUSEPORT (the admin socket too, so that a handover's
/// new instance can bind it while the old one drains).
pub fn bind_with(
    addr: SocketAddr,
    backlog: u32,
    nonblocking: bool,
) -> std::io::Result<socket2::Socket> {
    let s = bind_only(addr, nonblocking)?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

/// Bound, not yet listening: not in the SO_REUSEPORT group yet, so it takes none of
/// another process's connections.
pub fn bind_only(addr: SocketAddr, nonblocking: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ty = if nonblocking {
        Type::STREAM.nonblocking()
    } else {
        Type::STREAM
    };
    let s = Socket::new(Domain::for_address(addr), ty.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
    s.set_nodelay(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s)
}

/// Whether another socket already listens on `addr`: a bind without SO_REUSEPORT
/// fails then (SO_REUSEADDR keeps TIME_WAIT sockets out of it). Port 0 never
/// overlaps. Asked before terminus binds its own sockets there.
pub fn someone_listens(addr: SocketAddr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return false;
    }
    let probe = || -> std::io::Result<()> {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())
    };
    probe().is_err_and(|e| e.raw_os_error() == Some(libc::EADDRINUSE))
}
