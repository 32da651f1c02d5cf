//! telemetry: what the workers record while they serve, for `ops` to show.
//!
//! Owns: the metric families and their Prometheus text ([`metrics`]), the access
//! and event logs ([`log`]) and the access line's schema ([`access_log`]).
//!
//! I/O contract: log files and stderr through the log thread; the workers only
//! hand lines off (non-blocking) and bump plain counters.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod callers;
pub mod log;
pub mod metrics;
