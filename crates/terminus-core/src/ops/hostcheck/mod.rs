//! `terminus check --host`: can this host run terminus, and is it tuned for it?
//!
//! I/O contract: reads /proc and /sys, creates and drops small io_uring instances
//! (through src/runtime/uring/, so the check exercises the same setup code as a worker),
//! and runs one loopback connection through a ring (127.0.0.1, bounded by
//! `--host-timeout-ms`, default [`SELFTEST_TIMEOUT`]); changes nothing. Prints one line per item to stdout:
//! `OK   name: detail`, or `WARN`/`FAIL` with `; fix: ...`. A FAIL means terminus
//! cannot run here; a WARN means it runs, but a limit or setting will bind under load.
#![forbid(unsafe_code)]

use crate::config::{Config, IoSetting, Runtime};
use crate::runtime::uring::UringConfig;
use std::fmt;
use std::io::Write;
use std::time::Duration;

/// How long the loopback self-test may take in all, unless `--host-timeout-ms` says.
pub const SELFTEST_TIMEOUT: Duration = Duration::from_secs(2);

mod io;
mod limits;
mod sysctl;

use io::{backend_item, epoll_selftest_item, io_uring_items};
use limits::{cpus_item, governor_item, kernel_item, memlock_item, nofile_item};
use sysctl::sysctl_items;
pub use sysctl::{recommended_sysctls, sysctl_meets, Recommended};

/// The recommendations, from the one file operators install (tuning/sysctl.conf).
const SYSCTL_CONF: &str = include_str!("../../../../../tuning/sysctl.conf");

/// Connections the RLIMIT_NOFILE check sizes for when no config is given: one
/// listener at its default `max_connections`.
pub const DEFAULT_CONNECTIONS: usize = 100_000;
/// Descriptors besides the two per connection: listeners, rings, log and cert files.
const FD_SLACK: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded so the item names line up.
        f.write_str(match self {
            Status::Ok => "OK  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One checked item: one output line.
#[derive(Debug, Clone)]
pub struct Item {
    pub status: Status,
    pub name: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

fn item(status: Status, name: impl Into<String>, detail: impl Into<String>) -> Item {
    Item {
        status,
        name: name.into(),
        detail: detail.into(),
        fix: None,
    }
}

impl Item {
    fn fix(mut self, fix: impl Into<String>) -> Item {
        self.fix = Some(fix.into());
        self
    }
}

/// What the host is checked against: a config's runtime and limits, or the defaults.
#[derive(Debug, Clone)]
pub struct HostParams {
    pub ring: UringConfig,
    /// Sum of the listeners' `max_connections`.
    pub connections: usize,
    /// `runtime.workers`, if set.
    pub workers: Option<usize>,
    /// Bound on the loopback self-test.
    pub selftest_timeout: Duration,
    /// `runtime.io` (with `TERMINUS_IO` applied): whether io_uring trouble is a
    /// FAIL (`io_uring` forced) or a WARN (`auto` runs on epoll).
    pub io: IoSetting,
}

impl Default for HostParams {
    fn default() -> Self {
        HostParams::from_runtime(&Runtime::default(), DEFAULT_CONNECTIONS)
    }
}

impl HostParams {
    pub fn from_config(cfg: &Config) -> HostParams {
        let connections = cfg.listeners.iter().map(|l| l.max_connections).sum();
        HostParams::from_runtime(&cfg.runtime, connections)
    }

    /// io_uring trouble: FAIL only when io_uring is forced (else epoll serves).
    fn uring_bad(&self) -> Status {
        match self.io {
            IoSetting::IoUring => Status::Fail,
            _ => Status::Warn,
        }
    }

    fn from_runtime(rt: &Runtime, connections: usize) -> HostParams {
        HostParams {
            ring: UringConfig {
                entries: rt.ring_entries,
                sqpoll: rt.sqpoll,
                recv_buffers: rt.recv_buffers,
                recv_buffer_size: rt.recv_buffer_size,
            },
            connections,
            workers: rt.workers,
            selftest_timeout: SELFTEST_TIMEOUT,
            io: std::env::var("TERMINUS_IO")
                .ok()
                .and_then(|v| IoSetting::parse(&v).ok())
                .unwrap_or(rt.io),
        }
    }
}

/// Run every check, in the order printed.
pub fn check(p: &HostParams) -> Vec<Item> {
    let mut out = Vec::new();
    out.push(backend_item(p));
    out.push(epoll_selftest_item(p));
    io_uring_items(p, &mut out);
    out.push(kernel_item());
    out.push(nofile_item(p));
    out.push(memlock_item());
    out.push(cpus_item(p));
    out.push(governor_item());
    out.extend(sysctl_items());
    out
}

/// Print the report; exit status 1 if any item is FAIL.
pub fn print(items: &[Item]) -> bool {
    // A closed stdout (`| head`) must not panic: write errors are ignored.
    let mut out = std::io::stdout().lock();
    for i in items {
        let _ = writeln!(out, "{i}");
    }
    let fails = items.iter().filter(|i| i.status == Status::Fail).count();
    let warns = items.iter().filter(|i| i.status == Status::Warn).count();
    let _ = if fails > 0 {
        writeln!(
            out,
            "host: {fails} FAIL, {warns} WARN: terminus cannot run here"
        )
    } else {
        writeln!(out, "host OK: terminus can run here ({warns} WARN)")
    };
    fails == 0
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A field of /proc/self/status, e.g. `Seccomp`.
fn self_status(field: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}
