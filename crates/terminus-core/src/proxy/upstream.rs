//! upstream: a listener's upstream set, the order a connection tries it in, and
//! passive health.
//!
//! Owns: [`UpstreamSet`] (the entries as written, each with its last good addresses,
//! and the current [`Resolved`] set behind an `ArcSwap`), [`Dial`] (one connection's
//! failover walk over the snapshot it loaded when it began), [`AddrHealth`] (per
//! address: down until when, after how many failures in a row).
//!
//! Round robin per worker (no shared counter, so no cross-core traffic); a refused
//! or timed-out connect moves on to the next address, each tried at most once. An
//! address whose connect failed is skipped for a backoff period (exponential,
//! [`HealthPolicy`]) by every worker: its [`AddrHealth`] is shared, written only on
//! transitions (down, up again), so a healthy path only reads it. Addresses in backoff
//! are not skipped when nothing else is left: they are tried last, in order.
//!
//! I/O contract: none. Time comes in as `now`; names are resolved by the caller's
//! lookup function ([`UpstreamSet::refresh`], run by `runtime::resolver`).
#![forbid(unsafe_code)]

use crate::host::endpoint::Endpoint;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an address whose connect failed is skipped: `first` after one failure,
/// doubling with each further failure in a row (once it is tried again), up to
/// `max`. `first == 0` turns passive health off (no address is ever skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl HealthPolicy {
    pub const OFF: HealthPolicy = HealthPolicy {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The backoff after `strikes` failures in a row (1 = the first).
    pub fn backoff(&self, strikes: u32) -> Duration {
        let doublings = strikes.saturating_sub(1).min(31);
        self.first
            .saturating_mul(1u32 << doublings)
            .min(self.max.max(self.first))
    }

    pub fn is_off(&self) -> bool {
        self.first.is_zero()
    }
}

/// One upstream address's passive health, shared by every worker of the process.
/// `down_until_ms` is milliseconds since `epoch` plus one (0: up), so one atomic says
/// whether the address is skipped.
#[derive(Debug)]
pub struct AddrHealth {
    epoch: Instant,
    down_until_ms: AtomicU64,
    /// Failed connects in a row (reset by a successful one).
    strikes: AtomicU32,
}

impl AddrHealth {
    pub fn new(epoch: Instant) -> AddrHealth {
        AddrHealth {
            epoch,
            down_until_ms: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Not in backoff at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.ms(now) >= until
    }

    /// A connect to the address was refused or timed out at `now`. Returns the
    /// backoff when this failure started one; `None` when the address was in backoff
    /// already (another worker's connection failed first) or health is off.
    pub fn failed(&self, now: Instant, policy: HealthPolicy) -> Option<Duration> {
        if policy.is_off() {
            return None;
        }
        let cur = self.down_until_ms.load(Ordering::Relaxed);
        let now_ms = self.ms(now);
        if cur != 0 && now_ms < cur {
            return None;
        }
        let strikes = self.strikes.load(Ordering::Relaxed).saturating_add(1);
        let off = policy.backoff(strikes);
        let until = now_ms + off.as_millis() as u64;
        // One failure per period moves the backoff on, however many workers fail.
        self.down_until_ms
            .compare_exchange(cur, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        self.strikes.store(strikes, Ordering::Relaxed);
        Some(off)
    }

    /// A connect succeeded: the address is up, its backoff starts over. Writes only
    /// when something changes (a healthy path never dirties the cache line).
    pub fn connected(&self) {
        if self.strikes.load(Ordering::Relaxed) != 0
            || self.down_until_ms.load(Ordering::Relaxed) != 0
        {
            self.down_until_ms.store(0, Ordering::Relaxed);
            self.strikes.store(0, Ordering::Relaxed);
        }
    }
}

/// One resolved address and its health.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub health: Arc<AddrHealth>,
}

/// The addresses new connections walk (every entry's, deduplicated, in entry
/// order), and the health policy they are judged by. Never empty.
#[derive(Debug)]
pub struct Resolved {
    pub upstreams: Vec<Upstream>,
    pub policy: HealthPolicy,
}

/// One `upstreams` entry: as written, its last good addresses and its resolution
/// errors.
#[derive(Debug)]
struct Entry {
    endpoint: Endpoint,
    addrs: Mutex<Vec<SocketAddr>>,
    /// Failed resolutions (`terminus_upstream_resolve_errors_total`).
    errors: AtomicU64,
    /// The last resolution failed (one log line per failure streak).
    failing: AtomicBool,
}

/// How [`UpstreamSet::refresh`] resolves `(host, port)`: every address, or why not.
pub type LookupFn<'a> = dyn FnMut(&str, u16) -> Result<Vec<SocketAddr>, String> + 'a;

/// What a [`UpstreamSet::refresh`] saw, for the caller to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshEvent {
    /// The first failure of a streak: the entry keeps its last good addresses.
    Failed {
        entry: String,
        why: String,
        kept: Vec<SocketAddr>,
    },
    /// The entry resolves again after a failure streak.
    Recovered { entry: String },
    /// The set new connections use changed.
    Changed { addrs: Vec<SocketAddr> },
}

/// A listener's upstreams: the entries (literal addresses and names), and the
/// current resolved set new connections load once each ([`Dial::begin`]).
#[derive(Debug)]
pub struct UpstreamSet {
    entries: Vec<Entry>,
    current: ArcSwap<Resolved>,
    policy: HealthPolicy,
    /// `resolve_interval_ms`: how often `runtime::resolver` refreshes the names.
    pub resolve_interval: Duration,
    epoch: Instant,
}

impl UpstreamSet {
    /// `entries`: each entry with the addresses it resolved to (config load).
    /// `epoch`: the instant health times count from (any fixed one).
    pub fn new(
        entries: Vec<(Endpoint, Vec<SocketAddr>)>,
        policy: HealthPolicy,
        resolve_interval: Duration,
        epoch: Instant,
    ) -> Self {
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|(endpoint, addrs)| Entry {
                endpoint,
                addrs: Mutex::new(addrs),
                errors: AtomicU64::new(0),
                failing: AtomicBool::new(false),
            })
            .collect();
        let set = UpstreamSet {
            current: ArcSwap::from_pointee(Resolved {
                upstreams: Vec::new(),
                policy,
            }),
            entries,
            policy,
            resolve_interval,
            epoch,
        };
        let upstreams = set.collect(&[]);
        assert!(
            !upstreams.is_empty(),
            "config loading guarantees one upstream address"
        );
        set.current.store(Arc::new(Resolved { upstreams, policy }));
        set
    }

    /// Literal addresses only (tests, tools).
    pub fn from_addrs(addrs: Vec<SocketAddr>, policy: HealthPolicy, epoch: Instant) -> Self {
        let entries = addrs
            .into_iter()
            .map(|a| (Endpoint::Addr(a), vec![a]))
            .collect();
        UpstreamSet::new(entries, policy, Duration::from_secs(5), epoch)
    }

    /// Every entry's addresses, deduplicated in entry order, keeping the health of
    /// addresses already in `keep`.
    fn collect(&self, keep: &[Upstream]) -> Vec<Upstream> {
        let mut out: Vec<Upstream> = Vec::new();
        for e in &self.entries {
            for &addr in e.addrs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if out.iter().any(|u| u.addr == addr) {
                    continue;
                }
                let health = keep
                    .iter()
                    .find(|u| u.addr == addr)
                    .map(|u| u.health.clone())
                    .unwrap_or_else(|| Arc::new(AddrHealth::new(self.epoch)));
                out.push(Upstream { addr, health });
            }
        }
        out
    }

    /// The set new connections use now.
    pub fn snapshot(&self) -> Arc<Resolved> {
        self.current.load_full()
    }

    /// The current addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.current
            .load()
            .upstreams
            .iter()
            .map(|u| u.addr)
            .collect()
    }

    /// The current addresses and whether each is up (not in backoff) at `now`.
    pub fn up(&self, now: Instant) -> Vec<(SocketAddr, bool)> {
        let cur = self.current.load();
        cur.upstreams
            .iter()
            .map(|u| (u.addr, u.health.is_up(now)))
            .collect()
    }

    /// Resolution errors per named entry (as written), literal addresses left out.
    pub fn resolve_errors(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter(|e| matches!(e.endpoint, Endpoint::Name { .. }))
            .map(|e| (e.endpoint.to_string(), e.errors.load(Ordering::Relaxed)))
            .collect()
    }

    /// Whether any entry is a name (something to re-resolve).
    pub fn has_names(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.endpoint, Endpoint::Name { .. }))
    }

    pub fn len(&self) -> usize {
        self.current.load().upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolve every named entry again with `lookup(host, port)`. A failure (or no
    /// address) keeps the entry's last good addresses and counts an error; the set
    /// new connections load is replaced only when its addresses changed, and
    /// addresses that stay keep their health. Returns what to log.
    pub fn refresh(&self, lookup: &mut LookupFn<'_>) -> Vec<RefreshEvent> {
        let mut events = Vec::new();
        for e in &self.entries {
            let Endpoint::Name { host, port } = &e.endpoint else {
                continue;
            };
            let result = lookup(host, *port).and_then(|addrs| {
                if addrs.is_empty() {
                    Err("no address".to_owned())
                } else {
                    Ok(addrs)
                }
            });
            let mut kept = e.addrs.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(addrs) => {
                    *kept = addrs;
                    if e.failing.swap(false, Ordering::Relaxed) {
                        events.push(RefreshEvent::Recovered {
                            entry: e.endpoint.to_string(),
                        });
                    }
                }
                Err(why) => {
                    e.errors.fetch_add(1, Ordering::Relaxed);
                    if !e.failing.swap(true, Ordering::Relaxed) {
                        events.push(RefreshEvent::Failed {
                            entry: e.endpoint.to_string(),
                            why,
                            kept: kept.clone(),
                        });
                    }
                }
            }
        }
        let old = self.current.load_full();
        let upstreams = self.collect(&old.upstreams);
        let same = upstreams.len() == old.upstreams.len()
            && upstreams
                .iter()
                .zip(&old.upstreams)
                .all(|(a, b)| a.addr == b.addr);
        if !same && !upstreams.is_empty() {
            events.push(RefreshEvent::Changed {
                addrs: upstreams.iter().map(|u| u.addr).collect(),
            });
            self.current.store(Arc::new(Resolved {
                upstreams,
                policy: self.policy,
            }));
        }
        events
    }

    /// This set replaces `old` (a reload): addresses that stay keep their health,
    /// entries written the same keep their error count and failure streak, and with
    /// `keep_addresses` (a reload of files only, whose config was resolved earlier)
    /// also their addresses.
    pub fn adopt(&self, old: &UpstreamSet, keep_addresses: bool) {
        for e in &self.entries {
            let Some(o) = old.entries.iter().find(|o| o.endpoint == e.endpoint) else {
                continue;
            };
            e.errors
                .store(o.errors.load(Ordering::Relaxed), Ordering::Relaxed);
            e.failing
                .store(o.failing.load(Ordering::Relaxed), Ordering::Relaxed);
            if keep_addresses {
                let addrs = o.addrs.lock().unwrap_or_else(|p| p.into_inner()).clone();
                *e.addrs.lock().unwrap_or_else(|p| p.into_inner()) = addrs;
            }
        }
        let upstreams = self.collect(&old.current.load().upstreams);
        self.current.store(Arc::new(Resolved {
            upstreams,
            policy: self.policy,
        }));
    }
}

/// One connection's upstream: the failover walk over the set it loaded when the
/// client handshake completed, and the address being connected to (or connected)
/// with when that attempt started.
///
/// The walk starts at the worker's round-robin cursor and visits every address
/// once: first those up (not in backoff) when the walk reaches them, then, when
/// those are used up, the ones it skipped, in the same order.
#[derive(Debug, Default)]
pub struct Dial {
    set: Option<Arc<Resolved>>,
    first: usize,
    /// Positions the first pass has looked at.
    looked: usize,
    /// Indexes the first pass skipped (in backoff), and how many of them were
    /// handed out since.
    skipped: Vec<usize>,
    skipped_used: usize,
    /// [`Dial::again`]: hand out the current address once more.
    repeat: bool,
    current: Option<(usize, Instant)>,
}

impl Dial {
    /// The client handshake is done: load the set once and start the walk at the
    /// worker's cursor (and advance it).
    pub fn begin(&mut self, set: &UpstreamSet, cursor: &mut usize) {
        let snap = set.snapshot();
        self.first = *cursor % snap.upstreams.len().max(1);
        *cursor = cursor.wrapping_add(1);
        self.set = Some(snap);
        self.looked = 0;
        self.skipped.clear();
        self.skipped_used = 0;
        self.repeat = false;
        self.current = None;
    }

    /// The next address to try at `now` (a refused or timed-out connect moves on),
    /// or None once every address was tried.
    pub fn next(&mut self, now: Instant) -> Option<SocketAddr> {
        let set = self.set.as_ref()?;
        let n = set.upstreams.len();
        if self.repeat {
            self.repeat = false;
            if let Some((i, _)) = self.current {
                return Some(set.upstreams[i].addr);
            }
        }
        while self.looked < n {
            let i = (self.first + self.looked) % n;
            self.looked += 1;
            if set.upstreams[i].health.is_up(now) {
                self.current = Some((i, now));
                return Some(set.upstreams[i].addr);
            }
            self.skipped.push(i);
        }
        // Nothing up is left: the skipped ones, in order, rather than none.
        let i = *self.skipped.get(self.skipped_used)?;
        self.skipped_used += 1;
        self.current = Some((i, now));
        Some(set.upstreams[i].addr)
    }

    /// A connect to the address [`Dial::next`] returned is now in flight.
    pub fn started(&mut self, addr: SocketAddr, now: Instant) {
        debug_assert_eq!(self.addr(), Some(addr));
        if let Some(c) = &mut self.current {
            c.1 = now;
        }
    }

    /// Try the current address once more next (after it refused TLS resumption).
    pub fn again(&mut self) {
        self.repeat = true;
    }

    /// The connect to the current address was refused or timed out: every worker
    /// skips it for a while. Returns the backoff when this failure started one.
    pub fn failed(&self, now: Instant) -> Option<Duration> {
        let (set, (i, _)) = self.set.as_ref().zip(self.current)?;
        set.upstreams[i].health.failed(now, set.policy)
    }

    /// The connect to the current address succeeded.
    pub fn connected(&self) {
        if let Some((set, (i, _))) = self.set.as_ref().zip(self.current) {
            set.upstreams[i].health.connected();
        }
    }

    /// The address last connected to (or being connected to).
    pub fn addr(&self) -> Option<SocketAddr> {
        let (set, (i, _)) = self.set.as_ref().zip(self.current)?;
        Some(set.upstreams[i].addr)
    }

    /// How long the current attempt took, when it completes at `now`.
    pub fn elapsed(&self, now: Instant) -> Option<Duration> {
        self.current.map(|c| now - c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const HEALTH: HealthPolicy = HealthPolicy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    /// Every address of one walk, in order.
    fn walk(d: &mut Dial, now: Instant) -> Vec<SocketAddr> {
        std::iter::from_fn(|| d.next(now)).collect()
    }

    #[test]
    fn round_robin_then_failover_over_each_address_once() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let t = Instant::now();
        let set = UpstreamSet::from_addrs(vec![a, b, c], HEALTH, t);
        let mut cursor = 0;
        let (mut w1, mut w2) = (Dial::default(), Dial::default());
        w1.begin(&set, &mut cursor);
        w2.begin(&set, &mut cursor);
        assert_eq!(w1.next(t), Some(a));
        assert_eq!(w2.next(t), Some(b));
        assert_eq!(w2.next(t), Some(c));
        assert_eq!(w2.next(t), Some(a));
        assert_eq!(w2.next(t), None);
        w1.again();
        assert_eq!(w1.next(t), Some(a), "the same address once more");
        assert_eq!(w1.next(t), Some(b));
        assert_eq!(w1.addr(), Some(b));
    }

    #[test]
    fn backoff_doubles_from_first_to_max_and_zero_turns_it_off() {
        assert_eq!(HEALTH.backoff(1), Duration::from_secs(1));
        assert_eq!(HEALTH.backoff(2), Duration::from_secs(2));
        assert_eq!(HEALTH.backoff(5), Duration::from_secs(16));
        assert_eq!(HEALTH.backoff(6), Duration::from_secs(30));
        assert_eq!(HEALTH.backoff(1000), Duration::from_secs(30));
        let t0 = Instant::now();
        let h = AddrHealth::new(t0);
        assert!(h.failed(t0, HealthPolicy::OFF).is_none());
        assert!(h.is_up(t0), "off: never skipped");
        // Down for 1 s; a second worker's failure in that period changes nothing.
        assert_eq!(h.failed(t0, HEALTH), Some(Duration::from_secs(1)));
        assert!(!h.is_up(t0 + Duration::from_millis(999)));
        assert_eq!(h.failed(t0 + Duration::from_millis(500), HEALTH), None);
        let t1 = t0 + Duration::from_secs(1);
        assert!(h.is_up(t1), "retried by real traffic after the backoff");
        assert_eq!(h.failed(t1, HEALTH), Some(Duration::from_secs(2)));
        let mut t = t1 + Duration::from_secs(2);
        for _ in 0..10 {
            t += h.failed(t, HEALTH).unwrap();
        }
        assert_eq!(h.failed(t, HEALTH), Some(Duration::from_secs(30)));
        h.connected();
        assert!(h.is_up(t));
        assert_eq!(
            h.failed(t, HEALTH),
            Some(Duration::from_secs(1)),
            "starts over"
        );
    }

    #[test]
    fn an_address_in_backoff_is_skipped_by_every_walk_until_it_ends() {
        let (dead, live) = (addr(1), addr(2));
        let t0 = Instant::now();
        let set = UpstreamSet::from_addrs(vec![dead, live], HEALTH, t0);
        let mut cursor = 0;
        let mut d = Dial::default();
        d.begin(&set, &mut cursor);
        assert_eq!(d.next(t0), Some(dead));
        assert_eq!(d.failed(t0), Some(Duration::from_secs(1)));
        assert_eq!(d.next(t0), Some(live));
        d.connected();
        // Every walk, whatever its start, goes to the live one first...
        for _ in 0..4 {
            let mut d = Dial::default();
            d.begin(&set, &mut cursor);
            assert_eq!(d.next(t0 + Duration::from_millis(10)), Some(live));
        }
        assert_eq!(set.up(t0), [(dead, false), (live, true)]);
        // ...until the backoff ends.
        let t1 = t0 + Duration::from_secs(1);
        let mut d = Dial::default();
        cursor = 0;
        d.begin(&set, &mut cursor);
        assert_eq!(d.next(t1), Some(dead));
        assert_eq!(set.up(t1), [(dead, true), (live, true)]);
    }

    #[test]
    fn the_last_one_left_is_tried_even_in_backoff() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let t = Instant::now();
        let set = UpstreamSet::from_addrs(vec![a, b, c], HEALTH, t);
        let snap = set.snapshot();
        snap.upstreams[0].health.failed(t, HEALTH);
        snap.upstreams[2].health.failed(t, HEALTH);
        let mut cursor = 0;
        let mut d = Dial::default();
        d.begin(&set, &mut cursor);
        assert_eq!(
            walk(&mut d, t),
            [b, a, c],
            "up first, then the skipped in order"
        );
        snap.upstreams[1].health.failed(t, HEALTH);
        let mut d = Dial::default();
        cursor = 1;
        d.begin(&set, &mut cursor);
        assert_eq!(walk(&mut d, t), [b, c, a], "all down: all tried, in order");
        let single = UpstreamSet::from_addrs(vec![a], HEALTH, t);
        single.snapshot().upstreams[0].health.failed(t, HEALTH);
        let mut d = Dial::default();
        d.begin(&single, &mut cursor);
        assert_eq!(walk(&mut d, t), [a]);
    }

    #[test]
    fn refresh_keeps_the_last_good_set_and_the_health_of_addresses_that_stay() {
        let t = Instant::now();
        let name = Endpoint::Name {
            host: "svc.test".into(),
            port: 80,
        };
        let lit = addr(9);
        let set = UpstreamSet::new(
            vec![
                (name.clone(), vec![addr(1), addr(2)]),
                (Endpoint::Addr(lit), vec![lit]),
            ],
            HEALTH,
            Duration::from_secs(5),
            t,
        );
        let mut cursor = 0;
        let mut live_conn = Dial::default();
        live_conn.begin(&set, &mut cursor);
        set.snapshot().upstreams[1].health.failed(t, HEALTH);
        let ev = set.refresh(&mut |h, p| {
            assert_eq!((h, p), ("svc.test", 80));
            Ok(vec![addr(2), addr(3), addr(2), lit])
        });
        assert_eq!(
            ev,
            [RefreshEvent::Changed {
                addrs: vec![addr(2), addr(3), lit]
            }]
        );
        assert_eq!(set.up(t), [(addr(2), false), (addr(3), true), (lit, true)]);
        // A connection that began before keeps its set.
        assert_eq!(walk(&mut live_conn, t), [addr(1), lit, addr(2)]);
        // Failures: counted every time, reported once per streak, set kept.
        for _ in 0..3 {
            let ev = set.refresh(&mut |_, _| Err("boom".into()));
            assert!(ev.len() <= 1, "{ev:?}");
        }
        assert_eq!(set.resolve_errors(), [("svc.test:80".to_string(), 3)]);
        assert_eq!(set.addrs(), [addr(2), addr(3), lit]);
        let ev = set.refresh(&mut |_, _| Ok(vec![]));
        assert!(ev.is_empty(), "no address is a failure too: {ev:?}");
        let ev = set.refresh(&mut |_, _| Ok(vec![addr(3)]));
        assert_eq!(
            ev,
            [
                RefreshEvent::Recovered {
                    entry: "svc.test:80".into()
                },
                RefreshEvent::Changed {
                    addrs: vec![addr(3), lit]
                }
            ]
        );
        // A reload keeps health and counters of what stays.
        let new = UpstreamSet::new(
            vec![(name, vec![addr(2)])],
            HEALTH,
            Duration::from_secs(5),
            t,
        );
        let old = UpstreamSet::new(
            vec![(Endpoint::Addr(addr(2)), vec![addr(2)])],
            HEALTH,
            Duration::from_secs(5),
            t,
        );
        old.snapshot().upstreams[0].health.failed(t, HEALTH);
        new.adopt(&old, false);
        assert_eq!(new.up(t), [(addr(2), false)]);
        new.adopt(&set, true);
        assert_eq!(new.addrs(), [addr(3)]);
        assert_eq!(new.resolve_errors(), [("svc.test:80".to_string(), 4)]);
    }
}
