//! upstream: a listener's upstream set and the order a connection tries it in.
//!
//! Round robin per worker (no shared counter, so no cross-core traffic); a refused
//! or timed-out connect moves on to the next address, each tried at most once.
//!
//! [`ResumeBackoff`]: per upstream address, whether terminus may offer it a TLS
//! session to resume (re-encryption), and for how long it stops after the upstream
//! refused one.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct UpstreamSet {
    addrs: Vec<SocketAddr>,
}

/// One connection's walk over the set: starts at the round-robin cursor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attempts {
    first: usize,
    tried: usize,
}

impl UpstreamSet {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        assert!(
            !addrs.is_empty(),
            "config validation guarantees one upstream"
        );
        UpstreamSet { addrs }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Start a walk at the worker's round-robin cursor (and advance it).
    pub fn begin(&self, cursor: &mut usize) -> Attempts {
        let first = *cursor % self.addrs.len();
        *cursor = cursor.wrapping_add(1);
        Attempts { first, tried: 0 }
    }

    /// The next address to try, or None once every address was tried.
    pub fn next(&self, a: &mut Attempts) -> Option<SocketAddr> {
        if a.tried >= self.addrs.len() {
            return None;
        }
        let addr = self.addrs[(a.first + a.tried) % self.addrs.len()];
        a.tried += 1;
        Some(addr)
    }

    /// Make the address [`UpstreamSet::next`] returned last the next one again (a
    /// reconnect to the same upstream, e.g. after it refused TLS session resumption).
    pub fn again(&self, a: &mut Attempts) {
        a.tried = a.tried.saturating_sub(1);
    }
}

/// One connection's upstream: the failover walk over its listener's set, and the
/// address being connected to (or connected) with when that attempt started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dial {
    attempts: Attempts,
    current: Option<(SocketAddr, Instant)>,
}

impl Dial {
    /// The client handshake is done: start the walk at the worker's cursor.
    pub fn begin(&mut self, set: &UpstreamSet, cursor: &mut usize) {
        self.attempts = set.begin(cursor);
    }

    /// The next address to try (a refused or timed-out connect moves on), or None
    /// once every address was tried.
    pub fn next(&mut self, set: &UpstreamSet) -> Option<SocketAddr> {
        set.next(&mut self.attempts)
    }

    /// A connect to `addr` is now in flight.
    pub fn started(&mut self, addr: SocketAddr, now: Instant) {
        self.current = Some((addr, now));
    }

    /// Try the current address once more next (after it refused TLS resumption).
    pub fn again(&mut self, set: &UpstreamSet) {
        set.again(&mut self.attempts);
    }

    /// The address last connected to (or being connected to).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.current.map(|c| c.0)
    }

    /// How long the current attempt took, when it completes at `now`.
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.current.map(|c| now - c.1)
    }
}

/// How long resumption towards an upstream stays off after its first refusal; each
/// further refusal (once resumption was offered again) doubles it, up to
/// [`RESUME_OFF_MAX`]. A resumed handshake resets it.
pub const RESUME_OFF_FIRST: Duration = Duration::from_secs(10);
pub const RESUME_OFF_MAX: Duration = Duration::from_secs(3600);

/// Resumption towards one upstream address: on, or off until a time after it was
/// refused (a handshake offering a session failed). Exponential backoff, like a
/// circuit breaker: after the off period one connection offers a session again.
#[derive(Debug, Clone, Default)]
pub struct ResumeBackoff {
    off_until: Option<Instant>,
    /// Refusals since the last resumed handshake.
    strikes: u32,
}

impl ResumeBackoff {
    /// Whether a session may be offered (and new ones kept) now.
    pub fn allows(&self, now: Instant) -> bool {
        !matches!(self.off_until, Some(t) if now < t)
    }

    /// The upstream refused a session. Returns how long resumption is now off when
    /// this refusal turned it off, `None` when it was off already (other connections
    /// that took a session before the first refusal was seen): one report per off
    /// period, not one per connection.
    pub fn refused(&mut self, now: Instant) -> Option<Duration> {
        if !self.allows(now) {
            return None;
        }
        let off = RESUME_OFF_FIRST
            .saturating_mul(1u32 << self.strikes.min(16))
            .min(RESUME_OFF_MAX);
        self.strikes = self.strikes.saturating_add(1);
        self.off_until = Some(now + off);
        Some(off)
    }

    /// A handshake resumed: the upstream supports resumption (again).
    pub fn resumed(&mut self) {
        self.strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_then_failover_over_each_address_once() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let set = UpstreamSet::new(vec![a, b, c]);
        let mut cursor = 0;
        let mut w1 = set.begin(&mut cursor);
        let mut w2 = set.begin(&mut cursor);
        assert_eq!(set.next(&mut w1), Some(a));
        assert_eq!(set.next(&mut w2), Some(b));
        assert_eq!(set.next(&mut w2), Some(c));
        assert_eq!(set.next(&mut w2), Some(a));
        assert_eq!(set.next(&mut w2), None);
        set.again(&mut w2);
        assert_eq!(set.next(&mut w2), Some(a));
        set.again(&mut w1);
        assert_eq!(set.next(&mut w1), Some(a), "the same address once more");
        assert_eq!(set.next(&mut w1), Some(b));
    }

    #[test]
    fn resumption_backs_off_exponentially_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = ResumeBackoff::default();
        assert!(b.allows(t0));
        assert_eq!(b.refused(t0), Some(RESUME_OFF_FIRST));
        assert!(!b.allows(t0));
        // Connections that took a session before the refusal: no new period.
        assert_eq!(b.refused(t0 + Duration::from_secs(1)), None);
        let t1 = t0 + RESUME_OFF_FIRST;
        assert!(b.allows(t1));
        assert_eq!(b.refused(t1), Some(RESUME_OFF_FIRST * 2));
        let t2 = t1 + RESUME_OFF_FIRST * 2;
        assert_eq!(b.refused(t2), Some(RESUME_OFF_FIRST * 4));
        let mut t = t2 + RESUME_OFF_FIRST * 4;
        for _ in 0..20 {
            let off = b.refused(t).unwrap();
            assert!(off <= RESUME_OFF_MAX);
            t += off;
        }
        assert_eq!(b.refused(t), Some(RESUME_OFF_MAX));
        b.resumed();
        let t = t + RESUME_OFF_MAX;
        assert_eq!(b.refused(t), Some(RESUME_OFF_FIRST));
    }
}
