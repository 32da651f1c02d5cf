//! worker: the thread-per-core loop. Each worker owns one io_uring, one
//! SO_REUSEPORT socket per listener and every connection the kernel hashes to it;
//! it drives `conn` state machines from completions and shares no mutable state
//! with other workers: listener material is behind `ArcSwap` (reload swaps it; each
//! connection keeps the `Arc` it started with), counters and histograms are the
//! worker's own and leave it only as published snapshots (`metrics`).
//!
//! One loop turn: submit everything queued and wait (one `io_uring_enter`), drain
//! completions into the connections they belong to, then for each connection touched
//! this turn turn its wants into ops (coalescing: at most one send per side), then
//! expire timers.
#![forbid(unsafe_code)]

use crate::config::Listener;
use crate::ops::metrics::{ListenerMetrics, WorkerSnapshot};
use crate::proxy::conn::{CloseReason, Conn, ConnLimits, Expired, Phase};
use crate::proxy::timer::Wheel;
use crate::proxy::upstream::{Attempts, UpstreamSet};
use crate::runtime::uring::{Completion, OpId, Uring, UringConfig};
use crate::tls::identity::PeerIdentity;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every worker shares about one listener.
pub struct ListenerShared {
    pub name: String,
    pub addr: SocketAddr,
    /// Everything a reload may replace; swapped whole.
    pub live: ArcSwap<ListenerLive>,
    /// Open connections over all workers (max_connections is per listener).
    pub active: AtomicUsize,
}

/// A listener's reloadable material: TLS, upstreams, limits. New connections take
/// the current one; live connections keep theirs until they close.
pub struct ListenerLive {
    /// Server config plus the certificates it serves.
    pub tls: crate::tls::ServerTls,
    /// Re-encryption: TLS configs (a session store per upstream address) and the
    /// name to verify the upstream against.
    pub upstream_tls: Option<crate::tls::UpstreamClients>,
    /// Send a PROXY v2 header with identity TLVs ahead of the upstream bytes.
    pub proxy_v2: bool,
    pub upstreams: UpstreamSet,
    pub limits: ConnLimits,
    pub max_connections: usize,
    /// (certificate file, notAfter Unix seconds) of every served certificate.
    pub cert_expiry: Vec<(String, i64)>,
}

impl ListenerLive {
    /// Read and check everything the listener serves with; errors name the file.
    pub fn build(l: &Listener) -> Result<ListenerLive, String> {
        let tls = crate::tls::server_tls(l).map_err(|e| e.to_string())?;
        let upstream_tls = crate::tls::upstream_clients(l).map_err(|e| e.to_string())?;
        let cert_expiry = tls
            .certs
            .served()
            .filter_map(|c| {
                let t = crate::tls::leaf_not_after(&c.key.cert)?;
                Some((c.path.display().to_string(), t))
            })
            .collect();
        Ok(ListenerLive {
            tls,
            upstream_tls,
            proxy_v2: l.proxy_protocol.as_deref() == Some("v2"),
            upstreams: UpstreamSet::new(l.upstreams.clone()),
            limits: ConnLimits {
                max_buffered: l.max_buffered_bytes,
                handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            },
            max_connections: l.max_connections,
            cert_expiry,
        })
    }
}

/// Where a worker publishes its metrics (only when the admin endpoint is on).
pub struct MetricsOut {
    pub tx: crossbeam_channel::Sender<WorkerSnapshot>,
    pub interval: Duration,
}

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Process-wide run state, written by the signal thread, read once per turn.
pub const RUNNING: u8 = 0;
/// Stop accepting; finish live connections.
pub const DRAINING: u8 = 1;
/// Close everything now and exit.
pub const STOPPING: u8 = 2;

pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub ring: UringConfig,
    pub listeners: Vec<(Arc<ListenerShared>, OwnedFd)>,
    pub state: Arc<AtomicU8>,
    pub log: crate::ops::log::LogSink,
    pub metrics: Option<MetricsOut>,
    /// `runtime.max_buffered_bytes_per_worker`.
    pub max_buffered_per_worker: usize,
}

/// Token layout (the `u64` the uring module hands back): bits 0..4 op kind,
/// 4..32 slot index (or listener index for accepts), 32..64 slot generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Accept = 0,
    ClientRecv,
    UpstreamRecv,
    ClientSend,
    UpstreamSend,
    Connect,
    Shutdown,
    /// Cancels and closes: their completion needs nothing.
    Fire,
}

const KINDS: [Kind; 8] = [
    Kind::Accept,
    Kind::ClientRecv,
    Kind::UpstreamRecv,
    Kind::ClientSend,
    Kind::UpstreamSend,
    Kind::Connect,
    Kind::Shutdown,
    Kind::Fire,
];

fn token(kind: Kind, slot: u32, gen: u32) -> u64 {
    (gen as u64) << 32 | (slot as u64) << 4 | kind as u64
}

fn untoken(t: u64) -> (Kind, u32, u32) {
    (
        KINDS[(t & 0xf) as usize],
        ((t >> 4) & 0x0fff_ffff) as u32,
        (t >> 32) as u32,
    )
}

/// Per-connection driver state around the sans-IO `Conn`.
struct Slot {
    gen: u32,
    conn: Option<Conn>,
    /// The listener material this connection started with.
    live: Option<Arc<ListenerLive>>,
    listener: usize,
    /// Only filled when the access log is on (one getpeername per connection).
    client_addr: Option<SocketAddr>,
    /// The upstream being connected to or connected.
    upstream_addr: Option<SocketAddr>,
    connect_started: Option<Instant>,
    /// Plaintext bytes already added to the worker's counters.
    reported_c2u: u64,
    reported_u2c: u64,
    client: Option<OwnedFd>,
    upstream: Option<OwnedFd>,
    upstream_connected: bool,
    attempts: Attempts,
    client_rx: RecvLeg,
    upstream_rx: RecvLeg,
    connect: Option<OpId>,
    client_send: Option<OpId>,
    upstream_send: Option<OpId>,
    /// Ops whose final completion is still due; the slot (and the sockets) live
    /// until this is zero.
    inflight: u32,
    closing: Option<CloseReason>,
    scheduled_phase: Option<Phase>,
    dirty: bool,
    /// Buffered bytes last added to the worker's total (`BufferCap::account`).
    accounted: usize,
    /// Waiting in `BufferCap::paused` for the worker cap to leave room.
    cap_paused: bool,
    /// Reconnect the upstream (same address) once its old socket's ops are done.
    reconnect: bool,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            gen: 0,
            conn: None,
            live: None,
            listener: 0,
            client_addr: None,
            upstream_addr: None,
            connect_started: None,
            reported_c2u: 0,
            reported_u2c: 0,
            client: None,
            upstream: None,
            upstream_connected: false,
            attempts: Attempts::default(),
            client_rx: RecvLeg::default(),
            upstream_rx: RecvLeg::default(),
            connect: None,
            client_send: None,
            upstream_send: None,
            inflight: 0,
            closing: None,
            scheduled_phase: None,
            dirty: false,
            accounted: 0,
            cap_paused: false,
            reconnect: false,
        }
    }
}

struct ListenerLocal {
    shared: Arc<ListenerShared>,
    fd: Option<OwnedFd>,
    accept: Option<OpId>,
    rr_cursor: usize,
    /// Out of file descriptors: re-arm the accept only at this time, not at once
    /// (an immediate re-arm would fail again and spin).
    rearm_at: Option<Instant>,
    /// This worker's server config for the current `live` (its verifier leaves
    /// refused clients in the worker's sink), rebuilt after a reload.
    tls: Option<(std::sync::Weak<ListenerLive>, Arc<rustls::ServerConfig>)>,
}

impl ListenerLocal {
    fn server_config(
        &mut self,
        live: &Arc<ListenerLive>,
        sink: &crate::tls::RejectSink,
    ) -> Arc<rustls::ServerConfig> {
        // The Weak keeps the address from being reused: no false match.
        match &self.tls {
            Some((l, c)) if std::ptr::eq(l.as_ptr(), Arc::as_ptr(live)) => c.clone(),
            _ => {
                let c = live.tls.config_for(sink);
                self.tls = Some((Arc::downgrade(live), c.clone()));
                c
            }
        }
    }
}

pub struct Worker {
    index: usize,
    ring: Uring,
    listeners: Vec<ListenerLocal>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    wheel: Wheel<(u32, u32)>,
    state: Arc<AtomicU8>,
    live: usize,
    log: crate::ops::log::LogSink,
    /// Per listener, this worker's counters and histograms.
    metrics: Vec<ListenerMetrics>,
    publish: Option<Publisher>,
    cap: BufferCap,
    /// Where this worker's verifiers leave the client certificates they refuse.
    rejects: crate::tls::RejectSink,
}

/// The worker-wide bound on buffered bytes (`runtime.max_buffered_bytes_per_worker`).
/// Each connection is bounded by `max_buffered_bytes` per direction; this bounds
/// their sum, so many slow peers cannot take the worker's memory either. Receives
/// reserve their length here until they complete, so the cap holds before the
/// bytes arrive, not after.
struct BufferCap {
    limit: usize,
    /// Bytes all connections hold, as last accounted in `flush`.
    buffered: usize,
    /// Receive lengths armed and not completed yet.
    reserved: usize,
    recv_buffer_size: usize,
    /// Connections whose receive the cap paused; flushed again when room returns.
    paused: Vec<(u32, u32)>,
    /// Receives the cap paused (a metric).
    pauses: u64,
}

/// The receive of one leg (client or upstream): armed single-shot with a length
/// the worker cap reserves until it completes.
#[derive(Default)]
struct RecvLeg {
    op: Option<OpId>,
    /// Its length, reserved in `BufferCap`.
    len: usize,
    cancelled: bool,
}

/// What [`RecvLeg::arm`] did.
#[derive(PartialEq)]
enum Armed {
    Nothing,
    /// A receive is now in flight.
    Receive,
    /// The leg has a budget but the worker cap left no room.
    Paused,
}

impl RecvLeg {
    /// Arm a receive if the leg has a budget and none is armed, or cancel the armed
    /// one when the budget is gone.
    fn arm(
        &mut self,
        ring: &mut Uring,
        cap: &mut BufferCap,
        fd: std::os::fd::RawFd,
        budget: usize,
        held: usize,
        token: u64,
    ) -> Armed {
        if budget == 0 {
            self.cancel(ring);
            return Armed::Nothing;
        }
        if self.op.is_some() {
            return Armed::Nothing;
        }
        let len = cap.recv_len(budget, held);
        if len == 0 {
            return Armed::Paused;
        }
        self.op = Some(ring.recv(fd, len, token));
        self.len = len;
        cap.reserved += len;
        Armed::Receive
    }

    /// Cancel the armed receive (its final completion still arrives).
    fn cancel(&mut self, ring: &mut Uring) {
        if let Some(op) = self.op.filter(|_| !self.cancelled) {
            ring.cancel(op, token(Kind::Fire, 0, 0));
            self.cancelled = true;
        }
    }

    /// The receive completed: returns the length to release from the reservation.
    fn done(&mut self) -> usize {
        self.op = None;
        self.cancelled = false;
        std::mem::take(&mut self.len)
    }
}

impl BufferCap {
    /// Count a receive just armed in the slot's `inflight`, or queue the slot
    /// (once: `queued` is its flag) for when the cap has room.
    fn note(&mut self, a: Armed, inflight: &mut u32, queued: &mut bool, slot: (u32, u32)) {
        match a {
            Armed::Nothing => {}
            Armed::Receive => *inflight += 1,
            Armed::Paused => {
                self.pauses += 1;
                if !std::mem::replace(queued, true) {
                    self.paused.push(slot);
                }
            }
        }
    }

    fn account(&mut self, was: &mut usize, now: usize) {
        self.buffered = self.buffered - *was + now;
        *was = now;
    }

    fn room(&self) -> usize {
        self.limit.saturating_sub(self.buffered + self.reserved)
    }

    /// How much the next receive of one direction may take, given the
    /// connection's own `budget` and what that direction already holds. Over the
    /// cap, a direction that holds nothing may still take one receive buffer (so
    /// every connection keeps moving, a buffer at a time); one that holds bytes
    /// waits until they drain or the worker has room again.
    fn recv_len(&mut self, budget: usize, held: usize) -> usize {
        let room = self.room();
        if budget <= room {
            budget
        } else if held == 0 {
            budget.min(room.max(self.recv_buffer_size))
        } else if room >= self.recv_buffer_size {
            room
        } else {
            0
        }
    }
}

struct Publisher {
    out: MetricsOut,
    next: Instant,
    /// Something changed since the last snapshot.
    dirty: bool,
}

/// Set up a worker on the current thread: pin it, build its ring, arm accepts.
pub fn setup(s: WorkerSetup) -> Result<Worker, String> {
    if let Some(cpu) = s.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(format!("worker {}: cannot pin to CPU {cpu}", s.index));
        }
    }
    let ring = Uring::new(s.ring).map_err(|e| e.to_string())?;
    let now = Instant::now();
    let n_listeners = s.listeners.len();
    let mut w = Worker {
        index: s.index,
        ring,
        listeners: s
            .listeners
            .into_iter()
            .map(|(shared, fd)| ListenerLocal {
                shared,
                fd: Some(fd),
                accept: None,
                rr_cursor: s.index,
                rearm_at: None,
                tls: None,
            })
            .collect(),
        slots: Vec::new(),
        free: Vec::new(),
        dirty: Vec::new(),
        wheel: Wheel::new(now, Duration::from_millis(20), 4096),
        state: s.state,
        live: 0,
        log: s.log,
        metrics: vec![ListenerMetrics::default(); n_listeners],
        publish: s.metrics.map(|out| Publisher {
            out,
            next: now,
            dirty: true,
        }),
        cap: BufferCap {
            limit: s.max_buffered_per_worker,
            buffered: 0,
            reserved: 0,
            recv_buffer_size: s.ring.recv_buffer_size as usize,
            paused: Vec::new(),
            pauses: 0,
        },
        rejects: crate::tls::RejectSink::default(),
    };
    for i in 0..w.listeners.len() {
        w.arm_accept(i);
    }
    Ok(w)
}

impl Worker {
    pub fn index(&self) -> usize {
        self.index
    }

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        if let Some(fd) = &l.fd {
            l.accept = Some(
                self.ring
                    .accept_multi(fd.as_raw_fd(), token(Kind::Accept, i as u32, 0)),
            );
        }
    }

    /// Run until stopped. Returns once every connection is closed.
    pub fn run(mut self, drain_timeout: Duration) -> std::io::Result<()> {
        let mut completions = Vec::with_capacity(256);
        let mut expired = Vec::new();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let wait = self.wheel.tick().max(Duration::from_millis(20));
            self.ring.submit_and_wait(wait)?;
            self.ring.drain(&mut completions);
            let now = Instant::now();
            for c in completions.drain(..) {
                self.on_completion(c, now);
            }
            self.flush_dirty(now);
            self.wheel.expire(now, &mut expired);
            for (slot, gen) in expired.drain(..) {
                self.on_timer(slot, gen, now);
            }
            self.flush_dirty(now);
            self.wake_paused(now);
            self.maybe_publish(now, false);
            if self.state.load(Ordering::Relaxed) == RUNNING {
                for i in 0..self.listeners.len() {
                    if self.listeners[i].rearm_at.is_some_and(|t| now >= t) {
                        self.listeners[i].rearm_at = None;
                        self.arm_accept(i);
                    }
                }
            }

            match self.state.load(Ordering::Relaxed) {
                RUNNING => {}
                st => {
                    if drain_deadline.is_none() {
                        self.stop_accepting();
                        drain_deadline = Some(now + drain_timeout);
                    }
                    if st == STOPPING || now >= drain_deadline.unwrap() {
                        self.shutdown_all(now);
                    }
                    if self.live == 0 && self.ring.ops_in_flight() == 0 {
                        self.maybe_publish(now, true);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Send a snapshot when one is due and something changed. Never blocks: a full
    /// channel drops it, and the next (cumulative) one supersedes it.
    fn maybe_publish(&mut self, now: Instant, force: bool) {
        let Some(p) = &mut self.publish else { return };
        if !(force || (p.dirty && now >= p.next)) {
            return;
        }
        // Fold in the bytes of long-lived connections too (only at publish time,
        // not per byte).
        for s in &mut self.slots {
            if let Some(c) = &s.conn {
                let m = &mut self.metrics[s.listener];
                m.bytes_client_to_upstream += c.bytes_client_to_upstream - s.reported_c2u;
                m.bytes_upstream_to_client += c.bytes_upstream_to_client - s.reported_u2c;
                s.reported_c2u = c.bytes_client_to_upstream;
                s.reported_u2c = c.bytes_upstream_to_client;
            }
        }
        let _ = p.out.tx.try_send(WorkerSnapshot {
            worker: self.index,
            listeners: self.metrics.clone(),
            buffered_bytes: self.cap.buffered as u64,
            buffer_cap_pauses: self.cap.pauses,
        });
        p.dirty = false;
        p.next = now + p.out.interval;
    }

    fn touched(&mut self) {
        if let Some(p) = &mut self.publish {
            p.dirty = true;
        }
    }

    fn stop_accepting(&mut self) {
        for i in 0..self.listeners.len() {
            if let Some(op) = self.listeners[i].accept.take() {
                self.ring.cancel(op, token(Kind::Fire, 0, 0));
            }
            if let Some(fd) = self.listeners[i].fd.take() {
                self.ring.close(fd, token(Kind::Fire, 0, 0));
            }
        }
    }

    fn shutdown_all(&mut self, now: Instant) {
        for i in 0..self.slots.len() {
            if self.slots[i].closing.is_none() {
                if let Some(c) = self.slots[i].conn.as_mut() {
                    c.handle_shutdown();
                    self.mark_dirty(i as u32);
                }
            }
        }
        self.flush_dirty(now);
    }

    fn mark_dirty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(slot);
        }
    }

    fn on_completion(&mut self, c: Completion, now: Instant) {
        let (kind, idx, gen) = untoken(c.token);
        self.touched();
        match kind {
            Kind::Fire => return,
            Kind::Accept => return self.on_accept(idx as usize, c, now),
            _ => {}
        }
        let s = &mut self.slots[idx as usize];
        if s.gen != gen || s.conn.is_none() {
            // Cannot happen while slots outlive their ops; stay safe regardless.
            if let Some(b) = c.buf_id {
                self.ring.recycle(b);
            }
            return;
        }
        if !c.more {
            s.inflight -= 1;
        }
        let closing = s.closing.is_some();
        let conn = s.conn.as_mut().unwrap();
        match kind {
            Kind::ClientRecv | Kind::UpstreamRecv => {
                let client = kind == Kind::ClientRecv;
                // Single-shot: every receive completion is final.
                let rx = if client {
                    &mut s.client_rx
                } else {
                    &mut s.upstream_rx
                };
                self.cap.reserved -= rx.done();
                if let Some(b) = &c.buf_id {
                    if !closing && c.result > 0 {
                        let data = self.ring.received(b, c.result as usize);
                        if client {
                            conn.handle_client_data(data, now);
                        } else {
                            conn.handle_upstream_data(data, now);
                        }
                    }
                }
                // The connection copied the bytes: the buffer goes straight back.
                if let Some(b) = c.buf_id {
                    self.ring.recycle(b);
                }
                if !closing && c.result <= 0 {
                    match c.result {
                        0 if client => conn.handle_client_eof(now),
                        0 => conn.handle_upstream_eof(now),
                        // Ring ran dry or we cancelled: re-armed in flush if wanted.
                        r if r == -libc::ENOBUFS || r == -libc::ECANCELED => {}
                        _ if client => conn.handle_client_error(),
                        _ => conn.handle_upstream_error(),
                    }
                }
            }
            Kind::ClientSend | Kind::UpstreamSend => {
                let client = kind == Kind::ClientSend;
                if client {
                    s.client_send = None;
                } else {
                    s.upstream_send = None;
                }
                let buf = c.buf.expect("send op returns its buffer");
                if !closing {
                    if c.result < 0 {
                        if client {
                            conn.handle_client_error();
                        } else {
                            conn.handle_upstream_error();
                        }
                    } else if c.offset + (c.result as usize) < buf.len() {
                        // Short send: the rest goes out before anything newer.
                        let off = c.offset + c.result as usize;
                        let fd = if client { &s.client } else { &s.upstream };
                        let fd = fd.as_ref().unwrap().as_raw_fd();
                        let op = self.ring.send(fd, buf, off, token(kind, idx, gen));
                        s.inflight += 1;
                        if client {
                            s.client_send = Some(op);
                        } else {
                            s.upstream_send = Some(op);
                        }
                    } else if client {
                        conn.handle_client_sent(buf, now);
                    } else {
                        conn.handle_upstream_sent(buf, now);
                    }
                }
            }
            Kind::Connect => {
                s.connect = None;
                if !closing {
                    let m = &mut self.metrics[s.listener];
                    if c.result == 0 {
                        s.upstream_connected = true;
                        if let Some(t) = s.connect_started {
                            m.upstream_connect.record(now - t);
                        }
                        let l = &self.listeners[s.listener].shared;
                        let live = s.live.as_ref().expect("a live conn has its material");
                        let preamble = if live.proxy_v2 {
                            proxy_header(l, live, s.client.as_ref(), conn)
                        } else {
                            Vec::new()
                        };
                        let tls = live.upstream_tls.as_ref().zip(s.upstream_addr);
                        let tls = tls
                            .and_then(|(up, addr)| up.connect(addr, conn.upstream_tls_retried()));
                        let offered = tls.as_ref().is_some_and(|t| t.1);
                        conn.handle_upstream_connected(now, preamble, tls.map(|t| t.0));
                        if offered {
                            conn.allow_upstream_tls_retry();
                        }
                    } else {
                        if let Some(a) = s.upstream_addr {
                            m.upstream_connect_error(a);
                        }
                        if let Some(fd) = s.upstream.take() {
                            self.ring.close(fd, token(Kind::Fire, 0, 0));
                        }
                        self.start_connect(idx, now);
                    }
                }
            }
            Kind::Shutdown => {}
            Kind::Accept | Kind::Fire => unreachable!(),
        }
        self.mark_dirty(idx);
    }

    fn on_accept(&mut self, li: usize, c: Completion, now: Instant) {
        if !c.more {
            self.listeners[li].accept = None;
            if c.result == -libc::EMFILE || c.result == -libc::ENFILE {
                self.listeners[li].rearm_at = Some(now + ACCEPT_BACKOFF);
            } else if self.state.load(Ordering::Relaxed) == RUNNING {
                self.arm_accept(li);
            }
        }
        // EMFILE, ENFILE, ECONNABORTED...: the listener stays armed.
        let Some(fd) = crate::runtime::uring::accepted_fd(&c) else {
            return;
        };
        let live = self.listeners[li].shared.live.load_full();
        let config = self.listeners[li].server_config(&live, &self.rejects);
        let shared = &self.listeners[li].shared;
        if shared.active.fetch_add(1, Ordering::Relaxed) >= live.max_connections {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            self.metrics[li].rejected_max_connections += 1;
            self.ring.close(fd, token(Kind::Fire, 0, 0));
            return;
        }
        self.metrics[li].connections += 1;
        let tls = match rustls::ServerConnection::new(config) {
            Ok(t) => t,
            Err(_) => {
                shared.active.fetch_sub(1, Ordering::Relaxed);
                self.ring.close(fd, token(Kind::Fire, 0, 0));
                return;
            }
        };
        let conn = Conn::new(tls, live.limits, now).with_reject_sink(self.rejects.clone());
        let client_addr = if self.log.enabled() {
            peer_addr(Some(&fd))
        } else {
            None
        };
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::empty());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[idx as usize];
        let gen = s.gen;
        *s = Slot::empty();
        s.gen = gen;
        s.conn = Some(conn);
        s.live = Some(live);
        s.listener = li;
        s.client = Some(fd);
        s.client_addr = client_addr;
        self.live += 1;
        self.mark_dirty(idx);
    }

    fn start_connect(&mut self, idx: u32, now: Instant) {
        let s = &mut self.slots[idx as usize];
        let live = s.live.clone().expect("a live conn has its material");
        let conn = s.conn.as_mut().unwrap();
        while let Some(addr) = live.upstreams.next(&mut s.attempts) {
            let sock = match socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM.nonblocking().cloexec(),
                Some(socket2::Protocol::TCP),
            ) {
                Ok(s) => s,
                Err(_) => {
                    self.metrics[s.listener].upstream_connect_error(addr);
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let fd = OwnedFd::from(sock);
            s.connect = Some(self.ring.connect(
                fd.as_raw_fd(),
                addr,
                token(Kind::Connect, idx, s.gen),
            ));
            s.upstream = Some(fd);
            s.upstream_addr = Some(addr);
            s.connect_started = Some(now);
            s.inflight += 1;
            conn.handle_connect_started(now);
            return;
        }
        conn.handle_upstream_unavailable();
    }

    fn on_timer(&mut self, idx: u32, gen: u32, now: Instant) {
        let s = &mut self.slots[idx as usize];
        if s.gen != gen || s.closing.is_some() {
            return;
        }
        let Some(conn) = s.conn.as_mut() else { return };
        match conn.handle_timeout(now) {
            Expired::No => self.wheel.schedule(conn.deadline(), (idx, gen)),
            Expired::ConnectAttempt => {
                if let Some(op) = s.connect {
                    self.ring.cancel(op, token(Kind::Fire, 0, 0));
                }
                self.wheel.schedule(conn.deadline(), (idx, gen));
            }
            Expired::Close => self.mark_dirty(idx),
        }
    }

    /// Flush the connections the worker cap paused once it has room again (an
    /// eighth of the cap, so they do not wake for every freed byte).
    fn wake_paused(&mut self, now: Instant) {
        if self.cap.paused.is_empty() || self.cap.room() < (self.cap.limit / 8).max(1) {
            return;
        }
        let paused = std::mem::take(&mut self.cap.paused);
        for (idx, gen) in paused {
            let s = &mut self.slots[idx as usize];
            if s.gen == gen && s.conn.is_some() {
                s.cap_paused = false;
                self.mark_dirty(idx);
            }
        }
        self.flush_dirty(now);
    }

    fn flush_dirty(&mut self, now: Instant) {
        while let Some(idx) = self.dirty.pop() {
            self.slots[idx as usize].dirty = false;
            self.flush(idx, now);
        }
    }

    /// Turn one connection's wants into ops.
    fn flush(&mut self, idx: u32, now: Instant) {
        let s = &mut self.slots[idx as usize];
        if s.conn.is_none() {
            return;
        }
        if s.closing.is_some() {
            if s.inflight == 0 {
                self.finalize(idx);
            }
            return;
        }
        let gen = s.gen;
        if s.conn.as_mut().unwrap().poll_connect() {
            let l = &mut self.listeners[s.listener];
            let live = s.live.as_ref().expect("a live conn has its material");
            s.attempts = live.upstreams.begin(&mut l.rr_cursor);
            let conn = s.conn.as_ref().unwrap();
            let tls = conn.tls();
            self.metrics[s.listener].handshake_ok(
                tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                tls.peer_certificates().is_some(),
                conn.handshake_duration(),
            );
            self.start_connect(idx, now);
        }
        self.retry_upstream(idx, now);
        let s = &mut self.slots[idx as usize];
        let conn = s.conn.as_mut().unwrap();
        let client = s.client.as_ref().unwrap().as_raw_fd();
        if let Some(buf) = conn.poll_client_send() {
            s.client_send = Some(
                self.ring
                    .send(client, buf, 0, token(Kind::ClientSend, idx, gen)),
            );
            s.inflight += 1;
        }
        // Sends only move bytes between counted places: one account per flush.
        self.cap.account(
            &mut s.accounted,
            conn.buffered_to_client() + conn.buffered_to_upstream(),
        );
        if s.upstream_connected {
            let up = s.upstream.as_ref().unwrap().as_raw_fd();
            if let Some(buf) = conn.poll_upstream_send() {
                s.upstream_send =
                    Some(
                        self.ring
                            .send(up, buf, 0, token(Kind::UpstreamSend, idx, gen)),
                    );
                s.inflight += 1;
            }
            if conn.poll_upstream_shutdown() {
                self.ring
                    .shutdown_write(up, token(Kind::Shutdown, idx, gen));
                s.inflight += 1;
            }
            let a = s.upstream_rx.arm(
                &mut self.ring,
                &mut self.cap,
                up,
                conn.upstream_recv_budget(),
                conn.buffered_to_client(),
                token(Kind::UpstreamRecv, idx, gen),
            );
            self.cap
                .note(a, &mut s.inflight, &mut s.cap_paused, (idx, gen));
        }
        if conn.poll_client_shutdown() {
            self.ring
                .shutdown_write(client, token(Kind::Shutdown, idx, gen));
            s.inflight += 1;
        }
        let a = s.client_rx.arm(
            &mut self.ring,
            &mut self.cap,
            client,
            conn.client_recv_budget(),
            conn.buffered_to_upstream(),
            token(Kind::ClientRecv, idx, gen),
        );
        self.cap
            .note(a, &mut s.inflight, &mut s.cap_paused, (idx, gen));
        if s.scheduled_phase != Some(conn.phase()) {
            s.scheduled_phase = Some(conn.phase());
            self.wheel.schedule(conn.deadline(), (idx, gen));
        }
        if let Some(reason) = conn.poll_close() {
            self.begin_close(idx, reason);
        }
    }

    /// The upstream refused the TLS session offered to it (its handshake failed before
    /// anything crossed that leg): count it, drop that upstream's sessions (logging
    /// once per off period that resumption towards it is off), stop the old socket's
    /// ops, and once they are done connect the same address again (the connection
    /// makes full handshakes from now on).
    fn retry_upstream(&mut self, idx: u32, now: Instant) {
        let s = &mut self.slots[idx as usize];
        let conn = s.conn.as_mut().unwrap();
        if let Some(reason) = conn.poll_upstream_tls_retry() {
            let addr = s.upstream_addr.expect("a TLS upstream leg has an address");
            self.metrics[s.listener].upstream_resumption_failure(addr);
            let live = s.live.as_ref().expect("a live conn has its material");
            if let Some(off) = live.upstream_tls.as_ref().and_then(|u| u.refused(addr)) {
                eprintln!(
                    "terminus: listener \"{}\": upstream {addr} refused TLS session \
                     resumption (its handshake failed: {}); its sessions were dropped and \
                     resumption towards it is off for {}s, connections are retried with a \
                     full handshake (upstream_tls.resume = false turns it off for good)",
                    self.listeners[s.listener].shared.name,
                    reason.as_str(),
                    off.as_secs()
                );
            }
            s.upstream_connected = false;
            s.reconnect = true;
            s.upstream_rx.cancel(&mut self.ring);
            if let Some(op) = s.upstream_send {
                self.ring.cancel(op, token(Kind::Fire, 0, 0));
            }
        }
        if s.reconnect && s.upstream_rx.op.is_none() && s.upstream_send.is_none() {
            s.reconnect = false;
            if let Some(fd) = s.upstream.take() {
                self.ring.close(fd, token(Kind::Fire, 0, 0));
            }
            let live = s.live.as_ref().expect("a live conn has its material");
            live.upstreams.again(&mut s.attempts);
            self.start_connect(idx, now);
        }
    }

    fn begin_close(&mut self, idx: u32, reason: CloseReason) {
        let s = &mut self.slots[idx as usize];
        s.closing = Some(reason);
        let m = &mut self.metrics[s.listener];
        match reason {
            CloseReason::HandshakeFailed(r) => m.handshake_error(r),
            CloseReason::UpstreamTlsFailed(_) => m.upstream_tls_errors += 1,
            _ => {}
        }
        // A reset on one leg becomes a reset on the other (SO_LINGER 0 then close).
        let reset_fd = match reason {
            CloseReason::ClientReset => s.upstream.as_ref(),
            CloseReason::UpstreamReset => s.client.as_ref(),
            _ => None,
        };
        if let Some(fd) = reset_fd {
            let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
        }
        for op in [
            s.client_rx.op,
            s.upstream_rx.op,
            s.connect,
            s.client_send,
            s.upstream_send,
        ]
        .into_iter()
        .flatten()
        {
            self.ring.cancel(op, token(Kind::Fire, 0, 0));
        }
        if s.inflight == 0 {
            self.finalize(idx);
        }
    }

    /// Every op of the slot has completed: close the sockets, free the slot.
    fn finalize(&mut self, idx: u32) {
        let s = &mut self.slots[idx as usize];
        let Some(conn) = s.conn.take() else { return };
        self.cap.account(&mut s.accounted, 0);
        let l = &self.listeners[s.listener].shared;
        let m = &mut self.metrics[s.listener];
        m.bytes_client_to_upstream += conn.bytes_client_to_upstream - s.reported_c2u;
        m.bytes_upstream_to_client += conn.bytes_upstream_to_client - s.reported_u2c;
        l.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(kind) = conn.upstream_handshake_kind() {
            let resumed = kind == rustls::HandshakeKind::Resumed;
            m.upstream_handshakes[resumed as usize] += 1;
            let up = s.live.as_ref().and_then(|l| l.upstream_tls.as_ref());
            if let Some((up, addr)) = up.zip(s.upstream_addr).filter(|_| resumed) {
                up.resumed(addr);
            }
        }
        if self.log.enabled() {
            self.log.send_line(access_line(l, self.index, s, &conn));
        }
        s.live = None;
        if let Some(fd) = s.client.take() {
            if matches!(
                s.closing,
                Some(
                    CloseReason::HandshakeFailed(_)
                        | CloseReason::ClientProtocolError
                        | CloseReason::UpstreamUnavailable
                        | CloseReason::UpstreamTlsFailed(_)
                )
            ) {
                discard_unread(&fd);
            }
            self.ring.close(fd, token(Kind::Fire, 0, 0));
        }
        if let Some(fd) = s.upstream.take() {
            self.ring.close(fd, token(Kind::Fire, 0, 0));
        }
        s.gen = s.gen.wrapping_add(1) & 0x0fff_ffff;
        s.closing = None;
        self.free.push(idx);
        self.live -= 1;
    }
}

/// Drop what the client sent and we never read, so that closing sends a FIN after
/// the alert or close_notify we just sent, not a RST (Linux resets a socket closed
/// with unread data, and a client may then lose the alert it has not read yet).
/// Bounded: a client still streaming gets the RST it asks for.
fn discard_unread(fd: &OwnedFd) {
    let sock = socket2::SockRef::from(fd);
    let mut sink = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
    for _ in 0..64 {
        match sock.recv_with_flags(&mut sink, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

fn peer_addr(fd: Option<&OwnedFd>) -> Option<SocketAddr> {
    socket2::SockRef::from(fd?).peer_addr().ok()?.as_socket()
}

fn local_addr(fd: Option<&OwnedFd>) -> Option<SocketAddr> {
    socket2::SockRef::from(fd?).local_addr().ok()?.as_socket()
}

/// The PROXY v2 header for this connection: addresses, ALPN, SNI, the client-side
/// TLS facts and the verified identity.
fn proxy_header(
    l: &ListenerShared,
    live: &ListenerLive,
    client: Option<&OwnedFd>,
    conn: &Conn,
) -> Vec<u8> {
    let tls = conn.tls();
    // Parsed here, not after every handshake: only PROXY v2 needs it (for now).
    let identity = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| PeerIdentity::from_der(der).ok());
    let identity = identity.as_ref();
    let cert = live.tls.certs.choose(tls.server_name());
    let src = peer_addr(client).unwrap_or(l.addr);
    let dst = local_addr(client).unwrap_or(l.addr);
    crate::proxy::proxy_v2::Header {
        src,
        dst,
        alpn: tls.alpn_protocol().map(|p| p.to_vec()),
        authority: tls.server_name().map(str::to_owned),
        ssl: Some(crate::proxy::proxy_v2::Ssl::from_tls(
            tls,
            Some(&cert.algorithms),
            identity,
        )),
        spiffe: identity.and_then(|i| i.spiffe.clone()),
        unique_id: None,
    }
    .to_bytes()
}

/// The access log line of a finished connection: one JSON object per connection.
/// `event` says how it ended (`connection`, `handshake_error`, `upstream_tls_error`);
/// failures also carry `reason` and what the refused client presented. Serialized
/// straight from borrowed fields (no intermediate JSON map): it runs on the worker.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    ts: f64,
    event: &'static str,
    listener: &'a str,
    worker: usize,
    client: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    sni: Option<&'a str>,
    alpn: Option<std::borrow::Cow<'a, str>>,
    tls_version: Option<&'static str>,
    cipher: Option<&'static str>,
    resumed: bool,
    client_auth: &'static str,
    peer_spiffe: Option<&'a str>,
    peer_dns: &'a [String],
    peer_cn: Option<&'a str>,
    peer_serial: Option<&'a str>,
    handshake_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    close_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn access_line(l: &ListenerShared, worker: usize, s: &Slot, conn: &Conn) -> String {
    let tls = conn.tls();
    let closing = s.closing.unwrap_or(CloseReason::Done);
    let (event, reason) = match closing {
        CloseReason::HandshakeFailed(r) => ("handshake_error", Some(r.as_str())),
        CloseReason::UpstreamTlsFailed(r) => ("upstream_tls_error", Some(r.as_str())),
        _ => ("connection", None),
    };
    let handshake = conn.handshake_duration();
    // The verified peer, or (for a refused one) what it presented.
    let peer = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| PeerIdentity::from_der(der).ok());
    let rejected = conn.rejected_client();
    let id = peer
        .as_ref()
        .or_else(|| rejected.and_then(|r| r.identity.as_ref()));
    let line = AccessLine {
        ts: crate::ops::log::now_ts(),
        event,
        listener: &l.name,
        worker,
        client: s.client_addr,
        upstream: s.upstream_addr.filter(|_| s.upstream_connected),
        sni: tls.server_name(),
        alpn: tls.alpn_protocol().map(String::from_utf8_lossy),
        tls_version: handshake.and(tls.protocol_version()).map(version_name),
        cipher: handshake
            .and(tls.negotiated_cipher_suite())
            .and_then(|c| c.suite().as_str()),
        resumed: tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_auth: if peer.is_some() { "verified" } else { "none" },
        peer_spiffe: id.and_then(|i| i.spiffe.as_deref()),
        peer_dns: id.map_or(&[], |i| &i.dns[..]),
        peer_cn: id.and_then(|i| i.cn.as_deref()),
        peer_serial: id.map(|i| i.serial.as_str()),
        handshake_us: handshake.map(|d| d.as_micros() as u64),
        bytes_in: conn.bytes_client_to_upstream,
        bytes_out: conn.bytes_upstream_to_client,
        duration_ms: conn.started().elapsed().as_secs_f64() * 1e3,
        close_reason: closing.as_str(),
        reason,
        peer_subject: reason.and(id.map(|i| i.subject.as_str())),
        error: reason.and(rejected.map(|r| r.error.to_string())),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}
