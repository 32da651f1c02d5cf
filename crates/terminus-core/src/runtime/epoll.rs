//! epoll: the readiness backend, for hosts where io_uring is blocked (container
//! runtimes' default seccomp profiles, `kernel.io_uring_disabled`) or not wanted.
//!
//! Owns: one epoll instance per worker (through mio), an op table shaped like the
//! io_uring one, each descriptor's readiness and pending ops, and a small pool of
//! receive buffers.
//!
//! It gives the worker io_uring's completion model on top of readiness, so the
//! worker, the slots and the sans-IO `Conn` run unchanged: an op is tried at once
//! when its descriptor is known to be ready, else it waits for the descriptor's
//! next edge; either way its result becomes a [`Completion`] drained on the next
//! turn. Descriptors are registered edge-triggered for both directions on their
//! first op and stay registered until [`Driver::close`] (one `epoll_ctl` per
//! socket, none per op). Readiness is remembered per descriptor and cleared only
//! by `EAGAIN` or a short read/write, so a ready socket costs no extra syscall and
//! no edge is ever lost.
//!
//! Limits kept as in io_uring: a receive reads at most the length it was given (the
//! caller's budget), sends complete whole (partial writes continue on the next
//! writable edge), a multishot accept takes at most [`ACCEPTS_PER_TURN`] sockets per
//! turn so one busy listener cannot starve the connections.
//!
//! I/O contract: `epoll_wait` once per loop turn, plus one non-blocking syscall per
//! op attempt (`accept4`, `recv`, `send`, `connect`, `shutdown`, `getsockopt`).

#![deny(clippy::undocumented_unsafe_blocks)]

use crate::runtime::driver::{Completion, Driver, Event, OpError, OpId, Sent};
use crate::runtime::slab::{Key, Slab};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};
use std::cell::RefCell;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// Sockets one listener's accept takes per turn before the others get a turn.
pub const ACCEPTS_PER_TURN: usize = 64;
/// Readiness events read per `epoll_wait`.
const EVENTS_PER_TURN: usize = 1024;
/// Free receive buffers kept for reuse (more are freed).
const POOL_MAX: usize = 64;

/// Received bytes in a pooled heap buffer; back to the pool when dropped.
pub struct HeapBuf {
    buf: Vec<u8>,
    len: usize,
    pool: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl std::ops::Deref for HeapBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for HeapBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl std::fmt::Debug for HeapBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeapBuf({} bytes)", self.len)
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// What a pending op still has to do.
enum OpState {
    Accept,
    Recv {
        len: usize,
    },
    Send {
        buf: Vec<u8>,
        off: usize,
    },
    Connect,
    /// Waits for the send queued before it on the same socket.
    Shutdown,
    /// Completed at once (close, cancel) or finished.
    Done,
}

/// An op in the table, from its queueing until its final completion is drained.
struct Op<T> {
    token: T,
    fd: RawFd,
    state: OpState,
}

/// One descriptor: what epoll last told us and the ops waiting on it.
#[derive(Default)]
struct FdState {
    /// Bumped whenever the descriptor number starts a new life (accept, connect,
    /// close), so an event for an old life is recognised and ignored.
    gen: u32,
    registered: bool,
    readable: bool,
    writable: bool,
    /// The peer closed or the socket failed: reads/writes stay "ready" (they return
    /// EOF or the error at once), never waiting for another edge.
    read_closed: bool,
    write_closed: bool,
    accept: Option<Key>,
    recv: Option<Key>,
    send: Option<Key>,
    connect: Option<Key>,
    shutdown: Option<Key>,
}

impl FdState {
    fn pending(&self) -> impl Iterator<Item = Key> {
        [
            self.accept,
            self.recv,
            self.send,
            self.connect,
            self.shutdown,
        ]
        .into_iter()
        .flatten()
    }
}

/// One worker's epoll instance and op table. Not `Send`, like [`super::uring::Uring`].
pub struct Epoll<T> {
    poll: Poll,
    events: Events,
    /// (token key, readable, writable, read closed, write closed) of this turn.
    ready: Vec<(u64, bool, bool, bool, bool)>,
    ops: Slab<Op<T>>,
    fds: Vec<FdState>,
    /// Completions not drained yet, with their op's key.
    done: Vec<(Key, Completion<T, HeapBuf>)>,
    /// Listeners that hit [`ACCEPTS_PER_TURN`] with sockets left: go on next turn.
    again: Vec<RawFd>,
    pool: Rc<RefCell<Vec<Vec<u8>>>>,
    buf_size: usize,
}

impl<T: Copy> Epoll<T> {
    /// `buf_size`: the largest receive (`runtime.recv_buffer_size`).
    pub fn new(buf_size: usize) -> io::Result<Self> {
        Ok(Epoll {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_PER_TURN),
            ready: Vec::with_capacity(EVENTS_PER_TURN),
            ops: Slab::new(),
            fds: Vec::new(),
            done: Vec::new(),
            again: Vec::new(),
            pool: Rc::new(RefCell::new(Vec::new())),
            buf_size: buf_size.max(1),
        })
    }

    fn alloc(&mut self, token: T, fd: RawFd, state: OpState) -> (Key, OpId) {
        let key = self.ops.insert(Op { token, fd, state });
        (key, key.into())
    }

    /// The op `key` names: one waiting on a descriptor or with a completion not
    /// drained yet (keys are kept only while that holds).
    fn op(&mut self, key: Key) -> &mut Op<T> {
        self.ops.get_mut(key).expect("a pending op is in the table")
    }

    /// Queue op `key`'s completion; a final one ends the op (its memory is dropped).
    fn complete(&mut self, key: Key, more: bool, event: Event<HeapBuf>) {
        let op = self.op(key);
        let token = op.token;
        if !more {
            op.state = OpState::Done;
        }
        self.done.push((key, Completion { token, more, event }));
    }

    fn fd(&mut self, raw: RawFd) -> &mut FdState {
        let i = raw as usize;
        if i >= self.fds.len() {
            self.fds.resize_with(i + 1, FdState::default);
        }
        &mut self.fds[i]
    }

    /// The descriptor number starts a new life (a socket just accepted or created).
    fn fresh(&mut self, raw: RawFd) {
        let st = self.fd(raw);
        debug_assert!(st.pending().next().is_none(), "fd {raw} reused with ops");
        let gen = st.gen.wrapping_add(1);
        *st = FdState {
            gen,
            ..FdState::default()
        };
    }

    /// Register `raw` for both directions, edge-triggered, once per life.
    fn register(&mut self, raw: RawFd) -> io::Result<()> {
        let st = self.fd(raw);
        if st.registered {
            return Ok(());
        }
        let key = (st.gen as u64) << 32 | raw as u32 as u64;
        let (mut src, token) = (SourceFd(&raw), mio::Token(key as usize));
        let both = Interest::READABLE | Interest::WRITABLE;
        match self.poll.registry().register(&mut src, token, both) {
            // Registered in an earlier life (e.g. re-armed accept): update the key.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.poll.registry().reregister(&mut src, token, both)?
            }
            r => r?,
        }
        self.fds[raw as usize].registered = true;
        Ok(())
    }

    /// Make `idx` the op waiting on `raw`'s `slot` (registering `raw` first); a
    /// failed registration fails the op.
    fn wait_on(&mut self, raw: RawFd, idx: Key, slot: fn(&mut FdState) -> &mut Option<Key>) {
        if let Err(e) = self.register(raw) {
            return self.complete(idx, false, Event::Failed(OpError::from_io(&e)));
        }
        *slot(self.fd(raw)) = Some(idx);
        self.progress(raw);
    }

    /// Run every op of `raw` that its readiness allows.
    fn progress(&mut self, raw: RawFd) {
        let st = &self.fds[raw as usize];
        let (readable, writable) = (st.readable, st.writable);
        if readable {
            self.try_accept(raw);
            self.try_recv(raw);
        }
        if writable {
            self.try_connect(raw);
            self.try_send(raw);
        }
    }

    fn try_accept(&mut self, raw: RawFd) {
        let Some(idx) = self.fds[raw as usize].accept else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            // SAFETY: accept4 writes nothing through the null address pointers and
            // only reads the listening descriptor, which the caller keeps open while
            // its accept op is pending.
            let fd = unsafe {
                libc::accept4(
                    raw,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a non-negative accept4 result is a descriptor the kernel
                // just installed for us alone; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                self.fresh(fd);
                self.complete(idx, true, Event::Accepted(owned));
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    self.fds[raw as usize].readable = false;
                    return;
                }
                // The connection died in the queue, or a signal: try the next one.
                Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => {}
                _ => {
                    // Out of descriptors or worse: end the accept (the worker re-arms).
                    self.fds[raw as usize].accept = None;
                    return self.complete(idx, false, Event::Failed(OpError::from_io(&e)));
                }
            }
        }
        self.again.push(raw);
    }

    fn try_recv(&mut self, raw: RawFd) {
        let Some(idx) = self.fds[raw as usize].recv else {
            return;
        };
        let OpState::Recv { len } = self.op(idx).state else {
            unreachable!("a recv slot holds a recv op");
        };
        let mut buf = self.pool.borrow_mut().pop().unwrap_or_default();
        // Pooled buffers are zeroed once, when first made, and reused as they are.
        buf.resize(self.buf_size, 0);
        let fd = borrowed(raw);
        let sock = socket2::SockRef::from(&fd);
        let res = loop {
            match (&*sock).read(&mut buf[..len]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let st = &mut self.fds[raw as usize];
        let event = match res {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.readable = false;
                self.return_buf(buf);
                return;
            }
            Err(e) => Event::Failed(OpError::from_io(&e)),
            Ok(0) => Event::Eof,
            Ok(n) => {
                // A short read emptied the socket: wait for the next edge (unless
                // the peer closed, which sends no further edge).
                if n < len && !st.read_closed {
                    st.readable = false;
                }
                Event::Received(HeapBuf {
                    buf: std::mem::take(&mut buf),
                    len: n,
                    pool: self.pool.clone(),
                })
            }
        };
        st.recv = None;
        if !buf.is_empty() {
            self.return_buf(buf);
        }
        self.complete(idx, false, event);
    }

    fn return_buf(&mut self, buf: Vec<u8>) {
        let mut pool = self.pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }

    fn try_connect(&mut self, raw: RawFd) {
        let Some(idx) = self.fds[raw as usize].connect.take() else {
            return;
        };
        let fd = borrowed(raw);
        let sock = socket2::SockRef::from(&fd);
        let event = match sock.take_error() {
            Ok(None) => Event::Connected,
            Ok(Some(e)) | Err(e) => Event::Failed(OpError::from_io(&e)),
        };
        self.complete(idx, false, event);
    }

    fn try_send(&mut self, raw: RawFd) {
        let Some(idx) = self.fds[raw as usize].send else {
            return;
        };
        let fd = borrowed(raw);
        let sock = socket2::SockRef::from(&fd);
        let OpState::Send { buf, off } = &mut self.op(idx).state else {
            unreachable!("a send slot holds a send op");
        };
        let res = loop {
            match sock.send_with_flags(&buf[*off..], libc::MSG_NOSIGNAL) {
                Ok(n) => {
                    *off += n;
                    if *off == buf.len() {
                        break Ok(true);
                    }
                    // Short: the socket buffer is full; go on at the next edge.
                    break Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        let event = match res {
            Ok(false) => {
                let st = &mut self.fds[raw as usize];
                if !st.write_closed {
                    st.writable = false;
                }
                return;
            }
            Ok(true) => {
                let OpState::Send { buf, off } =
                    std::mem::replace(&mut self.op(idx).state, OpState::Done)
                else {
                    unreachable!()
                };
                Event::Sent(Sent { buf, end: off })
            }
            Err(e) => Event::Failed(OpError::from_io(&e)),
        };
        self.fds[raw as usize].send = None;
        self.complete(idx, false, event);
        if let Some(sh) = self.fds[raw as usize].shutdown.take() {
            self.shutdown_now(raw, sh);
        }
    }

    fn shutdown_now(&mut self, raw: RawFd, idx: Key) {
        let fd = borrowed(raw);
        let sock = socket2::SockRef::from(&fd);
        let event = match sock.shutdown(std::net::Shutdown::Write) {
            Ok(()) => Event::ShutDown,
            Err(e) => Event::Failed(OpError::from_io(&e)),
        };
        self.complete(idx, false, event);
    }

    /// End op `idx` with `Cancelled` if it is still pending; false if it was not
    /// (completed, or `idx` names an op that is gone).
    fn cancel_op(&mut self, idx: Key) -> bool {
        let Some(op) = self
            .ops
            .get(idx)
            .filter(|op| !matches!(op.state, OpState::Done))
        else {
            return false;
        };
        let st = &mut self.fds[op.fd as usize];
        for slot in [
            &mut st.accept,
            &mut st.recv,
            &mut st.send,
            &mut st.connect,
            &mut st.shutdown,
        ] {
            if *slot == Some(idx) {
                *slot = None;
            }
        }
        self.complete(idx, false, Event::Failed(OpError::Cancelled));
        true
    }
}

/// The descriptor of a pending op, for the syscall about to be made on it.
fn borrowed<'a>(raw: RawFd) -> BorrowedFd<'a> {
    // SAFETY: every caller passes the descriptor of a pending op; the driver's
    // contract is that its owner keeps it open until the op's final completion, and
    // the borrow lives only for the syscall it is made for.
    unsafe { BorrowedFd::borrow_raw(raw) }
}

impl<T: Copy> Driver<T> for Epoll<T> {
    type Buf = HeapBuf;

    fn accept_multi(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId {
        let raw = fd.as_raw_fd();
        self.fd(raw);
        let (idx, id) = self.alloc(token, raw, OpState::Accept);
        self.wait_on(raw, idx, |s| &mut s.accept);
        id
    }

    fn recv(&mut self, fd: BorrowedFd<'_>, max_len: usize, token: T) -> OpId {
        let raw = fd.as_raw_fd();
        let len = max_len.clamp(1, self.buf_size);
        let (idx, id) = self.alloc(token, raw, OpState::Recv { len });
        self.wait_on(raw, idx, |s| &mut s.recv);
        id
    }

    fn send(&mut self, fd: BorrowedFd<'_>, buf: Vec<u8>, off: usize, token: T) -> OpId {
        let raw = fd.as_raw_fd();
        let (idx, id) = self.alloc(token, raw, OpState::Send { buf, off });
        self.wait_on(raw, idx, |s| &mut s.send);
        id
    }

    fn connect(&mut self, fd: BorrowedFd<'_>, addr: SocketAddr, token: T) -> OpId {
        let raw = fd.as_raw_fd();
        self.fresh(raw);
        let (idx, id) = self.alloc(token, raw, OpState::Connect);
        match socket2::SockRef::from(&fd).connect(&addr.into()) {
            Ok(()) => {
                let _ = self.register(raw);
                self.complete(idx, false, Event::Connected);
            }
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                self.wait_on(raw, idx, |s| &mut s.connect);
            }
            Err(e) => self.complete(idx, false, Event::Failed(OpError::from_io(&e))),
        }
        id
    }

    fn shutdown_write(&mut self, fd: BorrowedFd<'_>, token: T) -> OpId {
        let raw = fd.as_raw_fd();
        let (idx, id) = self.alloc(token, raw, OpState::Shutdown);
        if self.fd(raw).send.is_some() {
            self.fds[raw as usize].shutdown = Some(idx);
        } else {
            self.shutdown_now(raw, idx);
        }
        id
    }

    fn close(&mut self, fd: OwnedFd, token: T) {
        let raw = fd.as_raw_fd();
        // An array, not a Vec: no allocation per close.
        let st = self.fd(raw);
        let pending = [st.accept, st.recv, st.send, st.connect, st.shutdown];
        for idx in pending.into_iter().flatten() {
            self.cancel_op(idx);
        }
        self.fresh(raw);
        drop(fd);
        let (idx, _) = self.alloc(token, raw, OpState::Done);
        self.complete(idx, false, Event::Closed);
    }

    fn cancel(&mut self, target: OpId, token: T) {
        let (idx, _) = self.alloc(token, -1, OpState::Done);
        let event = if self.cancel_op(target.key()) {
            Event::CancelAccepted
        } else {
            Event::Failed(OpError::NotFound)
        };
        self.complete(idx, false, event);
    }

    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let busy = !self.done.is_empty() || !self.again.is_empty();
        let timeout = if busy { Duration::ZERO } else { timeout };
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.ready.clear();
        for ev in self.events.iter() {
            self.ready.push((
                ev.token().0 as u64,
                ev.is_readable(),
                ev.is_writable(),
                ev.is_read_closed() || ev.is_error(),
                ev.is_write_closed() || ev.is_error(),
            ));
        }
        for i in 0..self.ready.len() {
            let (key, r, w, rc, wc) = self.ready[i];
            let raw = key as u32 as RawFd;
            let st = self.fd(raw);
            if st.gen != (key >> 32) as u32 {
                continue; // an event of the descriptor's previous life
            }
            st.readable |= r || rc;
            st.writable |= w || wc;
            st.read_closed |= rc;
            st.write_closed |= wc;
            self.progress(raw);
        }
        for raw in std::mem::take(&mut self.again) {
            self.progress(raw);
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Completion<T, HeapBuf>>) {
        for (key, c) in self.done.drain(..) {
            if !c.more {
                self.ops.remove(key);
            }
            out.push(c);
        }
    }

    fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    fn shrink(&mut self) {
        self.ops.shrink();
        // The receive buffers a burst pooled; taken again (zeroed once) on demand.
        let mut pool = self.pool.borrow_mut();
        pool.clear();
        pool.shrink_to_fit();
    }
}
