//! worker: the thread-per-core loop. Each worker owns one I/O driver (an io_uring,
//! or an epoll instance where io_uring is blocked), one SO_REUSEPORT socket per listener and every connection the kernel hashes to it;
//! it drives `conn` state machines from completions and shares no mutable state
//! with other workers: listener material is behind `ArcSwap` (reload swaps it; each
//! connection keeps the `Arc` it started with), counters and histograms are the
//! worker's own and leave it only as published snapshots (`metrics`).
//!
//! One loop turn: submit everything queued and wait (one `io_uring_enter`, or one
//! `epoll_wait` plus the op attempts it makes possible), drain
//! completions into the connections they belong to, then for each connection touched
//! this turn turn its wants into ops (coalescing: at most one send per side), then
//! expire timers.
//!
//! I/O contract: through its [`Driver`] only (the loop is generic over it:
//! [`crate::runtime::uring`] or [`crate::runtime::epoll`]) and
//! [`crate::runtime::sock`].
#![forbid(unsafe_code)]

use crate::proxy::conn::{CloseReason, Conn, Expired, HandshakeFailure, Redial};
use crate::proxy::proxy_v2;
use crate::proxy::timer::Wheel;
use crate::runtime::driver::{Backend, Completion, Driver, Event, OpError};
use crate::runtime::epoll::Epoll;
use crate::runtime::listener::ListenerLocal;
use crate::runtime::run_state::{RunState, RunStateCell};
use crate::runtime::slab::Slab;
use crate::runtime::slot::{BufferCap, Side, Slot, SlotId, Token};
use crate::runtime::sock;
use crate::runtime::uring::{Uring, UringConfig, UringError};
use crate::telemetry::metrics::{ListenerMetrics, WorkerSnapshot};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod callers;
mod limits;

// Where they lived before the split; `ops::reload` and `ops::admin` import them
// from here.
use crate::runtime::listener::ListenerShared;

/// Where a worker publishes its metrics (only when the admin endpoint is on).
pub struct MetricsOut {
    pub tx: crossbeam_channel::Sender<WorkerSnapshot>,
    pub interval: Duration,
}

/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct WorkerSetup {
    pub index: usize,
    pub cpu: Option<usize>,
    pub backend: Backend,
    /// io_uring's parameters; epoll uses `recv_buffer_size` only.
    pub ring: UringConfig,
    pub listeners: Vec<(Arc<ListenerShared>, OwnedFd)>,
    pub state: Arc<RunStateCell>,
    pub log: crate::telemetry::log::LogSink,
    pub metrics: Option<MetricsOut>,
    /// `runtime.max_buffered_bytes_per_worker`.
    pub max_buffered_per_worker: usize,
    /// `runtime.idle_memory_trim_ms` (None: 0, never).
    pub idle_trim: Option<Duration>,
}

pub struct Worker<D> {
    index: usize,
    /// The I/O driver: io_uring or epoll.
    io: D,
    listeners: Vec<ListenerLocal>,
    /// Every live connection.
    slots: Slab<Slot>,
    /// Slots to flush this turn.
    dirty: Vec<SlotId>,
    wheel: Wheel<SlotId>,
    state: Arc<RunStateCell>,
    log: crate::telemetry::log::LogSink,
    /// Per listener, this worker's counters and histograms.
    metrics: Vec<ListenerMetrics>,
    publish: Option<Publisher>,
    /// What each loop turn carried (published with the counters).
    turns: crate::telemetry::metrics::TurnStats,
    /// Connections flushed in the current turn.
    flushed: u64,
    cap: BufferCap,
    /// Where this worker's verifiers leave the client certificates they refuse.
    rejects: crate::tls::RejectSink,
    /// What the client leaves seen here say, for the callers inventory.
    leaves: crate::telemetry::callers::LeafCache,
    idle: crate::runtime::memory::IdleTrim,
}

struct Publisher {
    out: MetricsOut,
    next: Instant,
    /// Something changed since the last snapshot.
    dirty: bool,
}

/// Why a worker could not set itself up; `Display` is the line `terminus run` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerSetupError {
    #[error("worker {index}: cannot pin to CPU {cpu}")]
    Pin { index: usize, cpu: usize },
    /// Its io_uring could not be built (the driver's own message).
    #[error("{0}")]
    Ring(#[source] UringError),
    #[error("worker {index}: cannot create its epoll instance: {source}")]
    Epoll {
        index: usize,
        source: std::io::Error,
    },
}

/// A set-up worker on either backend (the loop is the same generic code).
pub enum AnyWorker {
    IoUring(Worker<Uring<Token>>),
    Epoll(Worker<Epoll<Token>>),
}

impl AnyWorker {
    /// Run until stopped. Returns once every connection is closed.
    pub fn run(self, drain_timeout: Duration) -> std::io::Result<()> {
        match self {
            AnyWorker::IoUring(w) => w.run(drain_timeout),
            AnyWorker::Epoll(w) => w.run(drain_timeout),
        }
    }
}

/// Set up a worker on the current thread: pin it, build its driver, arm accepts.
pub fn setup(s: WorkerSetup) -> Result<AnyWorker, WorkerSetupError> {
    if let Some(cpu) = s.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(WorkerSetupError::Pin {
                index: s.index,
                cpu,
            });
        }
    }
    Ok(match s.backend {
        Backend::IoUring => {
            let ring = Uring::new(s.ring).map_err(WorkerSetupError::Ring)?;
            AnyWorker::IoUring(Worker::new(s, ring))
        }
        Backend::Epoll => {
            let epoll = Epoll::new(s.ring.recv_buffer_size as usize).map_err(|source| {
                WorkerSetupError::Epoll {
                    index: s.index,
                    source,
                }
            })?;
            AnyWorker::Epoll(Worker::new(s, epoll))
        }
    })
}

impl<D: Driver<Token>> Worker<D> {
    fn new(s: WorkerSetup, io: D) -> Self {
        let now = Instant::now();
        let n_listeners = s.listeners.len();
        let mut w = Worker {
            index: s.index,
            io,
            listeners: s
                .listeners
                .into_iter()
                .map(|(shared, fd)| ListenerLocal::new(shared, fd, s.index))
                .collect(),
            slots: Slab::new(),
            dirty: Vec::new(),
            wheel: Wheel::new(now, Duration::from_millis(20), 4096),
            state: s.state,
            log: s.log,
            metrics: vec![ListenerMetrics::default(); n_listeners],
            publish: s.metrics.map(|out| Publisher {
                out,
                next: now,
                dirty: true,
            }),
            cap: BufferCap::new(s.max_buffered_per_worker, s.ring.recv_buffer_size as usize),
            rejects: crate::tls::RejectSink::default(),
            leaves: crate::telemetry::callers::LeafCache::default(),
            turns: Default::default(),
            flushed: 0,
            idle: crate::runtime::memory::IdleTrim::new(s.idle_trim, now),
        };
        for i in 0..w.listeners.len() {
            w.arm_accept(i);
        }
        w
    }

    pub fn index(&self) -> usize {
        self.index
    }

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        if let Some(fd) = &l.fd {
            l.accept = Some(self.io.accept_multi(fd.as_fd(), Token::Accept(i as u32)));
        }
    }

    /// Run until stopped. Returns once every connection is closed.
    pub fn run(mut self, drain_timeout: Duration) -> std::io::Result<()> {
        let mut completions = Vec::with_capacity(256);
        let mut expired = Vec::new();
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let wait = self.wheel.tick().max(Duration::from_millis(20));
            self.io.submit_and_wait(wait)?;
            self.io.drain(&mut completions);
            let now = Instant::now();
            let handled = completions.len() as u64;
            for c in completions.drain(..) {
                self.on_completion(c, now);
            }
            self.flush_dirty(now);
            self.wheel.expire(now, &mut expired);
            for id in expired.drain(..) {
                self.on_timer(id, now);
            }
            self.flush_dirty(now);
            self.wake_paused(now);
            self.record_turn(handled);
            if self.idle.turn(handled, now) {
                // The slot table holds each Conn inline, and the wheel's buckets and
                // the expiry list keep their capacity: a burst leaves them at its peak.
                self.slots.shrink();
                self.io.shrink();
                self.wheel.shrink();
                expired.shrink_to_fit();
                crate::runtime::memory::trim_thread();
            }
            self.maybe_publish(now, false);
            if self.state.load() == RunState::Running {
                self.rearm_accepts(now);
                continue;
            }
            if drain_deadline.is_none() {
                self.stop_accepting();
                self.drain_all(now);
                drain_deadline = Some(now + drain_timeout);
            }
            if self.state.load() == RunState::Stopping || now >= drain_deadline.unwrap() {
                self.shutdown_all(now);
            }
            if self.slots.is_empty() && self.io.ops_in_flight() == 0 {
                self.maybe_publish(now, true);
                return Ok(());
            }
        }
    }

    /// Re-arm the accepts that ran out of file descriptors once their backoff ends.
    fn rearm_accepts(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            if self.listeners[i].rearm_at.is_some_and(|t| now >= t) {
                self.listeners[i].rearm_at = None;
                self.arm_accept(i);
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
        for (_, s) in self.slots.iter_mut() {
            let (c2u, u2c) = s.take_unreported();
            let m = &mut self.metrics[s.listener];
            m.bytes_client_to_upstream += c2u;
            m.bytes_upstream_to_client += u2c;
        }
        let _ = p.out.tx.try_send(WorkerSnapshot {
            worker: self.index,
            listeners: self.metrics.clone(),
            turns: self.turns,
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
        for l in &mut self.listeners {
            if let Some(op) = l.accept.take() {
                self.io.cancel(op, Token::Fire);
            }
            if let Some(fd) = l.fd.take() {
                self.io.close(fd, Token::Fire);
            }
        }
    }

    /// The drain began: connections that can say so (HTTP/2: GOAWAY) tell their
    /// clients to go elsewhere once their requests are done.
    fn drain_all(&mut self, now: Instant) {
        for (id, s) in self.slots.iter_mut() {
            if s.closing().is_none() && s.conn.handle_drain() && s.mark_dirty() {
                self.dirty.push(id);
            }
        }
        self.flush_dirty(now);
    }

    fn shutdown_all(&mut self, now: Instant) {
        for (id, s) in self.slots.iter_mut() {
            if s.closing().is_none() {
                s.conn.handle_shutdown();
                if s.mark_dirty() {
                    self.dirty.push(id);
                }
            }
        }
        self.flush_dirty(now);
    }

    fn mark_dirty(&mut self, id: SlotId) {
        if self.slots.get_mut(id).is_some_and(Slot::mark_dirty) {
            self.dirty.push(id);
        }
    }

    fn on_completion(&mut self, c: Completion<Token, D::Buf>, now: Instant) {
        self.touched();
        let (token, more) = (c.token(), c.more());
        let id = match token {
            Token::Fire => return,
            Token::Accept(li) => return self.on_accept(li as usize, more, c.into_event(), now),
            Token::Recv(id, _) | Token::Send(id, _) | Token::Connect(id) | Token::Shutdown(id) => {
                id
            }
        };
        let Some(s) = self.slots.get_mut(id) else {
            // Cannot happen while slots outlive their ops; stay safe regardless.
            // Dropping the event gives a receive buffer back to the ring.
            return;
        };
        s.completed(more);
        match token {
            Token::Recv(_, side) => self.on_recv(id, side, c.into_event(), now),
            Token::Send(_, side) => self.on_send(id, side, c.into_event(), now),
            Token::Connect(_) => self.on_connect(id, c.into_event(), now),
            _ => {}
        }
        self.mark_dirty(id);
    }

    fn on_recv(&mut self, id: SlotId, side: Side, event: Event<D::Buf>, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        // Single-shot: every receive completion is final.
        s.leg(side).rx.done(&mut self.cap);
        if s.closing().is_some() {
            return;
        }
        match event {
            // The connection decrypts in place and copies out what it keeps;
            // dropping `buf` then gives the buffer straight back to the ring.
            Event::Received(mut buf) if side == Side::Client => self.client_data(id, &mut buf, now),
            Event::Received(mut buf) => s.conn.handle_data(side, &mut buf, now),
            Event::Eof => s.conn.handle_eof(side, now),
            // Ring ran dry or we cancelled: re-armed in flush if wanted.
            Event::Failed(OpError::NoBuffers | OpError::Cancelled) => {}
            _ => s.conn.handle_error(side),
        }
    }

    fn on_send(&mut self, id: SlotId, side: Side, event: Event<D::Buf>, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        s.leg(side).send = None;
        if s.closing().is_some() {
            return;
        }
        match event {
            Event::Sent(sent) if sent.remaining() > 0 => {
                // Short send: the rest goes out before anything newer.
                let (buf, off) = sent.into_parts();
                s.send(&mut self.io, id, side, buf, off);
            }
            Event::Sent(sent) => s.conn.handle_sent(side, sent.into_parts().0, now),
            _ => s.conn.handle_error(side),
        }
    }

    fn on_connect(&mut self, id: SlotId, event: Event<D::Buf>, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        s.connect_done();
        if s.closing().is_some() {
            return;
        }
        if let Event::Connected = event {
            return self.upstream_connected(id, now);
        }
        if let Some(a) = s.dial.addr() {
            self.metrics[s.listener].upstream_connect_error(a);
        }
        // Refused or timed out: every worker skips it for a while (passive health).
        s.dial.failed(now);
        if let Some(fd) = s.leg(Side::Upstream).fd.take() {
            self.io.close(fd, Token::Fire);
        }
        self.start_connect(id, now);
    }

    /// The upstream socket connected: hand it to the connection, with the PROXY v2
    /// preamble and the upstream TLS session if the listener wants them.
    fn upstream_connected(&mut self, id: SlotId, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        s.leg(Side::Upstream).open = true;
        s.dial.connected();
        if let Some(d) = s.dial.elapsed(now) {
            self.metrics[s.listener].upstream_connect.record(d);
        }
        let (live, conn) = (&s.live, &mut s.conn);
        let preamble = if live.proxy_v2 {
            let l = &self.listeners[s.listener].shared;
            let client = s.legs[Side::Client as usize].fd.as_ref();
            let src = client.and_then(sock::peer_addr).unwrap_or(l.addr);
            let dst = client.and_then(sock::local_addr).unwrap_or(l.addr);
            let sni = conn.server_name();
            let served = &live.tls.certs.choose(sni).algorithms;
            let peer = conn.verified_peer_certificates();
            let h = proxy_v2::Header::for_client(conn.tls(), peer, sni, served, src, dst);
            if live.proxy_v2_client_cert {
                match h.with_client_cert(peer).encode_checked() {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        // Fail closed: without the certificate the upstream would
                        // take the client for one that presented none.
                        crate::op_warn!("listener \"{}\": {e}", l.name);
                        conn.refuse(CloseReason::ProxyHeaderTooLarge);
                        return;
                    }
                }
            } else {
                h.to_bytes()
            }
        } else {
            Vec::new()
        };
        if live.http.is_some() {
            let client = s.legs[Side::Client as usize].fd.as_ref();
            conn.set_http_client(s.client_addr.or_else(|| client.and_then(sock::peer_addr)));
        }
        let tls = live.upstream_tls.as_ref().zip(s.dial.addr());
        let tls = tls.and_then(|(up, addr)| up.connect(addr, conn.upstream_tls_retried()));
        let offered = tls.as_ref().is_some_and(|t| t.1);
        conn.handle_upstream_connected(now, preamble, tls.map(|t| t.0));
        if offered {
            conn.allow_upstream_tls_retry();
        }
    }

    fn on_accept(&mut self, li: usize, more: bool, event: Event<D::Buf>, now: Instant) {
        if !more {
            self.listeners[li].accept = None;
            if let Event::Failed(OpError::OutOfFds) = event {
                self.listeners[li].rearm_at = Some(now + ACCEPT_BACKOFF);
            } else if self.state.load() == RunState::Running {
                self.arm_accept(li);
            }
        }
        // EMFILE, ENFILE, ECONNABORTED...: the listener stays armed.
        if let Event::Accepted(fd) = event {
            self.admit(li, fd, now);
        }
    }

    /// A new client socket: refuse it over `max_connections`, else give it a slot.
    fn admit(&mut self, li: usize, fd: OwnedFd, now: Instant) {
        let live = self.listeners[li].shared.live.load_full();
        let config = self.listeners[li].server_config(&live, &self.rejects);
        let shared = &self.listeners[li].shared;
        if shared.active.fetch_add(1, Ordering::Relaxed) >= live.max_connections {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            self.metrics[li].rejected_max_connections += 1;
            self.io.close(fd, Token::Fire);
            return;
        }
        self.metrics[li].connections += 1;
        let tls = match rustls::server::UnbufferedServerConnection::new(config) {
            Ok(t) => t,
            Err(_) => {
                shared.active.fetch_sub(1, Ordering::Relaxed);
                self.io.close(fd, Token::Fire);
                return;
            }
        };
        let mut conn = Conn::new(tls, live.limits, now).with_reject_sink(self.rejects.clone());
        if let Some(h) = live.http {
            conn = conn.with_http(h);
            if let Some(p) = &live.http_policy {
                conn = conn.with_http_policy((p.clone(), shared.caller_limits.clone()));
            }
        }
        // Limits key anonymous callers by address.
        let client_addr = if self.log.enabled() || live.caller_limits.any() {
            sock::peer_addr(&fd)
        } else {
            None
        };
        let id = self
            .slots
            .insert(Slot::new(conn, live, li, fd, client_addr));
        self.mark_dirty(id);
    }

    /// Connect to the next upstream of the walk, or tell the connection none is left.
    fn start_connect(&mut self, id: SlotId, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        while let Some(addr) = s.dial.next(now) {
            let fd = match sock::upstream_socket(addr) {
                Ok(fd) => fd,
                Err(_) => {
                    self.metrics[s.listener].upstream_connect_error(addr);
                    continue;
                }
            };
            s.connect(&mut self.io, id, fd, addr);
            s.dial.started(addr, now);
            s.conn.handle_connect_started(now);
            return;
        }
        s.conn.handle_upstream_unavailable();
    }

    fn on_timer(&mut self, id: SlotId, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        if s.closing().is_some() {
            return;
        }
        match s.conn.handle_timeout(now) {
            Expired::No => {}
            Expired::ConnectAttempt => s.cancel_connect(&mut self.io),
            Expired::Close => return self.mark_dirty(id),
        }
        s.scheduled_at = Some(s.conn.deadline());
        self.wheel.schedule(s.conn.deadline(), id);
    }

    /// Flush the connections the worker cap paused once it has room again.
    fn wake_paused(&mut self, now: Instant) {
        if !self.cap.may_wake() {
            return;
        }
        let paused = std::mem::take(&mut self.cap.paused);
        for id in paused {
            if let Some(s) = self.slots.get_mut(id) {
                s.unpause();
                self.mark_dirty(id);
            }
        }
        self.flush_dirty(now);
    }

    fn flush_dirty(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            if let Some(s) = self.slots.get_mut(id) {
                s.clear_dirty();
                self.flushed += 1;
                self.flush(id, now);
            }
        }
    }

    /// Count what this loop turn carried (completions handled, connections flushed);
    /// turns with neither (a timer tick on an idle worker) are not counted.
    fn record_turn(&mut self, completions: u64) {
        let flushed = std::mem::take(&mut self.flushed);
        if completions == 0 && flushed == 0 {
            return;
        }
        self.turns.completions.record(completions);
        self.turns.connections.record(flushed);
        self.touched();
    }

    /// Turn one connection's wants into ops.
    fn flush(&mut self, id: SlotId, now: Instant) {
        self.http_events(id);
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        if s.closing().is_some() {
            if s.may_free() {
                self.finalize(id);
            }
            return;
        }
        if s.conn.poll_connect() {
            self.handshake_done(id, now);
        }
        self.retry_upstream(id, now);
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        // Op order as always: client send, upstream send/shutdown/receive, client
        // shutdown/receive.
        Self::flush_send(&mut self.io, s, id, Side::Client);
        s.account(&mut self.cap);
        if s.legs[Side::Upstream as usize].open {
            Self::flush_send(&mut self.io, s, id, Side::Upstream);
            Self::flush_recv_side(&mut self.io, &mut self.cap, s, id, Side::Upstream);
        }
        // Driving an HTTP/2 connection to seal its sends may have asked for a redial.
        self.retry_upstream(id, now);
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        Self::flush_recv_side(&mut self.io, &mut self.cap, s, id, Side::Client);
        self.schedule_or_close(id);
    }

    /// The client handshake completed: count it and start the upstream walk.
    fn handshake_done(&mut self, id: SlotId, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let l = &mut self.listeners[s.listener];
        s.dial.begin(&s.live.upstreams, &mut l.rr_cursor);
        if s.live.tls.has_dual_policy() {
            let record = s.conn.take_auth_record();
            let chain = s.conn.tls().peer_certificates();
            if let Some(outcome) = s.live.tls.completed_outcome(chain, record) {
                s.conn.set_auth(outcome);
            }
        }
        let tls = s.conn.tls();
        self.metrics[s.listener].handshake_ok(
            tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            s.conn.verified_peer_certificates().is_some(),
            s.conn.handshake_duration(),
        );
        self.client_auth_seen(id, None);
        if self.admit_caller(id, now) {
            self.start_connect(id, now);
        }
    }

    /// At most one send per side in flight: queue what the connection has sealed.
    fn flush_send(io: &mut D, s: &mut Slot, id: SlotId, side: Side) {
        if let Some(buf) = s.conn.poll_send(side) {
            s.send(io, id, side, buf, 0);
        }
    }

    /// Half-close the side if the connection asks, then arm (or cancel) its receive.
    fn flush_recv_side(io: &mut D, cap: &mut BufferCap, s: &mut Slot, id: SlotId, side: Side) {
        if s.conn.poll_shutdown(side) {
            s.shutdown_write(io, id, side);
        }
        s.arm_recv(io, cap, id, side);
    }

    /// Reschedule the deadline when the phase changed; start closing when the
    /// connection is done.
    fn schedule_or_close(&mut self, id: SlotId) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let due = s.conn.deadline();
        let phase = s.conn.phase();
        if s.scheduled_phase != Some(phase) || s.scheduled_at.is_some_and(|t| due < t) {
            s.scheduled_phase = Some(phase);
            s.scheduled_at = Some(due);
            self.wheel.schedule(due, id);
        }
        if let Some(reason) = s.conn.poll_close() {
            self.begin_close(id, reason);
        }
    }

    /// The connection asks for a new upstream connection: stop the old socket's ops,
    /// and once they are done close it and connect again. After a refused TLS
    /// session (its handshake failed before anything crossed that leg): count it,
    /// drop that upstream's sessions (logging once per off period that resumption
    /// towards it is off) and dial the same address (full handshakes from now on).
    /// After an HTTP/2 client's upstream connection ended: a new walk over the set.
    fn retry_upstream(&mut self, id: SlotId, now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let asked = s.conn.poll_upstream_redial();
        match asked {
            Some(Redial::TlsRetry(reason)) => {
                let addr = s.dial.addr().expect("a TLS upstream leg has an address");
                self.metrics[s.listener].upstream_resumption_failure(addr);
                if let Some(off) = s.live.upstream_tls.as_ref().and_then(|u| u.refused(addr)) {
                    crate::op_warn!(
                        "listener \"{}\": upstream {addr} refused TLS session \
                         resumption (its handshake failed: {}); its sessions were dropped and \
                         resumption towards it is off for {}s, connections are retried with a \
                         full handshake (upstream_tls.resume = false turns it off for good)",
                        self.listeners[s.listener].shared.name,
                        reason.as_str(),
                        off.as_secs()
                    );
                }
                s.dial.again();
            }
            Some(Redial::Ended) => {
                let l = &mut self.listeners[s.listener];
                s.dial.begin(&s.live.upstreams, &mut l.rr_cursor);
            }
            None => {}
        }
        if asked.is_some() {
            s.reconnect = true;
            let up = s.leg(Side::Upstream);
            up.open = false;
            up.cancel_io(&mut self.io);
        }
        if s.reconnect && s.legs[Side::Upstream as usize].idle() {
            s.reconnect = false;
            if let Some(fd) = s.leg(Side::Upstream).fd.take() {
                self.io.close(fd, Token::Fire);
            }
            self.start_connect(id, now);
        }
    }

    fn begin_close(&mut self, id: SlotId, reason: CloseReason) {
        if let CloseReason::HandshakeFailed(r) = reason {
            self.handshake_failed(id, r);
        }
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        s.set_closing(reason);
        let m = &mut self.metrics[s.listener];
        match reason {
            CloseReason::HandshakeFailed(r) => m.handshake_error(r),
            CloseReason::UpstreamTlsFailed(_) => m.upstream_tls_errors += 1,
            CloseReason::HttpRejected(status) => {
                if let Some(i) = crate::telemetry::metrics::HTTP_STATUSES
                    .iter()
                    .position(|s| *s == status)
                {
                    m.http_rejected[i] += 1;
                }
            }
            _ => {}
        }
        // A reset on one leg becomes a reset on the other (SO_LINGER 0 then close).
        let reset = match reason {
            CloseReason::ClientReset => Some(Side::Upstream),
            CloseReason::UpstreamReset => Some(Side::Client),
            _ => None,
        };
        if let Some(fd) = reset.and_then(|side| s.legs[side as usize].fd.as_ref()) {
            sock::reset_on_close(fd);
        }
        s.cancel_all(&mut self.io);
        if s.may_free() {
            self.finalize(id);
        }
    }

    /// The client handshake failed for `r`: the candidate's verdict, and its caller.
    fn handshake_failed(&mut self, id: SlotId, r: HandshakeFailure) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        if s.live.tls.has_dual_policy() {
            let record = s.conn.take_auth_record();
            let no_cert = r == HandshakeFailure::NoClientCert;
            if let Some(outcome) = s.live.tls.failed_outcome(record, no_cert) {
                s.conn.set_auth(outcome);
            }
        }
        self.client_auth_seen(id, Some(r));
    }

    /// Every op of the slot has completed: close the sockets, free the slot.
    fn finalize(&mut self, id: SlotId) {
        self.http_events(id);
        let Some(mut s) = self.slots.remove(id) else {
            return;
        };
        s.unaccount(&mut self.cap);
        let l = &self.listeners[s.listener].shared;
        let m = &mut self.metrics[s.listener];
        let (c2u, u2c) = s.take_unreported();
        m.bytes_client_to_upstream += c2u;
        m.bytes_upstream_to_client += u2c;
        l.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(caller) = s.caller.take() {
            l.caller_limits.close(&caller, Instant::now());
        }
        if let Some(kind) = s.conn.upstream_handshake_kind() {
            let resumed = kind == rustls::HandshakeKind::Resumed;
            m.upstream_handshakes[resumed as usize] += 1;
            let up = s.live.upstream_tls.as_ref();
            if let Some((up, addr)) = up.zip(s.dial.addr()).filter(|_| resumed) {
                up.resumed(addr);
            }
        }
        if self.log.enabled() {
            let at = crate::telemetry::access_log::Endpoints {
                listener: &l.name,
                worker: self.index,
                client: s.client_addr,
                upstream: s
                    .dial
                    .addr()
                    .filter(|_| s.legs[Side::Upstream as usize].open),
            };
            self.log
                .send_line(crate::telemetry::access_log::line(at, s.closing(), &s.conn));
        }
        self.close_sockets(s);
    }

    /// Close both legs' sockets through the ring; a client refused by us first
    /// loses its unread bytes, so the close sends a FIN behind our alert.
    fn close_sockets(&mut self, mut s: Slot) {
        let refused = matches!(
            s.closing(),
            Some(
                CloseReason::HandshakeFailed(_)
                    | CloseReason::ClientProtocolError
                    | CloseReason::HttpRejected(_)
                    | CloseReason::Limited
                    | CloseReason::ProxyHeaderTooLarge
                    | CloseReason::UpstreamUnavailable
                    | CloseReason::UpstreamTlsFailed(_)
            )
        );
        if let Some(fd) = s.leg(Side::Client).fd.take() {
            if refused {
                sock::discard_unread(&fd);
            }
            self.io.close(fd, Token::Fire);
        }
        if let Some(fd) = s.leg(Side::Upstream).fd.take() {
            self.io.close(fd, Token::Fire);
        }
    }
}
