//! ops: what an operator sees and touches while terminus runs.
//!
//! Owns: the admin endpoint ([`admin`]: `/metrics`, `/healthz`, `/readyz`), hot
//! reload ([`reload`]) and its Workload API source ([`spiffe`]), systemd notifications ([`notify`]), `terminus check`
//! ([`check`]) and its host checks ([`hostcheck`]). What the workers record
//! (metrics, logs) is `crate::telemetry`'s.
//!
//! I/O contract: the admin socket, reading config/cert files on reload, /proc and
//! /sys for host checks; never on a worker's thread.
#![forbid(unsafe_code)]

pub mod admin;
pub mod check;
pub mod hostcheck;
pub mod notify;
pub mod reload;
pub mod spiffe;
