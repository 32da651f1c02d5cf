//! runtime: the threads, sockets and kernel queues that drive [`crate::proxy`].
//!
//! Owns: the io_uring driver ([`uring`], the only place with `unsafe`), the
//! thread-per-core worker loop ([`worker`]) and `terminus run`'s start-up, signals and
//! drain ([`server`]).
//!
//! I/O contract: all socket and kernel-queue I/O of the proxy happens here.

pub mod listener;
pub mod run_state;
pub mod server;
mod slot;
pub mod sock;
pub mod uring;
pub mod worker;
