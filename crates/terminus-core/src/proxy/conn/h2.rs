//! h2: the `Conn`'s side of an HTTP/2 connection (`proxy::h2`).
//!
//! Owns [`Redial`] (why the driver is asked for a new upstream connection) and the
//! hooks through which `Conn` feeds each leg's plaintext to the codecs' pipes,
//! drives them, and seals what they wrote, and how the pipes count against the
//! buffer bound. The connection is over when the client's HTTP/2 connection is
//! (GOAWAY, EOF, a protocol error) and its last bytes are sent. An upstream
//! connection that ends before (EOF, reset, `Connection: close`, GOAWAY) does not
//! end it: when streams wait, the upstream leg starts over (`Connecting`, a fresh
//! leg) and the driver dials again, as for the upstream TLS retry.
//!
//! I/O contract: none; no clock.
#![forbid(unsafe_code)]

use super::{CloseReason, Conn, HandshakeFailure, Leg, Phase, Side};
use std::time::Instant;

/// Why the driver should drop the upstream socket and connect again
/// ([`Conn::poll_upstream_redial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redial {
    /// The upstream refused the TLS session offered to it
    /// ([`Conn::allow_upstream_tls_retry`]): the same address, a full handshake.
    TlsRetry(HandshakeFailure),
    /// The upstream connection of an HTTP/2 client ended with streams waiting for
    /// one: a new walk over the upstreams.
    Ended,
}

impl Conn {
    /// Hand both legs' plaintext to the codecs and drive them (an input step).
    /// False: not an HTTP/2 connection.
    pub(super) fn run_h2(&mut self, now: Instant) -> bool {
        let Some(h) = self.http.as_deref_mut() else {
            return false;
        };
        let Some(p) = h.h2.as_deref_mut() else {
            return false;
        };
        {
            let mut d = p.down.lock();
            d.feed(&mut self.client.plain_in);
            d.eof = self.client.read_closed;
        }
        {
            let mut u = p.up.lock();
            u.feed(&mut self.upstream.plain_in);
            u.eof = self.upstream.read_closed;
        }
        if let Some(g) = h.filter.gate_mut() {
            g.set_now(now);
        }
        p.drive(&mut h.filter);
        self.h2_take_redial();
        true
    }

    /// The driver should drop the upstream socket once its ops are done and connect
    /// again (the phase is `Connecting` until [`Conn::handle_upstream_connected`];
    /// client bytes wait meanwhile), and why. Some once per request.
    pub fn poll_upstream_redial(&mut self) -> Option<Redial> {
        self.up_retry.pending.take()
    }

    /// Whether the client speaks HTTP/2 on this connection (or will, once the
    /// upstream is connected).
    pub(super) fn speaks_h2(&self) -> bool {
        let Some(h) = self.http.as_deref() else {
            return false;
        };
        let s = h.filter.settings();
        let alpn_h2 = self.client.tls.is_some() && self.tls().alpn_protocol() == Some(&b"h2"[..]);
        h.h2.is_some() || (s.h2.is_some() && (s.upstream_h2 || alpn_h2))
    }

    /// After a drive: the upstream connection ended with streams waiting and the
    /// proxy may dial again, so the upstream leg starts over.
    fn h2_take_redial(&mut self) {
        if self.closing() || self.phase != Phase::Streaming {
            return;
        }
        let Some(p) = self.http.as_deref_mut().and_then(|h| h.h2.as_deref_mut()) else {
            return;
        };
        if !p.take_redial() {
            return;
        }
        // Nothing of the old leg is wanted any more: its codec is done.
        self.upstream = Leg::default();
        self.phase = Phase::Connecting;
        self.connect_started = self.last_activity;
        self.up_retry.pending = Some(Redial::Ended);
    }

    /// The new upstream connection is up (before the first drive on it).
    pub(super) fn h2_redialled(&mut self) {
        if let Some(p) = self.http.as_deref_mut().and_then(|h| h.h2.as_deref_mut()) {
            p.redialled();
        }
    }

    /// No upstream could be reached for a redial: the waiting streams are answered
    /// 502 / UNAVAILABLE and the client gets GOAWAY. False: no HTTP/2 proxy.
    pub(super) fn h2_unavailable(&mut self) -> bool {
        let Some(p) = self.http.as_deref_mut().and_then(|h| h.h2.as_deref_mut()) else {
            return false;
        };
        p.redial_failed();
        // A leg with no socket: nothing is read from it or sent to it.
        self.phase = Phase::Streaming;
        self.upstream.read_closed = true;
        self.run_h2(self.last_activity);
        true
    }

    /// The upstream socket failed (reset): for an HTTP/2 client that is its
    /// connection's end, as an EOF is. False: no HTTP/2 proxy.
    pub(super) fn h2_upstream_lost(&mut self) -> bool {
        if self.http.as_deref().is_none_or(|h| h.h2.is_none()) {
            return false;
        }
        self.upstream.read_closed = true;
        self.run_h2(self.last_activity);
        true
    }

    /// Seal what the codec wrote for `side` into its leg (driving first, and again
    /// once the pipe has room); the client's connection ends with close_notify once
    /// the client's HTTP/2 connection is over. False: not HTTP/2.
    pub(super) fn seal_h2(&mut self, side: Side) -> bool {
        let Some(h) = self.http.as_deref_mut() else {
            return false;
        };
        let Some(p) = h.h2.as_deref_mut() else {
            return false;
        };
        for _ in 0..2 {
            p.drive(&mut h.filter);
            let finished = p.finished();
            let (pipe, leg) = match side {
                Side::Client => (&p.down, &mut self.client),
                Side::Upstream => (&p.up, &mut self.upstream),
            };
            let mut bufs = pipe.lock();
            let full = bufs.tx_full();
            if leg.queued() >= self.limits.max_buffered {
                // The peer is not reading: the pipe fills, the codec stops reading
                // that peer (what it owes it stays bounded).
                break;
            }
            leg.seal(&mut bufs.tx, finished);
            if side == Side::Client && finished && bufs.tx.is_empty() {
                self.close_after_flush.get_or_insert(CloseReason::Done);
            }
            if !full {
                break;
            }
        }
        self.h2_take_redial();
        true
    }

    /// The process is draining: an HTTP/2 connection sends GOAWAY (its streams
    /// finish, then it closes). True: there is something to send.
    pub fn handle_drain(&mut self) -> bool {
        let Some(p) = self.http.as_deref_mut().and_then(|h| h.h2.as_deref_mut()) else {
            return false;
        };
        p.drain();
        true
    }

    /// Bytes the codecs hold towards `side`: written for it and not sealed, and the
    /// other side's not read yet.
    pub(super) fn h2_held(&self, side: Side) -> usize {
        let Some(p) = self.http.as_deref().and_then(|h| h.h2.as_deref()) else {
            return 0;
        };
        let (to, from) = match side {
            Side::Client => (&p.down, &p.up),
            Side::Upstream => (&p.up, &p.down),
        };
        let sealed = to.lock().tx.len();
        sealed + from.lock().unread()
    }
}
