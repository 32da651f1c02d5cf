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
//! I/O contract: queues ops on the worker's [`Driver`] only.
#![forbid(unsafe_code)]

use crate::proxy::conn::{CloseReason, Conn, Phase};
use crate::proxy::upstream::Dial;
use crate::runtime::driver::{Driver, OpId};
use crate::runtime::listener::ListenerLive;
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

    pub fn handle_data(self, c: &mut Conn, data: &mut [u8], now: Instant) {
        let side = match self {
            Side::Client => crate::proxy::conn::Side::Client,
            Side::Upstream => crate::proxy::conn::Side::Upstream,
        };
        c.handle_data(side, data, now);
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

/// What an op of the worker was for; stored in the driver's op table and handed back
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
        io: &mut impl Driver<Token>,
        cap: &mut BufferCap,
        fd: BorrowedFd<'_>,
        budget: usize,
        held: usize,
        token: Token,
    ) -> Armed {
        if budget == 0 {
            self.cancel(io);
            return Armed::Nothing;
        }
        if self.op.is_some() {
            return Armed::Nothing;
        }
        let len = cap.recv_len(budget, held);
        if len == 0 {
            return Armed::Paused;
        }
        self.op = Some(io.recv(fd, len, token));
        self.len = len;
        cap.reserved += len;
        Armed::Receive
    }

    /// Cancel the armed receive, once (its final completion still arrives).
    pub fn cancel(&mut self, io: &mut impl Driver<Token>) {
        if let Some(op) = self.op.filter(|_| !self.cancelled) {
            io.cancel(op, Token::Fire);
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
    pub fn cancel_io(&mut self, io: &mut impl Driver<Token>) {
        self.rx.cancel(io);
        if let Some(op) = self.send {
            io.cancel(op, Token::Fire);
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
    /// The earliest timer entry the wheel holds for this slot (a deadline that moves
    /// earlier, an http head timer, needs a new entry; a later one is re-armed when
    /// the old entry fires).
    pub scheduled_at: Option<Instant>,
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

    /// Closing, and every op's final completion is back: the sockets may close
    /// and the slot be freed.
    pub fn may_free(&self) -> bool {
        self.closing.is_some() && self.inflight == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::uring::{Driver, Event, OpError, RecvBuf, Uring, UringConfig};
    type Completion<T> = crate::runtime::driver::Completion<T, RecvBuf>;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    const BUF: usize = 16 * 1024;

    #[test]
    fn cap_gives_the_budget_while_there_is_room() {
        let mut cap = BufferCap::new(100 * BUF, BUF);
        assert_eq!(cap.recv_len(64 * 1024, 0), 64 * 1024);
        assert_eq!(cap.recv_len(64 * 1024, 5000), 64 * 1024);
    }

    #[test]
    fn over_the_cap_an_empty_direction_still_gets_one_buffer_and_a_full_one_waits() {
        let mut cap = BufferCap::new(4 * BUF, BUF);
        let mut was = 0;
        cap.account(&mut was, 4 * BUF);
        assert_eq!(cap.room(), 0);
        // Holds nothing: one buffer (or less, if the budget is smaller).
        assert_eq!(cap.recv_len(256 * 1024, 0), BUF);
        assert_eq!(cap.recv_len(100, 0), 100);
        // Holds bytes: waits.
        assert_eq!(cap.recv_len(256 * 1024, 1), 0);
        // Room for at least a buffer again: takes the room, not the budget.
        cap.account(&mut was, BUF + BUF / 2);
        assert_eq!(cap.room(), 2 * BUF + BUF / 2);
        assert_eq!(cap.recv_len(256 * 1024, 1), 2 * BUF + BUF / 2);
    }

    #[test]
    fn account_replaces_what_a_connection_held() {
        let mut cap = BufferCap::new(1 << 20, BUF);
        let (mut a, mut b) = (0, 0);
        cap.account(&mut a, 1000);
        cap.account(&mut b, 500);
        cap.account(&mut a, 200);
        assert_eq!((cap.buffered, a, b), (700, 200, 500));
        cap.account(&mut a, 0);
        cap.account(&mut b, 0);
        assert_eq!(cap.buffered, 0);
    }

    #[test]
    fn a_paused_slot_is_queued_once_and_wakes_at_an_eighth_free() {
        let mut cap = BufferCap::new(8 * BUF, BUF);
        let id = SlotId { idx: 3, gen: 7 };
        let (mut inflight, mut queued) = (0, false);
        cap.note(Armed::Paused, &mut inflight, &mut queued, id);
        cap.note(Armed::Paused, &mut inflight, &mut queued, id);
        assert_eq!((cap.paused.as_slice(), cap.pauses), (&[id][..], 2));
        assert_eq!(inflight, 0);
        cap.note(Armed::Receive, &mut inflight, &mut queued, id);
        assert_eq!(inflight, 1);
        let mut was = 0;
        cap.account(&mut was, 7 * BUF + 1);
        assert!(!cap.may_wake());
        cap.account(&mut was, 7 * BUF);
        assert!(cap.may_wake());
    }

    #[test]
    fn a_slot_is_freed_only_when_closing_with_nothing_in_flight() {
        let mut s = Slot {
            inflight: 2,
            ..Slot::default()
        };
        assert!(!s.may_free());
        s.closing = Some(CloseReason::Done);
        assert!(!s.may_free());
        s.inflight = 0;
        assert!(s.may_free());
    }

    #[test]
    fn a_new_generation_drops_what_named_the_old_one() {
        let mut s = Slot::default();
        s.reuse();
        let old = SlotId { idx: 0, gen: s.gen };
        // No connection: nothing is live.
        assert!(!s.is(old));
        s.closing = Some(CloseReason::Done);
        s.release();
        assert_eq!(s.closing, None);
        let new = SlotId { idx: 0, gen: s.gen };
        assert_ne!(old, new);
        s.reuse();
        assert_eq!(s.gen, new.gen, "reuse keeps the generation");
        assert!(!s.is(old));
    }

    fn ring() -> Uring<Token> {
        Uring::new(UringConfig {
            entries: 32,
            sqpoll: false,
            recv_buffers: 4,
            recv_buffer_size: BUF as u32,
        })
        .expect("io_uring is needed by these tests (and by terminus)")
    }

    fn wait(u: &mut Uring<Token>, t: Token) -> Completion<Token> {
        let mut got = Vec::new();
        for _ in 0..250 {
            u.submit_and_wait(Duration::from_millis(20)).unwrap();
            u.drain(&mut got);
            if let Some(i) = got.iter().position(|c| c.token() == t) {
                return got.swap_remove(i);
            }
        }
        panic!("no completion for {t:?}");
    }

    /// Arm, re-arm, cancel and complete one leg's receive on a real socket.
    #[test]
    fn recv_leg_reserves_its_length_until_done_and_cancels_once() {
        let mut u = ring();
        let mut cap = BufferCap::new(1 << 20, BUF);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let id = SlotId { idx: 0, gen: 1 };
        let tok = Token::Recv(id, Side::Client);
        let mut rx = RecvLeg::default();

        assert_eq!(
            rx.arm(&mut u, &mut cap, server.as_fd(), 1000, 0, tok),
            Armed::Receive
        );
        assert_eq!(cap.reserved, 1000);
        // One receive per leg: a second arm adds nothing.
        assert_eq!(
            rx.arm(&mut u, &mut cap, server.as_fd(), 5000, 0, tok),
            Armed::Nothing
        );
        assert_eq!((cap.reserved, u.ops_in_flight()), (1000, 1));
        client.write_all(b"hi").unwrap();
        let Event::Received(b) = wait(&mut u, tok).into_event() else {
            panic!("no bytes")
        };
        assert_eq!(&b[..], b"hi");
        rx.done(&mut cap);
        assert_eq!((cap.reserved, rx.op), (0, None));

        // The budget went to zero: cancel, once, however often it is asked.
        rx.arm(&mut u, &mut cap, server.as_fd(), 1000, 0, tok);
        assert_eq!(
            rx.arm(&mut u, &mut cap, server.as_fd(), 0, 0, tok),
            Armed::Nothing
        );
        assert_eq!(
            rx.arm(&mut u, &mut cap, server.as_fd(), 0, 0, tok),
            Armed::Nothing
        );
        assert_eq!(u.ops_in_flight(), 2, "the receive and one cancel");
        assert!(matches!(
            wait(&mut u, tok).into_event(),
            Event::Failed(OpError::Cancelled)
        ));
        rx.done(&mut cap);
        assert_eq!(cap.reserved, 0);

        // Over the cap with bytes held: paused, nothing armed.
        let mut was = 0;
        cap.account(&mut was, 1 << 20);
        assert_eq!(
            rx.arm(&mut u, &mut cap, server.as_fd(), 1000, 1, tok),
            Armed::Paused
        );
        assert_eq!((rx.op, cap.reserved), (None, 0));
    }

    #[test]
    fn leg_cancel_io_stops_its_receive_and_leaves_it_idle() {
        let mut u = ring();
        let mut cap = BufferCap::new(1 << 20, BUF);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        let id = SlotId { idx: 0, gen: 1 };
        let mut leg = Leg::default();
        assert!(leg.idle());
        let recv = Token::Recv(id, Side::Upstream);
        leg.rx.arm(&mut u, &mut cap, server.as_fd(), 100, 0, recv);
        assert!(!leg.idle());
        assert_eq!(leg.ops().count(), 1);
        leg.cancel_io(&mut u);
        assert!(matches!(
            wait(&mut u, recv).into_event(),
            Event::Failed(OpError::Cancelled)
        ));
        leg.rx.done(&mut cap);
        assert!(leg.idle());
    }
}
