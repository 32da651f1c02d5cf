//! driver: what a worker needs from an I/O backend, and the types both backends
//! hand back.
//!
//! Owns: the [`Driver`] trait (cut from its two implementations, [`super::uring`]
//! and [`super::epoll`]), the completion vocabulary they share ([`Completion`],
//! [`Event`], [`OpError`], [`Sent`], [`OpId`]) and the choice between them
//! ([`Backend`]; the setting is `config::IoSetting`).
//!
//! The model is io_uring's: the worker queues ops (accept, receive, send, connect,
//! half-close, close, cancel), each carrying a token of the worker's own type, and
//! later drains one [`Completion`] per op (several for a multishot accept). The
//! epoll backend emulates that model on readiness events, so the worker and the
//! sans-IO `Conn` behind it run unchanged on either.
//!
//! The ownership rules every backend keeps:
//! * every op gets a final completion (`more() == false`), cancelled ones too, and
//!   [`Driver::ops_in_flight`] counts ops until theirs is drained;
//! * a completion owns its payload: an accepted socket is an `OwnedFd`, received
//!   bytes are a buffer the driver lends until it is dropped, a send's buffer
//!   comes back in [`Sent`];
//! * the caller keeps every descriptor it passes open until that op's final
//!   completion, and closes descriptors through [`Driver::close`].
//!
//! I/O contract: none here (types and a trait).
#![forbid(unsafe_code)]

use crate::runtime::slab::Key;
use std::io;
use std::net::SocketAddr;
use std::ops::DerefMut;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

/// The I/O operations a worker queues and the completions it drains.
pub trait Driver<T: Copy> {
    /// Received bytes, lent by the driver until dropped; writable, as TLS is
    /// decrypted where it was received.
    type Buf: DerefMut<Target = [u8]> + std::fmt::Debug;

    /// Accept on a listening socket until cancelled: one completion per socket.
    fn accept_multi(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId;
    /// One receive of at most `max_len` bytes (never more: the caller's budget).
    fn recv(&mut self, fd: BorrowedFd<'_>, max_len: usize, token: T) -> OpId;
    /// Send `buf[offset..]`; the buffer comes back in [`Event::Sent`].
    fn send(&mut self, fd: BorrowedFd<'_>, buf: Vec<u8>, offset: usize, token: T) -> OpId;
    /// Connect a fresh non-blocking socket.
    fn connect(&mut self, fd: BorrowedFd<'_>, addr: SocketAddr, token: T) -> OpId;
    fn shutdown_write(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId;
    /// Close `fd` (after any op still queued on it).
    fn close(&mut self, fd: OwnedFd, token: T);
    /// Cancel `target`; its own final completion still follows.
    fn cancel(&mut self, target: OpId, token: T);
    /// Start what was queued and wait up to `timeout` for completions.
    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// Move every available completion into `out`.
    fn drain(&mut self, out: &mut Vec<Completion<T, Self::Buf>>);
    /// Ops whose final completion has not been drained yet.
    fn ops_in_flight(&self) -> usize;
    /// Give back tables and pools a past burst grew (an idle worker calls it before
    /// the allocator's collection); what is in flight is kept.
    fn shrink(&mut self) {}
}

/// Which backend drives the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Epoll,
}

impl Backend {
    /// The name in config, metrics and the startup line.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Handle of an op in flight, usable with [`Driver::cancel`]: the op table's
/// [`Key`] packed in a `u64` (io_uring's `user_data`), so a cancel can never hit a
/// later op that reused the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(pub(super) u64);

impl OpId {
    pub(super) fn key(self) -> Key {
        Key::new(self.0 as u32, (self.0 >> 32) as u32)
    }
}

impl From<Key> for OpId {
    fn from(k: Key) -> OpId {
        OpId((k.gen() as u64) << 32 | k.idx() as u64)
    }
}

/// Why an op failed: the errno values callers act on, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpError {
    /// `ECANCELED`: the op was cancelled (by [`Driver::cancel`]).
    Cancelled,
    /// `ENOBUFS`: a receive found the buffer ring empty.
    NoBuffers,
    /// `EMFILE`/`ENFILE`: out of file descriptors (accept).
    OutOfFds,
    /// `EALREADY`: a cancel found its target already running.
    Already,
    /// `ENOENT`: a cancel found no such op (it had completed).
    NotFound,
    /// Any other errno.
    Os(i32),
}

impl OpError {
    pub fn from_errno(e: i32) -> Self {
        match e {
            libc::ECANCELED => OpError::Cancelled,
            libc::ENOBUFS => OpError::NoBuffers,
            libc::EMFILE | libc::ENFILE => OpError::OutOfFds,
            libc::EALREADY => OpError::Already,
            libc::ENOENT => OpError::NotFound,
            e => OpError::Os(e),
        }
    }

    /// From an `io::Error` of a syscall (EIO when it carries no errno).
    pub fn from_io(e: &io::Error) -> Self {
        OpError::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// The errno value.
    pub fn errno(self) -> i32 {
        match self {
            OpError::Cancelled => libc::ECANCELED,
            OpError::NoBuffers => libc::ENOBUFS,
            OpError::OutOfFds => libc::EMFILE,
            OpError::Already => libc::EALREADY,
            OpError::NotFound => libc::ENOENT,
            OpError::Os(e) => e,
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        io::Error::from_raw_os_error(self.errno()).fmt(f)
    }
}

/// A finished send: its buffer back from the kernel and how far it got.
#[derive(Debug)]
pub struct Sent {
    pub(super) buf: Vec<u8>,
    /// `buf[..end]` has been sent (by this op and the ones before it).
    pub(super) end: usize,
}

impl Sent {
    /// Bytes of the buffer still unsent (a short send).
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.end
    }

    /// The buffer and the offset its unsent rest starts at.
    pub fn into_parts(self) -> (Vec<u8>, usize) {
        (self.buf, self.end)
    }
}

/// What an op's completion delivers; whatever the op owned comes back in it.
#[derive(Debug)]
pub enum Event<B> {
    /// Accept: a new socket, owned by the receiver.
    Accepted(OwnedFd),
    /// Recv: bytes in a lent buffer (never empty).
    Received(B),
    /// Recv: the peer closed its sending side.
    Eof,
    /// Send: the kernel is done with the buffer.
    Sent(Sent),
    Connected,
    ShutDown,
    Closed,
    /// Cancel: the target was found and cancelled; its own completion follows.
    CancelAccepted,
    Failed(OpError),
}

/// One completion of an op queued with token `T`.
#[derive(Debug)]
pub struct Completion<T, B> {
    pub(super) token: T,
    pub(super) more: bool,
    pub(super) event: Event<B>,
}

impl<T: Copy, B> Completion<T, B> {
    pub fn token(&self) -> T {
        self.token
    }

    /// More completions will follow for this (multishot) op; when false, this was
    /// the op's final completion.
    pub fn more(&self) -> bool {
        self.more
    }

    pub fn event(&self) -> &Event<B> {
        &self.event
    }

    pub fn into_event(self) -> Event<B> {
        self.event
    }
}
