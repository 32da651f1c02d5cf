//! The provided buffer ring and the receive buffers it lends out.
//!
//! Owns: the ring entries the kernel picks receive buffers from and the buffer
//! memory itself. Each buffer is owned by exactly one party at a time: the kernel
//! (it is in the ring) or one [`RecvBuf`] (a completion handed it out). Dropping
//! the `RecvBuf` queues its id in the pool; [`BufRing::reclaim`] pushes every
//! queued id back and publishes them with one release store, at the next submit.
//!
//! I/O contract: none of its own; the ring is registered by [`super::Uring`].

use io_uring::types;
use std::alloc::Layout;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

/// The buffer memory, shared by the ring and every [`RecvBuf`] lent out, so a
/// buffer stays valid for as long as anyone can read it.
struct BufPool {
    /// `count * size` bytes.
    data: *mut u8,
    layout: Layout,
    size: u32,
    count: u16,
    /// Ids of dropped `RecvBuf`s, waiting to go back into the ring. Capacity
    /// `count`, so a drop never allocates.
    returned: RefCell<Vec<u16>>,
}

impl BufPool {
    fn new(count: u16, size: u32) -> io::Result<Self> {
        let layout = Layout::from_size_align(count as usize * size as usize, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: non-zero size (count >= 1, size >= 4096 by config validation);
        // freed in Drop, when the ring and every `RecvBuf` are gone.
        let data = unsafe { std::alloc::alloc(layout) };
        if data.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        // Touch every page now: the kernel takes ring buffers in FIFO order, so the
        // whole pool is resident after the first `count` receives of any traffic
        // anyway. Committed up front, an idle process's RSS is what it will hold
        // (recv_buffers x recv_buffer_size per worker), not a figure that later
        // grows by 16 MiB per worker and looks like a leak.
        // Volatile, one byte per page: LLVM turns alloc + memset(0) into a zeroed
        // allocation, which fresh OS memory satisfies without touching a page.
        for off in (0..layout.size()).step_by(4096) {
            // SAFETY: `off` < `layout.size()`, the bytes `data` was just allocated
            // with; nobody else sees them yet (the ring is registered after `new`).
            unsafe { std::ptr::write_volatile(data.add(off), 0) };
        }
        Ok(BufPool {
            data,
            layout,
            size,
            count,
            returned: RefCell::new(Vec::with_capacity(count as usize)),
        })
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: the last owner is gone: the ring (unregistered before `BufRing`
        // drops, see `Uring::drop`) and every `RecvBuf` held an `Rc` to this pool.
        unsafe { std::alloc::dealloc(self.data, self.layout) }
    }
}

/// One received chunk: a provided buffer lent out by a receive completion. Read it
/// through `Deref<Target = [u8]>`; dropping it gives the buffer back to the ring
/// (published at the next submit), so it can be neither returned twice nor read
/// after the kernel owns it again. Not `Send`: the worker is single-threaded.
pub struct RecvBuf {
    pool: Rc<BufPool>,
    bid: u16,
    len: u32,
}

impl RecvBuf {
    /// Where buffer `bid` starts in the pool (inside it: `bid < count`).
    fn start(&self) -> *mut u8 {
        let offset = self.bid as usize * self.pool.size as usize;
        self.pool.data.wrapping_add(offset)
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: bid < count and len <= size (checked in `BufRing::lend`), so the
        // slice lies inside the pool's allocation, which our `Rc` keeps alive. The
        // kernel wrote it before posting the completion and cannot write it again
        // until this `RecvBuf` is dropped and its id pushed back into the ring.
        unsafe { std::slice::from_raw_parts(self.start(), self.len as usize) }
    }
}

impl std::ops::DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the same slice as `deref`, and nothing else can reach it while this
        // `RecvBuf` lives: the kernel gave buffer `bid` to this one completion and
        // gets it back only when this is dropped, and a `RecvBuf` is never cloned,
        // so `&mut self` is the only access. (The connection decrypts TLS in place.)
        unsafe { std::slice::from_raw_parts_mut(self.start(), self.len as usize) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.pool.returned.borrow_mut().push(self.bid);
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

/// The provided buffer ring: `count` buffers of `size` bytes the kernel picks from
/// for receives, so idle connections hold no receive memory.
pub(super) struct BufRing {
    /// Ring entries (page aligned, shared with the kernel).
    ring: *mut types::BufRingEntry,
    ring_layout: Layout,
    pool: Rc<BufPool>,
    /// Our private tail; published to the kernel in [`BufRing::publish`].
    tail: u16,
}

impl BufRing {
    pub(super) fn new(count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two",
            ));
        }
        let pool = Rc::new(BufPool::new(count, size)?);
        let ring_layout = Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: non-zero size (count >= 1); freed only in Drop, after the ring is
        // unregistered.
        let ring = unsafe { std::alloc::alloc_zeroed(ring_layout) } as *mut types::BufRingEntry;
        if ring.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        let mut br = BufRing {
            ring,
            ring_layout,
            pool,
            tail: 0,
        };
        for bid in 0..count {
            br.push(bid);
        }
        Ok(br)
    }

    pub(super) fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    pub(super) fn count(&self) -> u16 {
        self.pool.count
    }

    pub(super) fn size(&self) -> u32 {
        self.pool.size
    }

    /// Hand out buffer `bid`, which a completion says holds `len` received bytes.
    pub(super) fn lend(&self, bid: u16, len: usize) -> RecvBuf {
        assert!(bid < self.pool.count && len <= self.pool.size as usize);
        RecvBuf {
            pool: self.pool.clone(),
            bid,
            len: len as u32,
        }
    }

    /// Push every buffer dropped since the last call back into the ring and publish
    /// them (one release store); false if there were none.
    pub(super) fn reclaim(&mut self) -> bool {
        let pool = self.pool.clone();
        let mut returned = pool.returned.borrow_mut();
        if returned.is_empty() {
            return false;
        }
        for bid in returned.drain(..) {
            self.push(bid);
        }
        self.publish();
        true
    }

    /// Queue buffer `bid` for the kernel (visible after `publish`).
    fn push(&mut self, bid: u16) {
        let count = self.pool.count;
        let idx = (self.tail & (count - 1)) as usize;
        // SAFETY: idx < count, so the entry lies inside the ring allocation. The kernel
        // only reads entries between its head and the published tail; this entry is past
        // the published tail until `publish`, so the kernel is not reading it now.
        let entry = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < count (ids come from `0..count` or a `RecvBuf` made by
        // `lend`), so the buffer lies inside the pool's allocation.
        let addr = unsafe { self.pool.data.add(bid as usize * self.pool.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.pool.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every pushed buffer visible to the kernel (release store of the tail).
    pub(super) fn publish(&self) {
        // SAFETY: the tail field lives inside the first ring entry, inside our
        // allocation; the kernel reads it with acquire semantics, hence the release store
        // through an atomic view of the same u16.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: Uring::drop unregisters the ring (and drops the IoUring) before this
        // runs, so the kernel no longer references the entries. The buffer memory is
        // the pool's and outlives any `RecvBuf` still held.
        unsafe { std::alloc::dealloc(self.ring as *mut u8, self.ring_layout) }
    }
}
