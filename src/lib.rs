//! terminus: a thread-per-core io_uring TLS terminator.
//!
//! See ARCHITECTURE.md for the data flow and where each responsibility lives.

pub mod admin;
pub mod backend;
pub mod bench;
pub mod certs;
pub mod check;
pub mod config;
pub mod conn;
pub mod demo;
pub mod hostcheck;
pub mod identity;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod proxy_v2;
pub mod reload;
pub mod server;
pub mod tickets;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod uring;
pub mod worker;
