//! callers: who calls each listener, a bounded inventory served at `GET /callers`.
//!
//! Owns [`CallerTable`] (one per listener, shared by its workers, kept across
//! reloads with the listener), the [`Sighting`] a worker records once per handshake
//! (completed or failed), [`LeafCache`] (a worker's memo of what a client leaf says,
//! so a returning caller's certificate is parsed once), and the JSON of `/callers`.
//!
//! A caller is the verified identity (SPIFFE ID, else the first DNS SAN, else the
//! subject CN, as `spiffe://…`, `dns:…`, `cn:…`), verified by the enforced or the
//! candidate policy; a caller without one is its source address (`addr:10.1.2.3`,
//! IPv6 by /64), told apart by the subject and issuer of the unverified certificate
//! it presented, if any. At most `[admin] callers_max` callers per listener: the
//! least recently seen is dropped first, and counted.
//!
//! Cost: one short mutex per handshake (a hash lookup, a counter, an order-index
//! update); the table's lock is never held across I/O. Measured in BENCHMARKING.md.
//!
//! I/O contract: none (the worker hands the source address; time is read here, once
//! per sighting, from the system clock, as the access log does).
#![forbid(unsafe_code)]

use rustls_pki_types::CertificateDer;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What the caller's leaf certificate says (parsed once per distinct leaf and worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// `spiffe://…`, `dns:…` or `cn:…`; None when the leaf names nobody.
    pub identity: Option<Box<str>>,
    pub subject: Box<str>,
    pub issuer: Box<str>,
    /// Unix seconds.
    pub not_after: i64,
}

impl LeafFacts {
    pub fn from_der(der: &[u8]) -> Option<LeafFacts> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
        let id = crate::tls::identity::PeerIdentity::from_der(&CertificateDer::from(der)).ok();
        let identity = id.and_then(|i| {
            i.spiffe
                .or_else(|| i.dns.first().map(|d| format!("dns:{d}")))
                .or_else(|| i.cn.map(|c| format!("cn:{c}")))
        });
        Some(LeafFacts {
            identity: identity.map(String::into_boxed_str),
            subject: cert.subject().to_string().into_boxed_str(),
            issuer: cert.issuer().to_string().into_boxed_str(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// A worker's memo of [`LeafFacts`] by leaf: a returning caller costs a hash of its
/// leaf, not a certificate parse. Emptied when full (callers are few; certificates
/// rotate).
#[derive(Debug, Default)]
pub struct LeafCache(HashMap<[u8; 32], Arc<LeafFacts>>);

const LEAF_CACHE_MAX: usize = 1024;

impl LeafCache {
    pub fn facts(&mut self, der: &[u8]) -> Option<Arc<LeafFacts>> {
        // Keyed by SHA-256: a client must not be able to present a certificate
        // whose key collides with another caller's leaf and be named after it.
        let mut k = [0u8; 32];
        k.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref());
        if let Some(f) = self.0.get(&k) {
            return Some(f.clone());
        }
        let f = Arc::new(LeafFacts::from_der(der)?);
        if self.0.len() >= LEAF_CACHE_MAX {
            self.0.clear();
        }
        self.0.insert(k, f.clone());
        Some(f)
    }
}

/// One handshake's worth of evidence about a caller.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The presented leaf (verified or not), if any.
    pub leaf: Option<Arc<LeafFacts>>,
    /// The leaf's chain was verified (by the enforced or the candidate policy).
    pub verified: bool,
    /// The client's address (used when the caller has no verified identity).
    pub addr: Option<IpAddr>,
    /// `allow`, or the handshake error's reason.
    pub enforced: &'static str,
    /// The candidate's `allow` or refusal reason (None: no candidate verdict).
    pub candidate: Option<&'static str>,
}

/// Who a caller is: the identity or address, plus what an unverified one presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    caller: Box<str>,
    /// Subject and issuer of an unverified certificate (None: verified, or none).
    presented: Option<(Box<str>, Box<str>)>,
}

#[derive(Debug, Clone)]
struct Entry {
    verified: bool,
    connections: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// Position in `Inner::order`.
    seq: u64,
    enforced: Vec<(&'static str, u64)>,
    candidate: Vec<(&'static str, u64)>,
    not_after: Option<i64>,
    subject: Option<Box<str>>,
    issuer: Option<Box<str>>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Arc<Key>, Entry>,
    /// Least recently seen first.
    order: BTreeMap<u64, Arc<Key>>,
    seq: u64,
    connections: u64,
}

/// One listener's callers.
#[derive(Debug)]
pub struct CallerTable {
    max: usize,
    since: SystemTime,
    inner: Mutex<Inner>,
    evicted: AtomicU64,
}

fn bump(counts: &mut Vec<(&'static str, u64)>, what: &'static str) {
    match counts.iter_mut().find(|(k, _)| *k == what) {
        Some((_, n)) => *n += 1,
        None => counts.push((what, 1)),
    }
}

/// `addr:10.1.2.3`, or `addr:2001:db8:1:2::/64`.
fn addr_caller(ip: Option<IpAddr>) -> String {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => format!("addr:{v4}"),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("addr:{net}/64")
        }
        None => "addr:unknown".into(),
    }
}

impl CallerTable {
    pub fn new(max: usize) -> CallerTable {
        CallerTable {
            max: max.max(1),
            since: SystemTime::now(),
            inner: Mutex::new(Inner::default()),
            evicted: AtomicU64::new(0),
        }
    }

    /// Callers dropped to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Callers in the table now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one handshake of the caller `s` describes.
    pub fn record(&self, s: &Sighting) {
        let identity = s
            .leaf
            .as_ref()
            .filter(|_| s.verified)
            .and_then(|l| l.identity.clone());
        let verified = identity.is_some();
        let key = Key {
            caller: identity.unwrap_or_else(|| addr_caller(s.addr).into_boxed_str()),
            presented: s
                .leaf
                .as_ref()
                .filter(|_| !verified)
                .map(|l| (l.subject.clone(), l.issuer.clone())),
        };
        let now = SystemTime::now();
        let mut g = self.lock();
        let Inner {
            map,
            order,
            seq,
            connections,
        } = &mut *g;
        *connections += 1;
        *seq += 1;
        let seq = *seq;
        if let Some((k, e)) = map.get_key_value(&key) {
            let (k, old) = (k.clone(), e.seq);
            order.remove(&old);
            order.insert(seq, k);
            let e = map.get_mut(&key).expect("just found");
            e.seq = seq;
            e.connections += 1;
            e.last_seen = now;
            bump(&mut e.enforced, s.enforced);
            if let Some(c) = s.candidate {
                bump(&mut e.candidate, c);
            }
            if let Some(l) = &s.leaf {
                e.not_after = Some(e.not_after.map_or(l.not_after, |n| n.min(l.not_after)));
            }
            return;
        }
        while map.len() >= self.max {
            let Some((_, oldest)) = order.pop_first() else {
                break;
            };
            map.remove(&oldest);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let key = Arc::new(key);
        order.insert(seq, key.clone());
        let mut candidate = Vec::new();
        if let Some(c) = s.candidate {
            candidate.push((c, 1));
        }
        map.insert(
            key,
            Entry {
                verified,
                connections: 1,
                first_seen: now,
                last_seen: now,
                seq,
                enforced: vec![(s.enforced, 1)],
                candidate,
                not_after: s.leaf.as_ref().map(|l| l.not_after),
                subject: s.leaf.as_ref().map(|l| l.subject.clone()),
                issuer: s.leaf.as_ref().map(|l| l.issuer.clone()),
            },
        );
    }

    /// The listener's entry of `/callers` (`candidate`: the listener has a candidate
    /// policy, so every caller carries its `candidate` counts).
    pub fn to_json(&self, candidate: bool) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let g = self.lock();
        let counts = |c: &[(&'static str, u64)]| -> Value {
            Value::Object(
                c.iter()
                    .map(|(k, n)| ((*k).to_owned(), json!(n)))
                    .collect::<Map<_, _>>(),
            )
        };
        // Most recently seen first.
        let callers: Vec<Value> = g
            .order
            .values()
            .rev()
            .filter_map(|k| g.map.get(k).map(|e| (k, e)))
            .map(|(k, e)| {
                let mut o = Map::new();
                o.insert("caller".into(), json!(k.caller));
                o.insert("verified".into(), json!(e.verified));
                o.insert("connections".into(), json!(e.connections));
                o.insert(
                    "first_seen".into(),
                    json!(crate::telemetry::log::rfc3339(e.first_seen)),
                );
                o.insert(
                    "last_seen".into(),
                    json!(crate::telemetry::log::rfc3339(e.last_seen)),
                );
                o.insert("enforced".into(), counts(&e.enforced));
                if candidate {
                    o.insert("candidate".into(), counts(&e.candidate));
                }
                o.insert(
                    "not_after".into(),
                    e.not_after.map_or(Value::Null, |t| json!(unix_rfc3339(t))),
                );
                o.insert("issuer".into(), json!(e.issuer));
                o.insert("subject".into(), json!(e.subject));
                Value::Object(o)
            })
            .collect();
        json!({
            "since": crate::telemetry::log::rfc3339(self.since),
            "connections": g.connections,
            "evicted": self.evicted(),
            "callers": callers,
        })
    }
}

/// Unix seconds as RFC 3339 (whole seconds, UTC).
pub fn unix_rfc3339(t: i64) -> String {
    let at = if t >= 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(t as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_secs(t.unsigned_abs())
    };
    let s = crate::telemetry::log::rfc3339(at);
    // `…T12:00:00.000000Z` -> `…T12:00:00Z`
    match s.find('.') {
        Some(dot) => format!("{}Z", &s[..dot]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(id: &str, subject: &str) -> Arc<LeafFacts> {
        Arc::new(LeafFacts {
            identity: Some(id.into()),
            subject: subject.into(),
            issuer: "CN=ca".into(),
            not_after: 2_000_000_000,
        })
    }

    fn seen(
        t: &CallerTable,
        leaf: Option<Arc<LeafFacts>>,
        verified: bool,
        addr: &str,
        c: &'static str,
    ) {
        t.record(&Sighting {
            leaf,
            verified,
            addr: Some(addr.parse().unwrap()),
            enforced: "allow",
            candidate: Some(c),
        });
    }

    #[test]
    fn callers_are_identities_or_addresses_and_counted_by_verdict() {
        let t = CallerTable::new(16);
        let a = leaf("spiffe://example.org/a", "CN=a");
        seen(&t, Some(a.clone()), true, "10.0.0.1", "allow");
        seen(&t, Some(a.clone()), true, "10.0.0.2", "allow");
        seen(&t, None, false, "10.0.0.1", "no_client_cert");
        seen(
            &t,
            Some(leaf("spiffe://x/y", "CN=old")),
            false,
            "10.0.0.1",
            "cert_expired",
        );
        seen(&t, None, false, "2001:db8:1:2::7", "no_client_cert");
        let j = t.to_json(true);
        assert_eq!(j["connections"], 5);
        let callers = j["callers"].as_array().unwrap();
        assert_eq!(callers.len(), 4, "{j:#}");
        let find = |c: &str, subject: Option<&str>| {
            callers
                .iter()
                .find(|e| e["caller"] == c && e["subject"].as_str() == subject)
                .unwrap_or_else(|| panic!("{c} {subject:?} in {j:#}"))
        };
        let a = find("spiffe://example.org/a", Some("CN=a"));
        assert_eq!(a["connections"], 2);
        assert_eq!(a["verified"], true);
        assert_eq!(a["candidate"]["allow"], 2);
        assert_eq!(a["not_after"], "2033-05-18T03:33:20Z");
        assert_eq!(
            find("addr:10.0.0.1", None)["candidate"]["no_client_cert"],
            1
        );
        let old = find("addr:10.0.0.1", Some("CN=old"));
        assert_eq!(old["verified"], false);
        assert_eq!(old["candidate"]["cert_expired"], 1);
        assert_eq!(old["issuer"], "CN=ca");
        find("addr:2001:db8:1:2::/64", None);
        assert!(t.to_json(false)["callers"][0].get("candidate").is_none());
    }

    #[test]
    fn the_least_recently_seen_caller_goes_first() {
        let t = CallerTable::new(3);
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            seen(&t, None, false, ip, "allow");
        }
        seen(&t, None, false, "10.0.0.1", "allow"); // 10.0.0.2 is now the oldest
        seen(&t, None, false, "10.0.0.4", "allow");
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted(), 1);
        let j = t.to_json(false);
        let names: Vec<&str> = j["callers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["caller"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["addr:10.0.0.4", "addr:10.0.0.1", "addr:10.0.0.3"]);
        assert_eq!(j["evicted"], 1);
    }

    /// The memory of a full table at the default bound, and what one sighting costs
    /// (printed; the figures in README and BENCHMARKING come from here:
    /// `cargo test --release --lib callers -- --nocapture`).
    #[test]
    fn a_full_table_stays_bounded() {
        fn rss() -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let pages: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            pages * 4096
        }
        // Distinct callers as a fleet has them: a SPIFFE ID, a subject and an issuer
        // each, the enforced and the candidate counts.
        let leaves: Vec<Arc<LeafFacts>> = (0..8192u32)
            .map(|i| {
                Arc::new(LeafFacts {
                    identity: Some(
                        format!("spiffe://example.org/ns/prod/sa/workload-{i:05}").into(),
                    ),
                    subject: format!("CN=workload-{i:05}, O=Example").into(),
                    issuer: "CN=Example Issuing CA 2026, O=Example".into(),
                    not_after: 2_000_000_000,
                })
            })
            .collect();
        const TABLES: usize = 8;
        let before = rss();
        let tables: Vec<CallerTable> = (0..TABLES).map(|_| CallerTable::new(4096)).collect();
        let start = std::time::Instant::now();
        for t in &tables {
            for (i, l) in leaves.iter().enumerate().take(4096) {
                let candidate = if i % 3 == 0 { "policy_denied" } else { "allow" };
                t.record(&Sighting {
                    leaf: Some(l.clone()),
                    verified: true,
                    addr: Some(IpAddr::from([10, 0, (i >> 8) as u8, i as u8])),
                    enforced: "allow",
                    candidate: Some(candidate),
                });
            }
        }
        let new_caller = start.elapsed() / (TABLES as u32 * 4096);
        let after = rss();
        // Full: every new caller evicts the least recently seen.
        for t in &tables {
            for l in &leaves[4096..] {
                t.record(&Sighting {
                    leaf: Some(l.clone()),
                    verified: true,
                    addr: None,
                    enforced: "allow",
                    candidate: Some("allow"),
                });
            }
        }
        // A returning caller: the common case.
        let start = std::time::Instant::now();
        for _ in 0..4 {
            for l in &leaves[4096..] {
                tables[0].record(&Sighting {
                    leaf: Some(l.clone()),
                    verified: true,
                    addr: None,
                    enforced: "allow",
                    candidate: Some("allow"),
                });
            }
        }
        let returning = start.elapsed() / (4 * 4096);
        for t in &tables {
            assert_eq!(t.len(), 4096);
            assert_eq!(t.evicted(), 4096);
        }
        let per_table = after.saturating_sub(before) / TABLES as u64;
        eprintln!(
            "callers: a full table (4096 callers) holds about {} KiB ({} bytes per caller, RSS \
             delta over {TABLES} tables); a sighting costs {returning:?} (returning caller), \
             {new_caller:?} (new caller)",
            per_table / 1024,
            per_table / 4096
        );
    }
}
