//! `terminus bench`: a thread-per-core load generator for TLS (and plaintext) servers.
//!
//! Owns: the bench options ([`BenchOpts`], here), the CLI arguments and their
//! validation into options (`cli.rs`: [`BenchArgs`] -> [`BenchOpts`], typed
//! [`ArgsError`]s), the run (`run.rs`: [`run`], pinned workers, each with its own mio
//! poller, see `worker.rs`), the target's CPU/memory figures (`target.rs`) and the
//! report (`report.rs`: [`BenchReport`], human table or JSON). The demo reuses [`run`]
//! in-process.
//!
//! Workloads: `handshake` (closed loop of connect + handshake [+ echoed request] +
//! close), `bulk` (long streams up/down/echo), `rr` (request/response on persistent
//! connections, closed loop or open loop at `--rate`, latency from the intended send
//! time), `idle` (hold many handshaken connections, report the target's memory per
//! connection); and with `--in-memory` (`memory.rs`), handshakes with no sockets
//! against a listener's own server config: rustls' share, the floor.
#![forbid(unsafe_code)]

mod cli;
pub mod host;
pub mod memory;
mod proof;
mod report;
pub mod rounds;
mod run;
pub mod spread;
pub mod stream;
pub mod target;
mod worker;

pub use cli::{run_cli, ArgsError, BenchArgs};
pub use report::{BenchReport, ErrorCounts, Latency};
pub use run::{raise_nofile, run};
use rustls::pki_types::ServerName;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
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
