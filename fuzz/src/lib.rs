//! terminus' fuzz harnesses: one module per cargo-fuzz target, each with
//! `run(data: &[u8])`, which panics on a finding (a crash of terminus, or a broken
//! invariant the harness checks).
//!
//! No fuzzing crate is used here: the targets (fuzz/fuzz_targets/*.rs) are one line
//! each, and the stable suite (tests/other/fuzz_regressions.rs) includes this file by path
//! to replay crash inputs and seeds through the same code. Inputs are raw bytes read
//! with [`bytes::Bytes`] (a byte that runs out reads as zero), so every seed and every
//! crash file stays meaningful as the harness is read.

pub mod authz;
pub mod bytes;
pub mod config;
pub mod conn_client;
pub mod conn_session;
pub mod conn_upstream;
pub mod flags;
pub mod h2_proxy;
pub mod http_filter;
pub mod ocsp;
pub mod proxy_v2;
pub mod sim;
pub mod world;

/// A target's harness: panics on a finding.
pub type Harness = fn(&[u8]);

/// Every target by name (fuzz/fuzz_targets/NAME.rs, fuzz/seeds/NAME/).
pub const TARGETS: &[(&str, Harness)] = &[
    ("conn_client", conn_client::run),
    ("conn_session", conn_session::run),
    ("conn_upstream", conn_upstream::run),
    ("http_filter", http_filter::run),
    ("proxy_v2", proxy_v2::run),
    ("config", config::run),
    ("flags", flags::run),
    ("authz", authz::run),
    ("ocsp", ocsp::run),
    ("h2_proxy", h2_proxy::run),
];
