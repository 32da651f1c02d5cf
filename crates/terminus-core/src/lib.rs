//! terminus: a thread-per-core io_uring TLS terminator.
//!
//! One folder per layer; a behaviour's home follows from the folder names. See
//! ARCHITECTURE.md for the data flow and why the layers are cut where they are.
//!
//! | layer | owns | I/O it may do |
//! |---|---|---|
//! | [`proxy`] | one connection's state machine, the upstream choice, PROXY v2, deadlines | none (sans-IO; time comes in as `now`) |
//! | [`runtime`] | the I/O driver, the worker loop, listeners, start-up and signals | sockets, io_uring, threads, signals |
//! | [`tls`] | rustls configs, PEM loading, SNI, verifiers, tickets, identity, policy | reads certificate, key and ticket files |
//! | [`config`] | the config schema, its validation and file locations | reads the config file |
//! | [`ops`] | admin endpoint, metrics, logs, reload, `check`, host checks | admin socket, log files, /proc and /sys |
//! | [`tools`] | `bench`, `backend`, `demo`, `certs`: programs that drive the proxy | anything a test tool needs |

pub mod app;
pub mod config;
pub mod host;
pub mod ops;
pub mod proxy;
pub mod runtime;
pub mod telemetry;
pub mod tls;
