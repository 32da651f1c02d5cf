//! leg: one side of a proxied connection, the client's or the upstream's.
//!
//! Owns [`Leg`]: the side's TLS session (a rustls server session with the client, a
//! client session with a TLS upstream, none for a plaintext upstream; see
//! [`super::session`]), the plaintext
//! it received and has not handed over yet, the send queue for its socket and the
//! send in flight, and its EOF, close_notify and shutdown state. Every rule about a
//! side is a method here, written once for both: receiving through [`Leg::receive`],
//! sealing the other side's plaintext, sending, shutting down, and how many bytes
//! wait for it (what backpressure and receive budgets count).
//!
//! I/O contract: none; bytes in and out are slices and `Vec`s.

use super::chunks::{reserve_bounded, Chunks};
use super::session::Session;

/// Which leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's socket (TLS server side).
    Client,
    /// The upstream's socket (plaintext, or TLS client side).
    Upstream,
}

impl Side {
    /// The leg bytes from this one go to.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// One side of a connection: what it sent us, and what waits for it.
#[derive(Default)]
pub(super) struct Leg {
    /// TLS with this side, boxed so both legs are small whichever they hold;
    /// `None` for a plaintext upstream (or one not connected yet).
    pub(super) tls: Option<Box<Session>>,
    /// Plaintext received from this side, not yet handed to the other leg.
    pub(super) plain_in: Vec<u8>,
    /// Bytes for this side's socket: TLS records (after a preamble for an upstream),
    /// or plaintext.
    pub(super) out: Chunks,
    /// Length of the send in flight to this side's socket.
    pub(super) inflight: Option<usize>,
    /// This side finished sending (FIN or close_notify).
    pub(super) read_closed: bool,
    /// close_notify for this side is queued.
    pub(super) close_notify_queued: bool,
    /// This side's write side was shut down.
    pub(super) shut: bool,
    /// Plaintext of the other side (or close_notify) went into this leg's TLS.
    pub(super) committed: bool,
}

impl Leg {
    pub(super) fn new(tls: Option<Session>) -> Leg {
        Leg {
            tls: tls.map(Box::new),
            ..Leg::default()
        }
    }

    /// Whether this leg's TLS handshake is still running.
    pub(super) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Bytes queued for this side's socket or in flight to it.
    pub(super) fn queued(&self) -> usize {
        self.out.len() + self.inflight.unwrap_or(0)
    }

    /// Bytes arrived from this side: decrypt (TLS; in place, in `data`) or keep
    /// them, into `plain_in`, letting it grow to `limit` at most; `bytes` counts the
    /// plaintext taken.
    /// Err: this side broke TLS (rustls' alert is queued for it).
    pub(super) fn receive(
        &mut self,
        data: &mut [u8],
        limit: usize,
        bytes: &mut u64,
    ) -> Result<(), rustls::Error> {
        let before = self.plain_in.len();
        let fed = match self.tls.as_deref_mut() {
            Some(t) => t.receive(data, &mut self.plain_in, limit, &mut self.out),
            None => {
                reserve_bounded(&mut self.plain_in, data.len(), limit);
                self.plain_in.extend_from_slice(data);
                Ok(false)
            }
        };
        *bytes += (self.plain_in.len() - before) as u64;
        self.read_closed |= fed?;
        Ok(())
    }

    /// Hand the other side's plaintext to this leg: a move for a plaintext leg (no
    /// copy when nothing is queued), sealed into records for a TLS one; then, once
    /// `peer_done` (the other side finished) and nothing of it is left, close_notify.
    /// Nothing while this leg's handshake runs: the bytes wait, so nothing of the
    /// other side's has crossed yet (a refused upstream session can be retried).
    pub(super) fn seal(&mut self, plain: &mut Vec<u8>, peer_done: bool) {
        if self.handshaking() {
            return;
        }
        if !plain.is_empty() {
            match self.tls.as_deref_mut() {
                None => self.out.push(std::mem::take(plain)),
                Some(t) => {
                    let done = t.write(plain, &mut self.out);
                    plain.drain(..done);
                    self.committed |= done > 0;
                }
            }
            // Keep the staging buffer only while it holds bytes (idle = no memory).
            if plain.is_empty() {
                *plain = Vec::new();
            }
        }
        if peer_done && plain.is_empty() && !self.close_notify_queued {
            // A TLS leg gets close_notify before its FIN; a plaintext one only the FIN.
            if let Some(t) = self.tls.as_deref_mut() {
                t.close_notify(&mut self.out);
                self.close_notify_queued = true;
                self.committed = true;
            }
        }
    }

    /// Queue this leg's close_notify (an ending that is not the other side's).
    pub(super) fn send_close_notify(&mut self) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.close_notify(&mut self.out);
        }
    }

    /// Move every TLS record rustls has queued (handshake, alert) to the send queue.
    pub(super) fn pump(&mut self) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.pump(&mut self.out);
        }
    }

    /// The next block for this side's socket, if none is in flight.
    pub(super) fn poll_send(&mut self) -> Option<Vec<u8>> {
        if self.inflight.is_some() || self.out.is_empty() {
            return None;
        }
        let buf = self.out.pop()?;
        self.inflight = Some(buf.len());
        Some(buf)
    }

    /// A send finished completely. The buffer is dropped, not kept for reuse: an
    /// idle connection then holds no send memory (the allocator recycles it).
    pub(super) fn handle_sent(&mut self, buf: Vec<u8>) {
        drop(buf);
        self.inflight = None;
    }

    /// Shut this side's write side (true once), when `ready` (the caller's rule for
    /// the other side being done), its close_notify is queued if it speaks TLS, and
    /// nothing waits for its socket any more.
    pub(super) fn poll_shutdown(&mut self, ready: bool) -> bool {
        let notified = self.tls.is_none() || self.close_notify_queued;
        if ready && notified && !self.shut && self.out.is_empty() && self.inflight.is_none() {
            self.shut = true;
            return true;
        }
        false
    }
}
