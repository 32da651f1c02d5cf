//! host: facts about the machine and its names, below every other layer.
//!
//! Owns: socket addresses as written ([`endpoint`]), name lookup with the hosts
//! file ([`lookup`]), the CPUs a process may use and its cgroup quota ([`cpus`]),
//! who holds a listening socket (`/proc/net/tcp`, [`listens`]) and the process's
//! own figures from `/proc/self` ([`proc`]), and the users and groups of `[runtime]
//! user`/`group` ([`users`]).
//!
//! I/O contract: reads /proc, /sys/fs/cgroup and the hosts file; calls
//! `getaddrinfo` and the NSS user/group lookups. Depends on no other layer.
#![forbid(unsafe_code)]

pub mod cpus;
pub mod endpoint;
pub mod listens;
pub mod lookup;
pub mod proc;
pub mod users;
