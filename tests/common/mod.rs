//! Shared helpers for the real-socket integration tests, by purpose:
//!
//! | module | what |
//! |---|---|
//! | `pki` | temp folders; the test PKI of `terminus::tools::certs`, written to files; the upstream PKI |
//! | `config` | the `terminus run` config writer |
//! | `server` | the `terminus run` child (built with `Terminus::builder`): spawn, `ready`, addresses, signals, exit, sd_notify |
//! | `backend` | backends in the test process (std threads) |
//! | `client` | TLS clients (`terminus::tools::client`, the PKI's mTLS client), raw TCP, HTTP, ClientHellos |
//! | `external` | curl/openssl/socat children with collected output, `openssl s_server`, free ports |
//! | `grpc` | Python grpcio peers: the h2c gRPC upstream |
//! | `metrics` | `/metrics` scrapes and the poll that waits for a sample |
//! | `proxy_v2` | PROXY v2: the writer's types, the test kit's parser, a sample header (not glob-exported) |
//! | `procfs` | /proc readers (memory and CPU through `terminus::tools::bench::target`) |
//! | `data` | reproducible byte streams |
//! | `report` | the checks every `terminus report` HTML page passes |
//!
//! Everything talks to a real `terminus run` child process over real sockets on
//! 127.0.0.1. Every wait is bounded: sockets carry read/write timeouts and every poll
//! has a deadline, so a hung proxy fails a test instead of hanging the suite.

#![allow(dead_code)] // each test binary uses a different subset

mod backend;
mod client;
mod config;
mod data;
mod external;
mod grpc;
mod metrics;
mod pki;
mod procfs;
pub mod proxy_v2;
mod report;
mod server;

// Test files `use common::*`; each binary uses a different subset.
#[allow(unused_imports)]
pub use {
    backend::*, client::*, config::*, data::*, external::*, grpc::*, metrics::*, pki::*, procfs::*,
    report::*, server::*,
};

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Read/write timeout of every test socket: a proxy that stops moving bytes fails the
/// test after this long instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `terminus run` child may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const MIB: usize = 1024 * 1024;

/// Serialises the tests that move hundreds of MiB or open hundreds of connections, so
/// that on a 2-core machine they do not starve each other (or the timing-sensitive
/// tests) of CPU.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The terminus binary under test; `TERMINUS_BIN` points the suite at another
/// build (e.g. the previous commit's, for before/after figures).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TERMINUS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_terminus").into())
    })
}

/// Poll `cond` every 10 ms until it holds or `timeout` passes; whether it held. The
/// one poll of the suite: callers that must not time out `assert!` on it.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The JSON lines of the access log `log` whose `event` is `event`, once there are `n`
/// of them; after 10 s, those there are.
pub fn log_events(log: &std::path::Path, event: &str, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect();
        lines.len() >= n
    });
    lines
}
