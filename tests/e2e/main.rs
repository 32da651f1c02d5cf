//! The suites that serve traffic through a `terminus run` child, in one test binary.
//! `.ci/run` runs this binary twice: on io_uring, then with `TERMINUS_IO=epoll` (each
//! child's readiness line is asserted, so the second pass cannot quietly use
//! io_uring). One binary rather than one per suite: every test binary re-links the
//! whole program with thin LTO, and the shared helpers compile once instead of once
//! per suite (the test step of CI was mostly compile time). Run one suite with
//! `cargo test --release --test e2e -- hostile::`.

#[path = "../common/mod.rs"]
mod common;

mod caller_limits;
mod check_live;
mod grpc;
mod h2_attacks;
mod h2_http1;
mod hostile;
mod http;
mod http_rules;
mod limits;
mod memory;
mod operate;
mod privileges;
mod process;
mod proxy;
mod rollout;
mod spiffe;
mod trust;
mod upstream_resume;
mod upstreams;
