//! timer: a coarse hashed timing wheel for handshake, connect and idle deadlines.
//!
//! Entries are hints: the owner re-checks its real deadline when an entry fires and
//! reschedules if it moved. So activity on a connection costs no timer operation;
//! only phase changes schedule. No clock is read here: `now` comes in.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

pub struct Wheel<K> {
    start: Instant,
    tick: Duration,
    buckets: Vec<Vec<K>>,
    /// Index of the next tick to expire.
    cursor: u64,
}

impl<K: Copy> Wheel<K> {
    pub fn new(now: Instant, tick: Duration, buckets: usize) -> Self {
        Wheel {
            start: now,
            tick,
            buckets: (0..buckets).map(|_| Vec::new()).collect(),
            cursor: 0,
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.start);
        (d.as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Schedule `key` to fire at or shortly after `deadline`. Deadlines beyond the
    /// wheel's span fire early and are expected to be rescheduled by the owner.
    pub fn schedule(&mut self, deadline: Instant, key: K) {
        let n = self.buckets.len() as u64;
        // Round up so an entry never fires before its deadline's tick has fully passed.
        let t = (self.tick_of(deadline) + 1)
            .max(self.cursor)
            .min(self.cursor + n - 1);
        self.buckets[(t % n) as usize].push(key);
    }

    /// Move every entry whose tick has passed into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<K>) {
        let now_tick = self.tick_of(now);
        let n = self.buckets.len() as u64;
        let mut steps = 0;
        while self.cursor <= now_tick && steps < n {
            out.append(&mut self.buckets[(self.cursor % n) as usize]);
            self.cursor += 1;
            steps += 1;
        }
        // After a long stall everything due has been collected; jump ahead.
        if self.cursor <= now_tick {
            self.cursor = now_tick + 1;
        }
    }

    /// Give back what the buckets grew to at a peak (`expire` empties a bucket but
    /// keeps its capacity, so a burst's size stayed for good); for an idle owner.
    pub fn shrink(&mut self) {
        for b in &mut self.buckets {
            b.shrink_to_fit();
        }
    }

    pub fn tick(&self) -> Duration {
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_after_deadline_not_before() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 64);
        w.schedule(t0 + Duration::from_millis(35), 1u32);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(30), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn far_deadlines_fire_early_for_rescheduling() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 8);
        w.schedule(t0 + Duration::from_secs(10), 7u32);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(100), &mut out);
        assert_eq!(out, vec![7]);
    }

    #[test]
    fn shrink_gives_back_what_a_burst_grew_and_keeps_pending_entries() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 8);
        for k in 0..1000u32 {
            w.schedule(t0 + Duration::from_millis(15), k);
        }
        w.schedule(t0 + Duration::from_millis(45), 5000);
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(30), &mut out);
        assert_eq!(out.len(), 1000);
        assert!(w.buckets.iter().map(Vec::capacity).sum::<usize>() >= 1000);
        w.shrink();
        assert_eq!(w.buckets.iter().map(Vec::capacity).sum::<usize>(), 1);
        out.clear();
        w.expire(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(out, vec![5000]);
    }

    #[test]
    fn long_stall_collects_everything_once() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, Duration::from_millis(10), 8);
        for k in 0..5u32 {
            w.schedule(t0 + Duration::from_millis(10 * k as u64), k);
        }
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(60), &mut out);
        out.sort();
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        out.clear();
        w.expire(t0 + Duration::from_secs(61), &mut out);
        assert!(out.is_empty());
    }
}
