//! terminus-core: the TLS terminator itself, everything `terminus run` ships.
//!
//! One folder per layer. A layer imports only the layers listed above it here
//! (bottom first; `tests/other/layers.rs` fails on an import that runs the other way).
//! See ARCHITECTURE.md for the data flow and why the layers are cut where they are.
//!
//! | layer | owns | I/O it may do |
//! |---|---|---|
//! | [`host`] | socket addresses as written, name lookup, CPUs and cgroup quota, who holds a port, this process's /proc figures | reads /proc, /sys, the hosts file; getaddrinfo |
//! | [`tls`] | rustls configs from its own settings types, PEM loading, SNI, verifiers, tickets, identity, policy, suite names | reads certificate, key, CA, CRL and ticket files |
//! | [`proxy`] | one connection's state machine, the upstream choice, PROXY v2, HTTP request heads, deadlines | none (sans-IO; time comes in as `now`) |
//! | [`config`] | the config file: schema, validation, locations; converts listeners into [`tls::ListenerTls`] | reads the config file; resolves names through [`host`] |
//! | [`telemetry`] | metric counters and the `/metrics` page, the log thread, the access line | log files and stderr (off the workers' path) |
//! | [`runtime`] | the I/O drivers, the worker loop, listeners, the resolver thread, sockets | sockets, io_uring, epoll, threads |
//! | [`ops`] | admin endpoint, reload, `check` and `check --host`, systemd notify | admin socket, files on reload, /proc and /sys |
//! | [`app`] | `terminus run`: the start-up sequence that wires the layers, signals, drain | startup, signals |
//!
//! The load generator, backends, demo and report are in terminus-tools; the test PKI
//! and test client in terminus-testkit. This crate depends on neither.

pub mod app;
pub mod config;
pub mod host;
pub mod ops;
pub mod proxy;
pub mod runtime;
pub mod telemetry;
pub mod tls;
