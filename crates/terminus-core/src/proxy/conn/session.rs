//! session: one leg's TLS on rustls' unbuffered API.
//!
//! Why not the buffered `rustls::Connection`: once it has read anything it keeps a
//! deframer buffer of at least 4 KiB per session (`prepare_read` shrinks it to 4 KiB,
//! never to nothing), which was 4 of the 10 KiB an idle terminated connection held,
//! and every received byte was copied into that buffer first. Here received TLS
//! bytes are processed where the driver put them (decrypted in place in the receive
//! buffer); only the start of a record whose rest has not arrived yet is kept, here,
//! and freed once complete. Handshake messages and records are written
//! straight into the leg's send queue.
//!
//! What rustls 0.23.46 (the newest 0.23) still copies, so this module does not
//! pretend otherwise: a received record's plaintext once into a Vec of its own
//! (`ReadTraffic` pops `received_plaintext`), and each outgoing record once from its
//! own buffer into ours (`WriteTraffic::encrypt`). In-place record I/O in that API
//! is a TODO upstream (`ReadTraffic::next_record`).
//!
//! I/O contract: none.

use super::chunks::{reserve_bounded, Chunks, CHUNK};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CommonState, Error};

/// Plaintext per record: a sealed record (plus header, content type, tag and a
/// TLS 1.2 explicit nonce) then fits one send-queue block, so a bulk transfer
/// fills each block with exactly one record.
const RECORD_PLAIN: usize = CHUNK - 64;

/// The smallest record sealed just to fill the rest of a send-queue block.
const MIN_RECORD: usize = 1024;

/// Upper bound of a record's overhead on the wire (TLS 1.3: 5 + 1 + 16; TLS 1.2
/// GCM: 5 + 8 + 16); rustls reports the exact size if this is ever too small.
const RECORD_OVERHEAD: usize = 64;

/// More steps than any flight needs: a guard against a session that stops making
/// progress (which would spin the worker), not a limit a peer can reach.
const MAX_STEPS: usize = 4096;

/// The TLS session of one leg: a server session with the client, a client session
/// with a TLS upstream, and the received bytes it has not used yet.
pub(crate) struct Session {
    conn: Unbuffered,
    /// The start of a record (or of a handshake message spanning records) whose
    /// rest has not arrived. rustls may keep positions into these bytes between
    /// calls, so every call gets them, less what it said to discard. Empty, and
    /// unallocated, between records.
    pending: Vec<u8>,
    /// rustls refused the peer's bytes: the session is dead, and is never called
    /// again (it may keep positions into bytes that are gone).
    failed: bool,
}

enum Unbuffered {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// What one `process_tls_records` step left us to do.
enum Step {
    /// More may follow at once (records read, handshake bytes encoded or sent).
    Again,
    /// The peer's close_notify arrived (reported once).
    PeerClosed,
    /// Both close_notify sent and received: nothing more will happen.
    Closed,
    /// Nothing to do until more bytes arrive (or, handshake done, until we write).
    Idle,
}

/// One step: take what rustls reports into `plain` (application data) and `out`
/// (handshake messages, alerts), and say how many input bytes it used up.
fn step<Data>(
    st: UnbufferedStatus<'_, '_, Data>,
    plain: &mut Vec<u8>,
    limit: usize,
    out: &mut Chunks,
) -> (usize, Result<Step, Error>) {
    let UnbufferedStatus { mut discard, state } = st;
    let state = match state {
        Ok(s) => s,
        Err(e) => return (discard, Err(e)),
    };
    let next = match state {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                let rec = match rec {
                    Ok(rec) => rec,
                    Err(e) => return (discard, Err(e)),
                };
                discard += rec.discard;
                reserve_bounded(plain, rec.payload.len(), limit);
                plain.extend_from_slice(rec.payload);
            }
            Step::Again
        }
        ConnectionState::EncodeTlsData(mut e) => {
            let mut bound = 4096;
            loop {
                match out.write_with(bound, |buf| e.encode(buf)) {
                    Ok(_) | Err(EncodeError::AlreadyEncoded) => break,
                    Err(EncodeError::InsufficientSize(s)) => bound = s.required_size,
                }
            }
            Step::Again
        }
        // The encoded bytes are in `out`, which the driver sends.
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Again
        }
        ConnectionState::PeerClosed => Step::PeerClosed,
        ConnectionState::Closed => Step::Closed,
        ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => Step::Idle,
        // Early data is never enabled (`max_early_data_size` stays 0).
        _ => {
            let e = Error::General("unexpected TLS session state".into());
            return (discard, Err(e));
        }
    };
    (discard, Ok(next))
}

/// Seal `plain` into records in `out` if the session may send application data
/// (handshake done, close_notify not sent); how many bytes of it were taken.
fn write_app<Data>(
    st: UnbufferedStatus<'_, '_, Data>,
    plain: &[u8],
    out: &mut Chunks,
) -> Option<Result<usize, EncryptError>> {
    let ConnectionState::WriteTraffic(mut w) = st.state.ok()? else {
        return None;
    };
    let mut done = 0;
    while done < plain.len() {
        // Records fill the send queue's blocks to the brim, as bytes would: blocks
        // of one size (one allocator size class) are what keeps a stalled peer's
        // queue from fragmenting the heap (see `Chunks`). A nearly full block is
        // left as it is rather than closed with a tiny record.
        let room = out.tail_room();
        let most = match room.checked_sub(RECORD_OVERHEAD) {
            Some(fits) if fits >= MIN_RECORD => fits.min(RECORD_PLAIN),
            _ => RECORD_PLAIN,
        };
        let part = &plain[done..(done + most).min(plain.len())];
        let mut bound = part.len() + RECORD_OVERHEAD;
        let r = loop {
            match out.write_with(bound, |buf| w.encrypt(part, buf)) {
                Err(EncryptError::InsufficientSize(s)) => bound = s.required_size,
                r => break r,
            }
        };
        if let Err(e) = r {
            return Some(if done > 0 { Ok(done) } else { Err(e) });
        }
        done += part.len();
    }
    Some(Ok(done))
}

/// Queue close_notify if the session may still send.
fn write_close_notify<Data>(st: UnbufferedStatus<'_, '_, Data>, out: &mut Chunks) -> bool {
    let Ok(ConnectionState::WriteTraffic(mut w)) = st.state else {
        return false;
    };
    let mut bound = RECORD_OVERHEAD;
    loop {
        match out.write_with(bound, |buf| w.queue_close_notify(buf)) {
            Err(EncryptError::InsufficientSize(s)) => bound = s.required_size,
            r => return r.is_ok(),
        }
    }
}

impl Session {
    pub(crate) fn server(c: UnbufferedServerConnection) -> Session {
        Session {
            conn: Unbuffered::Server(c),
            pending: Vec::new(),
            failed: false,
        }
    }

    pub(crate) fn client(c: UnbufferedClientConnection) -> Session {
        Session {
            conn: Unbuffered::Client(c),
            pending: Vec::new(),
            failed: false,
        }
    }

    pub(crate) fn common(&self) -> &CommonState {
        match &self.conn {
            Unbuffered::Server(c) => c,
            Unbuffered::Client(c) => c,
        }
    }

    /// Bytes of memory this session's leg holds for records still arriving.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.pending.capacity()
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    fn step(
        conn: &mut Unbuffered,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        limit: usize,
        out: &mut Chunks,
    ) -> (usize, Result<Step, Error>) {
        match conn {
            Unbuffered::Server(c) => step(c.process_tls_records(input), plain, limit, out),
            Unbuffered::Client(c) => step(c.process_tls_records(input), plain, limit, out),
        }
    }

    /// TLS bytes arrived (`data`, the driver's receive buffer, decrypted in place):
    /// plaintext into `plain` (growing it to `limit` at most, see
    /// [`reserve_bounded`]), handshake messages and alerts into `out`. The record
    /// waiting in `pending` is completed with as few bytes of `data` as it needs,
    /// the rest of `data` is processed where it is, and only an incomplete last
    /// record is copied: a bulk upload copies just the records straddling two
    /// receives. Ok(true): the peer sent close_notify (bytes after it are dropped).
    /// On error, rustls' alert is in `out`.
    pub(crate) fn receive(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        limit: usize,
        out: &mut Chunks,
    ) -> Result<bool, Error> {
        if self.failed {
            return Err(Error::General("TLS session already failed".into()));
        }
        let r = self.receive_inner(data, plain, limit, out);
        if r.is_err() {
            self.failed = true;
            self.pending = Vec::new();
        }
        r
    }

    fn receive_inner(
        &mut self,
        mut data: &mut [u8],
        plain: &mut Vec<u8>,
        limit: usize,
        out: &mut Chunks,
    ) -> Result<bool, Error> {
        while !self.pending.is_empty() && !data.is_empty() {
            // All complete yet unused (a handshake message spanning records that
            // continue in `data`): take everything.
            let n = match missing(&self.pending) {
                0 => data.len(),
                m => m.min(data.len()),
            };
            let (head, rest) = std::mem::take(&mut data).split_at_mut(n);
            data = rest;
            self.pending.extend_from_slice(head);
            let mut pending = std::mem::take(&mut self.pending);
            let fed = Self::feed(&mut self.conn, &mut pending, plain, limit, out);
            let (used, closed) = fed?;
            if closed {
                return Ok(true);
            }
            pending.drain(..used);
            self.pending = pending;
        }
        if self.pending.is_empty() {
            // Free what a straddling record used: an idle leg holds nothing.
            self.pending = Vec::new();
            if !data.is_empty() {
                let (used, closed) = Self::feed(&mut self.conn, data, plain, limit, out)?;
                if closed {
                    return Ok(true);
                }
                self.pending.extend_from_slice(&data[used..]);
            }
        }
        Ok(false)
    }

    /// Process `input` until rustls needs more bytes: how many it used up, and
    /// whether the peer closed (then all count as used).
    fn feed(
        conn: &mut Unbuffered,
        input: &mut [u8],
        plain: &mut Vec<u8>,
        limit: usize,
        out: &mut Chunks,
    ) -> Result<(usize, bool), Error> {
        let (mut used, mut closed) = (0, false);
        for _ in 0..MAX_STEPS {
            let (discard, next) = Self::step(conn, &mut input[used..], plain, limit, out);
            used += discard;
            match next {
                Ok(Step::Again) => continue,
                // Reported once; what follows is WriteTraffic or Closed.
                Ok(Step::PeerClosed) => {
                    closed = true;
                    continue;
                }
                Ok(Step::Closed) => closed = true,
                Ok(Step::Idle) => {}
                Err(e) => {
                    // The alert rustls queued comes out of the next call, which must
                    // see the same bytes (rustls keeps positions into them).
                    Self::drain(conn, &mut input[used..], out);
                    return Err(e);
                }
            }
            return Ok((if closed { input.len() } else { used }, closed));
        }
        Err(Error::General("TLS session made no progress".into()))
    }

    /// Encode what rustls has queued to send into `out`, with `input` the bytes
    /// it has not used yet; how many more of them it used.
    fn drain(conn: &mut Unbuffered, input: &mut [u8], out: &mut Chunks) -> usize {
        let (mut used, mut none) = (0, Vec::new());
        for _ in 0..MAX_STEPS {
            let (discard, next) = Self::step(conn, &mut input[used..], &mut none, 0, out);
            used += discard;
            if !matches!(next, Ok(Step::Again)) {
                break;
            }
        }
        used
    }

    /// Move what rustls has queued to send (the first flight of a new client
    /// session, a reply to a key update) into `out`.
    pub(crate) fn pump(&mut self, out: &mut Chunks) {
        if self.failed {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let used = Self::drain(&mut self.conn, &mut pending, out);
        pending.drain(..used);
        if !pending.is_empty() {
            self.pending = pending;
        }
    }

    /// Seal `plain` into records at the end of `out`; how many bytes were taken
    /// (0 while the handshake runs or after close_notify went out).
    pub(crate) fn write(&mut self, plain: &[u8], out: &mut Chunks) -> usize {
        if self.failed {
            return 0;
        }
        for _ in 0..2 {
            let p = &mut self.pending;
            let r = match &mut self.conn {
                Unbuffered::Server(c) => write_app(c.process_tls_records(p), plain, out),
                Unbuffered::Client(c) => write_app(c.process_tls_records(p), plain, out),
            };
            match r {
                Some(Ok(n)) => return n,
                Some(Err(_)) => return 0,
                // Something queued first (a key update's reply): out with it, retry.
                None => self.pump(out),
            }
        }
        0
    }

    /// Queue close_notify in `out`; false if it cannot be sent (handshake not done,
    /// already sent).
    pub(crate) fn close_notify(&mut self, out: &mut Chunks) -> bool {
        if self.failed {
            return false;
        }
        let p = &mut self.pending;
        match &mut self.conn {
            Unbuffered::Server(c) => write_close_notify(c.process_tls_records(p), out),
            Unbuffered::Client(c) => write_close_notify(c.process_tls_records(p), out),
        }
    }
}

/// Bytes still missing from the last TLS record in `buf`, whose earlier records
/// are complete (0: `buf` ends on a record boundary). An incomplete header counts
/// as needing its own rest first.
fn missing(buf: &[u8]) -> usize {
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return 0;
        }
        if rest.len() < 5 {
            return 5 - rest.len();
        }
        let len = 5 + u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < len {
            return len - rest.len();
        }
        rest = &rest[len..];
    }
}
