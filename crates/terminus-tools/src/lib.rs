//! terminus-tools: programs that drive the proxy from outside, shipped in the same binary.
//!
//! Owns: `terminus bench` (the load generator, [`bench`]), `terminus backend` (echo,
//! source and sink backends, [`backend`]), `terminus demo` ([`demo`]), `terminus report` (the
//! comparison report of the demo and of scripts/compare-peers.sh, [`report`]) and
//! `terminus certs` (the test PKI, [`certs`]), `terminus rollout` (the candidate
//! policy's readiness report, [`rollout`]), and the one TLS client config of the
//! tools and tests ([`client`]). The proxy core never depends on them.
//!
//! I/O contract: anything a test tool needs (its own sockets, threads, temp files).
#![forbid(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod certs;
pub use terminus_testkit::client;
pub mod demo;
pub mod report;
pub mod rollout;
