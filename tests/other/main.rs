//! Every other suite, in one test binary (see tests/e2e/main.rs for why one): the
//! measurement tools (bench, demo, compare_peers), the CLI and config, the TLS layer
//! and PROXY v2 in-process, the parsers' properties, the fuzz regressions, the
//! deploy files, and the tree's structure (layers, sizes). Run one suite with
//! `cargo test --release --test other -- readme::`. `kernel.io_uring_disabled` is
//! flipped system-wide by tests/uring_unavailable.rs, which stays a binary of its own.

#[path = "../common/mod.rs"]
mod common;
/// The fuzz targets' harnesses (fuzz/src), run on stable by `fuzz_regressions`
/// (which uses part of them).
// dead_code: the suite uses part of them; duplicate_mod: they include
// tests/common/proxy_v2.rs by path too, as `common` does here.
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;
#[path = "../tree/mod.rs"]
mod tree;

mod bench;
mod certs_cli;
mod compare_peers;
mod config_errors;
mod demo;
mod deploy;
mod fuzz_regressions;
mod host_check;
mod layers;
mod ocsp;
mod prop_conn;
mod prop_parsers;
mod readme;
mod run_flags;
mod seccomp;
mod sizes;
mod trust_haproxy;
mod trust_tls;
