//! Per-caller limits of a listener, shared by all its workers: connections per caller,
//! requests per second per caller (a token bucket with `burst`), and full handshakes
//! per second per source address.
//!
//! A caller is its verified identity, or its source address when it has none (IPv4 as
//! is, IPv6 by /64, so one host cannot dodge a limit by walking its own prefix). The
//! state is a table of at most `max_callers` entries per listener, in 16 shards, each
//! behind its own mutex, touched once per connection open/close and once per request:
//! a lock held for a hash lookup and a few arithmetic operations. When a shard is full,
//! the least recently seen of a sample of idle entries makes room (a caller with live
//! connections is kept while an idle one exists).
//!
//! I/O contract: pure; time comes in as `now`.
#![forbid(unsafe_code)]

use super::Mode;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which limit a verdict is about; `as_str` is the `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    Requests,
    Handshakes,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections_per_caller",
            Limit::Requests => "requests_per_second_per_caller",
            Limit::Handshakes => "handshakes_per_second_per_source",
        }
    }
}

/// The outcome of one limited event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit, enforced: refuse. `retry_after` for the request rate.
    Limited {
        limit: Limit,
        retry_after: Duration,
    },
    /// Over the limit in report mode: counted and logged, let through.
    WouldLimit {
        limit: Limit,
    },
}

/// A listener's limit settings (`0`: that limit is off).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    pub max_connections_per_caller: u32,
    pub requests_per_second_per_caller: u32,
    /// Bucket size of the request rate; `0` means one second's worth.
    pub burst: u32,
    pub handshakes_per_second_per_source: u32,
    pub mode: Mode,
    /// Callers (and, separately, source addresses) tracked per listener.
    pub max_callers: usize,
}

impl Default for LimitSettings {
    fn default() -> LimitSettings {
        LimitSettings {
            max_connections_per_caller: 0,
            requests_per_second_per_caller: 0,
            burst: 0,
            handshakes_per_second_per_source: 0,
            mode: Mode::Enforce,
            max_callers: DEFAULT_MAX_CALLERS,
        }
    }
}

/// Default bound of the per-listener tables.
pub const DEFAULT_MAX_CALLERS: usize = 16_384;

impl LimitSettings {
    pub fn any(&self) -> bool {
        self.max_connections_per_caller > 0
            || self.requests_per_second_per_caller > 0
            || self.handshakes_per_second_per_source > 0
    }
}

/// Who a caller is, for limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// `spiffe://…`, `dns:…` or `cn:…`.
    Identity(Box<str>),
    /// A caller without a verified identity: its address (IPv6 masked to /64).
    Addr(IpAddr),
}

impl CallerKey {
    pub fn addr(ip: IpAddr) -> CallerKey {
        CallerKey::Addr(source_prefix(ip))
    }

    /// The caller of a connection: its verified leaf's identity (`spiffe://…`,
    /// `dns:…`, `cn:…`), else its address.
    pub fn of(
        verified_leaf: Option<&rustls_pki_types::CertificateDer<'_>>,
        addr: Option<IpAddr>,
    ) -> CallerKey {
        let named = verified_leaf
            .and_then(|der| crate::tls::identity::PeerIdentity::from_der(der).ok())
            .and_then(|p| super::gate::identity_of(&p));
        match (named, addr) {
            (Some(id), _) => CallerKey::Identity(id.into()),
            (None, Some(ip)) => CallerKey::addr(ip),
            (None, None) => CallerKey::addr(std::net::Ipv4Addr::UNSPECIFIED.into()),
        }
    }
}

impl std::fmt::Display for CallerKey {
    /// As `GET /callers` names callers: the identity, or `addr:` the address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerKey::Identity(id) => f.write_str(id),
            CallerKey::Addr(ip) => write!(f, "addr:{ip}"),
        }
    }
}

/// IPv4 as is; IPv6 masked to its /64 (an IPv4-mapped address counts as IPv4).
pub fn source_prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(size: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: size,
            at: now,
        }
    }

    /// Take one token; otherwise how long until one is there.
    fn take(&mut self, rate: f64, size: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(size);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

#[derive(Debug)]
struct Entry {
    connections: u32,
    bucket: Option<Bucket>,
    seen: Instant,
}

const SHARDS: usize = 16;
/// Idle entries looked at to find one to evict.
const EVICT_SAMPLE: usize = 32;

struct Table<K> {
    shards: Vec<Mutex<HashMap<K, Entry>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    evicted: AtomicU64,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(max: usize) -> Table<K> {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            hasher: Default::default(),
            evicted: AtomicU64::new(0),
        }
    }

    fn with<R>(&self, key: &K, now: Instant, f: impl FnOnce(&mut Entry) -> R) -> R {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.per_shard {
            // Least recently seen among a sample, idle ones first.
            let victim = map
                .iter()
                .take(EVICT_SAMPLE)
                .min_by_key(|(_, e)| (e.connections > 0, e.seen))
                .map(|(k, _)| k.clone());
            if let Some(v) = victim {
                map.remove(&v);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let e = map.entry(key.clone()).or_insert(Entry {
            connections: 0,
            bucket: None,
            seen: now,
        });
        e.seen = now;
        f(e)
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// The shared limit state of one listener (one per listener, kept across reloads while
/// the listener exists; settings are replaced on reload, the counts stay).
pub struct CallerLimits {
    callers: Table<CallerKey>,
    sources: Table<IpAddr>,
}

impl CallerLimits {
    pub fn new(max_callers: usize) -> CallerLimits {
        CallerLimits {
            callers: Table::new(max_callers),
            sources: Table::new(max_callers),
        }
    }

    fn verdict(mode: Mode, limit: Limit, retry_after: Duration) -> Verdict {
        match mode {
            Mode::Enforce => Verdict::Limited { limit, retry_after },
            Mode::Report => Verdict::WouldLimit { limit },
        }
    }

    /// A full handshake from `source` is about to start (before any private-key
    /// operation).
    pub fn handshake(&self, s: &LimitSettings, source: IpAddr, now: Instant) -> Verdict {
        let rate = s.handshakes_per_second_per_source;
        if rate == 0 {
            return Verdict::Pass;
        }
        let (rate, size) = (f64::from(rate), f64::from(rate));
        let taken = self.sources.with(&source_prefix(source), now, |e| {
            e.bucket
                .get_or_insert_with(|| Bucket::full(size, now))
                .take(rate, size, now)
        });
        match taken {
            Ok(()) => Verdict::Pass,
            Err(wait) => Self::verdict(s.mode, Limit::Handshakes, wait),
        }
    }

    /// A connection of `caller` is established. On `Pass` and `WouldLimit` the
    /// connection is counted and [`CallerLimits::close`] must follow when it ends; on
    /// `Limited` it is not counted.
    pub fn open(&self, s: &LimitSettings, caller: &CallerKey, now: Instant) -> Verdict {
        let max = s.max_connections_per_caller;
        self.callers.with(caller, now, |e| {
            if max > 0 && e.connections >= max {
                let v = Self::verdict(s.mode, Limit::Connections, Duration::ZERO);
                if matches!(v, Verdict::Limited { .. }) {
                    return v;
                }
                e.connections += 1;
                return v;
            }
            e.connections += 1;
            Verdict::Pass
        })
    }

    /// A connection counted by [`CallerLimits::open`] has ended.
    pub fn close(&self, caller: &CallerKey, now: Instant) {
        self.callers.with(caller, now, |e| {
            e.connections = e.connections.saturating_sub(1)
        });
    }

    /// A request of `caller` (HTTP listeners).
    pub fn request(&self, s: &LimitSettings, caller: &CallerKey, now: Instant) -> Verdict {
        let rate = s.requests_per_second_per_caller;
        if rate == 0 {
            return Verdict::Pass;
        }
        let size = f64::from(if s.burst == 0 { rate } else { s.burst });
        let rate = f64::from(rate);
        let taken = self.callers.with(caller, now, |e| {
            e.bucket
                .get_or_insert_with(|| Bucket::full(size, now))
                .take(rate, size, now)
        });
        match taken {
            Ok(()) => Verdict::Pass,
            Err(wait) => Self::verdict(s.mode, Limit::Requests, wait),
        }
    }

    /// Callers and sources tracked now, and entries evicted so far.
    pub fn stats(&self) -> (usize, usize, u64) {
        (
            self.callers.len(),
            self.sources.len(),
            self.callers.evicted.load(Ordering::Relaxed)
                + self.sources.evicted.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CallerKey {
        CallerKey::Identity(s.into())
    }

    #[test]
    fn connections_per_caller() {
        let s = LimitSettings {
            max_connections_per_caller: 2,
            ..Default::default()
        };
        let l = CallerLimits::new(100);
        let now = Instant::now();
        let (a, b) = (id("spiffe://ex.org/a"), id("spiffe://ex.org/b"));
        assert_eq!(l.open(&s, &a, now), Verdict::Pass);
        assert_eq!(l.open(&s, &a, now), Verdict::Pass);
        assert!(matches!(
            l.open(&s, &a, now),
            Verdict::Limited {
                limit: Limit::Connections,
                ..
            }
        ));
        assert_eq!(
            l.open(&s, &b, now),
            Verdict::Pass,
            "another caller is not limited"
        );
        l.close(&a, now);
        assert_eq!(l.open(&s, &a, now), Verdict::Pass, "a slot came free");

        let report = LimitSettings {
            mode: Mode::Report,
            ..s
        };
        assert_eq!(
            l.open(&report, &a, now),
            Verdict::WouldLimit {
                limit: Limit::Connections
            }
        );
    }

    #[test]
    fn request_rate_with_burst_and_retry_after() {
        let s = LimitSettings {
            requests_per_second_per_caller: 10,
            burst: 3,
            ..Default::default()
        };
        let l = CallerLimits::new(100);
        let t0 = Instant::now();
        let a = CallerKey::addr("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(l.request(&s, &a, t0), Verdict::Pass);
        }
        let Verdict::Limited { limit, retry_after } = l.request(&s, &a, t0) else {
            panic!("the fourth request in the same instant is over the burst");
        };
        assert_eq!(limit, Limit::Requests);
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(100));
        // 100 ms later one token is back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.request(&s, &a, t1), Verdict::Pass);
        assert!(matches!(l.request(&s, &a, t1), Verdict::Limited { .. }));
    }

    #[test]
    fn handshakes_per_source_and_ipv6_by_prefix() {
        let s = LimitSettings {
            handshakes_per_second_per_source: 2,
            ..Default::default()
        };
        let l = CallerLimits::new(100);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let a2: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let b: IpAddr = "2001:db8:1:3::10".parse().unwrap();
        assert_eq!(l.handshake(&s, a, t0), Verdict::Pass);
        assert_eq!(l.handshake(&s, a2, t0), Verdict::Pass);
        assert!(
            matches!(
                l.handshake(&s, a, t0),
                Verdict::Limited {
                    limit: Limit::Handshakes,
                    ..
                }
            ),
            "the same /64 shares one bucket"
        );
        assert_eq!(
            l.handshake(&s, b, t0),
            Verdict::Pass,
            "another /64 does not"
        );
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(source_prefix(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_tables_are_bounded_and_keep_callers_with_live_connections() {
        let s = LimitSettings {
            max_connections_per_caller: 1,
            ..Default::default()
        };
        let l = CallerLimits::new(SHARDS * 4);
        let t0 = Instant::now();
        let busy = id("spiffe://ex.org/busy");
        assert_eq!(l.open(&s, &busy, t0), Verdict::Pass);
        for i in 0..10_000u32 {
            let k = CallerKey::addr(IpAddr::from(i.to_be_bytes()));
            let t = t0 + Duration::from_micros(u64::from(i) + 1);
            assert_eq!(l.open(&s, &k, t), Verdict::Pass);
            l.close(&k, t);
        }
        let (callers, _, evicted) = l.stats();
        assert!(callers <= SHARDS * 4, "{callers}");
        assert!(evicted >= 10_000 - SHARDS as u64 * 4, "{evicted}");
        assert!(
            matches!(l.open(&s, &busy, t0), Verdict::Limited { .. }),
            "the caller with a live connection kept its count"
        );
    }
}
