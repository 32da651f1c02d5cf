//! io: the I/O backend `run` would use here, io_uring's availability, and a
//! loopback self-test through each driver (the same setup code as a worker).

use super::*;
use crate::runtime::driver::{Backend, Completion, Driver, Event, OpError};
use crate::runtime::epoll::Epoll;
use crate::runtime::uring::{self, Uring, UringConfig};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Which backend `run` would use here, and why.
pub(super) fn backend_item(p: &HostParams) -> Item {
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
pub(super) fn epoll_selftest_item(p: &HostParams) -> Item {
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

pub(super) fn io_uring_items(p: &HostParams, out: &mut Vec<Item>) {
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
