//! metrics: per-worker counters and latency histograms, and their Prometheus text.
//!
//! Each worker owns plain (non-atomic) [`ListenerMetrics`] per listener and, when the
//! admin endpoint is on, sends a clone of them as a [`WorkerSnapshot`] through a
//! crossbeam channel at most every `snapshot_interval_ms` (and only when something
//! changed). The admin side keeps the latest snapshot of each worker and renders a
//! scrape from those alone: a scrape never touches, locks or wakes a worker, and a
//! dropped snapshot is harmless because snapshots are cumulative.
//!
//! Histograms are hdrhistograms in microseconds (2 significant digits, 1 µs .. 1 h),
//! exported as Prometheus histograms with fixed buckets from 10 µs to 10 s.
//!
//! The page is one table, [`FAMILIES`]: name, type, help and where each family's
//! samples come from; adding a metric is adding a row.
#![forbid(unsafe_code)]

pub use crate::host::proc::Process;
use crate::proxy::conn::HandshakeFailure;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// Bucket upper bounds in seconds: tens of microseconds (resumed handshakes, connects
/// on loopback) up to seconds (handshake timeouts).
pub const BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const MAX_US: u64 = 3_600_000_000;

/// A latency distribution: hdrhistogram plus the exact sum Prometheus wants.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
    sum_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_US, 2).expect("static bounds are valid"),
            sum_us: 0,
        }
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_US);
        self.hist.saturating_record(us);
        self.sum_us += us;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.hist.add(&other.hist);
        self.sum_us += other.sum_us;
    }

    /// Cumulative counts per [`BUCKETS_S`] bound (Prometheus `le` semantics).
    pub fn cumulative_buckets(&self) -> [u64; BUCKETS_S.len()] {
        let mut per = [0u64; BUCKETS_S.len()];
        for v in self.hist.iter_recorded() {
            let us = self.hist.median_equivalent(v.value_iterated_to()) as f64;
            if let Some(i) = BUCKETS_S.iter().position(|b| us <= b * 1e6) {
                per[i] += v.count_at_value();
            }
        }
        let mut acc = 0;
        for c in per.iter_mut() {
            acc += *c;
            *c = acc;
        }
        per
    }
}

/// One worker's counters for one listener. Touched once per connection event, never
/// per byte (bytes are folded in when a connection is flushed).
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    pub connections: u64,
    /// Successful handshakes by `resumed * 2 + verified_client`.
    pub handshakes_ok: [u64; 4],
    pub handshake_errors: [u64; HandshakeFailure::ALL.len()],
    /// Failed connects per upstream address (a short list: linear search).
    pub upstream_connect_errors: Vec<(SocketAddr, u64)>,
    pub upstream_tls_errors: u64,
    /// Requests an `http` listener refused, by status: 400, 408, 431.
    pub http_rejected: [u64; 3],
    /// Upstream handshakes that offered a session and failed (then retried in full),
    /// per upstream address.
    pub upstream_resumption_failures: Vec<(SocketAddr, u64)>,
    /// Completed upstream (re-encryption) handshakes: [full, resumed].
    pub upstream_handshakes: [u64; 2],
    pub rejected_max_connections: u64,
    /// Requests decided by an http listener's rules, per rule name: [allow, deny]
    /// (the decision taken, or in report mode the one that would have been).
    pub http_requests: Vec<(Box<str>, [u64; 2])>,
    /// Requests and connections over a per-caller limit, by [`LIMITS`].
    pub limited: [u64; 3],
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    pub handshake: Latency,
    pub upstream_connect: Latency,
    /// The candidate client-auth policy's verdicts, by [`CANDIDATE_VERDICTS`].
    pub candidate_verdicts: [u64; CANDIDATE_VERDICTS.len()],
    /// Certificates the enforced `optional` policy admitted as anonymous, by reason.
    pub anonymous: [u64; HandshakeFailure::ALL.len()],
}

/// `allow`, then the reasons a client-auth policy refuses for; anything else is
/// counted as `bad_certificate`.
pub const CANDIDATE_VERDICTS: [&str; 8] = [
    "allow",
    "no_client_cert",
    "unknown_ca",
    "cert_expired",
    "cert_not_yet_valid",
    "cert_revoked",
    "bad_certificate",
    "policy_denied",
];

impl ListenerMetrics {
    pub fn handshake_ok(&mut self, resumed: bool, verified: bool, took: Option<Duration>) {
        self.handshakes_ok[resumed as usize * 2 + verified as usize] += 1;
        if let Some(d) = took {
            self.handshake.record(d);
        }
    }

    /// Count a candidate verdict: `allow` or a refusal reason.
    pub fn candidate_verdict(&mut self, v: &str) {
        let i = CANDIDATE_VERDICTS.iter().position(|x| *x == v).unwrap_or(6);
        self.candidate_verdicts[i] += 1;
    }

    pub fn anonymous(&mut self, r: HandshakeFailure) {
        self.anonymous[reason_index(r)] += 1;
    }

    /// One request `rule` decided (`deny`: the deny decision, carried out or not).
    pub fn http_request(&mut self, rule: &str, deny: bool) {
        self.http_request_n(rule, deny as usize, 1);
    }

    /// (A short list, bounded by the config: linear search.)
    fn http_request_n(&mut self, rule: &str, decision: usize, n: u64) {
        match self.http_requests.iter_mut().find(|(r, _)| &**r == rule) {
            Some((_, c)) => c[decision] += n,
            None => {
                let mut c = [0; 2];
                c[decision] = n;
                self.http_requests.push((rule.into(), c));
            }
        }
    }

    /// A request or connection over `limit` (refused, or reported).
    pub fn limited(&mut self, limit: crate::proxy::authz::limits::Limit) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.limited[i] += 1;
        }
    }

    pub fn handshake_error(&mut self, r: HandshakeFailure) {
        self.handshake_errors[reason_index(r)] += 1;
    }

    pub fn errors(&self, r: HandshakeFailure) -> u64 {
        self.handshake_errors[reason_index(r)]
    }

    pub fn upstream_connect_error(&mut self, addr: SocketAddr) {
        add_per_upstream(&mut self.upstream_connect_errors, addr, 1);
    }

    pub fn upstream_resumption_failure(&mut self, addr: SocketAddr) {
        add_per_upstream(&mut self.upstream_resumption_failures, addr, 1);
    }

    pub fn merge(&mut self, o: &ListenerMetrics) {
        self.connections += o.connections;
        for (a, b) in self.handshakes_ok.iter_mut().zip(o.handshakes_ok) {
            *a += b;
        }
        for (a, b) in self.handshake_errors.iter_mut().zip(o.handshake_errors) {
            *a += b;
        }
        for &(addr, n) in &o.upstream_connect_errors {
            add_per_upstream(&mut self.upstream_connect_errors, addr, n);
        }
        self.upstream_tls_errors += o.upstream_tls_errors;
        for (a, b) in self.http_rejected.iter_mut().zip(o.http_rejected) {
            *a += b;
        }
        for &(addr, n) in &o.upstream_resumption_failures {
            add_per_upstream(&mut self.upstream_resumption_failures, addr, n);
        }
        for (a, b) in self
            .upstream_handshakes
            .iter_mut()
            .zip(o.upstream_handshakes)
        {
            *a += b;
        }
        self.rejected_max_connections += o.rejected_max_connections;
        for (rule, counts) in &o.http_requests {
            for (d, n) in counts.iter().enumerate() {
                self.http_request_n(rule, d, *n);
            }
        }
        for (a, b) in self.limited.iter_mut().zip(o.limited) {
            *a += b;
        }
        self.bytes_client_to_upstream += o.bytes_client_to_upstream;
        self.bytes_upstream_to_client += o.bytes_upstream_to_client;
        self.handshake.merge(&o.handshake);
        self.upstream_connect.merge(&o.upstream_connect);
        for (a, b) in self.candidate_verdicts.iter_mut().zip(o.candidate_verdicts) {
            *a += b;
        }
        for (a, b) in self.anonymous.iter_mut().zip(o.anonymous) {
            *a += b;
        }
    }
}

/// Add `n` to `addr`'s count (a short list: linear search).
fn add_per_upstream(v: &mut Vec<(SocketAddr, u64)>, addr: SocketAddr, n: u64) {
    match v.iter_mut().find(|(a, _)| *a == addr) {
        Some((_, c)) => *c += n,
        None => v.push((addr, n)),
    }
}

/// One sample per configured upstream (0 when none was counted), then any other
/// address counted (an upstream a reload removed).
fn per_upstream(
    o: &mut String,
    name: &str,
    labels: &str,
    upstreams: &[SocketAddr],
    counts: &[(SocketAddr, u64)],
) {
    let mut seen: Vec<(SocketAddr, u64)> = upstreams.iter().map(|a| (*a, 0)).collect();
    for &(a, n) in counts {
        add_per_upstream(&mut seen, a, n);
    }
    for (a, n) in seen {
        let _ = writeln!(o, "{name}{{{labels},upstream=\"{a}\"}} {n}");
    }
}

fn reason_index(r: HandshakeFailure) -> usize {
    HandshakeFailure::ALL
        .iter()
        .position(|x| *x == r)
        .expect("ALL lists every reason")
}

/// What a worker publishes: its cumulative counters, one entry per listener (same
/// order as the config's listeners).
#[derive(Clone, Debug)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub listeners: Vec<ListenerMetrics>,
    /// What each loop turn carried (turns that had work only).
    pub turns: TurnStats,
    /// Bytes the worker's connections hold now (all directions).
    pub buffered_bytes: u64,
    /// Receives paused by `max_buffered_bytes_per_worker`.
    pub buffer_cap_pauses: u64,
}

/// Upper bounds of the per-turn histograms: completions and connections one loop
/// turn handles (the batching engine's batch size).
pub const TURN_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// One count per [`TURN_BUCKETS`] bound (not cumulative) plus overflow, sum, count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnHistogram {
    pub buckets: [u64; TURN_BUCKETS.len() + 1],
    pub sum: u64,
    pub count: u64,
}

impl TurnHistogram {
    pub fn record(&mut self, v: u64) {
        let i = TURN_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(TURN_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// A worker's loop turns: completions and connections flushed per turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStats {
    pub completions: TurnHistogram,
    pub connections: TurnHistogram,
}

/// Per-listener facts the renderer reads besides the worker snapshots.
pub struct ListenerView {
    pub name: String,
    pub active: u64,
    /// The resolved upstream addresses new connections use now.
    pub upstreams: Vec<SocketAddr>,
    /// Each of those, and whether it is up (not in passive-health backoff).
    pub upstreams_up: Vec<(SocketAddr, bool)>,
    /// Failed resolutions per named `upstreams` entry (as written).
    pub resolve_errors: Vec<(String, u64)>,
    /// (certificate file, notAfter as Unix seconds).
    pub certs: Vec<(String, i64)>,
    /// Client chain cache (hits, misses); None without client auth or cache.
    pub chain_cache: Option<(u64, u64)>,
    /// (certificate file, stapled OCSP response's nextUpdate, Unix seconds).
    pub ocsp: Vec<(String, i64)>,
    /// Callers dropped from its inventory (None: no inventory).
    pub callers_evicted: Option<u64>,
}

/// Process-wide counters outside the workers.
pub struct GlobalView {
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// The last reload attempt succeeded (or none failed since startup).
    pub reload_last_ok: bool,
    /// Unix time (ms) of the last successful load.
    pub reload_last_success_unix_ms: u64,
    pub access_log_dropped: u64,
    /// OCSP responses refused for stapling since start.
    pub ocsp_refused: u64,
    /// `[spiffe]` in use: (SVID updates, bundle updates, stream up, SVID expired).
    pub spiffe: Option<(u64, u64, bool, bool)>,
    pub workers: usize,
    /// `io_uring` or `epoll`.
    pub io_backend: &'static str,
    pub draining: bool,
    /// Per worker that has published: (worker, buffered bytes, cap pauses).
    pub buffers: Vec<(usize, u64, u64)>,
    /// (worker, its loop-turn histograms).
    pub turns: Vec<(usize, TurnStats)>,
}

/// Sum the workers' latest snapshots per listener.
pub fn aggregate(n_listeners: usize, snaps: &[Option<WorkerSnapshot>]) -> Vec<ListenerMetrics> {
    let mut total = vec![ListenerMetrics::default(); n_listeners];
    for s in snaps.iter().flatten() {
        for (t, m) in total.iter_mut().zip(&s.listeners) {
            t.merge(m);
        }
    }
    total
}

/// The statuses of `http_rejected`, in its order.
pub const HTTP_STATUSES: [u16; 3] = [400, 408, 431];

/// The limits of `limited`, in its order.
pub const LIMITS: [crate::proxy::authz::limits::Limit; 3] = [
    crate::proxy::authz::limits::Limit::Connections,
    crate::proxy::authz::limits::Limit::Requests,
    crate::proxy::authz::limits::Limit::Handshakes,
];

mod page;
pub use page::render;
