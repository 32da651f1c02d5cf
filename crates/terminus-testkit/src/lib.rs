//! terminus-testkit: what tests and tools need to talk to terminus, and nothing the
//! proxy ships: a test PKI ([`certs`]), one TLS client builder ([`client`]),
//! including the skip-verify modes a load generator and tests use, the PROXY v2
//! parser that reads what terminus sends upstream ([`proxy_v2`]), config text that
//! tests and fuzz harnesses share ([`config`]), and the seccomp filters of the
//! `terminus-seccomp-exec` test tool ([`seccomp`]).
//!
//! Depends on no terminus crate, so terminus-core's own unit tests can use it.
#![forbid(unsafe_code)]

pub mod certs;
pub mod client;
pub mod config;
pub mod http_upstreams;
pub mod proxy_v2;
pub mod seccomp;
pub mod workload_api;
