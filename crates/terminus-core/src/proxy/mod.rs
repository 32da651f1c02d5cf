//! proxy: what happens to one proxied connection, with no I/O of its own.
//!
//! Owns: [`conn::Conn`] (the sans-IO state machine of a connection, its two legs and
//! its close reasons), the upstream set and the order a connection tries it in
//! ([`upstream`]), the PROXY v2 header ([`proxy_v2`]) and the deadline wheel
//! ([`timer`]).
//!
//! I/O contract: none. Inputs are `handle_*` calls with bytes and `now`; outputs are
//! `poll_*` calls. The runtime layer turns them into syscalls.
#![forbid(unsafe_code)]

pub mod authz;
pub mod conn;
pub mod h2;
pub mod http;
pub mod proxy_v2;
pub mod response;
pub mod timer;
pub mod upstream;
