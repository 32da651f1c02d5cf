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
}

impl ListenerMetrics {
    pub fn handshake_ok(&mut self, resumed: bool, verified: bool, took: Option<Duration>) {
        self.handshakes_ok[resumed as usize * 2 + verified as usize] += 1;
        if let Some(d) = took {
            self.handshake.record(d);
        }
    }

    pub fn handshake_error(&mut self, r: HandshakeFailure) {
        self.handshake_errors[reason_index(r)] += 1;
    }

    pub fn errors(&self, r: HandshakeFailure) -> u64 {
        self.handshake_errors[reason_index(r)]
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

/// The whole `/metrics` page: every family of [`FAMILIES`], in order.
pub fn render(
    listeners: &[ListenerView],
    totals: &[ListenerMetrics],
    global: &GlobalView,
    process: &Process,
) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let page = Page {
        listeners,
        totals,
        global,
        process,
    };
    for f in FAMILIES {
        page.family(&mut o, f);
    }
    o
}

/// Prometheus label value escaping (backslash, quote, newline).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// A sample value, printed as Prometheus text (`{}` of the number).
#[derive(Clone, Copy, Debug)]
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::U(n) => write!(f, "{n}"),
            Num::I(n) => write!(f, "{n}"),
            Num::F(n) => write!(f, "{n}"),
        }
    }
}

/// The limits of `limited`, in its order.
pub const LIMITS: [crate::proxy::authz::limits::Limit; 3] = [
    crate::proxy::authz::limits::Limit::Connections,
    crate::proxy::authz::limits::Limit::Requests,
    crate::proxy::authz::limits::Limit::Handshakes,
];

/// The statuses of `http_rejected`, in its order.
pub const HTTP_STATUSES: [u16; 3] = [400, 408, 431];

/// Samples as (labels, value); labels without braces, empty for none.
type Labeled = Vec<(String, Num)>;

/// Where a family's samples come from.
enum Samples {
    /// One per listener from the workers' summed counters, labelled `listener` only.
    Summed(fn(&ListenerMetrics) -> u64),
    /// Per listener from the summed counters, with more labels after `listener`.
    SummedLabeled(fn(&ListenerMetrics) -> Labeled),
    /// Per listener from what it has now (not counters): open connections, certificates.
    Current(fn(&ListenerView) -> Labeled),
    /// Per listener: one sample per configured upstream, then any other counted.
    PerUpstream(fn(&ListenerMetrics) -> &[(SocketAddr, u64)]),
    /// Per listener: `_bucket`, `_sum`, `_count` over [`BUCKETS_S`].
    Histogram(fn(&ListenerMetrics) -> &Latency),
    /// Process-wide counters outside the workers.
    Global(fn(&GlobalView) -> Labeled),
    /// The standard `process_*` metrics, unlabelled.
    Process(fn(&Process) -> Num),
    /// Per worker: `_bucket`, `_sum`, `_count` over [`TURN_BUCKETS`].
    Turns(fn(&TurnStats) -> &TurnHistogram),
}

/// One metric family of the `/metrics` page.
struct Family {
    name: &'static str,
    /// Prometheus type: `counter`, `gauge` or `histogram`.
    kind: &'static str,
    help: &'static str,
    samples: Samples,
}

const fn family(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Samples,
) -> Family {
    Family {
        name,
        kind,
        help,
        samples,
    }
}

/// Every family, in page order. Dashboards and alerts use these names and labels:
/// changing one is a breaking change (`tests::the_page_is_pinned` holds the text).
static FAMILIES: &[Family] = &[
    family(
        "terminus_connections_total",
        "counter",
        "Client connections accepted.",
        Samples::Summed(|m| m.connections),
    ),
    family(
        "terminus_connections_active",
        "gauge",
        "Client connections open now.",
        Samples::Current(|l| vec![(String::new(), Num::U(l.active))]),
    ),
    family(
        "terminus_connections_rejected_total",
        "counter",
        "Connections closed at accept because max_connections was reached.",
        Samples::SummedLabeled(|m| {
            vec![(
                "reason=\"max_connections\"".into(),
                Num::U(m.rejected_max_connections),
            )]
        }),
    ),
    family(
        "terminus_handshakes_total",
        "counter",
        "Client TLS handshakes.",
        Samples::SummedLabeled(handshakes),
    ),
    family(
        "terminus_handshake_errors_total",
        "counter",
        "Failed client handshakes by reason.",
        Samples::SummedLabeled(|m| {
            HandshakeFailure::ALL
                .iter()
                .map(|r| (format!("reason=\"{}\"", r.as_str()), Num::U(m.errors(*r))))
                .collect()
        }),
    ),
    family(
        "terminus_policy_denied_total",
        "counter",
        "Verified client certificates refused by the allow-list.",
        Samples::Summed(|m| m.errors(HandshakeFailure::PolicyDenied)),
    ),
    family(
        "terminus_client_chain_cache_total",
        "counter",
        "Client certificate chains found already verified and allowed (hit) or verified \
         in full (miss); listeners with client_auth and verify_cache_size > 0.",
        Samples::Current(|l| {
            l.chain_cache
                .map(|(hit, miss)| {
                    vec![
                        ("result=\"hit\"".into(), Num::U(hit)),
                        ("result=\"miss\"".into(), Num::U(miss)),
                    ]
                })
                .unwrap_or_default()
        }),
    ),
    family(
        "terminus_handshake_duration_seconds",
        "histogram",
        "Client handshake time, accept to handshake complete.",
        Samples::Histogram(|m| &m.handshake),
    ),
    family(
        "terminus_upstream_connect_duration_seconds",
        "histogram",
        "Upstream TCP connect time.",
        Samples::Histogram(|m| &m.upstream_connect),
    ),
    family(
        "terminus_upstream_connect_errors_total",
        "counter",
        "Failed upstream connects by upstream address.",
        Samples::PerUpstream(|m| &m.upstream_connect_errors),
    ),
    family(
        "terminus_upstream_up",
        "gauge",
        "1 when the upstream address is used, 0 while it is skipped after a refused or \
         timed-out connect (passive health), by resolved address.",
        Samples::Current(|l| {
            l.upstreams_up
                .iter()
                .map(|(a, up)| (format!("upstream=\"{a}\""), Num::U(*up as u64)))
                .collect()
        }),
    ),
    family(
        "terminus_upstream_resolve_errors_total",
        "counter",
        "Failed re-resolutions of an upstream name (its last good addresses stay in \
         use), by entry as written.",
        Samples::Current(|l| {
            l.resolve_errors
                .iter()
                .map(|(e, n)| (format!("upstream=\"{}\"", esc(e)), Num::U(*n)))
                .collect()
        }),
    ),
    family(
        "terminus_http_rejected_total",
        "counter",
        "Requests an http listener refused, then closed the connection: 400 (smuggling \
         vectors, malformed heads), 408 (head too slow), 431 (head too large).",
        Samples::SummedLabeled(|m| {
            HTTP_STATUSES
                .iter()
                .zip(m.http_rejected)
                .map(|(s, n)| (format!("status=\"{s}\""), Num::U(n)))
                .collect()
        }),
    ),
    family(
        "terminus_http_requests_total",
        "counter",
        "Requests an http listener's rules decided, by rule name (`default`: no rule \
         matched) and decision (`allow`/`deny`; in report mode the decision that would \
         have been taken).",
        Samples::SummedLabeled(|m| {
            m.http_requests
                .iter()
                .flat_map(|(rule, [allow, deny])| {
                    [("allow", *allow), ("deny", *deny)]
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(move |(d, n)| (format!("rule=\"{}\",decision=\"{d}\"", esc(rule)), Num::U(n)))
                })
                .collect()
        }),
    ),
    family(
        "terminus_limited_total",
        "counter",
        "Requests over a per-caller limit (refused, or in report mode counted only), by \
         limit.",
        Samples::SummedLabeled(|m| {
            LIMITS
                .iter()
                .zip(m.limited)
                .filter(|(_, n)| *n > 0)
                .map(|(l, n)| (format!("limit=\"{}\"", l.as_str()), Num::U(n)))
                .collect()
        }),
    ),
    family(
        "terminus_upstream_tls_errors_total",
        "counter",
        "Re-encryption handshakes to the upstream that failed.",
        Samples::Summed(|m| m.upstream_tls_errors),
    ),
    family(
        "terminus_upstream_handshakes_total",
        "counter",
        "Completed re-encryption handshakes to the upstream, full or resumed.",
        Samples::SummedLabeled(|m| {
            let [full, resumed] = m.upstream_handshakes;
            vec![
                ("resumed=\"false\"".into(), Num::U(full)),
                ("resumed=\"true\"".into(), Num::U(resumed)),
            ]
        }),
    ),
    family(
        "terminus_upstream_resumption_failures_total",
        "counter",
        "Upstream handshakes offering a session that failed (retried with a full \
         handshake, the client unaffected), by upstream address.",
        Samples::PerUpstream(|m| &m.upstream_resumption_failures),
    ),
    family(
        "terminus_bytes_total",
        "counter",
        "Plaintext bytes proxied.",
        Samples::SummedLabeled(|m| {
            vec![
                (
                    "direction=\"client_to_upstream\"".into(),
                    Num::U(m.bytes_client_to_upstream),
                ),
                (
                    "direction=\"upstream_to_client\"".into(),
                    Num::U(m.bytes_upstream_to_client),
                ),
            ]
        }),
    ),
    family(
        "terminus_cert_expiry_timestamp_seconds",
        "gauge",
        "notAfter of each served certificate (Unix seconds).",
        Samples::Current(|l| {
            l.certs
                .iter()
                .map(|(path, t)| (format!("cert=\"{}\"", esc(path)), Num::I(*t)))
                .collect()
        }),
    ),
    family(
        "terminus_ocsp_next_update_timestamp_seconds",
        "gauge",
        "nextUpdate of each stapled OCSP response (Unix seconds; 0: none given).",
        Samples::Current(|l| {
            l.ocsp
                .iter()
                .map(|(path, t)| (format!("cert=\"{}\"", esc(path)), Num::I(*t)))
                .collect()
        }),
    ),
    family(
        "terminus_ocsp_responses_refused_total",
        "counter",
        "OCSP response files not stapled: unparsable, for another certificate, not \
         good, expired or not yet valid (each load: start and reloads).",
        Samples::Global(|g| vec![(String::new(), Num::U(g.ocsp_refused))]),
    ),
    family(
        "terminus_config_reloads_total",
        "counter",
        "Certificate, key, CA, CRL and config reloads by result.",
        Samples::Global(|g| {
            vec![
                ("result=\"ok\"".into(), Num::U(g.reloads_ok)),
                ("result=\"error\"".into(), Num::U(g.reloads_error)),
            ]
        }),
    ),
    family(
        "terminus_config_last_reload_successful",
        "gauge",
        "1 if the last reload attempt succeeded (or none was made), 0 while a bad file stays in place.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.reload_last_ok as u64))]),
    ),
    family(
        "terminus_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful load (startup or reload).",
        Samples::Global(|g| {
            vec![(
                String::new(),
                Num::F(g.reload_last_success_unix_ms as f64 / 1e3),
            )]
        }),
    ),
    family(
        "terminus_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the log writer fell behind.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.access_log_dropped))]),
    ),
    family(
        "terminus_workers",
        "gauge",
        "Worker threads.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.workers as u64))]),
    ),
    family(
        "terminus_build_info",
        "gauge",
        "The running build (version); always 1.",
        Samples::Global(|_| {
            vec![(
                format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
                Num::U(1),
            )]
        }),
    ),
    family(
        "terminus_io_backend_info",
        "gauge",
        "The I/O backend the workers run on (io_uring, or epoll where io_uring is blocked); always 1.",
        Samples::Global(|g| vec![(format!("backend=\"{}\"", g.io_backend), Num::U(1))]),
    ),
    family(
        "terminus_draining",
        "gauge",
        "1 while draining before exit.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.draining as u64))]),
    ),
    family(
        "terminus_worker_buffered_bytes",
        "gauge",
        "Bytes a worker's connections hold, waiting for a slow side (bounded by max_buffered_bytes_per_worker).",
        Samples::Global(|g| {
            g.buffers
                .iter()
                .map(|(w, b, _)| (format!("worker=\"{w}\""), Num::U(*b)))
                .collect()
        }),
    ),
    family(
        "terminus_worker_buffer_cap_pauses_total",
        "counter",
        "Receives a worker paused because its connections held max_buffered_bytes_per_worker.",
        Samples::Global(|g| {
            g.buffers
                .iter()
                .map(|(w, _, p)| (format!("worker=\"{w}\""), Num::U(*p)))
                .collect()
        }),
    ),
    family(
        "terminus_worker_loop_completions",
        "histogram",
        "I/O completions one worker loop turn handled (turns with work only): the \
         batching engine's batch size.",
        Samples::Turns(|t| &t.completions),
    ),
    family(
        "terminus_worker_loop_connections",
        "histogram",
        "Connections one worker loop turn flushed (turns with work only).",
        Samples::Turns(|t| &t.connections),
    ),
    family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time.",
        Samples::Process(|p| Num::F(p.cpu_seconds)),
    ),
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory.",
        Samples::Process(|p| Num::U(p.resident_bytes)),
    ),
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory.",
        Samples::Process(|p| Num::U(p.virtual_bytes)),
    ),
    family(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        Samples::Process(|p| Num::U(p.open_fds)),
    ),
    family(
        "process_max_fds",
        "gauge",
        "RLIMIT_NOFILE soft limit.",
        Samples::Process(|p| Num::U(p.max_fds)),
    ),
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time (Unix seconds).",
        Samples::Process(|p| Num::F(p.start_time_seconds)),
    ),
];

/// `terminus_handshakes_total`: successes by resumption and client auth, then all
/// failures in one sample (their reasons are `terminus_handshake_errors_total`).
fn handshakes(m: &ListenerMetrics) -> Labeled {
    let mut out: Labeled = m
        .handshakes_ok
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let resumed = i / 2 == 1;
            let auth = if i % 2 == 1 { "verified" } else { "none" };
            let labels = format!("result=\"ok\",resumed=\"{resumed}\",client_auth=\"{auth}\"");
            (labels, Num::U(*n))
        })
        .collect();
    let errors: u64 = m.handshake_errors.iter().sum();
    out.push((
        "result=\"error\",resumed=\"false\",client_auth=\"none\"".into(),
        Num::U(errors),
    ));
    out
}

/// What one scrape renders.
struct Page<'a> {
    listeners: &'a [ListenerView],
    totals: &'a [ListenerMetrics],
    global: &'a GlobalView,
    process: &'a Process,
}

/// `name{labels} value`, or `name value` without labels.
fn sample(o: &mut String, name: &str, labels: &str, v: impl std::fmt::Display) {
    let _ = if labels.is_empty() {
        writeln!(o, "{name} {v}")
    } else {
        writeln!(o, "{name}{{{labels}}} {v}")
    };
}

impl Page<'_> {
    fn family(&self, o: &mut String, f: &Family) {
        let name = f.name;
        let _ = writeln!(o, "# HELP {name} {}\n# TYPE {name} {}", f.help, f.kind);
        let rows = || self.listeners.iter().zip(self.totals);
        let lv = |l: &ListenerView| format!("listener=\"{}\"", esc(&l.name));
        let with = |l: &ListenerView, extra: &str| match extra {
            "" => lv(l),
            extra => format!("{},{extra}", lv(l)),
        };
        match f.samples {
            Samples::Summed(read) => {
                for (l, m) in rows() {
                    sample(o, name, &lv(l), read(m));
                }
            }
            Samples::SummedLabeled(read) => {
                for (l, m) in rows() {
                    for (extra, v) in read(m) {
                        sample(o, name, &with(l, &extra), v);
                    }
                }
            }
            Samples::Current(read) => {
                for l in self.listeners {
                    for (extra, v) in read(l) {
                        sample(o, name, &with(l, &extra), v);
                    }
                }
            }
            Samples::PerUpstream(read) => {
                for (l, m) in rows() {
                    per_upstream(o, name, &lv(l), &l.upstreams, read(m));
                }
            }
            Samples::Histogram(read) => {
                for (l, m) in rows() {
                    histogram(o, name, &lv(l), read(m));
                }
            }
            Samples::Global(read) => {
                for (labels, v) in read(self.global) {
                    sample(o, name, &labels, v);
                }
            }
            Samples::Process(read) => sample(o, name, "", read(self.process)),
            Samples::Turns(read) => {
                for (w, t) in &self.global.turns {
                    let h = read(t);
                    let labels = format!("worker=\"{w}\"");
                    let mut acc = 0;
                    for (b, c) in TURN_BUCKETS.iter().zip(h.buckets) {
                        acc += c;
                        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {acc}");
                    }
                    let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(o, "{name}_sum{{{labels}}} {}", h.sum);
                    let _ = writeln!(o, "{name}_count{{{labels}}} {}", h.count);
                }
            }
        }
    }
}

/// One listener's histogram samples: cumulative buckets, `+Inf`, sum, count.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Latency) {
    for (b, c) in BUCKETS_S.iter().zip(h.cumulative_buckets()) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_seconds());
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
}

/// The standard `process_*` metrics, read from the kernel at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

impl Process {
    /// Read this process's figures from /proc (no syscalls beyond reads). CPU is the
    /// whole thread group's utime+stime, which the kernel derives from its precise
    /// runtime and prints in USER_HZ (100/s on Linux) ticks: 10 ms resolution, good
    /// to well under 1% over a bench run of a few seconds.
    pub fn read() -> Process {
        let mut p = Process::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the `(comm)` field, which may itself contain spaces.
            if let Some(i) = stat.rfind(')') {
                let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
                let num = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok());
                // utime, stime, starttime are fields 14, 15, 22 of the full line.
                p.cpu_seconds = (num(11).unwrap_or(0.0) + num(12).unwrap_or(0.0)) / USER_HZ;
                if let (Some(start), Some(btime)) = (num(19), boot_time()) {
                    p.start_time_seconds = btime + start / USER_HZ;
                }
            }
        }
        if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
            let kb = |key: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .map_or(0, |v| v * 1024)
            };
            p.resident_bytes = kb("VmRSS:");
            p.virtual_bytes = kb("VmSize:");
        }
        p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        if let Ok(s) = std::fs::read_to_string("/proc/self/limits") {
            p.max_fds = s
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        p
    }
}

/// Linux reports /proc times in USER_HZ ticks, fixed at 100 for userspace ABI.
const USER_HZ: f64 = 100.0;

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_match_the_count() {
        let mut l = Latency::default();
        for us in [5u64, 20, 20, 80, 3_000, 2_000_000] {
            l.record(Duration::from_micros(us));
        }
        let b = l.cumulative_buckets();
        // le=10µs: the 5 µs sample; le=25µs: +2; le=100µs: +1; le=5ms: +1; le=2.5s: +1.
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 3);
        assert_eq!(b[3], 4);
        assert_eq!(b[8], 5);
        assert_eq!(b[16], 6);
        assert_eq!(*b.last().unwrap(), l.count());
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert!((l.sum_seconds() - 2.003125).abs() < 1e-9);
    }

    #[test]
    fn workers_add_up_and_the_page_names_every_reason() {
        let mut a = ListenerMetrics {
            connections: 2,
            ..Default::default()
        };
        a.handshake_ok(false, true, Some(Duration::from_micros(300)));
        a.handshake_error(HandshakeFailure::PolicyDenied);
        a.upstream_connect_error("127.0.0.1:9".parse().unwrap());
        a.upstream_resumption_failure("127.0.0.1:8".parse().unwrap());
        a.upstream_handshakes = [3, 1];
        let mut b = a.clone();
        b.handshake_ok(true, false, None);
        let snaps = vec![
            Some(WorkerSnapshot {
                worker: 0,
                listeners: vec![a],
                turns: TurnStats::default(),
                buffered_bytes: 0,
                buffer_cap_pauses: 0,
            }),
            None,
            Some(WorkerSnapshot {
                worker: 2,
                listeners: vec![b],
                turns: TurnStats::default(),
                buffered_bytes: 4096,
                buffer_cap_pauses: 3,
            }),
        ];
        let totals = aggregate(1, &snaps);
        assert_eq!(totals[0].connections, 4);
        let view = ListenerView {
            name: "e\\dge\"".into(),
            active: 1,
            upstreams: vec!["127.0.0.1:8".parse().unwrap()],
            upstreams_up: vec![],
            resolve_errors: vec![],
            certs: vec![("/c/server.pem".into(), 1_900_000_000)],
            chain_cache: Some((7, 2)),
            ocsp: vec![("/c/server.pem".into(), 1_800_000_000)],
        };
        let g = GlobalView {
            reloads_ok: 1,
            reloads_error: 2,
            reload_last_ok: false,
            reload_last_success_unix_ms: 1_764_000_000_500,
            access_log_dropped: 0,
            ocsp_refused: 1,
            workers: 3,
            io_backend: "io_uring",
            draining: false,
            buffers: vec![(2, 4096, 3)],
            turns: vec![(2, turns())],
        };
        let page = render(&[view], &totals, &g, &Process::read());
        let l = "listener=\"e\\\\dge\\\"\"";
        for want in [
            format!("terminus_connections_total{{{l}}} 4"),
            format!("terminus_handshakes_total{{{l},result=\"ok\",resumed=\"false\",client_auth=\"verified\"}} 2"),
            format!("terminus_handshakes_total{{{l},result=\"ok\",resumed=\"true\",client_auth=\"none\"}} 1"),
            format!("terminus_handshakes_total{{{l},result=\"error\",resumed=\"false\",client_auth=\"none\"}} 2"),
            format!("terminus_policy_denied_total{{{l}}} 2"),
            format!("terminus_client_chain_cache_total{{{l},result=\"hit\"}} 7"),
            format!("terminus_client_chain_cache_total{{{l},result=\"miss\"}} 2"),
            format!("terminus_handshake_duration_seconds_count{{{l}}} 2"),
            format!("terminus_upstream_connect_errors_total{{{l},upstream=\"127.0.0.1:9\"}} 2"),
            format!("terminus_upstream_connect_errors_total{{{l},upstream=\"127.0.0.1:8\"}} 0"),
            format!("terminus_upstream_resumption_failures_total{{{l},upstream=\"127.0.0.1:8\"}} 2"),
            format!("terminus_upstream_handshakes_total{{{l},resumed=\"false\"}} 6"),
            format!("terminus_upstream_handshakes_total{{{l},resumed=\"true\"}} 2"),
            format!("terminus_cert_expiry_timestamp_seconds{{{l},cert=\"/c/server.pem\"}} 1900000000"),
            "terminus_config_reloads_total{result=\"error\"} 2".to_string(),
            format!("terminus_ocsp_next_update_timestamp_seconds{{{l},cert=\"/c/server.pem\"}} 1800000000"),
            "terminus_ocsp_responses_refused_total 1".to_string(),
            "terminus_worker_buffered_bytes{worker=\"2\"} 4096".to_string(),
            "terminus_worker_buffer_cap_pauses_total{worker=\"2\"} 3".to_string(),
            "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"1\"} 1".to_string(),
            "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"4\"} 2".to_string(),
            "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"256\"} 2".to_string(),
            "terminus_worker_loop_completions_bucket{worker=\"2\",le=\"+Inf\"} 3".to_string(),
            "terminus_worker_loop_completions_sum{worker=\"2\"} 1004".to_string(),
            "terminus_worker_loop_connections_count{worker=\"2\"} 3".to_string(),
        ] {
            assert!(page.contains(&want), "missing {want} in\n{page}");
        }
        for r in HandshakeFailure::ALL {
            assert!(page.contains(&format!("reason=\"{}\"", r.as_str())));
        }
        let p = Process::read();
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.max_fds > 0);
        assert!(p.start_time_seconds > 1.0e9);
    }

    /// Three turns: 1, 3 and 1000 completions (the last over every bound).
    fn turns() -> TurnStats {
        let mut t = TurnStats::default();
        for (c, n) in [(1, 1), (3, 2), (1000, 40)] {
            t.completions.record(c);
            t.connections.record(n);
        }
        t
    }

    /// Two listeners with every kind of sample, and fixed process figures.
    fn fixture_page() -> String {
        let mut a = ListenerMetrics {
            connections: 7,
            rejected_max_connections: 1,
            upstream_tls_errors: 2,
            http_rejected: [3, 1, 0],
            http_requests: vec![("no-admin".into(), [0, 2]), ("default".into(), [5, 0])],
            limited: [0, 4, 0],
            bytes_client_to_upstream: 1234,
            bytes_upstream_to_client: 56789,
            upstream_handshakes: [4, 5],
            ..Default::default()
        };
        a.handshake_ok(false, false, Some(Duration::from_micros(40)));
        a.handshake_ok(true, true, Some(Duration::from_millis(3)));
        a.handshake_error(HandshakeFailure::UnknownCa);
        a.handshake_error(HandshakeFailure::Timeout);
        a.upstream_connect.record(Duration::from_micros(700));
        a.upstream_connect_error("127.0.0.1:9".parse().unwrap());
        a.upstream_connect_error("[::1]:7".parse().unwrap());
        a.upstream_resumption_failure("127.0.0.1:8".parse().unwrap());
        let b = ListenerMetrics::default();
        let views = [
            ListenerView {
                name: "edge".into(),
                active: 3,
                upstreams: vec![
                    "127.0.0.1:8".parse().unwrap(),
                    "127.0.0.1:9".parse().unwrap(),
                ],
                upstreams_up: vec![
                    ("127.0.0.1:8".parse().unwrap(), true),
                    ("127.0.0.1:9".parse().unwrap(), false),
                ],
                resolve_errors: vec![("billing.internal:8080".into(), 3)],
                certs: vec![
                    ("/c/server.pem".into(), 1_900_000_000),
                    ("/c/\"odd\"\\name.pem".into(), -1),
                ],
                chain_cache: Some((40, 3)),
                ocsp: vec![("/c/server.pem".into(), 1_800_000_000)],
            },
            ListenerView {
                name: "in\nternal".into(),
                active: 0,
                upstreams: vec![],
                upstreams_up: vec![],
                resolve_errors: vec![],
                certs: vec![],
                chain_cache: None,
                ocsp: vec![],
            },
        ];
        let g = GlobalView {
            reloads_ok: 1,
            reloads_error: 2,
            reload_last_ok: false,
            reload_last_success_unix_ms: 1_764_000_000_500,
            access_log_dropped: 3,
            ocsp_refused: 1,
            workers: 2,
            io_backend: "io_uring",
            draining: true,
            buffers: vec![(0, 4096, 3), (1, 0, 0)],
            turns: vec![(0, turns())],
        };
        let p = Process {
            cpu_seconds: 1.25,
            resident_bytes: 10 << 20,
            virtual_bytes: 1 << 30,
            open_fds: 17,
            max_fds: 1024,
            start_time_seconds: 1_764_000_000.5,
        };
        render(&views, &[a, b], &g, &p)
    }

    /// The page, byte for byte (`metrics_page.txt` beside this file). Set
    /// TERMINUS_BLESS=1 to rewrite it after an intended change.
    #[test]
    fn the_page_is_pinned() {
        let page = fixture_page();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/ops/testdata/metrics_page.txt"
        );
        if std::env::var_os("TERMINUS_BLESS").is_some() {
            std::fs::write(path, &page).unwrap();
            return;
        }
        assert_eq!(page, include_str!("testdata/metrics_page.txt"));
    }

    /// Every family, in page order, with its type: names are what dashboards use.
    #[test]
    fn the_family_list_is_pinned() {
        let families: Vec<String> = fixture_page()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            families,
            [
                "terminus_connections_total counter",
                "terminus_connections_active gauge",
                "terminus_connections_rejected_total counter",
                "terminus_handshakes_total counter",
                "terminus_handshake_errors_total counter",
                "terminus_policy_denied_total counter",
                "terminus_client_chain_cache_total counter",
                "terminus_handshake_duration_seconds histogram",
                "terminus_upstream_connect_duration_seconds histogram",
                "terminus_upstream_connect_errors_total counter",
                "terminus_upstream_up gauge",
                "terminus_upstream_resolve_errors_total counter",
                "terminus_http_rejected_total counter",
                "terminus_http_requests_total counter",
                "terminus_limited_total counter",
                "terminus_upstream_tls_errors_total counter",
                "terminus_upstream_handshakes_total counter",
                "terminus_upstream_resumption_failures_total counter",
                "terminus_bytes_total counter",
                "terminus_cert_expiry_timestamp_seconds gauge",
                "terminus_ocsp_next_update_timestamp_seconds gauge",
                "terminus_ocsp_responses_refused_total counter",
                "terminus_config_reloads_total counter",
                "terminus_config_last_reload_successful gauge",
                "terminus_config_last_reload_success_timestamp_seconds gauge",
                "terminus_access_log_dropped_total counter",
                "terminus_workers gauge",
                "terminus_build_info gauge",
                "terminus_io_backend_info gauge",
                "terminus_draining gauge",
                "terminus_worker_buffered_bytes gauge",
                "terminus_worker_buffer_cap_pauses_total counter",
                "terminus_worker_loop_completions histogram",
                "terminus_worker_loop_connections histogram",
                "process_cpu_seconds_total counter",
                "process_resident_memory_bytes gauge",
                "process_virtual_memory_bytes gauge",
                "process_open_fds gauge",
                "process_max_fds gauge",
                "process_start_time_seconds gauge",
            ]
        );
    }
}
