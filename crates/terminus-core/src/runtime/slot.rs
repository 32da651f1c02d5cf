//! slot: the worker's per-connection driver state around the sans-IO `Conn`.
//!
//! Owns: [`Slot`] (one live connection: its `Conn`, its two [`Leg`]s, the
//! upstream [`Dial`], the ops in flight and what it added to the worker's
//! counters), the [`Token`] every op of the worker carries, the receive of one leg
//! ([`RecvLeg`]) and the worker-wide bound on buffered bytes ([`BufferCap`]).
//!
//! The rules, each written once:
//! * every op a slot queues goes through a `Slot` method and counts in its
//!   [`Life`] until its final completion; a slot is freed (removed from the
//!   worker's slab, which changes the entry's generation, so a late completion or
//!   timer carrying an old [`SlotId`] can never reach the connection that reuses
//!   it) only when it is closing and that count is zero;
//! * a leg has at most one receive armed, of at most its budget, reserved in the
//!   [`BufferCap`] until it completes, and at most one send in flight.
//!
//! I/O contract: queues ops on the worker's [`Driver`] only.
#![forbid(unsafe_code)]

pub use crate::proxy::conn::Side;
use crate::proxy::conn::{CloseReason, Conn, Phase};
use crate::proxy::upstream::Dial;
use crate::runtime::driver::{Driver, OpId};
use crate::runtime::listener::ListenerLive;
use crate::runtime::slab::Key;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

/// A connection slot and the generation it had when an op or timer was queued: the
/// key of the worker's slot [`crate::runtime::slab::Slab`].
pub type SlotId = Key;

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
    /// one when the budget is gone. `held`: what this side's receives delivered that
    /// still waits for the other side.
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

/// Per-connection driver state around the sans-IO `Conn`: a live entry of the
/// worker's slot slab (a free entry is the slab's, so a slot that exists always has
/// its connection and listener material).
pub struct Slot {
    pub conn: Conn,
    /// The listener material this connection started with.
    pub live: Arc<ListenerLive>,
    pub listener: usize,
    /// Client and upstream, indexed by [`Side`].
    pub legs: [Leg; 2],
    /// Only filled when the access log or a per-caller limit is on (one
    /// getpeername per connection).
    pub client_addr: Option<SocketAddr>,
    /// The caller this connection counts for (`max_connections_per_caller`), until
    /// the slot is freed.
    pub caller: Option<Box<crate::proxy::authz::limits::CallerKey>>,
    /// The upstream walk, and the address being connected to or connected.
    pub dial: Dial,
    connect: Option<OpId>,
    /// Reconnect the upstream (same address) once its old socket's ops are done.
    pub reconnect: bool,
    /// Plaintext bytes already added to the worker's counters (client to upstream,
    /// upstream to client).
    reported: [u64; 2],
    life: Life,
    pub scheduled_phase: Option<Phase>,
    /// The earliest timer entry the wheel holds for this slot (a deadline that moves
    /// earlier, an http head timer, needs a new entry; a later one is re-armed when
    /// the old entry fires).
    pub scheduled_at: Option<Instant>,
    /// Queued for the worker's flush this turn.
    dirty: bool,
    /// Buffered bytes last added to the worker's total (`BufferCap::account`).
    accounted: usize,
    /// Waiting in `BufferCap::paused` for the worker cap to leave room.
    cap_paused: bool,
}

/// Whether a connection is closing, and the ops whose final completion is still
/// due: the slot (and its sockets) live until both say so.
#[derive(Debug, Default)]
pub struct Life {
    inflight: u32,
    closing: Option<CloseReason>,
}

impl Life {
    /// An op was queued: it counts until its final completion.
    fn queued(&mut self) {
        self.inflight += 1;
    }

    /// A completion arrived; the op is done when it is the final one.
    fn completed(&mut self, more: bool) {
        if !more {
            self.inflight -= 1;
        }
    }

    /// Closing, and every op's final completion is back: the sockets may close and
    /// the slot be freed.
    fn may_free(&self) -> bool {
        self.closing.is_some() && self.inflight == 0
    }
}

impl Slot {
    /// A slot for a client socket just accepted.
    pub fn new(
        conn: Conn,
        live: Arc<ListenerLive>,
        listener: usize,
        client: OwnedFd,
        client_addr: Option<SocketAddr>,
    ) -> Slot {
        let mut legs: [Leg; 2] = Default::default();
        legs[Side::Client as usize] = Leg {
            fd: Some(client),
            open: true,
            ..Leg::default()
        };
        Slot {
            conn,
            live,
            listener,
            legs,
            client_addr,
            caller: None,
            dial: Dial::default(),
            connect: None,
            reconnect: false,
            reported: [0; 2],
            life: Life::default(),
            scheduled_phase: None,
            scheduled_at: None,
            dirty: false,
            accounted: 0,
            cap_paused: false,
        }
    }

    pub fn leg(&mut self, side: Side) -> &mut Leg {
        &mut self.legs[side as usize]
    }

    /// Why the connection is closing, once it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.life.closing
    }

    /// Start closing for `reason`; then [`Slot::may_free`] waits for the ops.
    pub fn set_closing(&mut self, reason: CloseReason) {
        self.life.closing = Some(reason);
    }

    /// See [`Life::may_free`].
    pub fn may_free(&self) -> bool {
        self.life.may_free()
    }

    /// A completion of one of this slot's ops arrived.
    pub fn completed(&mut self, more: bool) {
        self.life.completed(more);
    }

    /// Mark the slot for this turn's flush; true if it was not marked yet.
    pub fn mark_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    /// The flush is running: later events mark it again.
    pub fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// The worker cap has room again: the slot may be paused (and queued) anew.
    pub fn unpause(&mut self) {
        self.cap_paused = false;
    }

    /// Send `buf[off..]` on `side`'s socket (one send per side in flight).
    pub fn send(
        &mut self,
        io: &mut impl Driver<Token>,
        id: SlotId,
        side: Side,
        buf: Vec<u8>,
        off: usize,
    ) {
        let leg = &mut self.legs[side as usize];
        let fd = leg.fd.as_ref().expect("a sending leg has a socket").as_fd();
        leg.send = Some(io.send(fd, buf, off, Token::Send(id, side)));
        self.life.queued();
    }

    /// Half-close `side`'s socket.
    pub fn shutdown_write(&mut self, io: &mut impl Driver<Token>, id: SlotId, side: Side) {
        let fd = self.legs[side as usize].fd.as_ref();
        let fd = fd.expect("an open leg has a socket").as_fd();
        io.shutdown_write(fd, Token::Shutdown(id));
        self.life.queued();
    }

    /// Connect `fd` (the new upstream socket, now the upstream leg's) to `addr`.
    pub fn connect(
        &mut self,
        io: &mut impl Driver<Token>,
        id: SlotId,
        fd: OwnedFd,
        addr: SocketAddr,
    ) {
        self.connect = Some(io.connect(fd.as_fd(), addr, Token::Connect(id)));
        self.life.queued();
        self.legs[Side::Upstream as usize].fd = Some(fd);
    }

    /// The connect completed.
    pub fn connect_done(&mut self) {
        self.connect = None;
    }

    /// Cancel the connect in flight, if any (its final completion still arrives).
    pub fn cancel_connect(&mut self, io: &mut impl Driver<Token>) {
        if let Some(op) = self.connect {
            io.cancel(op, Token::Fire);
        }
    }

    /// Cancel every op in flight (their final completions still arrive).
    pub fn cancel_all(&mut self, io: &mut impl Driver<Token>) {
        let legs = self.legs.iter().flat_map(|l| l.ops());
        for op in legs.chain(self.connect) {
            io.cancel(op, Token::Fire);
        }
    }

    /// Arm (or cancel) `side`'s receive within the connection's budget and the
    /// worker cap; a receive the cap refuses queues the slot (once) for later.
    pub fn arm_recv(
        &mut self,
        io: &mut impl Driver<Token>,
        cap: &mut BufferCap,
        id: SlotId,
        side: Side,
    ) {
        let (budget, held) = (
            self.conn.recv_budget(side),
            self.conn.buffered_to(side.other()),
        );
        let leg = &mut self.legs[side as usize];
        let fd = leg.fd.as_ref().expect("an open leg has a socket").as_fd();
        match leg.rx.arm(io, cap, fd, budget, held, Token::Recv(id, side)) {
            Armed::Nothing => {}
            Armed::Receive => self.life.queued(),
            Armed::Paused => cap.pause(&mut self.cap_paused, id),
        }
    }

    /// Count what the connection holds in the worker's total (sends only move
    /// bytes between counted places: once per flush is enough).
    pub fn account(&mut self, cap: &mut BufferCap) {
        let held = self.conn.buffered_to(Side::Client) + self.conn.buffered_to(Side::Upstream);
        cap.account(&mut self.accounted, held);
    }

    /// The connection is gone: take its bytes out of the worker's total.
    pub fn unaccount(&mut self, cap: &mut BufferCap) {
        cap.account(&mut self.accounted, 0);
    }

    /// Plaintext bytes (client to upstream, upstream to client) not yet added to
    /// the worker's counters; from now on they are.
    pub fn take_unreported(&mut self) -> (u64, u64) {
        let now = [
            self.conn.bytes_client_to_upstream,
            self.conn.bytes_upstream_to_client,
        ];
        let was = std::mem::replace(&mut self.reported, now);
        (now[0] - was[0], now[1] - was[1])
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

    /// The cap refused a receive: queue the slot (once: `queued` is its flag) for
    /// when the cap has room.
    pub fn pause(&mut self, queued: &mut bool, slot: SlotId) {
        self.pauses += 1;
        if !std::mem::replace(queued, true) {
            self.paused.push(slot);
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
        let id = SlotId::new(3, 7);
        let mut queued = false;
        cap.pause(&mut queued, id);
        cap.pause(&mut queued, id);
        assert_eq!((cap.paused.as_slice(), cap.pauses), (&[id][..], 2));
        let mut was = 0;
        cap.account(&mut was, 7 * BUF + 1);
        assert!(!cap.may_wake());
        cap.account(&mut was, 7 * BUF);
        assert!(cap.may_wake());
    }

    #[test]
    fn a_slot_is_freed_only_when_closing_with_nothing_in_flight() {
        let mut l = Life::default();
        l.queued();
        l.queued();
        assert!(!l.may_free());
        l.closing = Some(CloseReason::Done);
        l.completed(true);
        l.completed(false);
        assert!(!l.may_free(), "one op is still in flight");
        l.completed(false);
        assert!(l.may_free());
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
        let id = SlotId::new(0, 1);
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
        let id = SlotId::new(0, 1);
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
