//! h2: the `Conn`'s side of an HTTP/2 connection (`proxy::h2`).
//!
//! Owns nothing: the hooks through which `Conn` feeds each leg's plaintext to the
//! codecs' pipes, drives them, and seals what they wrote, and how the pipes count
//! against the buffer bound. The connection is over when the client's HTTP/2
//! connection is (GOAWAY, EOF, a protocol error) and its last bytes are sent.
//!
//! I/O contract: none; no clock.
#![forbid(unsafe_code)]

use super::{CloseReason, Conn, Side};
use std::time::Instant;

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
