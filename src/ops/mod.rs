//! ops: what an operator sees and touches while terminus runs.
//!
//! Owns: the admin endpoint ([`admin`]), metrics and their Prometheus text
//! ([`metrics`]), the access and event logs ([`log`]) and the access line's schema
//! ([`access_log`]), hot reload ([`reload`]), systemd notifications ([`notify`]),
//! `terminus check` ([`check`]) and its host checks ([`hostcheck`]).
//!
//! I/O contract: the admin socket, log files, reading config/cert files on reload,
//! /proc and /sys for host checks. Never on a worker's hot path, except the
//! non-blocking hand-off of log lines and plain metric counters.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod callers;
pub mod check;
pub mod hostcheck;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod reload;
