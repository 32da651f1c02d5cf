//! run_state: the process-wide run state every worker reads once per loop turn.
//!
//! Owns: [`RunState`] and the atomic cell it lives in ([`RunStateCell`]), written by
//! the signal thread (and `Running::stop`), read by workers and `/readyz`.
//! I/O contract: none.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Accepting and serving.
    Running = 0,
    /// Stop accepting; finish live connections (until the drain timeout).
    Draining = 1,
    /// Close everything now and exit.
    Stopping = 2,
}

/// A [`RunState`] shared between threads (one `AtomicU8`).
#[derive(Debug)]
pub struct RunStateCell(AtomicU8);

impl RunStateCell {
    pub fn new(s: RunState) -> Self {
        RunStateCell(AtomicU8::new(s as u8))
    }

    pub fn load(&self) -> RunState {
        match self.0.load(Ordering::SeqCst) {
            0 => RunState::Running,
            1 => RunState::Draining,
            _ => RunState::Stopping,
        }
    }

    pub fn store(&self, s: RunState) {
        self.0.store(s as u8, Ordering::SeqCst);
    }

    /// Running → Draining; false (and no change) if it already left Running (a second
    /// signal stopped it during the drain delay).
    pub fn begin_drain(&self) -> bool {
        self.0
            .compare_exchange(
                RunState::Running as u8,
                RunState::Draining as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_state() {
        let c = RunStateCell::new(RunState::Running);
        for s in [RunState::Draining, RunState::Stopping, RunState::Running] {
            c.store(s);
            assert_eq!(c.load(), s);
        }
    }

    #[test]
    fn begin_drain_only_from_running() {
        let c = RunStateCell::new(RunState::Running);
        assert!(c.begin_drain());
        assert_eq!(c.load(), RunState::Draining);
        c.store(RunState::Stopping);
        assert!(!c.begin_drain());
        assert_eq!(c.load(), RunState::Stopping);
    }
}
