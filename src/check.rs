//! `terminus check`: validate config, certs and keys; print every problem.
//! `--host` (src/hostcheck.rs) checks the machine instead or as well.
//!
//! I/O contract: reads the config file and the files it names; opens no sockets.
//! Problems and warnings go to stderr, one line each, prefixed `terminus: `
//! (warnings `terminus: warning: `); success prints `config OK: N listener(s)` to
//! stdout. Exit 0 when there is no problem (warnings do not fail), 2 otherwise.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::tls;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Number of listeners in a config that parsed (0 if it did not).
    pub listeners: usize,
    /// Each makes the config unusable; one line each.
    pub problems: Vec<String>,
    /// Worth knowing, not fatal (e.g. an expired server certificate).
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Load the config and every listener's TLS material, collecting all problems.
pub fn check(path: &Path) -> Report {
    let cfg = match Config::load_all(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            return Report {
                problems: errors.into_iter().map(|e| e.to_string()).collect(),
                ..Report::default()
            }
        }
    };
    let mut report = Report {
        listeners: cfg.listeners.len(),
        ..Report::default()
    };
    for l in &cfg.listeners {
        report.problems.extend(
            tls::listener_problems(l)
                .into_iter()
                .map(|e| format!("listener \"{}\": {e}", l.name)),
        );
        report.warnings.extend(
            tls::cert_warnings(l)
                .into_iter()
                .map(|w| format!("listener \"{}\": {w}", l.name)),
        );
    }
    report
}

/// `terminus check [--config FILE] [--host]`. Exit 2 if the config is invalid, else 1
/// if the host can't run terminus, else 0. With a valid config the host is checked
/// against its runtime settings and connection limits.
pub fn run_cli(config: Option<&Path>, host: bool, host_timeout: Duration) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut params = crate::hostcheck::HostParams::default();
    if let Some(path) = config {
        if !config_cli(path) {
            code = ExitCode::from(2);
        } else if let Ok(cfg) = Config::load(path) {
            params = crate::hostcheck::HostParams::from_config(&cfg);
        }
    }
    params.selftest_timeout = host_timeout;
    if host
        && !crate::hostcheck::print(&crate::hostcheck::check(&params))
        && code == ExitCode::SUCCESS
    {
        code = ExitCode::from(1);
    }
    code
}

/// The config half: print the report, true when the config is usable.
fn config_cli(path: &Path) -> bool {
    let report = check(path);
    for w in &report.warnings {
        eprintln!("terminus: warning: {w}");
    }
    for p in &report.problems {
        eprintln!("terminus: {p}");
    }
    if report.is_ok() {
        println!("config OK: {} listener(s)", report.listeners);
    }
    report.is_ok()
}
