//! upstream: a listener's upstream set and the order a connection tries it in.
//!
//! Round robin per worker (no shared counter, so no cross-core traffic); a refused
//! or timed-out connect moves on to the next address, each tried at most once.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

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
    }
}
