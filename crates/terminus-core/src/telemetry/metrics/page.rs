//! page: the `/metrics` page as one table, [`FAMILIES`]: name, type, help and where
//! each family's samples come from; adding a metric is adding a row.

use super::*;

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

/// A family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family of the `/metrics` page.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Samples,
}

const fn family(name: &'static str, kind: Kind, help: &'static str, samples: Samples) -> Family {
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
        Kind::Counter,
        "Client connections accepted.",
        Samples::Summed(|m| m.connections),
    ),
    family(
        "terminus_connections_active",
        Kind::Gauge,
        "Client connections open now.",
        Samples::Current(|l| vec![(String::new(), Num::U(l.active))]),
    ),
    family(
        "terminus_connections_rejected_total",
        Kind::Counter,
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
        Kind::Counter,
        "Client TLS handshakes.",
        Samples::SummedLabeled(handshakes),
    ),
    family(
        "terminus_handshake_errors_total",
        Kind::Counter,
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
        Kind::Counter,
        "Verified client certificates refused by the allow-list.",
        Samples::Summed(|m| m.errors(HandshakeFailure::PolicyDenied)),
    ),
    family(
        "terminus_candidate_verdicts_total",
        Kind::Counter,
        "Verdicts of the candidate client-auth policy (report-only): allow, or refuse \
         and the reason the handshake would fail for.",
        Samples::SummedLabeled(|m| {
            CANDIDATE_VERDICTS
                .iter()
                .zip(m.candidate_verdicts)
                .filter(|(_, n)| *n > 0)
                .map(|(v, n)| {
                    let labels = match *v {
                        "allow" => "verdict=\"allow\",reason=\"none\"".to_owned(),
                        r => format!("verdict=\"refuse\",reason=\"{r}\""),
                    };
                    (labels, Num::U(n))
                })
                .collect()
        }),
    ),
    family(
        "terminus_client_cert_anonymous_total",
        Kind::Counter,
        "Client certificates that failed verification and were admitted as no \
         certificate (invalid_certificate = \"anonymous\"), by reason.",
        Samples::SummedLabeled(|m| {
            HandshakeFailure::ALL
                .iter()
                .filter(|r| m.anonymous[reason_index(**r)] > 0)
                .map(|r| {
                    let n = m.anonymous[reason_index(*r)];
                    (format!("reason=\"{}\"", r.as_str()), Num::U(n))
                })
                .collect()
        }),
    ),
    family(
        "terminus_callers_evicted_total",
        Kind::Counter,
        "Callers dropped from the listener's inventory (GET /callers) to stay within \
         [admin] callers_max, least recently seen first.",
        Samples::Current(|l| {
            l.callers_evicted
                .map(|n| vec![(String::new(), Num::U(n))])
                .unwrap_or_default()
        }),
    ),
    family(
        "terminus_client_chain_cache_total",
        Kind::Counter,
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
        Kind::Histogram,
        "Client handshake time, accept to handshake complete.",
        Samples::Histogram(|m| &m.handshake),
    ),
    family(
        "terminus_upstream_connect_duration_seconds",
        Kind::Histogram,
        "Upstream TCP connect time.",
        Samples::Histogram(|m| &m.upstream_connect),
    ),
    family(
        "terminus_upstream_connect_errors_total",
        Kind::Counter,
        "Failed upstream connects by upstream address.",
        Samples::PerUpstream(|m| &m.upstream_connect_errors),
    ),
    family(
        "terminus_upstream_up",
        Kind::Gauge,
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
        Kind::Counter,
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
        Kind::Counter,
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
        Kind::Counter,
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
                        .map(move |(d, n)| {
                            (format!("rule=\"{}\",decision=\"{d}\"", esc(rule)), Num::U(n))
                        })
                })
                .collect()
        }),
    ),
    family(
        "terminus_limited_total",
        Kind::Counter,
        "Connections, full handshakes and requests over a per-caller limit (refused, or \
         in report mode counted only), by limit.",
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
        Kind::Counter,
        "Re-encryption handshakes to the upstream that failed.",
        Samples::Summed(|m| m.upstream_tls_errors),
    ),
    family(
        "terminus_upstream_handshakes_total",
        Kind::Counter,
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
        Kind::Counter,
        "Upstream handshakes offering a session that failed (retried with a full \
         handshake, the client unaffected), by upstream address.",
        Samples::PerUpstream(|m| &m.upstream_resumption_failures),
    ),
    family(
        "terminus_bytes_total",
        Kind::Counter,
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
        Kind::Gauge,
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
        Kind::Gauge,
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
        Kind::Counter,
        "OCSP response files not stapled: unparsable, for another certificate, not \
         good, expired or not yet valid (each load: start and reloads).",
        Samples::Global(|g| vec![(String::new(), Num::U(g.ocsp_refused))]),
    ),
    family(
        "terminus_spiffe_updates_total",
        Kind::Counter,
        "Workload API updates that changed the X.509-SVIDs (kind=\"svid\") or the trust bundles (kind=\"bundle\").",
        Samples::Global(|g| match g.spiffe {
            Some((svid, bundle, _, _)) => vec![
                ("kind=\"svid\"".into(), Num::U(svid)),
                ("kind=\"bundle\"".into(), Num::U(bundle)),
            ],
            None => Vec::new(),
        }),
    ),
    family(
        "terminus_spiffe_stream_up",
        Kind::Gauge,
        "1 while the Workload API update stream is connected.",
        Samples::Global(|g| match g.spiffe {
            Some((_, _, up, _)) => vec![(String::new(), Num::U(up as u64))],
            None => Vec::new(),
        }),
    ),
    family(
        "terminus_spiffe_svid_expired",
        Kind::Gauge,
        "1 while the X.509-SVID served is past its notAfter (no new one arrived).",
        Samples::Global(|g| match g.spiffe {
            Some((_, _, _, expired)) => vec![(String::new(), Num::U(expired as u64))],
            None => Vec::new(),
        }),
    ),
    family(
        "terminus_config_reloads_total",
        Kind::Counter,
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
        Kind::Gauge,
        "1 if the last reload attempt succeeded (or none was made), 0 while a bad file stays in place.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.reload_last_ok as u64))]),
    ),
    family(
        "terminus_config_last_reload_success_timestamp_seconds",
        Kind::Gauge,
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
        Kind::Counter,
        "Access log lines dropped because the log writer fell behind.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.access_log_dropped))]),
    ),
    family(
        "terminus_workers",
        Kind::Gauge,
        "Worker threads.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.workers as u64))]),
    ),
    family(
        "terminus_build_info",
        Kind::Gauge,
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
        Kind::Gauge,
        "The I/O backend the workers run on (io_uring, or epoll where io_uring is blocked); always 1.",
        Samples::Global(|g| vec![(format!("backend=\"{}\"", g.io_backend), Num::U(1))]),
    ),
    family(
        "terminus_draining",
        Kind::Gauge,
        "1 while draining before exit.",
        Samples::Global(|g| vec![(String::new(), Num::U(g.draining as u64))]),
    ),
    family(
        "terminus_worker_buffered_bytes",
        Kind::Gauge,
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
        Kind::Counter,
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
        Kind::Histogram,
        "I/O completions one worker loop turn handled (turns with work only): the \
         batching engine's batch size.",
        Samples::Turns(|t| &t.completions),
    ),
    family(
        "terminus_worker_loop_connections",
        Kind::Histogram,
        "Connections one worker loop turn flushed (turns with work only).",
        Samples::Turns(|t| &t.connections),
    ),
    family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time.",
        Samples::Process(|p| Num::F(p.cpu_seconds)),
    ),
    family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory.",
        Samples::Process(|p| Num::U(p.resident_bytes)),
    ),
    family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory.",
        Samples::Process(|p| Num::U(p.virtual_bytes)),
    ),
    family(
        "process_open_fds",
        Kind::Gauge,
        "Open file descriptors.",
        Samples::Process(|p| Num::U(p.open_fds)),
    ),
    family(
        "process_max_fds",
        Kind::Gauge,
        "RLIMIT_NOFILE soft limit.",
        Samples::Process(|p| Num::U(p.max_fds)),
    ),
    family(
        "process_start_time_seconds",
        Kind::Gauge,
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
        let _ = writeln!(
            o,
            "# HELP {name} {}\n# TYPE {name} {}",
            f.help,
            f.kind.as_str()
        );
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

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
