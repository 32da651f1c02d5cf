//! uring: one io_uring per worker, the op table, and the provided buffer ring.
//!
//! Owns every piece of memory the kernel may touch: send buffers, connect
//! addresses and the receive buffer ring. A buffer handed to the kernel belongs to
//! its op until the op's final completion is reaped, even if the caller has long
//! since forgotten the connection (tokio-uring's rule). Callers pass an opaque
//! `u64` token and get it back in each [`Completion`]; they never see pointers.
//!
//! I/O contract: ops are queued with the `*` methods and reach the kernel only in
//! [`Uring::submit_and_wait`] — one `io_uring_enter` per worker loop turn.
//! Knows nothing about TLS.

#![deny(clippy::undocumented_unsafe_blocks)]

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// Buffer group id of the worker's single provided buffer ring.
const BGID: u16 = 0;

/// Handle of an op in flight, usable with [`Uring::cancel`]. Carries the op-table
/// index and a generation so a cancel can never hit a later op that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(u64);

impl OpId {
    fn new(idx: u32, gen: u32) -> Self {
        OpId((gen as u64) << 32 | idx as u64)
    }
    fn idx(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
}

/// The socket a successful accept completion created.
pub fn accepted_fd(c: &Completion) -> Option<OwnedFd> {
    if c.result < 0 {
        return None;
    }
    // SAFETY: a non-negative accept result is a descriptor the kernel just installed
    // in our table for this completion alone; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(c.result as RawFd) })
}

/// The provided buffer one receive completion filled. Not `Clone`:
/// [`Uring::recycle`] consumes it, so a buffer cannot be given back twice.
#[derive(Debug, PartialEq, Eq)]
pub struct RecvBuf {
    bid: u16,
}

/// One completion, with whatever the op owned handed back to the caller.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: i32,
    /// More completions will follow for this (multishot) op.
    pub more: bool,
    /// The provided buffer holding `result` received bytes; read it with
    /// [`Uring::received`] and give it back with [`Uring::recycle`].
    pub buf_id: Option<RecvBuf>,
    /// The send buffer, returned after the kernel is done with it.
    pub buf: Option<Vec<u8>>,
    /// How far into `buf` the send started (bytes before it were sent earlier).
    pub offset: usize,
}

struct Op {
    gen: u32,
    token: u64,
    live: bool,
    /// Kernel reads from here until the final completion (send).
    buf: Option<Vec<u8>>,
    offset: usize,
    /// Kernel reads from here until the final completion (connect).
    addr: Option<Box<socket2::SockAddr>>,
}

/// Why io_uring cannot be used on this host, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}; run `sysctl -w kernel.io_uring_disabled=0` (or add this process's group to kernel.io_uring_group)")]
    DisabledBySysctl(String),
    #[error("io_uring_setup is not permitted ({0}): a seccomp profile (e.g. a container runtime's default) blocks it; run with a profile that allows io_uring_setup/io_uring_enter/io_uring_register")]
    NotPermitted(io::Error),
    #[error("io_uring is not supported by this kernel ({0}); terminus needs Linux >= 6.0 (multishot recv, provided buffer rings)")]
    NotSupported(io::Error),
    #[error("io_uring ring memory could not be allocated ({0}): raise RLIMIT_MEMLOCK (`ulimit -l`, systemd LimitMEMLOCK=) or lower runtime.ring_entries / recv_buffers")]
    NoMemory(io::Error),
    #[error("io_uring opcode {0} is not supported by this kernel; terminus needs Linux >= 6.0")]
    MissingOpcode(&'static str),
    #[error("io_uring setup failed: {0}")]
    Other(io::Error),
}

fn classify_setup_error(e: io::Error) -> UringError {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::EPERM) if !sysctl.is_empty() && sysctl != "0" => {
            UringError::DisabledBySysctl(sysctl)
        }
        Some(libc::EPERM) | Some(libc::EACCES) => UringError::NotPermitted(e),
        Some(libc::ENOSYS) => UringError::NotSupported(e),
        Some(libc::ENOMEM) => UringError::NoMemory(e),
        _ => UringError::Other(e),
    }
}

/// Every opcode the data path submits: (opcode, name in errors, what it is used for).
/// [`Uring::new`] refuses a kernel that lacks any; `terminus check --host` lists them.
pub const DATA_PATH_OPCODES: [(u8, &str, &str); 7] = [
    (opcode::AcceptMulti::CODE, "ACCEPT", "multishot accept"),
    (opcode::RecvMulti::CODE, "RECV", "recv with buffer select"),
    (opcode::Send::CODE, "SEND", "send"),
    (opcode::Connect::CODE, "CONNECT", "upstream connect"),
    (opcode::Shutdown::CODE, "SHUTDOWN", "half-close"),
    (opcode::Close::CODE, "CLOSE", "close"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL", "cancel"),
];

/// Create a ring with the setup flags a worker uses (SQPOLL, or DEFER_TASKRUN +
/// SINGLE_ISSUER falling back to a plain ring on kernels without them).
pub fn build_ring(cfg: &UringConfig) -> Result<IoUring, UringError> {
    let mut b = IoUring::builder();
    if cfg.sqpoll {
        b.setup_sqpoll(1000);
    } else {
        // Completions are processed only when we ask for them: fewer interrupts.
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    b.setup_cqsize(cfg.entries.saturating_mul(4));
    match b.build(cfg.entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !cfg.sqpoll => {
            // Older kernels lack DEFER_TASKRUN; try the plain setup.
            IoUring::builder()
                .setup_cqsize(cfg.entries.saturating_mul(4))
                .build(cfg.entries)
                .map_err(classify_setup_error)
        }
        Err(e) => Err(classify_setup_error(e)),
    }
}

/// Ask the kernel (IORING_REGISTER_PROBE) which of [`DATA_PATH_OPCODES`] it supports.
pub fn probe_opcodes(ring: &IoUring) -> Result<Vec<(u8, &'static str, bool)>, UringError> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::Other)?;
    Ok(DATA_PATH_OPCODES
        .iter()
        .map(|&(code, name, _)| (code, name, probe.is_supported(code)))
        .collect())
}

/// Ring construction parameters.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    pub entries: u32,
    pub sqpoll: bool,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
}

/// The provided buffer ring: `count` buffers of `size` bytes the kernel picks from
/// for multishot receives, so idle connections hold no receive memory.
struct BufRing {
    /// Ring entries (page aligned, shared with the kernel).
    ring: *mut types::BufRingEntry,
    ring_layout: std::alloc::Layout,
    /// Buffer memory, `count * size` bytes.
    data: *mut u8,
    data_layout: std::alloc::Layout,
    count: u16,
    size: u32,
    /// Our private tail; published to the kernel in [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two",
            ));
        }
        let ring_layout = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let data_layout = std::alloc::Layout::from_size_align(count as usize * size as usize, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero size (count >= 1, size >= 4096 by config
        // validation); the memory is freed only in Drop, after the ring is unregistered.
        let (ring, data) = unsafe {
            (
                std::alloc::alloc_zeroed(ring_layout) as *mut types::BufRingEntry,
                std::alloc::alloc(data_layout),
            )
        };
        if ring.is_null() || data.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let mut br = BufRing {
            ring,
            ring_layout,
            data,
            data_layout,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            br.push(bid);
        }
        Ok(br)
    }

    /// Queue buffer `bid` for the kernel (visible after `publish`).
    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: idx < count, so the entry lies inside the ring allocation. The kernel
        // only reads entries between its head and the published tail; this entry is past
        // the published tail until `publish`, so the kernel is not reading it now.
        let entry = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < count, so the buffer lies inside the data allocation.
        let addr = unsafe { self.data.add(bid as usize * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed buffer visible to the kernel (release store of the tail).
    fn publish(&self) {
        // SAFETY: the tail field lives inside the first ring entry, inside our
        // allocation; the kernel reads it with acquire semantics, hence the release store
        // through an atomic view of the same u16.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size as usize);
        // SAFETY: in bounds (asserted). The kernel wrote this buffer before posting the
        // completion that gave us `bid`, and will not write it again until we push it
        // back; the borrow of `self` ends before any `recycle` (which takes &mut).
        unsafe { std::slice::from_raw_parts(self.data.add(bid as usize * self.size as usize), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: Uring::drop unregisters the ring (and drops the IoUring) before this
        // runs, so the kernel no longer references either allocation.
        unsafe {
            std::alloc::dealloc(self.ring as *mut u8, self.ring_layout);
            std::alloc::dealloc(self.data, self.data_layout);
        }
    }
}

/// One worker's ring, op table and buffer ring.
pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
    ops: Vec<Op>,
    free_ops: Vec<u32>,
    /// SQEs that did not fit in the submission queue this turn.
    backlog: VecDeque<squeue::Entry>,
    /// Buffers returned since the last publish.
    recycled: bool,
}

// The raw pointers in BufRing point at memory owned by this struct; a Uring is
// created on one thread and moved to its worker thread before use.
// SAFETY: nothing is shared; the whole Uring moves between threads as one unit.
unsafe impl Send for Uring {}

impl Uring {
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
                .register_buf_ring_with_flags(bufs.ring as u64, bufs.count, BGID, 0)
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
            ops: Vec::new(),
            free_ops: Vec::new(),
            backlog: VecDeque::new(),
            recycled: false,
        })
    }

    fn alloc_op(&mut self, token: u64) -> OpId {
        let idx = match self.free_ops.pop() {
            Some(i) => i,
            None => {
                self.ops.push(Op {
                    gen: 0,
                    token: 0,
                    live: false,
                    buf: None,
                    offset: 0,
                    addr: None,
                });
                (self.ops.len() - 1) as u32
            }
        };
        let op = &mut self.ops[idx as usize];
        op.gen = op.gen.wrapping_add(1);
        op.token = token;
        op.live = true;
        OpId::new(idx, op.gen)
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

    /// Multishot accept on a listening socket.
    pub fn accept_multi(&mut self, fd: RawFd, token: u64) -> OpId {
        let id = self.alloc_op(token);
        self.push(
            opcode::AcceptMulti::new(types::Fd(fd))
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
    pub fn recv(&mut self, fd: RawFd, max_len: usize, token: u64) -> OpId {
        let id = self.alloc_op(token);
        let len = max_len.clamp(1, self.bufs.size as usize) as u32;
        self.push(
            opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), len)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(id.0),
        );
        id
    }

    /// Send `buf[offset..]`; the buffer comes back in the completion.
    pub fn send(&mut self, fd: RawFd, buf: Vec<u8>, offset: usize, token: u64) -> OpId {
        let id = self.alloc_op(token);
        let op = &mut self.ops[id.idx()];
        let len = (buf.len() - offset).min(u32::MAX as usize) as u32;
        // The Vec's heap block does not move when the Vec is moved into the op table.
        let ptr = buf[offset..].as_ptr();
        op.buf = Some(buf);
        op.offset = offset;
        self.push(
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(id.0),
        );
        id
    }

    /// Non-blocking connect of a fresh socket.
    pub fn connect(&mut self, fd: RawFd, addr: SocketAddr, token: u64) -> OpId {
        let id = self.alloc_op(token);
        let sa = Box::new(socket2::SockAddr::from(addr));
        let (p, l) = (sa.as_ptr(), sa.len());
        self.ops[id.idx()].addr = Some(sa);
        self.push(
            opcode::Connect::new(types::Fd(fd), p, l)
                .build()
                .user_data(id.0),
        );
        id
    }

    pub fn shutdown_write(&mut self, fd: RawFd, token: u64) -> OpId {
        let id = self.alloc_op(token);
        self.push(
            opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
                .build()
                .user_data(id.0),
        );
        id
    }

    /// Close `fd` through the ring (batched with everything else this turn).
    pub fn close(&mut self, fd: OwnedFd, token: u64) {
        let id = self.alloc_op(token);
        let raw = fd.into_raw_fd();
        self.push(opcode::Close::new(types::Fd(raw)).build().user_data(id.0));
    }

    /// Ask the kernel to cancel `target`; its final completion (usually -ECANCELED)
    /// still arrives and still returns its buffers.
    pub fn cancel(&mut self, target: OpId, token: u64) {
        let id = self.alloc_op(token);
        self.push(opcode::AsyncCancel::new(target.0).build().user_data(id.0));
    }

    /// The received bytes of a completion (`len` is its result).
    pub fn received(&self, b: &RecvBuf, len: usize) -> &[u8] {
        self.bufs.slice(b.bid, len)
    }

    /// Give a completion's receive buffer back to the kernel (published at the next
    /// submit).
    pub fn recycle(&mut self, b: RecvBuf) {
        self.bufs.push(b.bid);
        self.recycled = true;
    }

    /// Publish recycled buffers, submit every queued SQE and wait for at least one
    /// completion or `timeout`: the one syscall of a loop turn.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        if self.recycled {
            self.bufs.publish();
            self.recycled = false;
        }
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

    /// Move every available completion into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let id = OpId(cqe.user_data());
            let flags = cqe.flags();
            let more = cqueue::more(flags);
            let op = &mut self.ops[id.idx()];
            debug_assert!(op.live);
            let mut c = Completion {
                token: op.token,
                result: cqe.result(),
                more,
                buf_id: cqueue::buffer_select(flags).map(|bid| RecvBuf { bid }),
                buf: None,
                offset: 0,
            };
            if !more {
                // Final completion: the kernel is done with this op's memory.
                c.buf = op.buf.take();
                c.offset = op.offset;
                op.addr = None;
                op.live = false;
                self.free_ops.push(id.idx() as u32);
            }
            out.push(c);
        }
    }

    /// Ops not yet completed (for drain and tests).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len() - self.free_ops.len()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}
