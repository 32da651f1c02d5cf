//! demo: the README's first command. Makes a temporary PKI, starts the built-in
//! backends (plaintext echo, TLS echo for re-encryption), starts terminus in-process
//! (the same `server::start` as `run`, one pinned worker) with three listeners —
//! terminate, re-encrypt, mutual TLS — and measures the same workloads (`bench::run`)
//! in four modes: plaintext straight to the backend, termination, re-encryption and
//! mTLS. After an unmeasured warm-up, the measurements run in rounds interleaved
//! across modes (round 1: each workload on every mode, then round 2 ...), so drift on
//! a shared host hits every mode alike. The results become a [`report::Comparison`]:
//! one table of medians over the rounds with their spread (min–max), ratios against
//! termination (per round, then the median), the foreign CPU of each round and the
//! bench client's own CPU per op, and a self-contained HTML report.
//!
//! Server CPU is the terminus worker threads' own CPU time (`terminus-w*`), so the
//! in-process load generator and backends are not counted.
#![forbid(unsafe_code)]

use crate::backend;
use crate::bench::spread::Spread;
use crate::bench::{
    self, BenchOpts, BenchReport, Direction, Progress, TargetProbe, TlsOpts, Workload,
};
use crate::certs::TestPki;
use crate::client::{ClientConfigBuilder, Trust};
use crate::report::{self, Cdf, CdfRun, Column, Comparison, Section};
use anyhow::{anyhow, Context, Result};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default total measuring budget, seconds, split over rounds x modes x workloads:
/// 2 s windows with 3 rounds (the warm-up and setup add about 10 s). 1 s windows let a
/// 100 ms scheduling hiccup move a figure by 10 %; 3 s windows flagged no fewer
/// figures noisy on the busy project host (BENCHMARKING.md).
pub const DEFAULT_SECONDS: u64 = 72;

/// Default number of rounds.
pub const DEFAULT_ROUNDS: usize = 3;

/// The longest unmeasured warm-up run of each workload x mode before round 1.
const WARM_UP: Duration = Duration::from_millis(500);

const MODES: [&str; 4] = ["plaintext (direct)", "terminate", "reencrypt", "mtls"];
const TERMINATE: usize = 1;

/// What one mode measured in one round.
#[derive(Default)]
struct ModeResult {
    handshake: Option<BenchReport>,
    bulk: Option<BenchReport>,
    rr: Option<BenchReport>,
}

/// Demo options beyond the budget.
pub struct DemoOpts {
    pub seconds: u64,
    /// Rounds, interleaved across modes; the budget is split over them.
    pub rounds: usize,
    pub serve: bool,
    /// Where to write the HTML report (default: the system temp dir).
    pub report: Option<PathBuf>,
}

/// Run the demo. `Ok(false)` when interrupted (Ctrl-C) before the end.
pub fn run(o: &DemoOpts) -> Result<bool> {
    terminus_core::tls::install_provider();
    let stop = stop_on_signals()?;

    let dir = TempDir::new()?;
    let pki = crate::certs::test_pki(1, "example.org")?;
    pki.write(&dir.0)?;
    let d = |f: &str| dir.0.join(f);
    let (echo, tls_echo) = backends(&dir)?;

    let cpus = terminus_core::host::cpus::allowed_cpus();
    let cfg_path = write_config(&dir, cpus.first(), echo.addr, tls_echo.addr)?;
    let cfg = terminus_core::config::Config::load(&cfg_path).map_err(|e| anyhow!("{e}"))?;
    let server = terminus_core::app::start(&cfg).map_err(|e| anyhow!("{e}"))?;
    let addr = |n: &str| server.addr(n).with_context(|| format!("listener {n}"));

    let tls = |client_auth: bool| tls_opts(&pki, client_auth.then_some(&dir));
    let targets = [
        (echo.addr, None),
        (addr("terminate")?, tls(false)?),
        (addr("reencrypt")?, tls(false)?),
        (addr("mtls")?, tls(true)?),
    ];

    // Rounds x 4 modes x 3 workloads share the budget.
    let rounds = o.rounds.max(1);
    let per = Duration::from_secs_f64((o.seconds as f64 / (12 * rounds) as f64).max(0.25));
    // The load generator runs on the last CPU, terminus's worker on the first.
    let client_cpus = (cpus.len() > 1).then(|| vec![cpus[cpus.len() - 1]]);
    let io = server.io.backend.as_str();
    println!(
        "terminus demo: terminator with 1 {io} worker{}, echo backends on {} (plain) and {} (TLS); \
         {rounds} round{} of {:.2} s per measurement, work dir {}",
        cpus.first().map(|c| format!(" on CPU {c}")).unwrap_or_default(),
        echo.addr,
        tls_echo.addr,
        if rounds == 1 { "" } else { "s" },
        per.as_secs_f64(),
        dir.0.display()
    );
    let started = Instant::now();
    let results = measure(&targets, rounds, per, &client_cpus, &stop)?;
    let interrupted = stop.load(Ordering::Relaxed);
    let info = RunInfo {
        load: format!(
            "{} round{} x 4 modes x 3 workloads, {:.2} s per measurement, interleaved; \
             handshake: 8 connections, connect + full TLS 1.3 handshake + one 64 B echoed \
             request + close; bulk: 1 connection echoing 64 KiB writes; rr: 64 B requests on \
             8 kept connections, closed loop; terminus: 1 {io} worker{}; load generator: 1 \
             worker{}",
            rounds,
            if rounds == 1 { "" } else { "s" },
            per.as_secs_f64(),
            cpus.first()
                .map(|c| format!(" on CPU {c}"))
                .unwrap_or_default(),
            client_cpus
                .as_ref()
                .map(|c| format!(" on CPU {}", c[0]))
                .unwrap_or_default(),
        ),
        io,
        client_pinned: client_cpus.is_some(),
    };
    if results.is_empty() {
        // Stopped during the warm-up: no figure to report.
        println!("interrupted before the first measurement: no report");
    } else {
        report(o, &results, started, &info)?;
    }

    if o.serve && !interrupted {
        serve(&d("ca.pem"), addr("terminate")?, &stop);
    } else if !o.serve {
        println!("Run `terminus demo --serve` to keep the terminator up and try it with curl or openssl s_client.");
    }
    server.stop();
    server.join().map_err(|e| anyhow!("{e}"))?;
    drop((echo, tls_echo));
    Ok(!interrupted)
}

/// SIGINT/SIGTERM set the returned flag; a second signal exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal (flag already set) exits at once; the first asks nicely.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// The plaintext echo backend and the TLS one (the PKI's server certificate).
fn backends(dir: &TempDir) -> Result<(backend::Handle, backend::Handle)> {
    let echo = backend::spawn(backend::Mode::Echo, "127.0.0.1:0".parse()?, None)?;
    let tls_echo = backend::spawn(
        backend::Mode::Echo,
        "127.0.0.1:0".parse()?,
        Some(backend::server_tls(
            &dir.0.join("server.pem"),
            &dir.0.join("server.key"),
        )?),
    )?;
    Ok((echo, tls_echo))
}

/// `terminus.toml` in `dir`: one worker (on `cpu`), the three listeners.
fn write_config(
    dir: &TempDir,
    cpu: Option<&usize>,
    echo: SocketAddr,
    tls_echo: SocketAddr,
) -> Result<PathBuf> {
    let cpu_line = cpu.map(|c| format!("cpus = [{c}]\n")).unwrap_or_default();
    let listener = |name: &str, up: SocketAddr, extra: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
             key = \"server.key\"\nupstreams = [\"{up}\"]\n{extra}\n"
        )
    };
    let cfg_text = format!(
        "[runtime]\nworkers = 1\n{cpu_line}\n[log]\naccess = \"off\"\n\n{}{}{}",
        listener("terminate", echo, ""),
        listener(
            "reencrypt",
            tls_echo,
            "[listeners.upstream_tls]\nca = [\"ca.pem\"]\nserver_name = \"localhost\"\n"
        ),
        listener(
            "mtls",
            echo,
            "[listeners.client_auth]\nmode = \"require\"\nca = [\"ca.pem\"]\n\
             allow = [\"spiffe://example.org/client\"]\n"
        ),
    );
    let cfg_path = dir.0.join("terminus.toml");
    std::fs::write(&cfg_path, cfg_text)?;
    Ok(cfg_path)
}

/// The bench's TLS settings: trust the PKI's CA; with `client_cert_dir`, present the
/// client certificate written there.
fn tls_opts(pki: &TestPki, client_cert_dir: Option<&TempDir>) -> Result<Option<TlsOpts>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone())?;
    let mut config = ClientConfigBuilder::new(Trust::Roots(roots));
    if let Some(dir) = client_cert_dir {
        config = config.client_cert_files(dir.0.join("client.pem"), dir.0.join("client.key"));
    }
    Ok(Some(TlsOpts {
        config: config.build().map_err(|e| anyhow!(e))?,
        server_name: ServerName::try_from("localhost")?,
    }))
}

/// Every round of every workload x mode, in order, until `stop`: `[round][mode]`
/// (an interrupted round is kept with what it measured). Within a round each
/// workload runs on the four modes back to back, so the measurements a ratio pairs are
/// one window apart rather than a third of a round. Before round 1 every workload x
/// mode runs once unmeasured (warm-up: the first window of a fresh process pays for
/// allocator growth, page faults and cold caches, and came out low).
fn measure(
    targets: &[(SocketAddr, Option<TlsOpts>)],
    rounds: usize,
    per: Duration,
    client_cpus: &Option<Vec<usize>>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Vec<ModeResult>>> {
    let probe = TargetProbe::Threads {
        pid: std::process::id(),
        prefix: "terminus-w".into(),
    };
    let opts = |m: usize, wl: Workload, duration: Duration| {
        let (target, tls) = &targets[m];
        let mut opts = BenchOpts::new(*target, wl);
        opts.duration = duration;
        opts.tls = tls.clone();
        opts.cpus = client_cpus.clone();
        opts.stop = Some(stop.clone());
        opts.timeout = Duration::from_secs(5);
        opts.probe = (m != 0).then(|| probe.clone());
        shape(&mut opts);
        opts
    };
    let workloads = [Workload::Handshake, Workload::Bulk, Workload::Rr];
    let warm = per.min(WARM_UP);
    eprintln!(
        "  warm-up: every workload and mode for {:.2} s, not counted",
        warm.as_secs_f64()
    );
    for wl in workloads {
        for m in 0..targets.len() {
            if stop.load(Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            bench::run(&opts(m, wl, warm), Progress::Quiet)?;
        }
    }
    let mut results: Vec<Vec<ModeResult>> = Vec::new();
    for round in 1..=rounds {
        results.push((0..targets.len()).map(|_| ModeResult::default()).collect());
        for wl in workloads {
            for m in 0..targets.len() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(results);
                }
                let label = format!(
                    "  round {round}/{rounds} {:<18} {:<9}",
                    MODES[m],
                    format!("{wl:?}").to_lowercase()
                );
                eprintln!("{label} measuring...");
                let r = bench::run(&opts(m, wl, per), Progress::Stderr(label))?;
                if r.errors.total > 0 {
                    eprintln!(
                        "  note: {} errors in {} {wl:?}, round {round} ({:?})",
                        r.errors.total, MODES[m], r.errors
                    );
                }
                let slot = &mut results[round - 1][m];
                match wl {
                    Workload::Handshake => slot.handshake = Some(r),
                    Workload::Bulk => slot.bulk = Some(r),
                    _ => slot.rr = Some(r),
                }
            }
        }
    }
    Ok(results)
}

/// Connections, sizes and direction of the demo's workloads.
fn shape(opts: &mut BenchOpts) {
    match opts.workload {
        // One small echoed request per connection: the upstream leg (and, for
        // re-encryption, its TLS handshake) is then part of every operation;
        // a bare handshake would close before terminus finishes upstream work.
        Workload::Handshake => {
            opts.connections = 8;
            opts.size = 64;
        }
        Workload::Bulk => {
            opts.connections = 1;
            opts.direction = Direction::Echo;
        }
        _ => {
            opts.connections = 8;
            opts.size = 64;
        }
    }
}

/// What the report says about the run itself.
struct RunInfo {
    /// The I/O backend terminus runs on.
    io: &'static str,
    /// The load parameters, one line.
    load: String,
    /// The load generator has a CPU of its own.
    client_pinned: bool,
}

/// The table on stdout and the HTML report file.
fn report(
    o: &DemoOpts,
    results: &[Vec<ModeResult>],
    started: Instant,
    info: &RunInfo,
) -> Result<()> {
    let mut meta: Vec<(String, String)> = report::meta::collect()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    meta.push(("io backend".into(), info.io.to_string()));
    meta.push(("load".into(), info.load.clone()));
    let comparison = comparison(results, meta);
    println!();
    print!("{}", comparison.text());
    println!(
        "\n(measured in {} interleaved round{} on this machine, {:.0} s: each figure is the median \
         over the rounds, min–max below it; \"vs term\" is the figure divided by terminate's in the \
         same round, then the median of those ratios. Compare ratios, not absolutes. Server CPU is \
         the terminus worker thread's own CPU time; the client{} shares the machine.)",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64(),
        if info.client_pinned {
            " runs on another CPU but"
        } else {
            ""
        }
    );
    let path = o
        .report
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("terminus-demo-report.html"));
    std::fs::write(&path, report::html::html(&comparison))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("HTML report: {}", path.display());
    Ok(())
}

/// The demo's results as a report: one section, the modes as series, terminate the
/// baseline; bar charts of handshakes/s, server CPU per handshake and Gbit/s; the
/// handshake and rr latency CDFs (each mode's rounds merged).
fn comparison(results: &[Vec<ModeResult>], meta: Vec<(String, String)>) -> Comparison {
    let charts = [
        Some("handshakes per second"),
        Some("server CPU per handshake (µs)"),
        Some("Gbit/s (bulk echo)"),
        None,
        None,
    ];
    let columns = COLUMNS
        .iter()
        .zip(charts)
        .map(|((name, decimals, get), chart)| Column {
            name: name.to_string(),
            decimals: *decimals,
            chart: chart.map(String::from),
            values: (0..MODES.len())
                .map(|m| per_round(results, m, *get))
                .collect(),
        })
        .collect();
    let cdf = |title: &str, get: fn(&ModeResult) -> &Option<BenchReport>| Cdf {
        title: title.into(),
        runs: (0..MODES.len())
            .map(|m| {
                merged(results, m, get)
                    .map(|r| CdfRun {
                        samples: r.histogram.len(),
                        points: r.cdf(),
                    })
                    .into_iter()
                    .collect()
            })
            .collect(),
    };
    Comparison {
        title: "terminus demo".into(),
        meta,
        intro: "The same workloads against a plaintext backend directly and through terminus \
                (termination, re-encryption, mutual TLS), in rounds interleaved across the modes. \
                Compare ratios, not absolutes; server CPU is the terminus worker thread's own CPU \
                time."
            .into(),
        sections: vec![Section {
            heading: None,
            series_kind: "mode".into(),
            series: MODES.iter().map(|m| m.to_string()).collect(),
            baseline: MODES[TERMINATE].into(),
            ratio_header: "vs term".into(),
            columns,
            cdfs: vec![
                cdf("connect + handshake + 64 B echo: latency CDF", |r| {
                    &r.handshake
                }),
                cdf("request/response (64 B echo): latency CDF", |r| &r.rr),
            ],
            notes: vec![
                bench::rounds::foreign_line(&foreign_per_round(results)),
                client_line(results),
            ],
        }],
    }
}

/// One workload of mode `m` over all rounds (histograms merged), if measured.
fn merged(
    results: &[Vec<ModeResult>],
    m: usize,
    get: fn(&ModeResult) -> &Option<BenchReport>,
) -> Option<BenchReport> {
    let mut merged: Option<BenchReport> = None;
    for r in results
        .iter()
        .filter_map(|round| get(round.get(m)?).as_ref())
    {
        match &mut merged {
            None => merged = Some(r.clone()),
            Some(a) => {
                let _ = a.histogram.add(&r.histogram);
            }
        }
    }
    merged
}

/// `--serve`: how to try the terminator, then wait for Ctrl-C.
fn serve(ca: &Path, t: SocketAddr, stop: &AtomicBool) {
    println!("\nServing until Ctrl-C. Try it:");
    println!(
        "  curl --cacert {} https://localhost:{}/ -v   (the echo backend returns your request)",
        ca.display(),
        t.port()
    );
    println!(
        "  openssl s_client -connect {t} -CAfile {} -verify_return_error",
        ca.display()
    );
    println!(
        "  terminus bench --target {t} --workload handshake --ca {} --server-name localhost --duration 5",
        ca.display()
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok(b: &Option<BenchReport>) -> Option<&BenchReport> {
    b.as_ref().filter(|b| b.ops > 0)
}

/// A figure of the table: header, decimals, and its value for a mode in one round.
type Figure = (&'static str, usize, fn(&ModeResult) -> Option<f64>);

const COLUMNS: [Figure; 5] = [
    ("handshakes/s", 0, |r| ok(&r.handshake).map(|b| b.ops_per_s)),
    ("srv CPU µs/hs", 1, |r| {
        ok(&r.handshake).and_then(|b| b.target_cpu_us_per_op)
    }),
    ("Gbit/s", 2, |r| ok(&r.bulk).map(|b| b.gbit_per_s)),
    ("rr p50 µs", 0, |r| {
        ok(&r.rr).map(|b| b.latency_us.p50 as f64)
    }),
    ("rr p99 µs", 0, |r| {
        ok(&r.rr).map(|b| b.latency_us.p99 as f64)
    }),
];

/// A figure of mode `m` in each round (`None` where it was not measured).
fn per_round(
    results: &[Vec<ModeResult>],
    m: usize,
    get: fn(&ModeResult) -> Option<f64>,
) -> Vec<Option<f64>> {
    results.iter().map(|r| r.get(m).and_then(get)).collect()
}

/// Each round's foreign CPUs: the average over its windows, weighted by their length.
fn foreign_per_round(results: &[Vec<ModeResult>]) -> Vec<f64> {
    results
        .iter()
        .filter_map(|round| {
            let (mut cpu_s, mut secs) = (0.0, 0.0);
            for r in round
                .iter()
                .flat_map(|m| [&m.handshake, &m.bulk, &m.rr])
                .flatten()
            {
                if let Some(f) = r.foreign_cpus {
                    cpu_s += f * r.duration_s;
                    secs += r.duration_s;
                }
            }
            (secs > 0.0).then(|| cpu_s / secs)
        })
        .collect()
}

/// The bench client's own CPU per handshake and per request against terminate
/// (medians), beside the server's: the client is not the bottleneck when it pays
/// about as much as (or less than) the server.
fn client_line(results: &[Vec<ModeResult>]) -> String {
    let med = |get: fn(&ModeResult) -> Option<f64>| {
        Spread::of_some(per_round(results, TERMINATE, get))
            .map_or("-".into(), |s| format!("{:.1}", s.median))
    };
    format!(
        "client CPU (the bench's own workers, terminate, median): {} µs/handshake, {} µs/request; \
         server: {} µs/handshake, {} µs/request",
        med(|r| ok(&r.handshake).and_then(|b| b.client_cpu_us_per_op)),
        med(|r| ok(&r.rr).and_then(|b| b.client_cpu_us_per_op)),
        med(|r| ok(&r.handshake).and_then(|b| b.target_cpu_us_per_op)),
        med(|r| ok(&r.rr).and_then(|b| b.target_cpu_us_per_op)),
    )
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("terminus-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
