//! uring: one io_uring per worker, the op table, and the provided buffer ring.
//!
//! Owns every piece of memory the kernel may touch: send buffers, connect
//! addresses and the receive buffers. A buffer handed to the kernel belongs to its
//! op until the op's final completion is reaped, even if the caller has long since
//! forgotten the connection (tokio-uring's rule). Callers pass a token of their own
//! type `T` and get it back in each [`Completion`]; they never see pointers,
//! `user_data` or errno values.
//!
//! The types carry the ownership rules:
//! * a completion owns its payload ([`Event`]): an accepted socket is an `OwnedFd`
//!   handed out once, received bytes are a [`RecvBuf`] that goes back to the ring
//!   when dropped, a send's buffer comes back in [`Sent`];
//! * errno values are decoded here into [`OpError`];
//! * an [`OpId`] names one op (its key in the op [`Slab`]: index and generation),
//!   so a cancel cannot hit a later op that reused the index.
//!
//! I/O contract: ops are queued with the `*` methods and reach the kernel only in
//! [`Uring::submit_and_wait`] — one `io_uring_enter` per worker loop turn. The
//! caller keeps every descriptor it passes open until that op's final completion.
//! Knows nothing about TLS.
//!
//! Implements [`Driver`] (the boundary the worker sees; the epoll backend is the
//! other implementation) plus the plain socket calls of [`crate::runtime::sock`].

#![deny(clippy::undocumented_unsafe_blocks)]

mod bufring;
mod setup;
#[cfg(test)]
mod tests;

pub use bufring::RecvBuf;
pub use setup::{build_ring, probe_opcodes, UringConfig, UringError, DATA_PATH_OPCODES};

pub use crate::runtime::driver::{Completion, Driver, Event, OpError, OpId, Sent};

use crate::runtime::slab::Slab;
use bufring::BufRing;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Buffer group id of the worker's single provided buffer ring.
const BGID: u16 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Accept,
    Recv,
    Send,
    Connect,
    Shutdown,
    Close,
    Cancel,
}

/// An op in the table, from its submission until its final completion is reaped.
struct Op<T> {
    token: T,
    kind: OpKind,
    /// Kernel reads from here until the final completion (send).
    buf: Option<Vec<u8>>,
    offset: usize,
    /// Kernel reads from here until the final completion (connect); held, never
    /// read by us.
    #[allow(dead_code)]
    addr: Option<Box<socket2::SockAddr>>,
}

/// One worker's ring, op table and buffer ring. Not `Send`: it lives and dies on
/// the thread that created it, with the buffers it lends.
pub struct Uring<T> {
    ring: IoUring,
    bufs: BufRing,
    ops: Slab<Op<T>>,
    /// SQEs that did not fit in the submission queue this turn.
    backlog: VecDeque<squeue::Entry>,
}

impl<T: Copy> Uring<T> {
    pub fn new(cfg: UringConfig) -> Result<Self, UringError> {
        let ring = build_ring(&cfg)?;
        if let Some((_, name, _)) = probe_opcodes(&ring)?.into_iter().find(|(_, _, ok)| !ok) {
            return Err(UringError::MissingOpcode(name));
        }
        let bufs =
            BufRing::new(cfg.recv_buffers, cfg.recv_buffer_size).map_err(UringError::NoMemory)?;
        // SAFETY: the ring memory stays allocated and at the same address until
        // Drop, which unregisters it first.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring_addr(), bufs.count(), BGID, 0)
        }
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => UringError::MissingOpcode("REGISTER_PBUF_RING"),
            Some(libc::ENOMEM) => UringError::NoMemory(e),
            _ => UringError::Other(e),
        })?;
        bufs.publish();
        Ok(Uring {
            ring,
            bufs,
            ops: Slab::new(),
            backlog: VecDeque::new(),
        })
    }

    fn alloc_op(&mut self, kind: OpKind, token: T) -> OpId {
        self.alloc(Op {
            token,
            kind,
            buf: None,
            offset: 0,
            addr: None,
        })
    }

    fn alloc(&mut self, op: Op<T>) -> OpId {
        self.ops.insert(op).into()
    }

    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: every pointer in `entry` refers to memory owned by the op table
        // (send buffers, connect addresses) or the buffer ring, all of which outlive the
        // op: op entries are released only when their final completion is reaped.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push_back(entry);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: same as in `push`: the memory behind the entry is owned by the op
            // table until the op's final completion.
            if unsafe { self.ring.submission().push(e) }.is_err() {
                if self.ring.submit().is_err() {
                    return;
                }
                continue;
            }
            self.backlog.pop_front();
        }
    }
}

impl<T: Copy> Driver<T> for Uring<T> {
    type Buf = RecvBuf;

    /// Multishot accept on a listening socket.
    fn accept_multi(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId {
        let id = self.alloc_op(OpKind::Accept, token);
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build()
                .user_data(id.0),
        );
        id
    }

    /// One receive of at most `max_len` bytes (and at most one buffer) into the
    /// provided buffer ring. Single-shot on purpose: the caller re-arms it with
    /// what it can still buffer, so a peer is never read past the caller's budget.
    /// A multishot receive keeps filling buffers until its cancel lands, which let a
    /// slow reader's peer pin megabytes; a bundle receive (Linux 6.10+) retries once
    /// with whatever the socket holds, past its length, so it is not used either.
    fn recv(&mut self, fd: BorrowedFd<'_>, max_len: usize, token: T) -> OpId {
        let id = self.alloc_op(OpKind::Recv, token);
        let len = max_len.clamp(1, self.bufs.size() as usize) as u32;
        self.push(
            opcode::Recv::new(types::Fd(fd.as_raw_fd()), std::ptr::null_mut(), len)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(id.0),
        );
        id
    }

    /// Send `buf[offset..]`; the buffer comes back in [`Event::Sent`].
    fn send(&mut self, fd: BorrowedFd<'_>, buf: Vec<u8>, offset: usize, token: T) -> OpId {
        let len = (buf.len() - offset).min(u32::MAX as usize) as u32;
        // The Vec's heap block does not move when the Vec is moved into the op table.
        let ptr = buf[offset..].as_ptr();
        let id = self.alloc(Op {
            token,
            kind: OpKind::Send,
            buf: Some(buf),
            offset,
            addr: None,
        });
        self.push(
            opcode::Send::new(types::Fd(fd.as_raw_fd()), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(id.0),
        );
        id
    }

    /// Non-blocking connect of a fresh socket.
    fn connect(&mut self, fd: BorrowedFd<'_>, addr: SocketAddr, token: T) -> OpId {
        let sa = Box::new(socket2::SockAddr::from(addr));
        // The box's heap block does not move when the box is moved into the op table.
        let (p, l) = (sa.as_ptr(), sa.len());
        let id = self.alloc(Op {
            token,
            kind: OpKind::Connect,
            buf: None,
            offset: 0,
            addr: Some(sa),
        });
        self.push(
            opcode::Connect::new(types::Fd(fd.as_raw_fd()), p, l)
                .build()
                .user_data(id.0),
        );
        id
    }

    fn shutdown_write(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId {
        let id = self.alloc_op(OpKind::Shutdown, token);
        self.push(
            opcode::Shutdown::new(types::Fd(fd.as_raw_fd()), libc::SHUT_WR)
                .build()
                .user_data(id.0),
        );
        id
    }

    /// Close `fd` through the ring (batched with everything else this turn).
    fn close(&mut self, fd: OwnedFd, token: T) {
        let id = self.alloc_op(OpKind::Close, token);
        let raw = fd.into_raw_fd();
        self.push(opcode::Close::new(types::Fd(raw)).build().user_data(id.0));
    }

    /// Ask the kernel to cancel `target`; its final completion (usually
    /// [`OpError::Cancelled`]) still arrives and still returns its buffers.
    fn cancel(&mut self, target: OpId, token: T) {
        let id = self.alloc_op(OpKind::Cancel, token);
        self.push(opcode::AsyncCancel::new(target.0).build().user_data(id.0));
    }

    /// Publish the buffers dropped since the last turn, submit every queued SQE and
    /// wait for at least one completion or `timeout`: the one syscall of a loop turn.
    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.bufs.reclaim();
        loop {
            self.flush_backlog();
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // CQ overflow pressure: reap first, then submit again next turn.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            // Backlogged entries go in as soon as there is room; don't wait on them.
            if self.backlog.is_empty() || !self.ring.completion().is_empty() {
                return Ok(());
            }
        }
    }

    /// Move every available completion into `out`.
    fn drain(&mut self, out: &mut Vec<Completion<T, RecvBuf>>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let id = OpId(cqe.user_data());
            let flags = cqe.flags();
            let more = cqueue::more(flags);
            let res = cqe.result();
            // A buffer the kernel picked is ours now, whatever the result; dropped
            // unused (e.g. with an EOF), it simply goes back to the ring.
            let recv =
                cqueue::buffer_select(flags).map(|bid| self.bufs.lend(bid, res.max(0) as usize));
            let Some(op) = self.ops.get_mut(id.key()) else {
                debug_assert!(false, "a completion for an op not in the table");
                continue;
            };
            let token = op.token;
            let event = decode(op, res, recv, more);
            if !more {
                // Final completion: the kernel is done with this op's memory.
                self.ops.remove(id.key());
            }
            out.push(Completion { token, more, event });
        }
    }

    /// Ops not yet completed (for drain and tests).
    fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    fn shrink(&mut self) {
        self.ops.shrink();
    }
}

/// Turn one CQE of `op` into what it delivers (taking the op's send buffer on its
/// final completion).
fn decode<T>(op: &mut Op<T>, res: i32, recv: Option<RecvBuf>, more: bool) -> Event<RecvBuf> {
    if res < 0 {
        if !more {
            op.buf = None;
        }
        return Event::Failed(OpError::from_errno(-res));
    }
    match op.kind {
        OpKind::Accept => {
            // SAFETY: a non-negative accept result is a descriptor the kernel just
            // installed in our table for this completion alone; nothing else owns it.
            Event::Accepted(unsafe { OwnedFd::from_raw_fd(res as RawFd) })
        }
        OpKind::Recv => match recv {
            Some(b) if res > 0 => Event::Received(b),
            _ if res == 0 => Event::Eof,
            // Cannot happen with BUFFER_SELECT: bytes always come in a buffer.
            _ => Event::Failed(OpError::Os(libc::EIO)),
        },
        OpKind::Send => {
            let buf = op.buf.take().expect("a send op owns its buffer");
            let end = op.offset + res as usize;
            Event::Sent(Sent { buf, end })
        }
        OpKind::Connect => Event::Connected,
        OpKind::Shutdown => Event::ShutDown,
        OpKind::Close => Event::Closed,
        OpKind::Cancel => Event::CancelAccepted,
    }
}

impl<T> Drop for Uring<T> {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}
