//! CLI: parses arguments and hands off; holds no logic.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use terminus::app::RunError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "terminus",
    version,
    about = "io_uring TLS terminator: terminate, re-encrypt, mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve until SIGTERM/SIGINT: from a config file, or one listener from flags
    /// (`--listen ADDR --upstream HOST:PORT --cert FILE --key FILE [--client-ca FILE
    /// --allow ID]`).
    Run {
        #[arg(long, conflicts_with_all = ["listen", "upstream", "cert", "key"])]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: terminus::config::flags::ListenerFlags,
    },
    /// Validate config, certificates, keys (--config) and/or whether this host can
    /// run terminus and is tuned for it (--host); print every problem.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["config", "host", "listen"])))]
    Check {
        #[arg(long, conflicts_with_all = ["listen", "upstream", "cert", "key"])]
        config: Option<PathBuf>,
        /// The one-command mode's flags, checked as `run` would build them.
        #[command(flatten)]
        flags: terminus::config::flags::ListenerFlags,
        /// Check io_uring, limits, CPUs and sysctls of this host.
        #[arg(long)]
        host: bool,
        /// Bound on --host's loopback io_uring self-test.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
        host_timeout_ms: u64,
    },
    /// Write an ECDSA P-256 test PKI (CA, server, client) into DIR.
    Certs {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
    },
    /// Self-contained demo: temporary PKI, built-in backends, terminator in each mode,
    /// measurements, comparison table and HTML report.
    Demo {
        /// Total measuring budget in seconds, split over rounds x 4 modes x 3 workloads.
        #[arg(long, default_value_t = terminus::tools::demo::DEFAULT_SECONDS)]
        seconds: u64,
        /// Rounds, interleaved across modes; the table gives medians and min–max.
        #[arg(long, default_value_t = terminus::tools::demo::DEFAULT_ROUNDS,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
        rounds: usize,
        /// Keep serving after the measurements until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Where to write the HTML report [default: terminus-demo-report.html in the
        /// system temp dir].
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Render a comparison report (the demo's text table and HTML report) from a JSON
    /// file, e.g. the one scripts/compare-peers.sh writes; the report opens with this
    /// build's and this host's metadata, then the file's.
    Report {
        /// The figures: a JSON `Comparison` (see src/tools/report/mod.rs).
        #[arg(long)]
        from: PathBuf,
        /// Where to write the HTML report.
        #[arg(long)]
        out: PathBuf,
    },
    /// Readiness of each listener's candidate client-auth policy: every caller it
    /// would refuse, read from instances' GET /callers (--admin) or access logs
    /// (--from); exit 0 READY, 1 NOT READY, 2 error.
    Rollout(terminus::tools::rollout::RolloutArgs),
    /// Load generator: handshakes, bulk, request/response, idle connections.
    Bench(Box<terminus::tools::bench::BenchArgs>),
    /// Built-in backend for benchmarks: echo, source or sink, optionally over TLS.
    Backend {
        /// ADDR to listen on, e.g. 127.0.0.1:8080 (port 0 picks one; printed).
        #[arg(long)]
        listen: String,
        #[arg(long, value_enum, default_value = "echo")]
        mode: terminus::tools::backend::Mode,
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    terminus::tls::install_provider();
    match cli.cmd {
        Cmd::Run { config, flags } => run(config.as_deref(), &flags),
        Cmd::Check {
            config,
            flags,
            host,
            host_timeout_ms,
        } => terminus::ops::check::run_cli(
            match (&config, flags.given()) {
                (Some(path), _) => Some(terminus::ops::check::Input::File(path)),
                (None, true) => Some(terminus::ops::check::Input::Flags(&flags)),
                (None, false) => None,
            },
            host,
            std::time::Duration::from_millis(host_timeout_ms),
        ),
        Cmd::Certs {
            out,
            days,
            trust_domain,
        } => certs(&out, days, &trust_domain),
        Cmd::Bench(args) => terminus::tools::bench::run_cli(*args),
        Cmd::Rollout(args) => terminus::tools::rollout::run_cli(&args),
        Cmd::Report { from, out } => terminus::tools::report::run_cli(&from, &out),
        Cmd::Backend {
            listen,
            mode,
            tls_cert,
            tls_key,
        } => terminus::tools::backend::run_cli(
            &listen,
            mode,
            tls_cert.as_deref(),
            tls_key.as_deref(),
        ),
        Cmd::Demo {
            seconds,
            rounds,
            serve,
            report,
        } => demo(terminus::tools::demo::DemoOpts {
            seconds,
            rounds,
            serve,
            report,
        }),
    }
}

/// `--help`/`--version` print as clap has them (exit 0; 2 when help stands in for
/// a missing subcommand); any other argument error is one line on stderr, exit 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // One line: clap's message (which may continue on indented lines,
            // e.g. the missing arguments), without its usage block.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            let line = msg.join(" ");
            eprintln!(
                "terminus: {} (see --help)",
                line.trim_start_matches("error: ")
            );
            ExitCode::from(2)
        }
    }
}

/// `terminus run`: exit 2 for a bad config or TLS material, 1 for anything else.
fn run(config: Option<&Path>, flags: &terminus::config::flags::ListenerFlags) -> ExitCode {
    let loaded = match config {
        Some(path) => terminus::config::Config::load(path),
        None => match flags.to_toml() {
            Ok(text) => {
                terminus::config::Config::parse(&text, Path::new(terminus::config::flags::SOURCE))
            }
            Err(e) => {
                if flags.given() {
                    eprintln!("terminus: run: {e} (see --help)");
                } else {
                    eprintln!(
                        "terminus: run: needs --config FILE, or --listen, --upstream, --cert \
                         and --key (see --help)"
                    );
                }
                return ExitCode::from(2);
            }
        },
    };
    let result = loaded.map_err(RunError::from).and_then(terminus::app::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terminus: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn certs(out: &Path, days: u32, trust_domain: &str) -> ExitCode {
    // A --days value no certificate can hold is bad usage (exit 2), not a failure to write.
    if let Err(e) = terminus::tools::certs::not_after_in(days) {
        eprintln!("terminus: certs: {e:#}");
        return ExitCode::from(2);
    }
    match terminus::tools::certs::generate(out, days, trust_domain) {
        Ok(()) => {
            println!("wrote test PKI to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("terminus: certs: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn demo(opts: terminus::tools::demo::DemoOpts) -> ExitCode {
    if opts.seconds == 0 {
        eprintln!("terminus: demo: --seconds must be at least 1");
        return ExitCode::from(2);
    }
    match terminus::tools::demo::run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        // Interrupted: cleaned up; the conventional 128 + SIGINT.
        Ok(false) => ExitCode::from(130),
        Err(e) => {
            eprintln!("terminus: demo: {e:#}");
            ExitCode::from(1)
        }
    }
}
