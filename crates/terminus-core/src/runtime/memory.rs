//! memory: an idle worker gives the memory it freed back to the OS.
//!
//! mimalloc (the binary's global allocator) keeps freed pages in the freeing
//! thread's heap and purges them on that thread's later allocator calls; a worker
//! that goes quiet after a burst (bulk streams, a handshake storm) would keep its
//! high-water mark resident for ever. After an idle spell (`[runtime]
//! idle_memory_trim_ms`) the worker shrinks its slot table (sized to the burst) and
//! forces one collection, which returns it; under load it never runs.
//!
//! I/O contract: `madvise`/`munmap` through the allocator, on the calling thread.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::time::{Duration, Instant};

/// When a worker last gave its freed memory back: one trim per idle spell.
pub struct IdleTrim {
    /// `[runtime] idle_memory_trim_ms` (None: never).
    after: Option<Duration>,
    /// The last turn that handled a completion.
    busy_at: Instant,
    /// Trimmed since then.
    done: bool,
}

impl IdleTrim {
    pub fn new(after: Option<Duration>, now: Instant) -> Self {
        IdleTrim {
            after,
            busy_at: now,
            done: false,
        }
    }

    /// After each loop turn, with the completions it handled. True: the worker has
    /// been idle long enough, so it gives back what it holds beyond its live state
    /// (tables sized to a burst, then the allocator's freed pages: [`trim_thread`]).
    pub fn turn(&mut self, handled: u64, now: Instant) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        if handled > 0 {
            self.busy_at = now;
            self.done = false;
        } else if !self.done && now.duration_since(self.busy_at) >= after {
            self.done = true;
            return true;
        }
        false
    }
}

/// Collect the calling thread's mimalloc heap and purge what it freed.
pub fn trim_thread() {
    // SAFETY: mi_collect takes no pointers and has no preconditions: it walks the
    // calling thread's own heap (empty when mimalloc is not the global allocator,
    // as in some test binaries) and decommits pages no live block uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
