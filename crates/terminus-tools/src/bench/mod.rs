//! `terminus bench`: a thread-per-core load generator for TLS (and plaintext) servers.
//!
//! Owns: the bench options and their validation ([`BenchArgs`] -> [`BenchOpts`]), the
//! TLS client config, the run ([`run`]: pinned workers, each with its own mio poller,
//! see `worker.rs`), the target's CPU/memory figures (`target.rs`) and the report
//! ([`BenchReport`], human table or JSON). The demo reuses [`run`] in-process.
//!
//! Workloads: `handshake` (closed loop of connect + handshake [+ echoed request] +
//! close), `bulk` (long streams up/down/echo), `rr` (request/response on persistent
//! connections, closed loop or open loop at `--rate`, latency from the intended send
//! time), `idle` (hold many handshaken connections, report the target's memory per
//! connection).
#![forbid(unsafe_code)]

pub mod host;
mod proof;
pub mod rounds;
pub mod spread;
pub mod stream;
pub mod target;
mod worker;

use crate::client::{ClientConfigBuilder, Trust};
use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
pub use target::TargetProbe;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Handshake,
    Bulk,
    Rr,
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Echo,
}

/// TLS key exchange group offered by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    X25519,
    Secp256r1,
    X25519mlkem768,
}

impl Group {
    /// The aws-lc-rs key exchange group.
    pub fn kx_group(self) -> &'static dyn rustls::crypto::SupportedKxGroup {
        use rustls::crypto::aws_lc_rs::kx_group;
        match self {
            Group::X25519 => kx_group::X25519,
            Group::Secp256r1 => kx_group::SECP256R1,
            Group::X25519mlkem768 => kx_group::X25519MLKEM768,
        }
    }
}

/// Client TLS settings.
#[derive(Clone, Debug)]
pub struct TlsOpts {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Everything a run needs; build it from the CLI with [`BenchArgs::into_opts`] or
/// directly (the demo).
#[derive(Clone, Debug)]
pub struct BenchOpts {
    pub target: SocketAddr,
    pub workload: Workload,
    pub duration: Duration,
    pub connections: usize,
    pub workers: usize,
    /// CPUs to pin worker i to (`cpus[i % len]`); `None` = the last allowed CPUs,
    /// counting down (terminus pins its workers from the first one up).
    pub cpus: Option<Vec<usize>>,
    /// `None` = plaintext.
    pub tls: Option<TlsOpts>,
    pub resume: bool,
    /// Request/response size (handshake, rr) or write chunk (bulk), bytes.
    pub size: usize,
    /// rr open loop: total requests per second over all connections.
    pub rate: Option<f64>,
    pub direction: Direction,
    pub probe: Option<TargetProbe>,
    /// Per-operation limit: connect, handshake, one request/response.
    pub timeout: Duration,
    /// Connections each worker opens at once while setting up (idle, bulk, rr).
    pub ramp: usize,
    /// Set to end the run early (Ctrl-C in the demo).
    pub stop: Option<Arc<AtomicBool>>,
    /// Other processes of the run (backends): their CPU is not foreign CPU. The
    /// bench's own process and a `--target-pid` always count as the run.
    pub run_pids: Vec<u32>,
}

impl BenchOpts {
    /// Defaults for a workload against `target`: plaintext, 1 worker, 2 s.
    pub fn new(target: SocketAddr, workload: Workload) -> BenchOpts {
        BenchOpts {
            target,
            workload,
            duration: Duration::from_secs(2),
            connections: default_connections(workload),
            workers: 1,
            cpus: None,
            tls: None,
            resume: false,
            size: default_size(workload),
            rate: None,
            direction: Direction::Echo,
            probe: None,
            timeout: Duration::from_secs(10),
            ramp: 256,
            stop: None,
            run_pids: Vec::new(),
        }
    }
}

fn default_connections(w: Workload) -> usize {
    match w {
        Workload::Handshake | Workload::Rr => 16,
        Workload::Bulk => 1,
        Workload::Idle => 1000,
    }
}

fn default_size(w: Workload) -> usize {
    match w {
        Workload::Handshake | Workload::Idle => 0,
        Workload::Rr => 64,
        Workload::Bulk => 64 * 1024,
    }
}

/// Where progress goes while a run is measuring.
#[derive(Clone, Debug)]
pub enum Progress {
    Quiet,
    /// One line per second on stderr, prefixed with the label.
    Stderr(String),
}

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
    fn add(&mut self, o: &ErrorCounts) {
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
    fn row(&self) -> String {
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
        let _ = std::fmt::Write::write_fmt(
            &mut s,
            format_args!(
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
            ),
        );
        for (k, v) in &self.error_samples {
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!("first {k} error: {v}\n"));
        }
        if let Some(c) = self.target_cpu_us_per_op {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "target CPU {:.3} s, {c:.1} µs/op\n",
                    self.target_cpu_s.unwrap_or(0.0)
                ),
            );
        }
        if let Some(c) = self.target_cpu_ns_per_byte {
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!("target CPU {c:.3} ns/byte\n"));
        }
        if let Some(c) = self.client_cpu_us_per_op {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "client CPU {:.3} s, {c:.1} µs/op (the bench's own workers)\n",
                    self.client_cpu_s.unwrap_or(0.0)
                ),
            );
        }
        if let Some(f) = self.foreign_cpus {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "foreign CPU {f:.2} CPUs on average during the window{}\n",
                    if f > host::NOISY_FOREIGN_CPUS {
                        " (noisy: rerun or quiet the host)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if let Some(r) = self.target_rss_bytes_per_conn {
            let _ = std::fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "target RSS {} -> {} bytes, {r:.0} bytes/connection ({} established)\n",
                    self.target_rss_before_bytes.unwrap_or(0),
                    self.target_rss_after_bytes.unwrap_or(0),
                    self.established.unwrap_or(0)
                ),
            );
        }
        s
    }
}

/// Raise the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Run one measurement. Blocks for about setup + `duration`.
pub fn run(opts: &BenchOpts, progress: Progress) -> Result<BenchReport> {
    let workers = opts.workers.clamp(1, opts.connections.max(1));
    // Each connection is an fd here (and two on a proxy), plus a margin for the rest.
    let nofile = raise_nofile();
    if opts.connections as u64 + 64 > nofile {
        return Err(anyhow!(
            "{} connections need more open files than the limit allows ({nofile}; raise `ulimit -n`)",
            opts.connections
        ));
    }
    let cpus = worker_cpus(opts, workers);

    // Fail before the load, not after it, when the target cannot be read.
    if let Some(p) = &opts.probe {
        p.cpu_ns().context("cannot read the target's CPU time")?;
    }
    let idle = opts.workload == Workload::Idle;
    let rss_before = match (&opts.probe, idle) {
        (Some(p), true) => Some(p.rss_bytes().context("target memory before opening")?),
        _ => None,
    };
    let sh = Arc::new(worker::Shared {
        opts: opts.clone(),
        tls: opts
            .tls
            .as_ref()
            .map(|t| (t.config.clone(), t.server_name.clone())),
        progress: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: Barrier::new(workers + 1),
        end: Barrier::new(workers + 1),
        release: Barrier::new(workers + 1),
    });
    let handles = spawn_workers(opts, &sh, &cpus, workers)?;

    let run_pids = run_pids(opts);
    let client = TargetProbe::Threads {
        pid: std::process::id(),
        prefix: "bench-w".into(),
    };
    sh.start.wait();
    let cpu0 = opts.probe.as_ref().map(|p| p.cpu_ns()).transpose();
    let host0 = host::HostSample::read(&run_pids).ok();
    let client0 = client.cpu_ns().ok();
    let t0 = Instant::now();
    wait_window(opts, &sh, &progress, t0);
    sh.stop.store(true, Ordering::Relaxed);
    sh.end.wait();
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = opts.probe.as_ref().map(|p| p.cpu_ns()).transpose();
    let host1 = host::HostSample::read(&run_pids).ok();
    let client1 = client.cpu_ns().ok();
    let rss_after = match (&opts.probe, idle) {
        (Some(p), true) => Some(p.rss_bytes().context("target memory after opening")),
        _ => None,
    };
    sh.release.wait();
    let mut total = join_workers(handles)?;
    let (cpu0, cpu1) = (
        cpu0.context("target CPU at the start")?,
        cpu1.context("target CPU at the end")?,
    );
    let target_ns = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    // A target read over HTTP is a process the samples do not hold: add its CPU.
    let admin_ns = match opts.probe {
        Some(TargetProbe::Admin { .. }) => target_ns.unwrap_or(0),
        _ => 0,
    };
    let target = TargetFigures {
        cpu_s: target_ns.map(|ns| ns as f64 / 1e9),
        rss_before,
        rss_after: rss_after.transpose()?,
        client_cpu_s: client0
            .zip(client1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
        foreign_cpus: host0
            .zip(host1)
            .map(|(a, b)| host::foreign_cpus(a, b, admin_ns, window)),
    };
    if opts.workload == Workload::Bulk {
        total.ops = total.bytes / opts.size.max(1) as u64;
    }
    Ok(report(opts, workers, window, total, target))
}

/// The processes whose CPU is the run's: this one, a `/proc` target, `run_pids`.
fn run_pids(opts: &BenchOpts) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    match &opts.probe {
        Some(TargetProbe::Pid(p)) | Some(TargetProbe::Threads { pid: p, .. }) => pids.push(*p),
        _ => {}
    }
    pids.extend(&opts.run_pids);
    pids
}

/// The CPU of each worker: `--cpus` in turn, else the allowed CPUs from the last.
fn worker_cpus(opts: &BenchOpts, workers: usize) -> Vec<Option<usize>> {
    let allowed = terminus_core::host::cpus::allowed_cpus();
    (0..workers)
        .map(|i| match &opts.cpus {
            Some(list) if !list.is_empty() => Some(list[i % list.len()]),
            Some(_) => None,
            None if allowed.is_empty() => None,
            None => Some(allowed[allowed.len() - 1 - i % allowed.len()]),
        })
        .collect()
}

/// One thread per worker, the connections split evenly (the first ones get one more).
fn spawn_workers(
    opts: &BenchOpts,
    sh: &Arc<worker::Shared>,
    cpus: &[Option<usize>],
    workers: usize,
) -> Result<Vec<std::thread::JoinHandle<worker::WorkerResult>>> {
    let mut handles = Vec::new();
    let mut first = 0;
    for (i, cpu) in cpus.iter().enumerate() {
        let n = opts.connections / workers + usize::from(i < opts.connections % workers);
        let sh = sh.clone();
        let cpu = *cpu;
        let h = std::thread::Builder::new()
            .name(format!("bench-w{i}"))
            .spawn(move || worker::guarded(&sh, i, first, n, cpu))
            .context("cannot spawn a bench worker")?;
        first += n;
        handles.push(h);
    }
    Ok(handles)
}

/// Wait out the measuring window (or a stop), printing a progress line a second.
fn wait_window(opts: &BenchOpts, sh: &worker::Shared, progress: &Progress, t0: Instant) {
    let end = t0 + opts.duration;
    let user_stop = || {
        opts.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    let mut next_line = t0 + Duration::from_secs(1);
    let mut last = 0u64;
    while Instant::now() < end && !user_stop() && !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())),
        );
        if let (Progress::Stderr(label), true) = (progress, Instant::now() >= next_line) {
            let p = sh.progress.load(Ordering::Relaxed);
            let what = if opts.workload == Workload::Bulk {
                format!("{:.3} Gbit/s", (p - last) as f64 * 8.0 / 1e9)
            } else {
                format!("{} ops/s", p - last)
            };
            let _ = writeln!(
                std::io::stderr(),
                "{label}{:>4.0}s  {what}",
                t0.elapsed().as_secs_f64()
            );
            last = p;
            next_line += Duration::from_secs(1);
        }
    }
}

/// The workers' results, summed (the first error sample of each kind kept).
fn join_workers(
    handles: Vec<std::thread::JoinHandle<worker::WorkerResult>>,
) -> Result<worker::WorkerResult> {
    let mut t = worker::WorkerResult::empty();
    for h in handles {
        let r = h.join().map_err(|_| anyhow!("a bench worker panicked"))?;
        t.hist
            .add(&r.hist)
            .map_err(|e| anyhow!("histogram: {e:?}"))?;
        t.ops += r.ops;
        t.bytes += r.bytes;
        t.errors.add(&r.errors);
        t.resumed += r.resumed;
        t.full += r.full;
        t.established += r.established;
        for (k, v) in r.samples {
            t.samples.entry(k).or_insert(v);
        }
    }
    t.errors.add(&ErrorCounts::default());
    Ok(t)
}

/// What the probe read about the target over the window.
struct TargetFigures {
    cpu_s: Option<f64>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    /// The bench's own workers' CPU over the window, and the foreign CPUs.
    client_cpu_s: Option<f64>,
    foreign_cpus: Option<f64>,
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

fn report(
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

// ---------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------

/// `terminus bench` arguments (see interface.md). TLS is the default: give
/// `--ca FILE` or `--dangerous-skip-verify`, or `--plain` for plaintext.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// HOST:PORT of the server to load.
    #[arg(long)]
    pub target: String,
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Measured window in seconds (after setup) [default: 10].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent connections [default: handshake/rr 16, bulk 1, idle 1000].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Client worker threads, each with its own event loop, pinned to a CPU.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// CPUs to pin the workers to, e.g. `1,2` [default: the last allowed CPUs].
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// TLS (the default).
    #[arg(long)]
    pub tls: bool,
    /// Plaintext TCP.
    #[arg(long)]
    pub plain: bool,
    /// PEM CA bundle to verify the server with.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    pub dangerous_skip_verify: bool,
    /// Name to send as SNI and verify [default: the target's host].
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Resume sessions with tickets (one session store per worker).
    #[arg(long)]
    pub resume: bool,
    /// ALPN protocol to offer (repeatable).
    #[arg(long)]
    pub alpn: Vec<String>,
    /// Request size (handshake: echoed request if > 0; rr [default 64]) or write chunk
    /// (bulk [default 65536]), bytes.
    #[arg(long)]
    pub size: Option<usize>,
    /// rr only: open loop at this many requests per second in total.
    #[arg(long)]
    pub rate: Option<f64>,
    /// bulk only [default: echo].
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Read the target's CPU (and memory) from /proc/PID.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Read the target's CPU (and memory) from http://HOST:PORT/metrics.
    #[arg(long)]
    pub target_admin: Option<String>,
    /// Key exchange group to offer [default: rustls' list].
    #[arg(long, value_enum)]
    pub group: Option<Group>,
    /// Per-operation timeout (connect, handshake, one request), milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Connections each worker opens at once while setting up.
    #[arg(long, default_value_t = 256)]
    pub ramp: usize,
    /// Repeat the measurement N times and report medians with their spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Another process of the run (a backend), repeatable: its CPU is not counted
    /// as foreign CPU.
    #[arg(long)]
    pub run_pid: Vec<u32>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// With --json: add `latency_cdf`, the whole latency distribution (all rounds
    /// merged) as `{"samples": N, "points": [[percentile, µs], ...]}`, for charts.
    #[arg(long, requires = "json")]
    pub latency_cdf: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

fn resolve(what: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{what} {s:?}: not HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{what} {s:?}: resolves to no address"))
}

impl BenchArgs {
    /// Validate and build the options; `Err` is a one-line usage error (exit 2).
    pub fn into_opts(self) -> Result<BenchOpts, String> {
        let target = resolve("--target", &self.target)?;
        self.check_combinations()?;
        let (duration, connections, size) = self.check_numbers()?;
        let tls = self.tls_opts()?;
        let timeout = Duration::from_millis(self.timeout_ms);
        let probe = self.probe(timeout)?;
        Ok(BenchOpts {
            target,
            workload: self.workload,
            duration: Duration::from_secs_f64(duration),
            connections,
            workers: self.workers,
            cpus: self.cpus,
            tls,
            resume: self.resume,
            size,
            rate: self.rate,
            direction: self.direction.unwrap_or(Direction::Echo),
            probe,
            timeout,
            ramp: self.ramp,
            stop: None,
            run_pids: self.run_pid,
        })
    }

    /// Options that exclude or need each other, or apply to one workload only.
    fn check_combinations(&self) -> Result<(), String> {
        let w = self.workload;
        if self.tls && self.plain {
            return Err("--tls and --plain exclude each other".into());
        }
        if self.ca.is_some() && self.dangerous_skip_verify {
            return Err("--ca and --dangerous-skip-verify exclude each other".into());
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => return Err("--client-cert needs --client-key".into()),
            (None, Some(_)) => return Err("--client-key needs --client-cert".into()),
            _ => {}
        }
        if self.rate.is_some() && w != Workload::Rr {
            return Err("--rate applies to --workload rr only".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(format!("--rate must be a positive number, got {r}"));
            }
        }
        if self.direction.is_some() && w != Workload::Bulk {
            return Err("--direction applies to --workload bulk only".into());
        }
        if self.target_pid.is_some() && self.target_admin.is_some() {
            return Err("--target-pid and --target-admin exclude each other".into());
        }
        Ok(())
    }

    /// Ranges of the numbers and CPUs: (duration s, connections, size) with defaults.
    fn check_numbers(&self) -> Result<(f64, usize, usize), String> {
        let w = self.workload;
        let duration = self.duration.unwrap_or(10.0);
        if !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0) {
            return Err(format!(
                "--duration must be more than 0 and at most 86400 seconds, got {duration}"
            ));
        }
        let connections = self.connections.unwrap_or(default_connections(w));
        if connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.ramp == 0 {
            return Err("--ramp must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        if let Some(cpus) = &self.cpus {
            let allowed = terminus_core::host::cpus::allowed_cpus();
            if let Some(c) = cpus
                .iter()
                .find(|c| !allowed.is_empty() && !allowed.contains(c))
            {
                return Err(format!(
                    "--cpus: CPU {c} is not in this process's affinity mask {allowed:?}"
                ));
            }
        }
        let size = self.size.unwrap_or(default_size(w));
        if size == 0 && matches!(w, Workload::Rr | Workload::Bulk) {
            return Err(format!("--size must be at least 1 for --workload {w:?}").to_lowercase());
        }
        if size > 64 << 20 {
            return Err(format!("--size must be at most 64 MiB, got {size}"));
        }
        Ok((duration, connections, size))
    }

    /// The client TLS settings; `None` with `--plain`.
    fn tls_opts(&self) -> Result<Option<TlsOpts>, String> {
        let tls_wanted = self.tls
            || self.ca.is_some()
            || self.dangerous_skip_verify
            || self.client_cert.is_some()
            || self.resume
            || !self.alpn.is_empty()
            || self.server_name.is_some()
            || self.group.is_some();
        if self.plain && tls_wanted && !self.tls {
            return Err(
                "--plain excludes the TLS options (--ca, --dangerous-skip-verify, --client-cert, \
                 --resume, --alpn, --server-name, --group)"
                    .into(),
            );
        }
        if self.plain {
            return Ok(None);
        }
        let trust = match (&self.ca, self.dangerous_skip_verify) {
            (Some(ca), _) => Trust::Roots(
                terminus_core::tls::load_roots(std::slice::from_ref(ca))
                    .map_err(|e| e.to_string())?,
            ),
            (None, true) => Trust::DangerousSkipVerify,
            (None, false) => {
                return Err(
                    "TLS needs --ca FILE or --dangerous-skip-verify (or use --plain)".into(),
                )
            }
        };
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => self
                .target
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| format!("--server-name {name:?}: {e}"))?;
        let mut config = ClientConfigBuilder::new(trust).alpn(&self.alpn);
        if let Some(g) = self.group {
            config = config.kx_groups(&[g.kx_group()]);
        }
        if let Some((cert, key)) = self.client_cert.clone().zip(self.client_key.clone()) {
            config = config.client_cert_files(cert, key);
        }
        Ok(Some(TlsOpts {
            config: config.build()?,
            server_name,
        }))
    }

    /// Where the target's CPU and memory come from, if anywhere.
    fn probe(&self, timeout: Duration) -> Result<Option<TargetProbe>, String> {
        Ok(match (self.target_pid, &self.target_admin) {
            (Some(pid), _) => {
                if !std::path::Path::new(&format!("/proc/{pid}/task")).exists() {
                    return Err(format!("--target-pid {pid}: no such process"));
                }
                Some(TargetProbe::Pid(pid))
            }
            (None, Some(a)) => Some(TargetProbe::Admin {
                addr: resolve("--target-admin", a)?,
                timeout,
            }),
            _ => None,
        })
    }
}

/// `terminus bench ...`: exit 2 on bad usage, 1 on a failed run (any round).
pub fn run_cli(args: BenchArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let json = args.json;
    let with_cdf = args.latency_cdf;
    let quiet = args.quiet || json;
    let n = args.rounds as usize;
    let opts = match args.into_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("terminus: bench: {e}");
            return ExitCode::from(2);
        }
    };
    let mut per_round = Vec::new();
    for i in 1..=n {
        let progress = match (quiet, n) {
            (true, _) => Progress::Quiet,
            (false, 1) => Progress::Stderr("bench ".into()),
            (false, _) => Progress::Stderr(format!("bench round {i}/{n} ")),
        };
        match run(&opts, progress) {
            Ok(r) => per_round.push(r),
            Err(e) => {
                eprintln!("terminus: bench: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    let failure = per_round
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.failure().map(|w| (i + 1, w)));
    let r = rounds::summarize(per_round);
    if json {
        // Through a Value only when adding the CDF: it sorts the keys.
        let text = if with_cdf {
            serde_json::to_value(&r).and_then(|mut v| {
                v["latency_cdf"] = serde_json::json!({
                    "samples": r.summary.histogram.len(),
                    "points": r.summary.cdf(),
                });
                serde_json::to_string(&v)
            })
        } else {
            serde_json::to_string(&r)
        };
        match text {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("terminus: bench: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", r.table());
    }
    if let Some((i, why)) = failure {
        if n > 1 {
            eprintln!("terminus: bench: round {i}: {why}");
        } else {
            eprintln!("terminus: bench: {why}");
        }
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
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
