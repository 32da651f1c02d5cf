//! runtime: the threads, sockets and kernel queues that drive [`crate::proxy`].
//!
//! Owns: the two I/O drivers behind one trait ([`driver`]): io_uring ([`uring`])
//! and epoll ([`epoll`]), the only modules with `unsafe` besides the SIGSYS handler
//! of [`confine`] (privilege drop and the builtin seccomp filter) and the allocator
//! call of [`memory`] (idle workers give freed memory back); which one a run uses
//! ([`backend`]); the plain socket calls beside them, binding included ([`sock`]);
//! the thread-per-core worker loop ([`worker`]) with its per-connection state
//! (`slot`: two legs per connection, tokens, the worker's buffer cap); listener
//! state ([`listener`]), built from the listener's settings ([`settings`]); the
//! resolver thread ([`resolver`]); and the run state ([`run_state`]). Start-up and signals belong to the app layer, which wires this
//! layer to the others.
//!
//! I/O contract: all socket and kernel-queue I/O of the proxy happens here.

pub mod backend;
pub mod confine;
pub mod driver;
#[cfg(test)]
mod driver_tests;
pub mod epoll;
pub mod listener;
pub mod memory;
pub mod resolver;
pub mod run_state;
pub mod settings;
pub mod slab;
mod slot;
pub mod sock;
pub mod uring;
pub mod worker;
