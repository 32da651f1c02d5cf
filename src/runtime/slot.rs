//! slot: the worker's per-connection driver state around the sans-IO `Conn`.
//!
//! Owns: [`Slot`] (one connection: its two [`Leg`]s, the upstream [`Dial`], the
//! ops in flight and the slot generation), the [`Token`] every op of the worker
//! carries, the receive of one leg ([`RecvLeg`]) and the worker-wide bound on
//! buffered bytes ([`BufferCap`]).
//!
//! The rules, each written once:
//! * a slot is freed only when `inflight == 0` (every op's final completion is
//!   back), and its generation changes when it is, so a late completion or timer
//!   carrying an old [`SlotId`] can never reach the connection that reuses it;
//! * a leg has at most one receive armed, of at most its budget, reserved in the
//!   [`BufferCap`] until it completes, and at most one send in flight.
//!
//! I/O contract: queues ops on the worker's [`Uring`] only.
#![forbid(unsafe_code)]

use crate::proxy::conn::{CloseReason, Conn, Phase};
use crate::proxy::upstream::Dial;
use crate::runtime::listener::ListenerLive;
use crate::runtime::uring::{OpId, Uring};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

/// Which leg of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Upstream = 1,
}

/// `Conn`'s per-side API, chosen by side in one place.
impl Side {
    pub fn poll_send(self, c: &mut Conn) -> Option<Vec<u8>> {
        match self {
            Side::Client => c.poll_client_send(),
            Side::Upstream => c.poll_upstream_send(),
        }
    }

    pub fn poll_shutdown(self, c: &mut Conn) -> bool {
        match self {
            Side::Client => c.poll_client_shutdown(),
            Side::Upstream => c.poll_upstream_shutdown(),
        }
    }

    /// How much this side's next receive may ask for.
    pub fn recv_budget(self, c: &Conn) -> usize {
        match self {
            Side::Client => c.client_recv_budget(),
            Side::Upstream => c.upstream_recv_budget(),
        }
    }

    /// The bytes this side's receives delivered that still wait (for the other
    /// side).
    pub fn held(self, c: &Conn) -> usize {
        match self {
            Side::Client => c.buffered_to_upstream(),
            Side::Upstream => c.buffered_to_client(),
        }
    }

    pub fn handle_data(self, c: &mut Conn, data: &[u8], now: Instant) {
        match self {
            Side::Client => c.handle_client_data(data, now),
            Side::Upstream => c.handle_upstream_data(data, now),
        }
    }

    pub fn handle_eof(self, c: &mut Conn, now: Instant) {
        match self {
            Side::Client => c.handle_client_eof(now),
            Side::Upstream => c.handle_upstream_eof(now),
        }
    }

    pub fn handle_error(self, c: &mut Conn) {
        match self {
            Side::Client => c.handle_client_error(),
            Side::Upstream => c.handle_upstream_error(),
        }
    }

    pub fn handle_sent(self, c: &mut Conn, buf: Vec<u8>, now: Instant) {
        match self {
            Side::Client => c.handle_client_sent(buf, now),
            Side::Upstream => c.handle_upstream_sent(buf, now),
        }
    }
}

/// A connection slot and the generation it had when an op or timer was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId {
    pub idx: u32,
    pub gen: u32,
}

/// What an op of the worker was for; stored in the uring op table and handed back
/// with each completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The multishot accept of listener `.0`.
    Accept(u32),
    Recv(SlotId, Side),
    Send(SlotId, Side),
    Connect(SlotId),
    Shutdown(SlotId),
    /// Cancels and closes: their completion needs nothing.
    Fire,
}

/// The receive of one leg: armed single-shot with a length the worker cap
/// reserves until it completes.
#[derive(Debug, Default)]
pub struct RecvLeg {
    pub op: Option<OpId>,
    /// Its length, reserved in `BufferCap`.
    len: usize,
    cancelled: bool,
}

/// What [`RecvLeg::arm`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Armed {
    Nothing,
    /// A receive is now in flight.
    Receive,
    /// The leg has a budget but the worker cap left no room.
    Paused,
}

impl RecvLeg {
    /// Arm a receive if the leg has a budget and none is armed, or cancel the armed
    /// one when the budget is gone. `held`: see [`Side::held`].
    pub fn arm(
        &mut self,
        ring: &mut Uring<Token>,
        cap: &mut BufferCap,
        fd: BorrowedFd<'_>,
        budget: usize,
        held: usize,
        token: Token,
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

    /// Cancel the armed receive, once (its final completion still arrives).
    pub fn cancel(&mut self, ring: &mut Uring<Token>) {
        if let Some(op) = self.op.filter(|_| !self.cancelled) {
            ring.cancel(op, Token::Fire);
            self.cancelled = true;
        }
    }

    /// The receive completed: release its reservation.
    pub fn done(&mut self, cap: &mut BufferCap) {
        self.op = None;
        self.cancelled = false;
        cap.reserved -= std::mem::take(&mut self.len);
    }
}

/// One direction's socket of a connection and its ops in flight.
#[derive(Debug, Default)]
pub struct Leg {
    pub fd: Option<OwnedFd>,
    /// Sends and receives may go out: the client leg from accept on, the upstream
    /// leg once connected.
    pub open: bool,
    pub rx: RecvLeg,
    pub send: Option<OpId>,
}

impl Leg {
    /// Stop this leg's receive and send (their final completions still arrive).
    pub fn cancel_io(&mut self, ring: &mut Uring<Token>) {
        self.rx.cancel(ring);
        if let Some(op) = self.send {
            ring.cancel(op, Token::Fire);
        }
    }

    /// No receive or send of this leg is in flight.
    pub fn idle(&self) -> bool {
        self.rx.op.is_none() && self.send.is_none()
    }

    /// Every op of this leg in flight.
    pub fn ops(&self) -> impl Iterator<Item = OpId> {
        [self.rx.op, self.send].into_iter().flatten()
    }
}

/// Per-connection driver state around the sans-IO `Conn`.
#[derive(Default)]
pub struct Slot {
    pub gen: u32,
    pub conn: Option<Conn>,
    /// The listener material this connection started with.
    pub live: Option<Arc<ListenerLive>>,
    pub listener: usize,
    /// Client and upstream, indexed by [`Side`].
    pub legs: [Leg; 2],
    /// Only filled when the access log is on (one getpeername per connection).
    pub client_addr: Option<SocketAddr>,
    /// The upstream walk, and the address being connected to or connected.
    pub dial: Dial,
    pub connect: Option<OpId>,
    /// Reconnect the upstream (same address) once its old socket's ops are done.
    pub reconnect: bool,
    /// Plaintext bytes already added to the worker's counters.
    pub reported_c2u: u64,
    pub reported_u2c: u64,
    /// Ops whose final completion is still due; the slot (and the sockets) live
    /// until this is zero.
    pub inflight: u32,
    pub closing: Option<CloseReason>,
    pub scheduled_phase: Option<Phase>,
    pub dirty: bool,
    /// Buffered bytes last added to the worker's total (`BufferCap::account`).
    pub accounted: usize,
    /// Waiting in `BufferCap::paused` for the worker cap to leave room.
    pub cap_paused: bool,
}

impl Slot {
    pub fn leg(&mut self, side: Side) -> &mut Leg {
        &mut self.legs[side as usize]
    }

    /// Take the slot for a new connection: everything reset but the generation.
    pub fn reuse(&mut self) {
        let gen = self.gen;
        *self = Slot::default();
        self.gen = gen;
    }

    /// The connection is gone and every op completed: a new generation, so
    /// anything still naming the old one is dropped.
    pub fn release(&mut self) {
        debug_assert_eq!(self.inflight, 0);
        self.gen = self.gen.wrapping_add(1);
        self.closing = None;
    }

    /// `id` still names this slot's live connection.
    pub fn is(&self, id: SlotId) -> bool {
        self.gen == id.gen && self.conn.is_some()
    }
}

/// The worker-wide bound on buffered bytes (`runtime.max_buffered_bytes_per_worker`).
/// Each connection is bounded by `max_buffered_bytes` per direction; this bounds
/// their sum, so many slow peers cannot take the worker's memory either. Receives
/// reserve their length here until they complete, so the cap holds before the
/// bytes arrive, not after.
#[derive(Debug)]
pub struct BufferCap {
    pub limit: usize,
    /// Bytes all connections hold, as last accounted in `flush`.
    pub buffered: usize,
    /// Receive lengths armed and not completed yet.
    pub reserved: usize,
    recv_buffer_size: usize,
    /// Connections whose receive the cap paused; flushed again when room returns.
    pub paused: Vec<SlotId>,
    /// Receives the cap paused (a metric).
    pub pauses: u64,
}

impl BufferCap {
    pub fn new(limit: usize, recv_buffer_size: usize) -> Self {
        BufferCap {
            limit,
            buffered: 0,
            reserved: 0,
            recv_buffer_size,
            paused: Vec::new(),
            pauses: 0,
        }
    }

    /// Count a receive just armed in the slot's `inflight`, or queue the slot
    /// (once: `queued` is its flag) for when the cap has room.
    pub fn note(&mut self, a: Armed, inflight: &mut u32, queued: &mut bool, slot: SlotId) {
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

    /// A connection now holds `now` bytes (it held `*was` when last accounted).
    pub fn account(&mut self, was: &mut usize, now: usize) {
        self.buffered = self.buffered - *was + now;
        *was = now;
    }

    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.buffered + self.reserved)
    }

    /// Paused connections may be woken: an eighth of the cap is free, so they do
    /// not wake for every freed byte.
    pub fn may_wake(&self) -> bool {
        !self.paused.is_empty() && self.room() >= (self.limit / 8).max(1)
    }

    /// How much the next receive of one direction may take, given the
    /// connection's own `budget` and what that direction already holds. Over the
    /// cap, a direction that holds nothing may still take one receive buffer (so
    /// every connection keeps moving, a buffer at a time); one that holds bytes
    /// waits until they drain or the worker has room again.
    pub fn recv_len(&mut self, budget: usize, held: usize) -> usize {
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
