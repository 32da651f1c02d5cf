//! `terminus check --host`: can this host run terminus, and is it tuned for it?
//!
//! I/O contract: reads /proc and /sys, creates and drops small io_uring instances
//! (through src/runtime/uring/, so the check exercises the same setup code as a worker),
//! and runs one loopback connection through a ring (127.0.0.1, bounded by
//! `--host-timeout-ms`, default [`SELFTEST_TIMEOUT`]); changes nothing. Prints one line per item to stdout:
//! `OK   name: detail`, or `WARN`/`FAIL` with `; fix: ...`. A FAIL means terminus
//! cannot run here; a WARN means it runs, but a limit or setting will bind under load.
#![forbid(unsafe_code)]

use crate::config::{Config, IoSetting, Runtime};
use crate::runtime::driver::{Backend, Completion, Driver, Event, OpError};
use crate::runtime::epoll::Epoll;
use crate::runtime::uring::{self, Uring, UringConfig};
use socket2::{Domain, Socket, Type};
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// The recommendations, from the one file operators install (tuning/sysctl.conf).
const SYSCTL_CONF: &str = include_str!("../../tuning/sysctl.conf");

/// Connections the RLIMIT_NOFILE check sizes for when no config is given: one
/// listener at its default `max_connections`.
pub const DEFAULT_CONNECTIONS: usize = 100_000;
/// Descriptors besides the two per connection: listeners, rings, log and cert files.
const FD_SLACK: u64 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded so the item names line up.
        f.write_str(match self {
            Status::Ok => "OK  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One checked item: one output line.
#[derive(Debug, Clone)]
pub struct Item {
    pub status: Status,
    pub name: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

fn item(status: Status, name: impl Into<String>, detail: impl Into<String>) -> Item {
    Item {
        status,
        name: name.into(),
        detail: detail.into(),
        fix: None,
    }
}

impl Item {
    fn fix(mut self, fix: impl Into<String>) -> Item {
        self.fix = Some(fix.into());
        self
    }
}

/// What the host is checked against: a config's runtime and limits, or the defaults.
#[derive(Debug, Clone)]
pub struct HostParams {
    pub ring: UringConfig,
    /// Sum of the listeners' `max_connections`.
    pub connections: usize,
    /// `runtime.workers`, if set.
    pub workers: Option<usize>,
    /// Bound on the loopback self-test.
    pub selftest_timeout: Duration,
    /// `runtime.io` (with `TERMINUS_IO` applied): whether io_uring trouble is a
    /// FAIL (`io_uring` forced) or a WARN (`auto` runs on epoll).
    pub io: IoSetting,
}

impl Default for HostParams {
    fn default() -> Self {
        HostParams::from_runtime(&Runtime::default(), DEFAULT_CONNECTIONS)
    }
}

impl HostParams {
    pub fn from_config(cfg: &Config) -> HostParams {
        let connections = cfg.listeners.iter().map(|l| l.max_connections).sum();
        HostParams::from_runtime(&cfg.runtime, connections)
    }

    /// io_uring trouble: FAIL only when io_uring is forced (else epoll serves).
    fn uring_bad(&self) -> Status {
        match self.io {
            IoSetting::IoUring => Status::Fail,
            _ => Status::Warn,
        }
    }

    fn from_runtime(rt: &Runtime, connections: usize) -> HostParams {
        HostParams {
            ring: UringConfig {
                entries: rt.ring_entries,
                sqpoll: rt.sqpoll,
                recv_buffers: rt.recv_buffers,
                recv_buffer_size: rt.recv_buffer_size,
            },
            connections,
            workers: rt.workers,
            selftest_timeout: SELFTEST_TIMEOUT,
            io: std::env::var("TERMINUS_IO")
                .ok()
                .and_then(|v| IoSetting::parse(&v).ok())
                .unwrap_or(rt.io),
        }
    }
}

/// Run every check, in the order printed.
pub fn check(p: &HostParams) -> Vec<Item> {
    let mut out = Vec::new();
    out.push(backend_item(p));
    out.push(epoll_selftest_item(p));
    io_uring_items(p, &mut out);
    out.push(kernel_item());
    out.push(nofile_item(p));
    out.push(memlock_item());
    out.push(cpus_item(p));
    out.push(governor_item());
    out.extend(sysctl_items());
    out
}

/// Print the report; exit status 1 if any item is FAIL.
pub fn print(items: &[Item]) -> bool {
    // A closed stdout (`| head`) must not panic: write errors are ignored.
    let mut out = std::io::stdout().lock();
    for i in items {
        let _ = writeln!(out, "{i}");
    }
    let fails = items.iter().filter(|i| i.status == Status::Fail).count();
    let warns = items.iter().filter(|i| i.status == Status::Warn).count();
    let _ = if fails > 0 {
        writeln!(
            out,
            "host: {fails} FAIL, {warns} WARN: terminus cannot run here"
        )
    } else {
        writeln!(out, "host OK: terminus can run here ({warns} WARN)")
    };
    fails == 0
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A field of /proc/self/status, e.g. `Seccomp`.
fn self_status(field: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Which backend `run` would use here, and why.
fn backend_item(p: &HostParams) -> Item {
    let name = "io backend";
    match crate::runtime::backend::choose_backend(p.io) {
        Ok(c) => match (c.backend, c.fallback) {
            (Backend::IoUring, _) => item(
                Status::Ok,
                name,
                format!("io = \"{}\": io_uring (ring, opcodes, buffer ring and io_uring_enter all work)", p.io.as_str()),
            ),
            (Backend::Epoll, None) => item(
                Status::Ok,
                name,
                "io = \"epoll\": epoll (chosen by the config)",
            ),
            (Backend::Epoll, Some(why)) => item(
                Status::Warn,
                name,
                format!("io = \"auto\" picks epoll because io_uring is unavailable: {why}"),
            )
            .fix("allow io_uring (the io_uring lines below say what blocks it) for less CPU per connection, or set io = \"epoll\""),
        },
        Err(e) => item(Status::Fail, name, format!("io = \"io_uring\" but {e}"))
            .fix("allow io_uring, or set runtime.io = \"auto\" to run on epoll"),
    }
}

/// The epoll backend's loopback self-test (it is the fallback: it must work).
fn epoll_selftest_item(p: &HostParams) -> Item {
    let result = Epoll::new(4096)
        .map_err(|e| format!("epoll_create1: {e}"))
        .and_then(|u| selftest(u, p.selftest_timeout));
    match result {
        Ok(()) => item(
            Status::Ok,
            "epoll data path",
            "loopback self-test passed: connect, accept, recv, send, shutdown, cancel, close",
        ),
        Err(e) => item(
            Status::Fail,
            "epoll data path",
            format!("loopback self-test failed: {e}"),
        ),
    }
}

fn io_uring_items(p: &HostParams, out: &mut Vec<Item>) {
    out.push(disabled_item(p));
    out.extend(group_item());
    out.push(seccomp_item());
    if !ring_items(p, out) {
        return;
    }
    out.push(buffer_ring_item(p));
    out.push(selftest_item(p));
    out.push(sqpoll_item(p));
}

/// `kernel.io_uring_disabled` (6.6+).
fn disabled_item(p: &HostParams) -> Item {
    match read_trim("/proc/sys/kernel/io_uring_disabled").as_deref() {
        None => item(
            Status::Ok,
            "io_uring sysctl",
            "kernel.io_uring_disabled absent (kernel < 6.6): io_uring allowed for all",
        ),
        Some("0") => item(
            Status::Ok,
            "io_uring sysctl",
            "kernel.io_uring_disabled=0: allowed for all",
        ),
        Some("1") => item(
                Status::Warn,
                "io_uring sysctl",
                "kernel.io_uring_disabled=1: only CAP_SYS_ADMIN or members of kernel.io_uring_group may create rings (the ring line below says whether this process can)",
            )
            .fix("run terminus in the group kernel.io_uring_group names, or `sysctl -w kernel.io_uring_disabled=0`"),
        Some(v) => item(
                p.uring_bad(),
                "io_uring sysctl",
                format!("kernel.io_uring_disabled={v}: io_uring disabled for every process"),
            )
            .fix("`sysctl -w kernel.io_uring_disabled=0` (persist: tuning/sysctl.conf)"),
    }
}

/// `kernel.io_uring_group` (6.6+), and whether this process is in it.
fn group_item() -> Option<Item> {
    let g = read_trim("/proc/sys/kernel/io_uring_group")?;
    let detail = if g == "-1" {
        "kernel.io_uring_group=-1: no group exemption (matters only when io_uring_disabled=1)"
            .to_string()
    } else {
        let ours = self_status("Groups").unwrap_or_default();
        let gid = self_status("Gid").unwrap_or_default();
        let member = ours
            .split_whitespace()
            .chain(gid.split_whitespace().take(2))
            .any(|x| x == g);
        format!(
            "kernel.io_uring_group={g}: this process is {}a member",
            if member { "" } else { "not " }
        )
    };
    Some(item(Status::Ok, "io_uring group", detail))
}

/// The seccomp mode (a filter may refuse the io_uring syscalls).
fn seccomp_item() -> Item {
    match self_status("Seccomp").as_deref() {
        Some("0") => item(Status::Ok, "seccomp", "mode 0: no filter"),
        Some("2") => item(
                Status::Warn,
                "seccomp",
                "mode 2: a seccomp filter is active (container runtime?); the ring line below says whether it allows io_uring",
            )
            .fix("if the ring fails: a profile that allows io_uring_setup, io_uring_enter, io_uring_register, such as deploy/seccomp-io_uring.json (tuning/README.md, Containers)"),
        Some(m) => item(
            Status::Fail,
            "seccomp",
            format!("mode {m}: strict seccomp allows no io_uring"),
        ),
        None => item(Status::Ok, "seccomp", "not reported by this kernel"),
    }
}

/// A ring with the worker's flags, then the data-path opcodes it supports; false
/// when no ring could be made (the other ring checks are then skipped).
fn ring_items(p: &HostParams, out: &mut Vec<Item>) -> bool {
    let ring = match uring::build_ring(&p.ring) {
        Ok(r) => {
            let mode = if p.ring.sqpoll {
                "SQPOLL"
            } else {
                "the worker's setup flags"
            };
            out.push(item(
                Status::Ok,
                "io_uring ring",
                format!("created ({} entries, {mode})", p.ring.entries),
            ));
            r
        }
        Err(e) => {
            out.push(item(
                p.uring_bad(),
                "io_uring ring",
                format!("cannot create: {e}"),
            ));
            out.push(item(
                p.uring_bad(),
                "io_uring opcodes",
                "not probed: no ring",
            ));
            return false;
        }
    };
    match uring::probe_opcodes(&ring) {
        Ok(ops) => {
            for ((_, name, ok), (_, _, what)) in ops.into_iter().zip(uring::DATA_PATH_OPCODES) {
                let name = format!("io_uring opcode {name}");
                out.push(if ok {
                    item(Status::Ok, name, format!("supported ({what})"))
                } else {
                    item(p.uring_bad(), name, format!("not supported ({what})")).fix("Linux >= 6.0")
                });
            }
        }
        Err(e) => out.push(item(
            p.uring_bad(),
            "io_uring opcodes",
            format!("probe failed: {e}"),
        )),
    }
    true
}

/// The worker's own constructor: ring, opcode check, provided buffer ring.
fn buffer_ring_item(p: &HostParams) -> Item {
    let bufs = UringConfig {
        entries: 8,
        sqpoll: false,
        ..p.ring
    };
    match Uring::<()>::new(bufs) {
        Ok(_) => item(
            Status::Ok,
            "io_uring buffer ring",
            format!(
                "registered {} x {} B receive buffers",
                bufs.recv_buffers, bufs.recv_buffer_size
            ),
        ),
        Err(e) => item(
            p.uring_bad(),
            "io_uring buffer ring",
            format!("cannot register: {e}"),
        ),
    }
}

fn selftest_item(p: &HostParams) -> Item {
    let ring = Uring::new(UringConfig {
        entries: 64,
        sqpoll: false,
        recv_buffers: 8,
        recv_buffer_size: 4096,
    })
    .map_err(|e| e.to_string());
    match ring.and_then(|u| selftest(u, p.selftest_timeout)) {
        Ok(()) => item(
            Status::Ok,
            "io_uring data path",
            "loopback self-test passed: connect, multishot accept, recv into the buffer ring, send, shutdown, cancel, close",
        ),
        Err(e) => item(
            p.uring_bad(),
            "io_uring data path",
            format!("loopback self-test failed: {e}"),
        )
        .fix("Linux >= 6.0 with io_uring allowed"),
    }
}

fn sqpoll_item(p: &HostParams) -> Item {
    let sq = UringConfig {
        entries: 8,
        sqpoll: true,
        ..p.ring
    };
    match uring::build_ring(&sq) {
        Ok(_) => item(
            Status::Ok,
            "io_uring SQPOLL",
            "available (optional: runtime.sqpoll)",
        ),
        Err(e) => item(
            Status::Warn,
            "io_uring SQPOLL",
            format!("unavailable ({e}); only runtime.sqpoll = true needs it"),
        )
        .fix("keep runtime.sqpoll = false (the default)"),
    }
}

/// Completions reaped but not yet asked for, and the self-test's deadline.
struct Reaper<B> {
    stash: Vec<Completion<Op, B>>,
    deadline: Instant,
    timeout: Duration,
}

impl<B> Reaper<B> {
    /// The first completion of an op queued with `token` (a final one when
    /// `last`), submitting and waiting as needed.
    fn next<D: Driver<Op, Buf = B>>(
        &mut self,
        u: &mut D,
        token: Op,
        last: bool,
    ) -> Result<Completion<Op, B>, String> {
        loop {
            let want = |c: &Completion<Op, B>| c.token() == token && (!last || !c.more());
            if let Some(i) = self.stash.iter().position(want) {
                return Ok(self.stash.remove(i));
            }
            if Instant::now() > self.deadline {
                return Err(format!(
                    "{}: no completion within {:?}",
                    token.name(),
                    self.timeout
                ));
            }
            u.submit_and_wait(Duration::from_millis(50))
                .map_err(|e| format!("wait for completions: {e}"))?;
            u.drain(&mut self.stash);
        }
    }

    /// The next completion of `token`, which must deliver no payload.
    fn done<D: Driver<Op, Buf = B>>(&mut self, u: &mut D, token: Op) -> Result<(), String> {
        match self.next(u, token, false)?.into_event() {
            Event::Failed(e) => Err(format!("{}: {e}", token.name())),
            _ => Ok(()),
        }
    }
}

/// How long the loopback self-test may take in all, unless `--host-timeout-ms` says.
pub const SELFTEST_TIMEOUT: Duration = Duration::from_secs(2);

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// The self-test's ops (its uring tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Connect,
    Accept,
    Recv,
    Send,
    Shutdown,
    Cancel,
    Close,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::Accept => "accept",
            Op::Recv => "recv",
            Op::Send => "send",
            Op::Shutdown => "shutdown",
            Op::Cancel => "cancel",
            Op::Close => "close",
        }
    }
}

/// What the self-test sends each way.
const MSG: &[u8] = b"terminus check --host";

/// Drive each data-path op once over loopback through a real driver: for io_uring,
/// the opcode probe can't tell whether the multishot and buffer-select flags work.
fn selftest<D: Driver<Op>>(mut u: D, timeout: Duration) -> Result<(), String> {
    let mut r = Reaper {
        stash: Vec::new(),
        deadline: Instant::now() + timeout,
        timeout,
    };
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    l.set_nonblocking(true).map_err(io("listener"))?;
    let addr = l.local_addr().map_err(io("listener"))?;
    let acc = u.accept_multi(l.as_fd(), Op::Accept);

    let sock = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)
        .map_err(io("socket"))?;
    u.connect(sock.as_fd(), addr, Op::Connect);
    r.done(&mut u, Op::Connect)?;
    let a = r.next(&mut u, Op::Accept, false)?;
    let more = a.more();
    let server = match a.into_event() {
        Event::Accepted(fd) => fd,
        Event::Failed(e) => return Err(format!("multishot accept: {e}")),
        e => return Err(format!("accept: {e:?}")),
    };
    if !more {
        return Err("accept did not stay armed (no multishot accept)".into());
    }

    let mut client = selftest_recv(&mut u, &mut r, server.as_fd(), sock, timeout)?;
    selftest_send_shutdown(&mut u, &mut r, server.as_fd(), &mut client)?;

    // Cancel a pending recv and the multishot accept; each then posts its final
    // completion.
    let rid = u.recv(server.as_fd(), 1, Op::Recv);
    for (target, token) in [(rid, Op::Recv), (acc, Op::Accept)] {
        u.cancel(target, Op::Cancel);
        match r.next(&mut u, Op::Cancel, false)?.into_event() {
            Event::CancelAccepted | Event::Failed(OpError::Already) => {}
            Event::Failed(e) => return Err(format!("cancel {}: {e}", token.name())),
            e => return Err(format!("cancel {}: {e:?}", token.name())),
        }
        r.next(&mut u, token, true)?;
    }
    u.close(server, Op::Close);
    r.done(&mut u, Op::Close)
}

/// The client (`sock`, connected) writes [`MSG`]; the ring receives it on `server`
/// into provided buffers. Returns the client as a blocking stream.
fn selftest_recv<D: Driver<Op>>(
    u: &mut D,
    r: &mut Reaper<D::Buf>,
    server: BorrowedFd<'_>,
    sock: Socket,
    timeout: Duration,
) -> Result<TcpStream, String> {
    u.recv(server, MSG.len(), Op::Recv);
    let mut client: TcpStream = sock.into();
    client.set_nonblocking(false).map_err(io("client"))?;
    client
        .set_read_timeout(Some(timeout))
        .map_err(io("client"))?;
    client.write_all(MSG).map_err(io("client write"))?;
    let mut got = Vec::new();
    while got.len() < MSG.len() {
        match r.next(u, Op::Recv, false)?.into_event() {
            // Dropping the buffer gives it back to the ring.
            Event::Received(b) => got.extend_from_slice(&b),
            e => return Err(format!("recv: {e:?}")),
        }
        if got.len() < MSG.len() {
            u.recv(server, MSG.len() - got.len(), Op::Recv);
        }
    }
    if got != MSG {
        return Err("recv: bytes differ from those sent".into());
    }
    Ok(client)
}

/// The ring sends [`MSG`] back on `server`, then shuts its write side down; the
/// client reads both.
fn selftest_send_shutdown<D: Driver<Op>>(
    u: &mut D,
    r: &mut Reaper<D::Buf>,
    server: BorrowedFd<'_>,
    client: &mut TcpStream,
) -> Result<(), String> {
    u.send(server, MSG.to_vec(), 0, Op::Send);
    match r.next(u, Op::Send, false)?.into_event() {
        Event::Sent(s) if s.remaining() == 0 => {}
        e => return Err(format!("send: {e:?}")),
    }
    let mut back = vec![0u8; MSG.len()];
    client.read_exact(&mut back).map_err(io("client read"))?;
    if back != MSG {
        return Err("send: client read other bytes".into());
    }
    u.shutdown_write(server, Op::Shutdown);
    r.done(u, Op::Shutdown)?;
    if client.read(&mut back).map_err(io("client read"))? != 0 {
        return Err("shutdown: client saw no end of stream".into());
    }
    Ok(())
}

/// (major, minor) of the running kernel.
fn kernel_version() -> Option<(u32, u32)> {
    let rel = read_trim("/proc/sys/kernel/osrelease")?;
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel_item() -> Item {
    let rel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    match kernel_version() {
        // The probe can't see opcode flags: multishot accept and buffer rings are 6.0.
        Some(v) if v >= (6, 0) => item(
            Status::Ok,
            "kernel",
            format!("{rel} (>= 6.0: multishot accept, buffer rings)"),
        ),
        Some(_) => item(
            Status::Fail,
            "kernel",
            format!("{rel}: terminus needs >= 6.0 for multishot accept and buffer rings"),
        )
        .fix("run on Linux >= 6.0"),
        None => item(
            Status::Warn,
            "kernel",
            format!("version {rel:?} not understood"),
        ),
    }
}

/// Soft and hard value of a /proc/self/limits row; None = unlimited.
type Limit = (Option<u64>, Option<u64>);

fn self_limit(row: &str) -> Option<Limit> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = limits.lines().find_map(|l| l.strip_prefix(row))?;
    let mut f = rest.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()?, f.next()?))
}

fn show(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |n| n.to_string())
}

fn nofile_item(p: &HostParams) -> Item {
    let need = 2 * p.connections as u64 + FD_SLACK;
    let Some((soft, hard)) = self_limit("Max open files") else {
        return item(
            Status::Warn,
            "RLIMIT_NOFILE",
            "/proc/self/limits unreadable",
        );
    };
    let detail = format!(
        "soft {}, hard {}; {} connections need about {need} (2 per connection + {FD_SLACK})",
        show(soft),
        show(hard),
        p.connections
    );
    if soft.map_or(true, |s| s >= need) {
        return item(Status::Ok, "RLIMIT_NOFILE", detail);
    }
    // terminus does not raise its own soft limit (tuning/limits.conf says why).
    let fix = if hard.map_or(true, |h| h >= need) {
        format!(
            "raise the soft limit: `ulimit -n {}` or LimitNOFILE=1048576 (tuning/limits.conf)",
            show(hard)
        )
    } else {
        "LimitNOFILE=1048576 in the systemd unit, or tuning/limits.conf (nofile 1048576)".into()
    };
    item(Status::Warn, "RLIMIT_NOFILE", detail).fix(fix)
}

fn memlock_item() -> Item {
    let Some((soft, hard)) = self_limit("Max locked memory") else {
        return item(
            Status::Warn,
            "RLIMIT_MEMLOCK",
            "/proc/self/limits unreadable",
        );
    };
    let detail = format!("soft {}, hard {}", show(soft), show(hard));
    if soft.is_none() {
        return item(Status::Ok, "RLIMIT_MEMLOCK", detail);
    }
    match kernel_version() {
        Some(v) if v >= (5, 12) => item(
            Status::Ok,
            "RLIMIT_MEMLOCK",
            format!("{detail} (since 5.12 rings are not charged to it; terminus registers no fixed buffers)"),
        ),
        _ => item(
            Status::Warn,
            "RLIMIT_MEMLOCK",
            format!("{detail}: this kernel charges ring memory to it"),
        )
        .fix("LimitMEMLOCK=infinity or tuning/limits.conf (memlock unlimited)"),
    }
}

/// "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]
fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    v.extend(a..=b);
                }
            }
            None => v.extend(part.parse::<usize>().ok()),
        }
    }
    v
}

fn cpus_item(p: &HostParams) -> Item {
    let allowed = crate::host::cpus::allowed_cpus();
    let online = read_trim("/sys/devices/system/cpu/online")
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    let (workers, why) = crate::host::cpus::worker_count(
        p.workers,
        allowed.len(),
        crate::host::cpus::quota_cpus(),
    );
    let list = self_status("Cpus_allowed_list").unwrap_or_else(|| format!("{allowed:?}"));
    let detail = format!(
        "{} allowed ({list}) of {} online; terminus starts {workers} worker(s): {why}",
        allowed.len(),
        online.len()
    );
    if allowed.is_empty() {
        return item(Status::Warn, "CPUs", "affinity mask unreadable");
    }
    if workers > allowed.len() {
        return item(
            Status::Warn,
            "CPUs",
            format!("{detail}: more workers than CPUs"),
        )
        .fix("runtime.workers <= allowed CPUs (one pinned worker per core)");
    }
    item(Status::Ok, "CPUs", detail)
}

fn governor_item() -> Item {
    let mut govs: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let is_cpu = name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !is_cpu {
                continue;
            }
            if let Ok(g) = std::fs::read_to_string(e.path().join("cpufreq/scaling_governor")) {
                *govs.entry(g.trim().to_string()).or_default() += 1;
            }
        }
    }
    if govs.is_empty() {
        return item(
            Status::Ok,
            "CPU governor",
            "no cpufreq scaling_governor (typical in a VM; the host decides the clock)",
        );
    }
    let detail = govs
        .iter()
        .map(|(g, n)| format!("{n} x {g}"))
        .collect::<Vec<_>>()
        .join(", ");
    if govs.keys().all(|g| g == "performance") {
        item(Status::Ok, "CPU governor", detail)
    } else {
        item(
            Status::Warn,
            "CPU governor",
            format!("{detail}: clock ramps up only after load arrives (p99)"),
        )
        .fix("cpupower frequency-set -g performance (tuning/README.md)")
    }
}

/// One `key = value` line of tuning/sysctl.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommended {
    pub key: String,
    pub value: String,
    /// Written `-key = value`: the key may be absent on older kernels.
    pub optional: bool,
}

/// The settings tuning/sysctl.conf recommends, in file order.
pub fn recommended_sysctls() -> Vec<Recommended> {
    parse_sysctl_conf(SYSCTL_CONF)
}

fn parse_sysctl_conf(text: &str) -> Vec<Recommended> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (optional, l) = match l.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, l),
            };
            let (k, v) = l.split_once('=')?;
            Some(Recommended {
                key: k.trim().to_string(),
                value: v.split_whitespace().collect::<Vec<_>>().join(" "),
                optional,
            })
        })
        .collect()
}

/// Whether the running value is at least as good as the recommendation. The file
/// only raises limits or turns on safe switches, so: a port range must contain the
/// recommended one, a 0/1 switch must match, and numbers must be at least as large
/// (field by field for `min default max` triples).
pub fn sysctl_meets(key: &str, recommended: &str, current: &str) -> bool {
    let nums =
        |s: &str| -> Option<Vec<i64>> { s.split_whitespace().map(|f| f.parse().ok()).collect() };
    let (Some(r), Some(c)) = (nums(recommended), nums(current)) else {
        return recommended
            .split_whitespace()
            .eq(current.split_whitespace());
    };
    if r.len() != c.len() {
        return false;
    }
    if key == "net.ipv4.ip_local_port_range" && r.len() == 2 {
        return c[0] <= r[0] && c[1] >= r[1];
    }
    if r.len() == 1 && (r[0] == 0 || r[0] == 1) {
        return c == r;
    }
    c.iter().zip(&r).all(|(c, r)| c >= r)
}

fn sysctl_items() -> Vec<Item> {
    recommended_sysctls()
        .into_iter()
        // Reported with the io_uring items above.
        .filter(|r| !r.key.starts_with("kernel.io_uring"))
        .map(|r| {
            let name = format!("sysctl {}", r.key);
            let path = format!("/proc/sys/{}", r.key.replace('.', "/"));
            let fix = format!(
                "sysctl -w {}=\"{}\" (persist: tuning/sysctl.conf -> /etc/sysctl.d/60-terminus.conf)",
                r.key, r.value
            );
            match std::fs::read_to_string(&path) {
                Err(_) if r.optional => item(
                    Status::Ok,
                    name,
                    "absent on this kernel (optional)".to_string(),
                ),
                Err(e) => item(
                    Status::Warn,
                    name,
                    format!("unreadable ({e}); recommended {}", r.value),
                ),
                Ok(cur) => {
                    let cur = cur.split_whitespace().collect::<Vec<_>>().join(" ");
                    if sysctl_meets(&r.key, &r.value, &cur) {
                        item(
                            Status::Ok,
                            name,
                            format!("{cur} (recommended {})", r.value),
                        )
                    } else {
                        item(
                            Status::Warn,
                            name,
                            format!("{cur} (recommended {})", r.value),
                        )
                        .fix(fix)
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_conf_parses_every_setting() {
        let r = recommended_sysctls();
        let keys: Vec<&str> = r.iter().map(|r| r.key.as_str()).collect();
        assert!(keys.contains(&"net.core.somaxconn"), "{keys:?}");
        assert!(keys.contains(&"net.ipv4.tcp_rmem"), "{keys:?}");
        let uring = r
            .iter()
            .find(|r| r.key == "kernel.io_uring_disabled")
            .unwrap();
        assert!(uring.optional && uring.value == "0");
        // Every non-comment line of the file is a setting we understood.
        let settings = SYSCTL_CONF
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert_eq!(r.len(), settings);
        assert!(r
            .iter()
            .all(|r| !r.key.contains(' ') && !r.value.is_empty()));
    }

    #[test]
    fn sysctl_comparison_rules() {
        assert!(sysctl_meets("net.core.somaxconn", "65535", "65535"));
        assert!(sysctl_meets("net.core.somaxconn", "65535", "131072"));
        assert!(!sysctl_meets("net.core.somaxconn", "65535", "4096"));
        assert!(!sysctl_meets("net.ipv4.tcp_tw_reuse", "1", "2"));
        assert!(sysctl_meets("net.ipv4.tcp_slow_start_after_idle", "0", "0"));
        assert!(!sysctl_meets(
            "net.ipv4.tcp_slow_start_after_idle",
            "0",
            "1"
        ));
        assert!(sysctl_meets(
            "net.ipv4.ip_local_port_range",
            "10000 65535",
            "1024 65535"
        ));
        assert!(!sysctl_meets(
            "net.ipv4.ip_local_port_range",
            "10000 65535",
            "32768 60999"
        ));
        assert!(!sysctl_meets(
            "net.ipv4.tcp_wmem",
            "4096 16384 16777216",
            "4096 16384 4194304"
        ));
        assert!(sysctl_meets(
            "net.ipv4.tcp_rmem",
            "4096 131072 33554432",
            "4096 131072 67108864"
        ));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
    }
}
