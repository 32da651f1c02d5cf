//! `terminus bench`'s command line: the arguments ([`BenchArgs`]), their validation
//! into [`BenchOpts`] (a typed [`ArgsError`] whose `Display` is the one-line usage
//! error, exit 2), and [`run_cli`], which runs the rounds and prints the report.

use super::{default_connections, default_size};
use super::{rounds, run, BenchOpts, Direction, Group, Progress, TargetProbe, TlsOpts, Workload};
use crate::client::{ClientConfigBuilder, Trust};
use rustls::pki_types::ServerName;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// A bad `terminus bench` command line: a one-line usage error (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgsError {
    #[error("{option} {value:?}: not HOST:PORT ({source})")]
    NotHostPort {
        option: &'static str,
        value: String,
        source: std::io::Error,
    },
    #[error("{option} {value:?}: resolves to no address")]
    NoAddress { option: &'static str, value: String },
    /// Two options given together that exclude each other.
    #[error("{0} and {1} exclude each other")]
    Exclusive(&'static str, &'static str),
    /// An option given without the one it needs.
    #[error("{0} needs {1}")]
    Needs(&'static str, &'static str),
    /// An option of one workload given with another.
    #[error("{option} applies to --workload {workload} only")]
    WorkloadOnly {
        option: &'static str,
        workload: &'static str,
    },
    #[error("--rate must be a positive number, got {0}")]
    Rate(f64),
    #[error("--duration must be more than 0 and at most 86400 seconds, got {0}")]
    Duration(f64),
    /// A count given as 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--cpus: CPU {cpu} is not in this process's affinity mask {allowed:?}")]
    CpuNotAllowed { cpu: usize, allowed: Vec<usize> },
    #[error("--size must be at least 1 for --workload {0}")]
    SizeZero(&'static str),
    #[error("--size must be at most 64 MiB, got {0}")]
    SizeTooLarge(usize),
    #[error(
        "--plain excludes the TLS options (--ca, --dangerous-skip-verify, --client-cert, \
         --resume, --alpn, --server-name, --group)"
    )]
    PlainWithTlsOptions,
    #[error("TLS needs --ca FILE or --dangerous-skip-verify (or use --plain)")]
    NoTrust,
    /// `--ca` could not be read.
    #[error(transparent)]
    Ca(#[from] terminus_core::tls::TlsError),
    #[error("--server-name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    /// The client TLS config could not be built (a bad client certificate, say).
    #[error("{0}")]
    ClientConfig(String),
    #[error("--target-pid {0}: no such process")]
    NoProcess(u32),
}

/// `terminus bench` arguments (see interface.md). TLS is the default: give
/// `--ca FILE` or `--dangerous-skip-verify`, or `--plain` for plaintext.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// HOST:PORT of the server to load.
    #[arg(long, required_unless_present = "in_memory")]
    pub target: Option<String>,
    /// No sockets: handshakes between an in-process client and the server config
    /// terminus builds for a listener of `--config` (rustls' own work, the floor of a
    /// connection); needs --workload handshake.
    #[arg(long, requires = "config", conflicts_with_all = ["target", "plain", "target_pid", "target_admin"])]
    pub in_memory: bool,
    /// With --in-memory: the terminus config whose listener serves.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --in-memory: the listener's name (needed when the config has several).
    #[arg(long, requires = "in_memory")]
    pub listener: Option<String>,
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

fn resolve(option: &'static str, s: &str) -> Result<SocketAddr, ArgsError> {
    s.to_socket_addrs()
        .map_err(|source| ArgsError::NotHostPort {
            option,
            value: s.into(),
            source,
        })?
        .next()
        .ok_or_else(|| ArgsError::NoAddress {
            option,
            value: s.into(),
        })
}

/// The workload's name on the command line (`--workload rr`).
fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Handshake => "handshake",
        Workload::Bulk => "bulk",
        Workload::Rr => "rr",
        Workload::Idle => "idle",
    }
}

impl BenchArgs {
    /// Validate and build the options; `Err` is a one-line usage error (exit 2).
    pub fn into_opts(self) -> Result<BenchOpts, ArgsError> {
        let target = resolve("--target", self.target.as_deref().unwrap_or_default())?;
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
    fn check_combinations(&self) -> Result<(), ArgsError> {
        let w = self.workload;
        if self.tls && self.plain {
            return Err(ArgsError::Exclusive("--tls", "--plain"));
        }
        if self.ca.is_some() && self.dangerous_skip_verify {
            return Err(ArgsError::Exclusive("--ca", "--dangerous-skip-verify"));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => return Err(ArgsError::Needs("--client-cert", "--client-key")),
            (None, Some(_)) => return Err(ArgsError::Needs("--client-key", "--client-cert")),
            _ => {}
        }
        if self.rate.is_some() && w != Workload::Rr {
            return Err(ArgsError::WorkloadOnly {
                option: "--rate",
                workload: "rr",
            });
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(ArgsError::Rate(r));
            }
        }
        if self.direction.is_some() && w != Workload::Bulk {
            return Err(ArgsError::WorkloadOnly {
                option: "--direction",
                workload: "bulk",
            });
        }
        if self.target_pid.is_some() && self.target_admin.is_some() {
            return Err(ArgsError::Exclusive("--target-pid", "--target-admin"));
        }
        Ok(())
    }

    /// Ranges of the numbers and CPUs: (duration s, connections, size) with defaults.
    fn check_numbers(&self) -> Result<(f64, usize, usize), ArgsError> {
        let w = self.workload;
        let duration = self.duration.unwrap_or(10.0);
        if !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0) {
            return Err(ArgsError::Duration(duration));
        }
        let connections = self.connections.unwrap_or(default_connections(w));
        if connections == 0 {
            return Err(ArgsError::Zero("--connections"));
        }
        if self.workers == 0 {
            return Err(ArgsError::Zero("--workers"));
        }
        if self.ramp == 0 {
            return Err(ArgsError::Zero("--ramp"));
        }
        if self.timeout_ms == 0 {
            return Err(ArgsError::Zero("--timeout-ms"));
        }
        if let Some(cpus) = &self.cpus {
            let allowed = terminus_core::host::cpus::allowed_cpus();
            if let Some(c) = cpus
                .iter()
                .find(|c| !allowed.is_empty() && !allowed.contains(c))
            {
                return Err(ArgsError::CpuNotAllowed { cpu: *c, allowed });
            }
        }
        let size = self.size.unwrap_or(default_size(w));
        if size == 0 && matches!(w, Workload::Rr | Workload::Bulk) {
            return Err(ArgsError::SizeZero(workload_name(w)));
        }
        if size > 64 << 20 {
            return Err(ArgsError::SizeTooLarge(size));
        }
        Ok((duration, connections, size))
    }

    /// The client TLS settings; `None` with `--plain`.
    fn tls_opts(&self) -> Result<Option<TlsOpts>, ArgsError> {
        let tls_wanted = self.tls
            || self.ca.is_some()
            || self.dangerous_skip_verify
            || self.client_cert.is_some()
            || self.resume
            || !self.alpn.is_empty()
            || self.server_name.is_some()
            || self.group.is_some();
        if self.plain && tls_wanted && !self.tls {
            return Err(ArgsError::PlainWithTlsOptions);
        }
        if self.plain {
            return Ok(None);
        }
        let trust = match (&self.ca, self.dangerous_skip_verify) {
            (Some(ca), _) => {
                Trust::Roots(terminus_core::tls::load_roots(std::slice::from_ref(ca))?)
            }
            (None, true) => Trust::DangerousSkipVerify,
            (None, false) => return Err(ArgsError::NoTrust),
        };
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => self
                .target
                .as_deref()
                .unwrap_or("localhost:0")
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default(),
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|e| ArgsError::ServerName {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let mut config = ClientConfigBuilder::new(trust).alpn(&self.alpn);
        if let Some(g) = self.group {
            config = config.kx_groups(&[g.kx_group()]);
        }
        if let Some((cert, key)) = self.client_cert.clone().zip(self.client_key.clone()) {
            config = config.client_cert_files(cert, key);
        }
        Ok(Some(TlsOpts {
            config: config.build().map_err(ArgsError::ClientConfig)?,
            server_name,
        }))
    }

    /// Where the target's CPU and memory come from, if anywhere.
    fn probe(&self, timeout: Duration) -> Result<Option<TargetProbe>, ArgsError> {
        Ok(match (self.target_pid, &self.target_admin) {
            (Some(pid), _) => {
                if !std::path::Path::new(&format!("/proc/{pid}/task")).exists() {
                    return Err(ArgsError::NoProcess(pid));
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
    if args.in_memory {
        return in_memory_cli(args);
    }
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

/// `--in-memory`: rustls' own handshake work with a listener's server config.
fn in_memory_cli(args: BenchArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    let usage = |e: String| {
        eprintln!("terminus: bench: {e}");
        ExitCode::from(2)
    };
    if args.workload != Workload::Handshake {
        return usage("--in-memory needs --workload handshake".into());
    }
    let duration = args.duration.unwrap_or(10.0);
    if !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0) {
        return usage(ArgsError::Duration(duration).to_string());
    }
    let tls = match args.tls_opts() {
        Ok(Some(t)) => t,
        Ok(None) => return usage("--in-memory is TLS only".into()),
        Err(e) => return usage(e.to_string()),
    };
    let path = args
        .config
        .as_deref()
        .expect("clap: --in-memory requires --config");
    let run = super::memory::listener_server_config(path, args.listener.as_deref()).and_then(
        |(name, server)| {
            super::memory::run(
                name,
                server,
                tls.config,
                tls.server_name,
                args.resume,
                Duration::from_secs_f64(duration),
            )
        },
    );
    match run {
        Ok(r) if args.json => {
            println!(
                "{}",
                serde_json::to_string(&r).expect("a report serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "in memory, listener {}: {} handshakes ({} resumed) in {:.1} s; server {:.1} µs, client {:.1} µs per handshake",
                r.listener, r.handshakes, r.resumed, r.duration_s, r.server_us_per_op, r.client_us_per_op
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("terminus: bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
