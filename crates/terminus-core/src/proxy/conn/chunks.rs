//! chunks: the send queue of one socket, and bounded growth of staging buffers.
//!
//! Owns [`Chunks`] (bytes queued for a socket as blocks of at most [`CHUNK`]) and
//! [`reserve_bounded`] (growth that never pins more than the buffering bound).
//!
//! I/O contract: none.

use std::io::Write;

/// Make room for `additional` more bytes in `v`, doubling as usual but never past
/// `limit` (unless the bytes themselves need more): a Vec's spare capacity is
/// memory a slow peer pins too, so it must stay within the buffering bound.
pub(super) fn reserve_bounded(v: &mut Vec<u8>, additional: usize, limit: usize) {
    if v.capacity() - v.len() >= additional {
        return;
    }
    let need = v.len() + additional;
    let want = (v.capacity() * 2).max(need).min(limit.max(need));
    v.reserve_exact(want - v.len());
}

/// Largest block of a send queue: one send hands the kernel at most this much
/// (a receive brings at most one 16 KiB buffer per turn, so sends keep pace).
pub(super) const CHUNK: usize = 16 * 1024;

/// Bytes queued for one socket, as blocks of at most [`CHUNK`] bytes; each send
/// takes the front block. A single Vec regrew (and copied) to the whole backlog
/// when a peer stalled, and those large, odd-sized blocks fragmented the
/// allocator: a connection pinned about twice what it buffered. Full blocks are
/// exactly one allocator size class, so freed ones are reused exactly, and only
/// the last block can have spare capacity (at most half of it).
#[derive(Default)]
pub(super) struct Chunks {
    q: std::collections::VecDeque<Vec<u8>>,
    len: usize,
}

impl Chunks {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if !matches!(self.q.back(), Some(b) if b.len() < CHUNK) {
                self.q.push_back(Vec::new());
            }
            let b = self.q.back_mut().expect("a block with room");
            let n = data.len().min(CHUNK - b.len());
            reserve_bounded(b, n, CHUNK);
            b.extend_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
    }

    /// Queue a whole buffer; moved, not copied, when it can be a block of its own.
    pub(super) fn push(&mut self, v: Vec<u8>) {
        if v.is_empty() {
            return;
        }
        if v.len() <= CHUNK && !matches!(self.q.back(), Some(b) if b.len() + v.len() <= CHUNK) {
            self.len += v.len();
            self.q.push_back(v);
        } else {
            self.extend(&v);
        }
    }

    /// How many more bytes the last block takes before it is a full block.
    pub(super) fn tail_room(&self) -> usize {
        self.q.back().map_or(0, |b| CHUNK.saturating_sub(b.len()))
    }

    /// Let `f` write up to `bound` bytes at the end of the queue (into zeroed room:
    /// rustls encodes into an initialised slice) and keep the `Ok(n)` it wrote. The
    /// room comes from the last block if it fits within a block, else from a new one.
    pub(super) fn write_with<E>(
        &mut self,
        bound: usize,
        f: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        if !matches!(self.q.back(), Some(b) if b.len() + bound <= CHUNK) {
            self.q.push_back(Vec::new());
        }
        let b = self.q.back_mut().expect("a block with room");
        let start = b.len();
        reserve_bounded(b, bound, CHUNK.max(bound));
        b.resize(start + bound, 0);
        let r = f(&mut b[start..]);
        let n = *r.as_ref().unwrap_or(&0);
        b.truncate(start + n);
        self.len += n;
        if b.is_empty() {
            // No empty blocks: each one is a send.
            self.q.pop_back();
        }
        r
    }

    /// The front block, to send.
    pub(super) fn pop(&mut self) -> Option<Vec<u8>> {
        let b = self.q.pop_front()?;
        self.len -= b.len();
        if self.q.is_empty() {
            // An idle connection keeps no queue memory either.
            self.q = std::collections::VecDeque::new();
        }
        Some(b)
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
