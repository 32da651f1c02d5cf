//! runtime: the threads, sockets and kernel queues that drive [`crate::proxy`].
//!
//! Owns: the io_uring driver ([`uring`], the only place with `unsafe`) and the
//! plain socket calls beside it ([`sock`]) — together the worker's I/O boundary;
//! the thread-per-core worker loop ([`worker`]) with its per-connection state
//! (`slot`: two legs per connection, tokens, the worker's buffer cap); listener
//! state ([`listener`]); the run state ([`run_state`]); the cgroup CPU quota
//! ([`cgroup`]); and `terminus run`'s
//! start-up, signals and drain ([`server`]).
//!
//! I/O contract: all socket and kernel-queue I/O of the proxy happens here.

pub mod backend;
pub mod driver;
#[cfg(test)]
mod driver_tests;
pub mod epoll;
pub mod listener;
pub mod resolver;
pub mod run_state;
mod slot;
pub mod sock;
pub mod uring;
pub mod worker;
