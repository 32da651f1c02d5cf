//! chain_cache: client certificate chains this listener has verified and allowed, so
//! a returning mTLS client skips the chain building, its signatures, the CRL lookups
//! and the allow-list parse on its next full handshake.
//!
//! Owns: [`ChainCache`], a bounded map from the SHA-256 of the presented chain (leaf
//! and intermediates, each length-prefixed) to the earliest `notAfter` in it, and its
//! hit/miss counters.
//!
//! What it does not skip: the client's CertificateVerify signature (the proof it
//! holds the key), which rustls checks through `verify_tls13_signature` on every
//! handshake. Only verdicts that accepted a chain are stored; refusals always take the
//! full path (and are logged with the identity as before).
//!
//! Why no policy digest in the key: one cache belongs to one verifier, which is built
//! from one policy (CA bundles, CRLs, allow-list, mode). Any reload of those files
//! builds a new verifier and with it an empty cache, so a revoked or newly denied
//! client is checked in full on its very next handshake.
//!
//! I/O contract: none; called inside rustls' `process_tls_records` on the workers,
//! under one short mutex (a hash lookup), shared by every worker of the listener.

use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Verified chains of one client-auth policy.
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    /// Chain hash → valid until (Unix seconds, exclusive): the earliest `notAfter`.
    entries: Mutex<HashMap<[u8; 32], u64>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChainCache {
    /// `capacity` chains at most; 0 turns the cache off (nothing stored or counted).
    pub fn new(capacity: usize) -> ChainCache {
        ChainCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The key of a presented chain.
    pub fn key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for der in std::iter::once(end_entity).chain(intermediates) {
            // Length-prefixed, so no two different chains hash the same bytes.
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(der);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether `key` was verified and allowed and is still within its validity at
    /// `now` (Unix seconds); counts a hit or a miss. An expired entry is dropped.
    pub fn check(&self, key: &[u8; 32], now: u64) -> bool {
        if !self.enabled() {
            return false;
        }
        let hit = {
            let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(key) {
                Some(&until) if now < until => true,
                Some(_) => {
                    map.remove(key);
                    false
                }
                None => false,
            }
        };
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Remember a chain verified and allowed at `now`, valid until `until` (its
    /// earliest `notAfter`). When full: expired entries go first, then an arbitrary
    /// one (a bound, not a policy: a busy listener's returning clients re-enter it).
    pub fn insert(&self, key: [u8; 32], now: u64, until: u64) {
        if !self.enabled() || until <= now {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, &mut u| now < u);
            if map.len() >= self.capacity {
                if let Some(victim) = map.keys().next().copied() {
                    map.remove(&victim);
                }
            }
        }
        map.insert(key, until);
    }

    /// (hits, misses) since the listener started.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Carry the counters of the cache this one replaces (a reload), so the metric
    /// stays a counter; the entries are not carried.
    pub fn adopt_counts(&self, old: &ChainCache) {
        let (h, m) = old.counts();
        self.hits.fetch_add(h, Ordering::Relaxed);
        self.misses.fetch_add(m, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The earliest `notAfter` of the chain (Unix seconds), None if a certificate does
/// not parse (then nothing is cached).
pub fn chain_not_after(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<u64> {
    std::iter::once(end_entity)
        .chain(intermediates)
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .try_fold(u64::MAX, |min, t| Some(min.min(t?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(b: &[u8]) -> CertificateDer<'static> {
        CertificateDer::from(b.to_vec())
    }

    #[test]
    fn keys_tell_chains_apart_including_the_split_point() {
        let a = ChainCache::key(&der(b"ab"), &[der(b"c")]);
        assert_eq!(a, ChainCache::key(&der(b"ab"), &[der(b"c")]));
        assert_ne!(a, ChainCache::key(&der(b"a"), &[der(b"bc")]));
        assert_ne!(a, ChainCache::key(&der(b"ab"), &[]));
        assert_ne!(a, ChainCache::key(&der(b"ab"), &[der(b"c"), der(b"")]));
    }

    #[test]
    fn hits_until_not_after_then_misses() {
        let c = ChainCache::new(8);
        let k = [1u8; 32];
        assert!(!c.check(&k, 100));
        c.insert(k, 100, 200);
        assert!(c.check(&k, 150));
        assert!(c.check(&k, 199));
        assert!(!c.check(&k, 200), "notAfter passed");
        assert!(c.is_empty(), "the expired entry is dropped");
        assert_eq!(c.counts(), (2, 2));
    }

    #[test]
    fn bounded_and_expired_entries_leave_first() {
        let c = ChainCache::new(2);
        c.insert([1; 32], 0, 10);
        c.insert([2; 32], 0, 1000);
        // Full: at time 50 the first entry has expired, so it is the one to go.
        c.insert([3; 32], 50, 1000);
        assert_eq!(c.len(), 2);
        assert!(c.check(&[2; 32], 50) && c.check(&[3; 32], 50));
        // Full of live entries: one goes, the size stays bounded.
        c.insert([4; 32], 50, 1000);
        assert_eq!(c.len(), 2);
        assert!(c.check(&[4; 32], 50));
    }

    #[test]
    fn off_stores_and_counts_nothing() {
        let c = ChainCache::new(0);
        c.insert([1; 32], 0, 10);
        assert!(!c.check(&[1; 32], 1));
        assert_eq!(c.counts(), (0, 0));
        let next = ChainCache::new(4);
        let old = ChainCache::new(4);
        old.check(&[9; 32], 0);
        next.adopt_counts(&old);
        assert_eq!(next.counts(), (0, 1));
    }
}
