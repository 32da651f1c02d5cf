//! The report of one run: [`BenchReport`] with its error counts and latency
//! percentiles, built from the workers' sums ([`report`]), and its human table.
//! Serialised as the `--json` object; [`BenchReport::table`] is the text form.

use super::{host, worker, BenchOpts, Direction, Workload};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub handshake: u64,
    pub verify: u64,
    /// The server refused the client: an alert judging its certificate, or an alert
    /// or close before the server showed it accepted the connection (see `proof.rs`).
    pub refused: u64,
    pub io: u64,
    pub timeout: u64,
    /// The peer closed or reset a connection mid-operation.
    pub closed: u64,
    pub total: u64,
}

impl ErrorCounts {
    pub(super) fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.handshake += o.handshake;
        self.verify += o.verify;
        self.refused += o.refused;
        self.io += o.io;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.total = self.connect
            + self.handshake
            + self.verify
            + self.refused
            + self.io
            + self.timeout
            + self.closed;
    }
}

/// Latency percentiles, µs. `samples == 0`: nothing was measured (bulk), and the
/// JSON says `null` for each figure (the table `-`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    pub samples: u64,
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = self.samples > 0;
        let mut st = ser.serialize_struct("Latency", 6)?;
        for (k, v) in [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p999", self.p999),
            ("max", self.max),
        ] {
            st.serialize_field(k, &m.then_some(v))?;
        }
        st.serialize_field("mean", &m.then_some(self.mean))?;
        st.end()
    }
}

impl Latency {
    /// The table's latency figures: numbers, or `-` for none measured.
    pub(super) fn row(&self) -> String {
        let m = self.samples > 0;
        let n = |v: u64| if m { v.to_string() } else { "-".into() };
        let mean = if m {
            format!("{:.1}", self.mean)
        } else {
            "-".into()
        };
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (mean {mean})",
            n(self.p50),
            n(self.p90),
            n(self.p99),
            n(self.p999),
            n(self.max)
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub workload: Workload,
    /// `tls` or `plain`.
    pub mode: &'static str,
    pub target: String,
    pub connections: usize,
    pub workers: usize,
    /// The measured window, seconds.
    pub duration_s: f64,
    /// Completed operations in the window: handshakes the server accepted
    /// (handshake), requests (rr), `size` chunks (bulk), connections accepted while
    /// opening (idle). See `proof.rs` for when a connection counts as accepted.
    pub ops: u64,
    pub ops_per_s: f64,
    /// Application bytes moved in the window (both directions for rr/handshake).
    pub bytes: u64,
    pub gbit_per_s: f64,
    pub latency_us: Latency,
    pub errors: ErrorCounts,
    /// The first error message of each kind, to tell what went wrong.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub error_samples: std::collections::BTreeMap<&'static str, String>,
    /// Handshakes (full, resumed) of the connections the server accepted, including
    /// the persistent connections opened before the window.
    pub full_handshakes: u64,
    pub resumed: u64,
    pub size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_us_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_cpu_ns_per_byte: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rss_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rss_after_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rss_bytes_per_conn: Option<f64>,
    /// CPU time of the bench's own workers (`bench-w*` threads) in the window, and per
    /// operation: what the client paid, to compare with the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_us_per_op: Option<f64>,
    /// Average CPUs busy with work of processes outside the run during the window
    /// (`host.rs`); above [`host::NOISY_FOREIGN_CPUS`] the round is noisy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_cpus: Option<f64>,
    /// Latencies in µs, for charts.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl BenchReport {
    /// Why the run failed, if nothing succeeded: no operation (no byte for bulk).
    pub fn failure(&self) -> Option<String> {
        let ok = match self.workload {
            Workload::Bulk => self.bytes > 0,
            _ => self.ops > 0,
        };
        if ok {
            return None;
        }
        let e = &self.errors;
        Some(if e.refused > 0 && e.refused == e.total {
            format!(
                "no operation succeeded: the server refused every connection ({} refused; \
                 first: {})",
                e.refused,
                self.error_samples
                    .get("refused")
                    .map_or("-", String::as_str)
            )
        } else {
            format!("no operation succeeded ({} errors)", e.total)
        })
    }

    /// (percentile, latency µs) points for a CDF chart, up to the max.
    pub fn cdf(&self) -> Vec<(f64, u64)> {
        if self.histogram.is_empty() {
            return Vec::new();
        }
        let mut v: Vec<(f64, u64)> = self
            .histogram
            .iter_quantiles(4)
            .map(|q| {
                (
                    q.quantile_iterated_to() * 100.0,
                    self.histogram.highest_equivalent(q.value_iterated_to()),
                )
            })
            .collect();
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_us;
        let _ = write!(
            s,
            "workload   {} ({}) against {}, {} connections, {} workers, {:.2} s\n\
             ops        {} ({:.1}/s)\n\
             bytes      {} ({:.3} Gbit/s)\n\
             latency µs {}\n\
             handshakes {} full, {} resumed\n\
             errors     {} (connect {}, handshake {}, verify {}, refused {}, io {}, timeout {}, closed {})\n",
            format!("{:?}", self.workload).to_lowercase(),
            self.mode,
            self.target,
            self.connections,
            self.workers,
            self.duration_s,
            self.ops,
            self.ops_per_s,
            self.bytes,
            self.gbit_per_s,
            l.row(),
            self.full_handshakes,
            self.resumed,
            self.errors.total,
            self.errors.connect,
            self.errors.handshake,
            self.errors.verify,
            self.errors.refused,
            self.errors.io,
            self.errors.timeout,
            self.errors.closed,
        );
        // Writing to a String cannot fail.
        for (k, v) in &self.error_samples {
            let _ = writeln!(s, "first {k} error: {v}");
        }
        if let Some(c) = self.target_cpu_us_per_op {
            let cpu_s = self.target_cpu_s.unwrap_or(0.0);
            let _ = writeln!(s, "target CPU {cpu_s:.3} s, {c:.1} µs/op");
        }
        if let Some(c) = self.target_cpu_ns_per_byte {
            let _ = writeln!(s, "target CPU {c:.3} ns/byte");
        }
        if let Some(c) = self.client_cpu_us_per_op {
            let cpu_s = self.client_cpu_s.unwrap_or(0.0);
            let _ = writeln!(
                s,
                "client CPU {cpu_s:.3} s, {c:.1} µs/op (the bench's own workers)"
            );
        }
        if let Some(f) = self.foreign_cpus {
            let noisy = if f > host::NOISY_FOREIGN_CPUS {
                " (noisy: rerun or quiet the host)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "foreign CPU {f:.2} CPUs on average during the window{noisy}"
            );
        }
        if let Some(r) = self.target_rss_bytes_per_conn {
            let _ = writeln!(
                s,
                "target RSS {} -> {} bytes, {r:.0} bytes/connection ({} established)",
                self.target_rss_before_bytes.unwrap_or(0),
                self.target_rss_after_bytes.unwrap_or(0),
                self.established.unwrap_or(0)
            );
        }
        s
    }
}

/// What the probe read about the target over the window.
pub(super) struct TargetFigures {
    pub(super) cpu_s: Option<f64>,
    pub(super) rss_before: Option<u64>,
    pub(super) rss_after: Option<u64>,
    /// The bench's own workers' CPU over the window, and the foreign CPUs.
    pub(super) client_cpu_s: Option<f64>,
    pub(super) foreign_cpus: Option<f64>,
}

fn latency(hist: &Histogram<u64>) -> Latency {
    if hist.is_empty() {
        return Latency::default();
    }
    Latency {
        p50: hist.value_at_quantile(0.5),
        p90: hist.value_at_quantile(0.9),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
        mean: hist.mean(),
        samples: hist.len(),
    }
}

/// The report of a run of `workers` workers over `window` seconds.
pub(super) fn report(
    opts: &BenchOpts,
    workers: usize,
    window: f64,
    t: worker::WorkerResult,
    target: TargetFigures,
) -> BenchReport {
    let idle = opts.workload == Workload::Idle;
    let (ops, bytes, established) = (t.ops, t.bytes, t.established);
    let TargetFigures {
        cpu_s,
        rss_before,
        rss_after,
        client_cpu_s,
        foreign_cpus,
    } = target;
    let per_op = |c: f64| (ops > 0).then(|| c * 1e6 / ops as f64);
    BenchReport {
        workload: opts.workload,
        mode: if opts.tls.is_some() { "tls" } else { "plain" },
        target: opts.target.to_string(),
        connections: opts.connections,
        workers,
        duration_s: window,
        ops,
        ops_per_s: if idle {
            ops as f64
        } else {
            ops as f64 / window
        },
        bytes,
        gbit_per_s: bytes as f64 * 8.0 / window / 1e9,
        latency_us: latency(&t.hist),
        errors: t.errors,
        error_samples: t.samples,
        full_handshakes: t.full,
        resumed: t.resumed,
        size: opts.size,
        direction: (opts.workload == Workload::Bulk).then_some(opts.direction),
        rate: opts.rate,
        established: idle.then_some(established),
        target_cpu_s: cpu_s,
        // Idle: the window has no operations, only held connections.
        target_cpu_us_per_op: cpu_s.filter(|_| !idle).and_then(per_op),
        target_cpu_ns_per_byte: cpu_s
            .filter(|_| opts.workload == Workload::Bulk && bytes > 0)
            .map(|c| c * 1e9 / bytes as f64),
        target_rss_before_bytes: rss_before,
        target_rss_after_bytes: rss_after,
        target_rss_bytes_per_conn: rss_before
            .zip(rss_after)
            .filter(|_| established > 0)
            .map(|(a, b)| (b as f64 - a as f64) / established as f64),
        client_cpu_s,
        client_cpu_us_per_op: client_cpu_s.filter(|_| !idle).and_then(per_op),
        foreign_cpus,
        histogram: t.hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmeasured_latency_is_null_and_dash() {
        let none = Latency::default();
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"p50":null,"p90":null,"p99":null,"p999":null,"max":null,"mean":null}"#
        );
        assert_eq!(none.row(), "p50 - p90 - p99 - p99.9 - max - (mean -)");
        let some = Latency {
            p50: 5,
            p90: 6,
            p99: 7,
            p999: 8,
            max: 9,
            mean: 5.5,
            samples: 3,
        };
        assert_eq!(
            serde_json::to_string(&some).unwrap(),
            r#"{"p50":5,"p90":6,"p99":7,"p999":8,"max":9,"mean":5.5}"#
        );
        assert_eq!(some.row(), "p50 5 p90 6 p99 7 p99.9 8 max 9 (mean 5.5)");
    }

    #[test]
    fn refused_counts_in_the_total() {
        let mut e = ErrorCounts::default();
        e.add(&ErrorCounts {
            refused: 3,
            closed: 1,
            ..ErrorCounts::default()
        });
        assert_eq!((e.refused, e.total), (3, 4));
    }
}
