//! conn: the sans-IO state machine of one proxied connection.
//!
//! Inputs are `handle_*` calls (bytes received, a send finished, the upstream
//! connected, EOF, an error, the time), outputs are `poll_*`/`wants_*` queries
//! (bytes to send to either side, connect now, shut down a side, stop or resume
//! receiving, close). It never sees a file descriptor or reads the clock, so the
//! whole proxy logic — TLS, half-close, backpressure, timeouts — is unit-tested with
//! an in-memory rustls client (see the tests below) and any driver can run it.
//!
//! Send buffers are handed to the driver by value (`poll_*_send`) and come back with
//! `handle_*_sent`, so the driver's I/O layer owns them while the kernel does.
#![forbid(unsafe_code)]

use rustls::ServerConnection;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Per-listener limits, all configurable.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Per direction: stop reading a side once this many bytes wait for the other.
    pub max_buffered: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TLS handshake with the client in progress.
    Handshaking,
    /// Handshake done; the driver is connecting the upstream.
    Connecting,
    /// Both legs up: bytes flow.
    Streaming,
}

/// Why a handshake failed; the `reason` label values of interface.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownCa,
    CertExpired,
    CertNotYetValid,
    CertRevoked,
    BadCertificate,
    PolicyDenied,
    ProtocolVersion,
    NoSharedCipher,
    Malformed,
    Timeout,
    PeerClosed,
    PeerAlert,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 14] = [
        Self::NoClientCert,
        Self::UnknownCa,
        Self::CertExpired,
        Self::CertNotYetValid,
        Self::CertRevoked,
        Self::BadCertificate,
        Self::PolicyDenied,
        Self::ProtocolVersion,
        Self::NoSharedCipher,
        Self::Malformed,
        Self::Timeout,
        Self::PeerClosed,
        Self::PeerAlert,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::CertExpired => "cert_expired",
            Self::CertNotYetValid => "cert_not_yet_valid",
            Self::CertRevoked => "cert_revoked",
            Self::BadCertificate => "bad_certificate",
            Self::PolicyDenied => "policy_denied",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::Malformed => "malformed",
            Self::Timeout => "timeout",
            Self::PeerClosed => "peer_closed",
            Self::PeerAlert => "peer_alert",
            Self::Other => "other",
        }
    }

    /// Classify a rustls error raised while handshaking.
    pub fn classify(e: &rustls::Error) -> Self {
        use rustls::{CertificateError as C, Error as E, PeerIncompatible as PI};
        match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => Self::Malformed,
            E::InappropriateHandshakeMessage { .. } | E::DecryptError => Self::Malformed,
            E::NoCertificatesPresented => Self::NoClientCert,
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => Self::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => Self::CertExpired,
                C::NotValidYet | C::NotValidYetContext { .. } => Self::CertNotYetValid,
                C::Revoked => Self::CertRevoked,
                C::ApplicationVerificationFailure => Self::PolicyDenied,
                _ => Self::BadCertificate,
            },
            E::PeerIncompatible(p) => match p {
                PI::Tls12NotOffered
                | PI::Tls12NotOfferedOrEnabled
                | PI::Tls13RequiredForQuic
                | PI::SupportedVersionsExtensionRequired
                // What a real TLS <= 1.1 ClientHello trips first: it has no
                // signature_algorithms extension.
                | PI::SignatureAlgorithmsExtensionRequired => Self::ProtocolVersion,
                PI::NoCipherSuitesInCommon
                | PI::NoKxGroupsInCommon
                | PI::NoSignatureSchemesInCommon
                | PI::NoEcPointFormatsInCommon => Self::NoSharedCipher,
                _ => Self::Other,
            },
            E::AlertReceived(_) => Self::PeerAlert,
            E::PeerMisbehaved(_) => Self::Malformed,
            _ => Self::Other,
        }
    }
}

/// Why a connection ended (the access log's `close_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished cleanly.
    Done,
    HandshakeFailed(HandshakeFailure),
    IdleTimeout,
    /// Every upstream refused or timed out.
    UpstreamUnavailable,
    /// The client reset or errored: reset the upstream too.
    ClientReset,
    /// The upstream reset or errored: reset the client too.
    UpstreamReset,
    /// The client broke the TLS protocol after the handshake.
    ClientProtocolError,
    /// Shut down by the process (drain deadline).
    Shutdown,
    /// TLS towards the upstream failed (e.g. its certificate did not verify).
    UpstreamTlsFailed(HandshakeFailure),
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::IdleTimeout => "idle_timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::ClientReset => "client_reset",
            Self::UpstreamReset => "upstream_reset",
            Self::ClientProtocolError => "client_protocol_error",
            Self::Shutdown => "shutdown",
            Self::UpstreamTlsFailed(_) => "upstream_tls_failed",
        }
    }
}

/// What a fired timer means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing is due (the deadline moved).
    No,
    /// The upstream connect attempt took too long: cancel it (its failure then
    /// moves on to the next upstream).
    ConnectAttempt,
    /// The connection must close; see [`Conn::poll_close`].
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shut {
    No,
    Done,
}

pub struct Conn {
    tls: ServerConnection,
    phase: Phase,
    limits: ConnLimits,
    started: Instant,
    last_activity: Instant,
    connect_started: Instant,
    handshake_done: Option<Instant>,
    want_connect: bool,

    // client -> upstream
    /// Client plaintext not yet handed to the upstream leg (sealed first when the
    /// upstream speaks TLS).
    client_plain: Vec<u8>,
    /// Bytes for the upstream socket: preamble, then plaintext or TLS records.
    to_upstream: Chunks,
    /// TLS towards the upstream (re-encryption), once connected.
    up_tls: Option<Box<rustls::ClientConnection>>,
    up_close_notify_queued: bool,
    upstream_inflight: Option<usize>,
    client_read_closed: bool,
    upstream_shut: Shut,

    // upstream -> client
    /// Upstream plaintext received this turn, sealed into records at the next poll
    /// so a turn's worth of bytes becomes as few records as possible.
    plain_to_client: Vec<u8>,
    to_client: Chunks,
    client_inflight: Option<usize>,
    upstream_read_closed: bool,
    close_notify_queued: bool,
    client_shut: Shut,

    /// Close at once.
    close: Option<CloseReason>,
    /// Close once `to_client` (an alert, a close_notify) has been sent.
    close_after_flush: Option<CloseReason>,

    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// The client certificate the verifier refused, when that failed the handshake.
    rejected: Option<Box<crate::tls::RejectedClient>>,
    /// Retrying the upstream leg after a refused TLS session.
    up_retry: UpRetry,
}

/// The one retry of an upstream TLS handshake that offered a session to resume
/// ([`Conn::allow_upstream_tls_retry`]).
#[derive(Debug, Default, Clone, Copy)]
struct UpRetry {
    /// This handshake offered a session: an early failure may be retried.
    allowed: bool,
    /// Client bytes (or its close_notify) went into the upstream TLS: too late.
    committed: bool,
    /// A retry the driver has not polled yet, and why.
    pending: Option<HandshakeFailure>,
    /// The retry was used (the upstream leg now makes full handshakes only).
    used: bool,
}

impl Conn {
    pub fn new(tls: ServerConnection, limits: ConnLimits, now: Instant) -> Self {
        Conn {
            tls,
            phase: Phase::Handshaking,
            limits,
            started: now,
            last_activity: now,
            connect_started: now,
            handshake_done: None,
            want_connect: false,
            client_plain: Vec::new(),
            to_upstream: Chunks::default(),
            up_tls: None,
            up_close_notify_queued: false,
            upstream_inflight: None,
            client_read_closed: false,
            upstream_shut: Shut::No,
            plain_to_client: Vec::new(),
            to_client: Chunks::default(),
            client_inflight: None,
            upstream_read_closed: false,
            close_notify_queued: false,
            client_shut: Shut::No,
            close: None,
            close_after_flush: None,
            bytes_client_to_upstream: 0,
            bytes_upstream_to_client: 0,
            rejected: None,
            up_retry: UpRetry::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn tls(&self) -> &ServerConnection {
        &self.tls
    }

    /// Time from accept to handshake completion, once done.
    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn handshake_duration(&self) -> Option<Duration> {
        self.handshake_done.map(|t| t - self.started)
    }

    /// Largest capacity a staging buffer may grow to: the direction's budget plus
    /// room for TLS record overhead.
    fn staging_limit(&self) -> usize {
        self.limits.max_buffered + 4096
    }

    fn closing(&self) -> bool {
        self.close.is_some() || self.close_after_flush.is_some()
    }

    // ---- inputs -------------------------------------------------------------

    /// Bytes arrived from the client.
    pub fn handle_client_data(&mut self, data: &[u8], now: Instant) {
        if self.closing() || self.client_read_closed {
            return;
        }
        self.last_activity = now;
        let limit = self
            .staging_limit()
            .saturating_sub(self.to_upstream.len() + self.upstream_inflight.unwrap_or(0));
        let before = self.client_plain.len();
        let fed = feed_tls(&mut self.tls, data, &mut self.client_plain, limit);
        self.bytes_client_to_upstream += (self.client_plain.len() - before) as u64;
        match fed {
            Ok(closed) => self.client_read_closed |= closed,
            Err(e) => {
                self.fail_tls(&e);
                return;
            }
        }
        if self.phase == Phase::Handshaking && !self.tls.is_handshaking() {
            self.phase = Phase::Connecting;
            self.handshake_done = Some(now);
            self.want_connect = true;
            self.connect_started = now;
        }
        self.pump_tls_out();
    }

    /// The client's TCP stream ended (FIN).
    pub fn handle_client_eof(&mut self, now: Instant) {
        self.last_activity = now;
        self.client_read_closed = true;
        // A refusal already queued its alert: a FIN in the same read must not cut
        // it off (the client half-closed; it can still read the alert).
        if self.phase == Phase::Handshaking && self.close_after_flush.is_none() {
            self.close
                .get_or_insert(CloseReason::HandshakeFailed(HandshakeFailure::PeerClosed));
        }
    }

    /// The client socket failed (reset, broken pipe...).
    pub fn handle_client_error(&mut self) {
        self.close
            .get_or_insert(if self.phase == Phase::Handshaking {
                CloseReason::HandshakeFailed(HandshakeFailure::PeerClosed)
            } else {
                CloseReason::ClientReset
            });
    }

    /// The driver started a connect attempt (the connect timeout starts now).
    pub fn handle_connect_started(&mut self, now: Instant) {
        self.connect_started = now;
    }

    /// The upstream socket is connected. `preamble` (e.g. a PROXY v2 header) goes out
    /// first; with `tls` the upstream leg is re-encrypted (its handshake starts now).
    pub fn handle_upstream_connected(
        &mut self,
        now: Instant,
        preamble: Vec<u8>,
        tls: Option<rustls::ClientConnection>,
    ) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Streaming;
            self.last_activity = now;
            debug_assert!(self.to_upstream.is_empty());
            self.to_upstream.push(preamble);
            if let Some(mut t) = tls {
                pump(&mut t, &mut self.to_upstream);
                self.up_tls = Some(Box::new(t));
            }
        }
    }

    /// No upstream could be reached.
    pub fn handle_upstream_unavailable(&mut self) {
        self.tls.send_close_notify();
        self.pump_tls_out();
        self.close_after_flush
            .get_or_insert(CloseReason::UpstreamUnavailable);
    }

    /// Plaintext arrived from the upstream.
    pub fn handle_upstream_data(&mut self, data: &[u8], now: Instant) {
        // Not Streaming: what is left of an upstream leg being retried.
        if self.closing() || self.phase != Phase::Streaming {
            return;
        }
        self.last_activity = now;
        // Spare capacity counts against the direction's bound like the bytes do.
        let limit = self
            .staging_limit()
            .saturating_sub(self.to_client.len() + self.client_inflight.unwrap_or(0));
        let Some(t) = self.up_tls.as_mut() else {
            self.bytes_upstream_to_client += data.len() as u64;
            reserve_bounded(&mut self.plain_to_client, data.len(), limit);
            self.plain_to_client.extend_from_slice(data);
            return;
        };
        let before = self.plain_to_client.len();
        let fed = feed_tls(t, data, &mut self.plain_to_client, limit);
        self.bytes_upstream_to_client += (self.plain_to_client.len() - before) as u64;
        match fed {
            Ok(closed) => self.upstream_read_closed |= closed,
            Err(e) => {
                let reason = HandshakeFailure::classify(&e);
                pump(t, &mut self.to_upstream);
                if !self.retry_upstream_tls(reason) {
                    self.fail_upstream_tls(reason);
                }
                return;
            }
        }
        pump(t, &mut self.to_upstream);
    }

    /// The upstream's TLS failed (verification, protocol): tell the client with
    /// close_notify and close; the reason is the upstream's.
    fn fail_upstream_tls(&mut self, reason: HandshakeFailure) {
        self.tls.send_close_notify();
        self.pump_tls_out();
        self.close_after_flush
            .get_or_insert(CloseReason::UpstreamTlsFailed(reason));
    }

    /// The upstream's stream ended (FIN): close_notify goes to the client after the
    /// bytes already received.
    pub fn handle_upstream_eof(&mut self, now: Instant) {
        if self.phase != Phase::Streaming || self.retry_upstream_tls(HandshakeFailure::PeerClosed) {
            return;
        }
        self.last_activity = now;
        self.upstream_read_closed = true;
    }

    pub fn handle_upstream_error(&mut self) {
        if self.phase != Phase::Streaming || self.retry_upstream_tls(HandshakeFailure::PeerClosed) {
            return;
        }
        self.close.get_or_insert(CloseReason::UpstreamReset);
    }

    /// The driver's upstream TLS handshake offers a session to resume (call after
    /// [`Conn::handle_upstream_connected`]). If that handshake then fails (TLS error,
    /// EOF or reset before it completes; nothing has crossed the leg, as client bytes
    /// wait for it), the client is not failed: [`Conn::poll_upstream_tls_retry`] asks
    /// for one new upstream connection instead. Once per connection.
    pub fn allow_upstream_tls_retry(&mut self) {
        self.up_retry.allowed = !self.up_retry.used;
    }

    /// The upstream leg failed early after offering a session (see
    /// [`Conn::allow_upstream_tls_retry`]), and why: the phase is `Connecting` again,
    /// the driver drops that upstream socket once its ops are done and connects again,
    /// with a full handshake, calling [`Conn::handle_upstream_connected`] as the first
    /// time. Client bytes wait meanwhile. Some once.
    pub fn poll_upstream_tls_retry(&mut self) -> Option<HandshakeFailure> {
        self.up_retry.pending.take()
    }

    /// Whether the upstream leg was retried (its handshakes must not offer a session).
    pub fn upstream_tls_retried(&self) -> bool {
        self.up_retry.used
    }

    /// How the upstream leg's TLS handshake went (full or resumed), once done.
    pub fn upstream_handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        let t = self.up_tls.as_ref().filter(|t| !t.is_handshaking())?;
        t.handshake_kind()
    }

    /// Turn an early upstream TLS failure into a retry, if allowed (see
    /// [`Conn::allow_upstream_tls_retry`]); false: fail as usual.
    fn retry_upstream_tls(&mut self, reason: HandshakeFailure) -> bool {
        let r = &mut self.up_retry;
        // A refused session fails the handshake; a failure after it (an idle leg the
        // upstream closes, say) is not the session's.
        let handshaking = self.up_tls.as_ref().is_some_and(|t| t.is_handshaking());
        if !r.allowed || r.committed || !handshaking || self.bytes_upstream_to_client > 0 {
            return false;
        }
        *r = UpRetry {
            pending: Some(reason),
            used: true,
            ..UpRetry::default()
        };
        self.up_tls = None;
        self.to_upstream = Chunks::default();
        self.upstream_inflight = None;
        self.upstream_read_closed = false;
        self.phase = Phase::Connecting;
        true
    }

    /// A client send finished completely. The buffer is dropped, not kept for reuse:
    /// an idle connection then holds no send memory (the allocator recycles it).
    pub fn handle_client_sent(&mut self, buf: Vec<u8>, now: Instant) {
        drop(buf);
        self.client_inflight = None;
        self.last_activity = now;
    }

    /// An upstream send finished completely (buffer dropped, as for the client).
    pub fn handle_upstream_sent(&mut self, buf: Vec<u8>, now: Instant) {
        drop(buf);
        self.upstream_inflight = None;
        self.last_activity = now;
    }

    /// A deadline may have passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Expired {
        if self.close.is_some() {
            return Expired::Close;
        }
        if now < self.deadline() {
            return Expired::No;
        }
        match self.phase {
            Phase::Handshaking => {
                self.close = Some(CloseReason::HandshakeFailed(HandshakeFailure::Timeout));
                Expired::Close
            }
            Phase::Connecting => {
                // Re-arm so a cancel that never completes can't stall us forever.
                self.connect_started = now;
                Expired::ConnectAttempt
            }
            Phase::Streaming => {
                // A peer that never reads its alert/close_notify keeps that reason.
                self.close = Some(self.close_after_flush.unwrap_or(CloseReason::IdleTimeout));
                Expired::Close
            }
        }
    }

    /// Close now, whatever the state (process shutdown).
    pub fn handle_shutdown(&mut self) {
        self.close.get_or_insert(CloseReason::Shutdown);
    }

    // ---- outputs ------------------------------------------------------------

    /// When the next timer check is due.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Handshaking => self.started + self.limits.handshake_timeout,
            Phase::Connecting => self.connect_started + self.limits.connect_timeout,
            Phase::Streaming => self.last_activity + self.limits.idle_timeout,
        }
    }

    /// Start connecting the upstream (true once, after the handshake).
    pub fn poll_connect(&mut self) -> bool {
        std::mem::take(&mut self.want_connect) && !self.closing()
    }

    /// Bytes to send to the client, if none are in flight. Seals the upstream
    /// plaintext gathered since the last call into records first.
    pub fn poll_client_send(&mut self) -> Option<Vec<u8>> {
        self.seal_for_client();
        if self.client_inflight.is_some() || self.to_client.is_empty() || self.close.is_some() {
            return None;
        }
        let buf = self.to_client.pop()?;
        self.client_inflight = Some(buf.len());
        Some(buf)
    }

    /// Bytes to send to the upstream, if connected and none are in flight. Moves
    /// (or, for a TLS upstream, seals) the client plaintext gathered so far first.
    pub fn poll_upstream_send(&mut self) -> Option<Vec<u8>> {
        if self.phase != Phase::Streaming || self.closing() {
            return None;
        }
        self.feed_upstream();
        if self.upstream_inflight.is_some() || self.to_upstream.is_empty() {
            return None;
        }
        let buf = self.to_upstream.pop()?;
        self.upstream_inflight = Some(buf.len());
        Some(buf)
    }

    /// Bytes held for the client -> upstream direction (plaintext waiting, bytes
    /// queued or in flight to the upstream).
    pub fn buffered_to_upstream(&self) -> usize {
        self.client_plain.len() + self.to_upstream.len() + self.upstream_inflight.unwrap_or(0)
    }

    /// Bytes held for the upstream -> client direction.
    pub fn buffered_to_client(&self) -> usize {
        self.plain_to_client.len() + self.to_client.len() + self.client_inflight.unwrap_or(0)
    }

    /// Whether the driver should have a receive armed on the client socket.
    pub fn wants_client_recv(&self) -> bool {
        self.client_recv_budget() > 0
    }

    /// Whether the driver should have a receive armed on the upstream socket.
    pub fn wants_upstream_recv(&self) -> bool {
        self.upstream_recv_budget() > 0
    }

    /// How many bytes the next client receive may take: what is left of
    /// `max_buffered` in that direction (0: do not receive). The driver must never
    /// receive more, so a slow upstream pins at most `max_buffered` here.
    pub fn client_recv_budget(&self) -> usize {
        if self.closing() || self.client_read_closed {
            return 0;
        }
        self.limits
            .max_buffered
            .saturating_sub(self.buffered_to_upstream())
    }

    /// How many bytes the next upstream receive may take (0: do not receive).
    pub fn upstream_recv_budget(&self) -> usize {
        if self.phase != Phase::Streaming || self.closing() || self.upstream_read_closed {
            return 0;
        }
        self.limits
            .max_buffered
            .saturating_sub(self.buffered_to_client())
    }

    /// Shut down the upstream's write side (true once): the client finished
    /// sending and everything it sent has been delivered.
    pub fn poll_upstream_shutdown(&mut self) -> bool {
        if self.up_tls.is_some() && !self.up_close_notify_queued {
            // A TLS upstream gets close_notify (queued by poll_upstream_send) first.
            return false;
        }
        if self.phase == Phase::Streaming
            && self.client_read_closed
            && self.upstream_shut == Shut::No
            && self.client_plain.is_empty()
            && self.to_upstream.is_empty()
            && self.upstream_inflight.is_none()
            && !self.closing()
        {
            self.upstream_shut = Shut::Done;
            return true;
        }
        false
    }

    /// Shut down the client's TCP write side (true once), after close_notify went out.
    pub fn poll_client_shutdown(&mut self) -> bool {
        if self.close_notify_queued
            && self.client_shut == Shut::No
            && self.to_client.is_empty()
            && self.client_inflight.is_none()
            && self.close.is_none()
        {
            self.client_shut = Shut::Done;
            return true;
        }
        false
    }

    /// Whether the connection is over, and why. The driver then cancels what is
    /// in flight, waits for it, and closes both sockets.
    pub fn poll_close(&self) -> Option<CloseReason> {
        if let Some(r) = self.close {
            return Some(r);
        }
        if let Some(r) = self.close_after_flush {
            if self.to_client.is_empty() && self.client_inflight.is_none() {
                return Some(r);
            }
            return None;
        }
        if self.upstream_shut == Shut::Done && self.client_shut == Shut::Done {
            return Some(CloseReason::Done);
        }
        None
    }

    // ---- internals ----------------------------------------------------------

    /// Hand the client plaintext to the upstream leg: a move for plain upstreams
    /// (no copy when nothing is queued), sealing for TLS ones.
    fn feed_upstream(&mut self) {
        if self.up_tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            // Client bytes wait for the upstream handshake: until it is done nothing
            // of the client's has gone upstream, so a refused session can be retried.
            return;
        }
        if self.client_plain.is_empty() {
            // The client is done: a TLS upstream gets close_notify before the FIN.
            if let Some(t) = self.up_tls.as_mut().filter(|_| self.client_read_closed) {
                if !self.up_close_notify_queued {
                    t.send_close_notify();
                    pump(t, &mut self.to_upstream);
                    self.up_close_notify_queued = true;
                    self.up_retry.committed = true;
                }
            }
            return;
        }
        match self.up_tls.as_mut() {
            None => self
                .to_upstream
                .push(std::mem::take(&mut self.client_plain)),
            Some(t) => {
                let records = self.client_plain.len() / 16384 + 1;
                self.to_upstream
                    .reserve(self.client_plain.len() + records * 64);
                let mut done = 0;
                while done < self.client_plain.len() {
                    match t.writer().write(&self.client_plain[done..]) {
                        Ok(n) if n > 0 => done += n,
                        _ => break,
                    }
                    pump(t, &mut self.to_upstream);
                }
                self.client_plain.drain(..done);
                self.up_retry.committed |= done > 0;
            }
        }
        if self.client_plain.is_empty() {
            self.client_plain = Vec::new();
        }
    }

    fn seal_for_client(&mut self) {
        if !self.plain_to_client.is_empty() && self.close.is_none() {
            let mut plain = std::mem::take(&mut self.plain_to_client);
            // Room for all the records up front (header + tag + type per 16 KiB):
            // pumping them into a Vec growing from empty copied every byte again on
            // each doubling (~17% of bulk CPU in a profile).
            let records = plain.len() / 16384 + 1;
            self.to_client.reserve(plain.len() + records * 64);
            let mut done = 0;
            while done < plain.len() {
                match self.tls.writer().write(&plain[done..]) {
                    Ok(n) if n > 0 => done += n,
                    _ => break,
                }
                self.pump_tls_out();
            }
            plain.drain(..done);
            // Keep the staging buffer only while it still holds bytes (idle = no memory).
            if !plain.is_empty() {
                self.plain_to_client = plain;
            }
        }
        if self.upstream_read_closed
            && self.plain_to_client.is_empty()
            && !self.close_notify_queued
            && self.close.is_none()
        {
            self.tls.send_close_notify();
            self.close_notify_queued = true;
        }
        self.pump_tls_out();
    }

    fn pump_tls_out(&mut self) {
        pump(&mut self.tls, &mut self.to_client);
    }

    /// Who presented the certificate that failed the handshake, if one did.
    pub fn rejected_client(&self) -> Option<&crate::tls::RejectedClient> {
        self.rejected.as_deref()
    }

    fn fail_tls(&mut self, e: &rustls::Error) {
        // The verifier ran inside this thread's process_new_packets call just now.
        self.rejected = crate::tls::take_rejected_client().map(Box::new);
        // rustls queued an alert describing the failure; send it before closing.
        self.pump_tls_out();
        let reason = if self.phase == Phase::Handshaking {
            CloseReason::HandshakeFailed(HandshakeFailure::classify(e))
        } else {
            CloseReason::ClientProtocolError
        };
        self.close_after_flush.get_or_insert(reason);
    }
}

/// Feed received TLS bytes to rustls and move its plaintext into `plain`, until
/// every byte is taken or the peer has closed. Ok(true): the peer closed (bytes
/// after its close_notify are dropped: rustls takes no more, and looping on them
/// spun a worker forever, found by a property test). The one loop both legs use.
fn feed_tls<D>(
    tls: &mut rustls::ConnectionCommon<D>,
    mut data: &[u8],
    plain: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, rustls::Error> {
    let mut closed = false;
    let mut stuck = 0;
    while !data.is_empty() && !closed {
        match tls.read_tls(&mut data) {
            Ok(n) if n > 0 => stuck = 0,
            // Its buffer is full (or it takes nothing more): process, then retry.
            _ => stuck += 1,
        }
        if stuck > 2 {
            return Err(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::MessageTooLarge,
            ));
        }
        let st = tls.process_new_packets()?;
        closed |= st.peer_has_closed();
        reserve_bounded(plain, st.plaintext_bytes_to_read(), limit);
        match tls.reader().read_to_end(plain) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // Ok: clean close_notify; another error: EOF without one.
            _ => closed = true,
        }
    }
    Ok(closed)
}

/// Make room for `additional` more bytes in `v`, doubling as usual but never past
/// `limit` (unless the bytes themselves need more): a Vec's spare capacity is
/// memory a slow peer pins too, so it must stay within the buffering bound.
fn reserve_bounded(v: &mut Vec<u8>, additional: usize, limit: usize) {
    if v.capacity() - v.len() >= additional {
        return;
    }
    let need = v.len() + additional;
    let want = (v.capacity() * 2).max(need).min(limit.max(need));
    v.reserve_exact(want - v.len());
}

/// Largest block of a send queue: one send hands the kernel at most this much
/// (a receive brings at most one 16 KiB buffer per turn, so sends keep pace).
const CHUNK: usize = 16 * 1024;

/// Bytes queued for one socket, as blocks of at most [`CHUNK`] bytes; each send
/// takes the front block. A single Vec regrew (and copied) to the whole backlog
/// when a peer stalled, and those large, odd-sized blocks fragmented the
/// allocator: a connection pinned about twice what it buffered. Full blocks are
/// exactly one allocator size class, so freed ones are reused exactly, and only
/// the last block can have spare capacity (at most half of it).
#[derive(Default)]
struct Chunks {
    q: std::collections::VecDeque<Vec<u8>>,
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room for `n` more bytes in the last block (as far as one block goes).
    fn reserve(&mut self, n: usize) {
        match self.q.back_mut() {
            Some(b) if b.len() < CHUNK => {
                let add = n.min(CHUNK - b.len());
                reserve_bounded(b, add, CHUNK);
            }
            _ => self.q.push_back(Vec::with_capacity(n.clamp(1, CHUNK))),
        }
    }

    fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if !matches!(self.q.back(), Some(b) if b.len() < CHUNK) {
                self.q.push_back(Vec::new());
            }
            let b = self.q.back_mut().expect("a block with room");
            let n = data.len().min(CHUNK - b.len());
            reserve_bounded(b, n, CHUNK);
            b.extend_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
    }

    /// Queue a whole buffer; moved, not copied, when it can be a block of its own.
    fn push(&mut self, v: Vec<u8>) {
        if v.is_empty() {
            return;
        }
        if v.len() <= CHUNK && !matches!(self.q.back(), Some(b) if b.len() + v.len() <= CHUNK) {
            self.len += v.len();
            self.q.push_back(v);
        } else {
            self.extend(&v);
        }
    }

    /// The front block, to send.
    fn pop(&mut self) -> Option<Vec<u8>> {
        let b = self.q.pop_front()?;
        self.len -= b.len();
        if self.q.is_empty() {
            // An idle connection keeps no queue memory either.
            self.q = std::collections::VecDeque::new();
        }
        Some(b)
    }
}

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Move every TLS record rustls has queued into `out`.
fn pump<D>(tls: &mut rustls::ConnectionCommon<D>, out: &mut Chunks) {
    while tls.wants_write() {
        if tls.write_tls(out).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
    use std::sync::Arc;

    struct Pki {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        roots: RootCertStore,
    }

    fn pki() -> Pki {
        crate::tls::install_provider();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // A distinct subject per PKI, so a foreign cert is an unknown issuer, not a
        // same-named issuer with a bad signature.
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("conn test {n}"));
        let cert = params.self_signed(&key).unwrap();
        let der: CertificateDer<'static> = cert.der().clone();
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Pki {
            server: Arc::new(server),
            client: Arc::new(client),
            roots,
        }
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            max_buffered: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// An in-memory client talking to a Conn, with a fake "upstream" side.
    struct Pair {
        client: ClientConnection,
        conn: Conn,
        now: Instant,
        upstream_got: Vec<u8>,
        client_got: Vec<u8>,
        client_closed: bool,
    }

    impl Pair {
        fn new(pki: &Pki) -> Self {
            Self::with_client(pki, pki.client.clone())
        }
        fn with_client(pki: &Pki, client: Arc<ClientConfig>) -> Self {
            let now = Instant::now();
            Pair {
                client: ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap(),
                conn: Conn::new(
                    ServerConnection::new(pki.server.clone()).unwrap(),
                    limits(),
                    now,
                ),
                now,
                upstream_got: Vec::new(),
                client_got: Vec::new(),
                client_closed: false,
            }
        }

        /// Feed TLS bytes from the Conn to the client, collecting plaintext.
        fn deliver(&mut self, b: &[u8]) {
            let mut s = b;
            while !s.is_empty() {
                self.client.read_tls(&mut s).unwrap();
                self.client.process_new_packets().unwrap();
                let mut plain = Vec::new();
                match self.client.reader().read_to_end(&mut plain) {
                    Ok(_) => self.client_closed = true,
                    Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
                }
                self.client_got.extend_from_slice(&plain);
            }
        }

        /// Run the client handshake without connecting the upstream.
        fn handshake_only(&mut self) {
            for _ in 0..4 {
                let mut buf = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut buf).unwrap();
                }
                self.conn.handle_client_data(&buf, self.now);
                if let Some(b) = self.conn.poll_client_send() {
                    self.deliver(&b);
                    self.conn.handle_client_sent(b, self.now);
                }
            }
        }

        /// Move bytes both ways until nothing moves; completes sends at once.
        fn run(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                let mut buf = Vec::new();
                while self.client.wants_write() {
                    self.client.write_tls(&mut buf).unwrap();
                }
                if !buf.is_empty() {
                    moved = true;
                    self.conn.handle_client_data(&buf, self.now);
                }
                if self.conn.poll_connect() {
                    self.conn
                        .handle_upstream_connected(self.now, Vec::new(), None);
                    moved = true;
                }
                if let Some(b) = self.conn.poll_client_send() {
                    moved = true;
                    self.deliver(&b);
                    self.conn.handle_client_sent(b, self.now);
                }
                if let Some(b) = self.conn.poll_upstream_send() {
                    moved = true;
                    self.upstream_got.extend_from_slice(&b);
                    self.conn.handle_upstream_sent(b, self.now);
                }
                if !moved {
                    return;
                }
            }
            panic!("pair did not settle");
        }
    }

    #[test]
    fn handshake_then_bytes_flow_unchanged_both_ways() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        assert!(!p.client.is_handshaking());
        assert_eq!(p.conn.phase(), Phase::Streaming);
        p.client.writer().write_all(b"hello upstream").unwrap();
        p.run();
        assert_eq!(p.upstream_got, b"hello upstream");
        p.conn.handle_upstream_data(b"hello client", p.now);
        p.run();
        assert_eq!(p.client_got, b"hello client");
        assert_eq!(p.conn.bytes_client_to_upstream, 14);
        assert_eq!(p.conn.bytes_upstream_to_client, 12);
        assert!(p.conn.poll_close().is_none());
    }

    #[test]
    fn tls12_client_works() {
        let pki = pki();
        let cfg = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(pki.roots.clone())
            .with_no_client_auth();
        let mut p = Pair::with_client(&pki, Arc::new(cfg));
        p.run();
        assert_eq!(
            p.conn.tls().protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        p.client.writer().write_all(b"over tls12").unwrap();
        p.run();
        assert_eq!(p.upstream_got, b"over tls12");
    }

    #[test]
    fn client_close_notify_half_closes_upstream_while_upstream_keeps_talking() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        p.client.writer().write_all(b"request").unwrap();
        p.client.send_close_notify();
        p.run();
        assert_eq!(p.upstream_got, b"request");
        assert!(p.conn.poll_upstream_shutdown(), "upstream write side shut");
        assert!(!p.conn.wants_client_recv());
        // The other direction still flows.
        assert!(p.conn.wants_upstream_recv());
        p.conn.handle_upstream_data(b"response", p.now);
        p.run();
        assert_eq!(p.client_got, b"response");
        assert!(p.conn.poll_close().is_none());
        // Upstream finishes: close_notify to the client, then the connection ends.
        p.conn.handle_upstream_eof(p.now);
        p.run();
        assert!(p.client_closed, "client saw close_notify");
        assert!(p.conn.poll_client_shutdown());
        assert_eq!(p.conn.poll_close(), Some(CloseReason::Done));
    }

    #[test]
    fn upstream_eof_sends_close_notify_but_client_may_keep_sending() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        p.conn.handle_upstream_data(b"bye", p.now);
        p.conn.handle_upstream_eof(p.now);
        p.run();
        assert_eq!(p.client_got, b"bye");
        assert!(p.client_closed);
        assert!(p.conn.poll_client_shutdown());
        assert!(p.conn.poll_close().is_none(), "client->upstream still open");
        p.client.writer().write_all(b"late").unwrap();
        p.run();
        assert_eq!(p.upstream_got, b"late");
        p.conn.handle_client_eof(p.now);
        assert!(p.conn.poll_upstream_shutdown());
        assert_eq!(p.conn.poll_close(), Some(CloseReason::Done));
    }

    #[test]
    fn slow_client_stops_upstream_reads_at_high_water_mark() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        let chunk = vec![7u8; 16 * 1024];
        let mut fed = 0;
        let mut stuck = None;
        while p.conn.wants_upstream_recv() {
            p.conn.handle_upstream_data(&chunk, p.now);
            fed += chunk.len();
            // The client never reads: the first send stays in flight.
            if let Some(b) = p.conn.poll_client_send() {
                assert!(stuck.is_none(), "one send in flight at a time");
                stuck = Some(b);
            }
            assert!(fed < 1 << 20, "backpressure never engaged");
        }
        assert!(fed <= limits().max_buffered + chunk.len());
        // The client reads again: the stuck send completes and reading resumes.
        let b = stuck.unwrap();
        p.deliver(&b);
        p.conn.handle_client_sent(b, p.now);
        p.run();
        assert!(p.conn.wants_upstream_recv());
        assert_eq!(p.client_got.len(), fed);
    }

    #[test]
    fn garbage_fails_handshake_as_malformed_with_alert() {
        let pki = pki();
        let now = Instant::now();
        let mut c = Conn::new(
            ServerConnection::new(pki.server.clone()).unwrap(),
            limits(),
            now,
        );
        c.handle_client_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
        let alert = c.poll_client_send().expect("an alert is sent");
        assert_eq!(alert[0], 0x15, "TLS alert record");
        c.handle_client_sent(alert, now);
        assert_eq!(
            c.poll_close(),
            Some(CloseReason::HandshakeFailed(HandshakeFailure::Malformed))
        );
        assert!(!c.poll_connect());
    }

    #[test]
    fn alert_survives_eof_and_more_bytes_in_the_same_read() {
        let pki = pki();
        for after in [&b""[..], b"\x16\x03\x03more garbage"] {
            let now = Instant::now();
            let mut c = Conn::new(
                ServerConnection::new(pki.server.clone()).unwrap(),
                limits(),
                now,
            );
            // All of it lands in one turn, before the driver polls for output.
            c.handle_client_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
            c.handle_client_data(after, now);
            c.handle_client_eof(now);
            assert_eq!(c.poll_close(), None, "the alert must go out first");
            assert!(!c.wants_client_recv());
            let alert = c.poll_client_send().expect("the alert is still sent");
            assert_eq!(alert[0], 0x15, "TLS alert record");
            c.handle_client_sent(alert, now);
            assert_eq!(
                c.poll_close(),
                Some(CloseReason::HandshakeFailed(HandshakeFailure::Malformed))
            );
        }
        // A reset is different: nothing can be sent any more.
        let now = Instant::now();
        let mut c = Conn::new(
            ServerConnection::new(pki.server.clone()).unwrap(),
            limits(),
            now,
        );
        c.handle_client_data(b"GET / HTTP/1.1\r\n\r\n", now);
        c.handle_client_error();
        assert!(c.poll_close().is_some());
    }

    #[test]
    fn receive_budgets_never_exceed_max_buffered() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        let max = limits().max_buffered;
        assert_eq!(p.conn.upstream_recv_budget(), max);
        // The client never reads: feed exactly what the budget allows each time.
        let mut stuck = None;
        let mut fed = 0;
        while p.conn.upstream_recv_budget() > 0 {
            let n = p.conn.upstream_recv_budget().min(10_000);
            p.conn.handle_upstream_data(&vec![1u8; n], p.now);
            fed += n;
            if let Some(b) = p.conn.poll_client_send() {
                stuck.get_or_insert(b);
            }
            assert!(
                p.conn.buffered_to_client() <= max + 4096,
                "TLS overhead only"
            );
        }
        assert!(fed <= max && fed > max - 4096, "fed {fed} of {max}");
        // Upload side: independent budget.
        assert_eq!(p.conn.client_recv_budget(), max);
        let b = stuck.unwrap();
        p.deliver(&b);
        p.conn.handle_client_sent(b, p.now);
        p.run();
        assert!(
            p.conn.upstream_recv_budget() > 0,
            "reading resumes once sent"
        );
        assert_eq!(p.client_got.len(), fed);
    }

    #[test]
    fn silent_client_times_out_in_handshake() {
        let pki = pki();
        let now = Instant::now();
        let mut c = Conn::new(
            ServerConnection::new(pki.server.clone()).unwrap(),
            limits(),
            now,
        );
        assert_eq!(c.handle_timeout(now + Duration::from_secs(9)), Expired::No);
        assert_eq!(
            c.handle_timeout(now + Duration::from_secs(10)),
            Expired::Close
        );
        assert_eq!(
            c.poll_close(),
            Some(CloseReason::HandshakeFailed(HandshakeFailure::Timeout))
        );
    }

    #[test]
    fn idle_and_connect_timeouts() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        // Handshake without connecting the upstream.
        p.handshake_only();
        assert_eq!(p.conn.phase(), Phase::Connecting);
        assert!(p.conn.poll_connect());
        p.conn.handle_connect_started(p.now);
        let t = p.now + Duration::from_secs(5);
        assert_eq!(p.conn.handle_timeout(t), Expired::ConnectAttempt);
        p.conn.handle_upstream_connected(t, Vec::new(), None);
        assert_eq!(
            p.conn.handle_timeout(t + Duration::from_secs(59)),
            Expired::No
        );
        assert_eq!(
            p.conn.handle_timeout(t + Duration::from_secs(60)),
            Expired::Close
        );
        assert_eq!(p.conn.poll_close(), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn upstream_unavailable_sends_close_notify_then_closes() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.conn.want_connect = false;
        p.handshake_only();
        assert!(p.conn.poll_connect());
        p.conn.handle_upstream_unavailable();
        let b = p.conn.poll_client_send().expect("close_notify");
        let mut s = &b[..];
        p.client.read_tls(&mut s).unwrap();
        let st = p.client.process_new_packets().unwrap();
        assert!(st.peer_has_closed());
        p.conn.handle_client_sent(b, p.now);
        assert_eq!(p.conn.poll_close(), Some(CloseReason::UpstreamUnavailable));
    }

    /// Drive the upstream leg against an in-memory rustls server ("the upstream").
    fn settle_upstream(p: &mut Pair, up: &mut ServerConnection, up_got: &mut Vec<u8>) {
        for _ in 0..50 {
            // Pair::run completes upstream sends into `upstream_got`: the wire.
            p.run();
            let wire = std::mem::take(&mut p.upstream_got);
            let mut moved = !wire.is_empty();
            let mut s = &wire[..];
            while !s.is_empty() {
                up.read_tls(&mut s).unwrap();
                if up.process_new_packets().is_err() {
                    break;
                }
                let _ = up.reader().read_to_end(up_got);
            }
            let mut out = Vec::new();
            while up.wants_write() {
                up.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() {
                moved = true;
                p.conn.handle_upstream_data(&out, p.now);
            }
            if !moved {
                return;
            }
        }
        panic!("upstream leg did not settle");
    }

    /// A Pair whose upstream leg is connected with `preamble` and (optionally) TLS.
    fn connected_pair(pki: &Pki, preamble: &[u8], up_client: Option<Arc<ClientConfig>>) -> Pair {
        let mut p = Pair::new(pki);
        // Handshake only; connect by hand to pass the preamble and TLS session.
        p.handshake_only();
        assert!(p.conn.poll_connect());
        let tls =
            up_client.map(|c| ClientConnection::new(c, "localhost".try_into().unwrap()).unwrap());
        p.conn
            .handle_upstream_connected(p.now, preamble.to_vec(), tls);
        p
    }

    #[test]
    fn reencrypts_both_ways_after_the_preamble() {
        let pki = pki();
        let mut p = connected_pair(&pki, b"PREAMBLE", Some(pki.client.clone()));
        let first = p.conn.poll_upstream_send().expect("preamble + ClientHello");
        assert!(first.starts_with(b"PREAMBLE"), "preamble goes first");
        assert_eq!(first[8], 0x16, "then a TLS handshake record");
        let mut up = ServerConnection::new(pki.server.clone()).unwrap();
        let mut s = &first[8..];
        while !s.is_empty() {
            up.read_tls(&mut s).unwrap();
        }
        up.process_new_packets().unwrap();
        p.conn.handle_upstream_sent(first, p.now);
        let mut up_got = Vec::new();
        p.client
            .writer()
            .write_all(b"to the upstream, sealed")
            .unwrap();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert!(!up.is_handshaking());
        assert_eq!(up_got, b"to the upstream, sealed");
        up.writer().write_all(b"back to the client").unwrap();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert_eq!(p.client_got, b"back to the client");
        // Client finishes: the TLS upstream gets close_notify, then FIN.
        p.client.send_close_notify();
        p.run();
        settle_upstream(&mut p, &mut up, &mut up_got);
        // close_notify reached the upstream before the FIN is allowed.
        assert!(up.process_new_packets().unwrap().peer_has_closed());
        assert!(p.conn.poll_upstream_shutdown());
    }

    #[test]
    fn upstream_that_fails_verification_closes_the_client() {
        let pki = pki();
        let other = self::pki(); // a CA the upstream leg does not trust
        let mut p = connected_pair(&pki, b"", Some(other.client.clone()));
        let mut up = ServerConnection::new(pki.server.clone()).unwrap();
        let mut up_got = Vec::new();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert_eq!(
            p.conn.poll_close(),
            Some(CloseReason::UpstreamTlsFailed(HandshakeFailure::UnknownCa))
        );
        assert!(p.client_closed, "the client got close_notify");
    }

    /// A fatal `internal_error` alert, as OpenSSL sends when it cannot resume.
    const ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

    #[test]
    fn refused_session_is_retried_once_and_the_client_bytes_wait_for_it() {
        let pki = pki();
        let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
        p.conn.allow_upstream_tls_retry();
        p.client.writer().write_all(b"early bytes").unwrap();
        p.run();
        assert!(
            p.upstream_got.starts_with(&[0x16]),
            "a ClientHello went out"
        );
        assert!(
            !p.upstream_got.windows(11).any(|w| w == b"early bytes"),
            "no client byte before the upstream handshake is done"
        );
        p.conn.handle_upstream_data(ALERT, p.now);
        assert_eq!(
            p.conn.poll_upstream_tls_retry(),
            Some(HandshakeFailure::PeerAlert)
        );
        assert_eq!(p.conn.poll_upstream_tls_retry(), None, "asked once");
        assert_eq!(p.conn.phase(), Phase::Connecting);
        assert!(p.conn.upstream_tls_retried());
        assert_eq!(p.conn.poll_close(), None);
        assert_eq!(
            p.conn.poll_upstream_send(),
            None,
            "nothing for the old socket"
        );
        // Leftovers of the old socket change nothing.
        p.conn.handle_upstream_data(b"stale", p.now);
        p.conn.handle_upstream_eof(p.now);
        p.conn.handle_upstream_error();
        p.client.writer().write_all(b", more").unwrap();
        p.run();
        assert!(!p.client_closed && p.conn.poll_close().is_none());

        // The new connection: a handshake, then the client's bytes, all of them.
        p.upstream_got.clear();
        let tls = ClientConnection::new(pki.client.clone(), "localhost".try_into().unwrap());
        p.conn
            .handle_upstream_connected(p.now, Vec::new(), Some(tls.unwrap()));
        p.conn.allow_upstream_tls_retry(); // no second retry
        let mut up = ServerConnection::new(pki.server.clone()).unwrap();
        let mut up_got = Vec::new();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert_eq!(up_got, b"early bytes, more");
        assert!(p.conn.upstream_handshake_kind().is_some(), "handshake done");
        up.writer().write_all(b"answer").unwrap();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert_eq!(p.client_got, b"answer");
        assert!(p.conn.poll_close().is_none());
    }

    #[test]
    fn upstream_failure_is_not_retried_twice_or_after_client_bytes_went_up() {
        let pki = pki();
        // Second failure of a retried connection: the client is failed.
        let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
        p.conn.allow_upstream_tls_retry();
        p.run();
        p.conn.handle_upstream_data(ALERT, p.now);
        assert!(p.conn.poll_upstream_tls_retry().is_some());
        let tls = ClientConnection::new(pki.client.clone(), "localhost".try_into().unwrap());
        p.conn
            .handle_upstream_connected(p.now, Vec::new(), Some(tls.unwrap()));
        p.conn.allow_upstream_tls_retry();
        p.run();
        p.conn.handle_upstream_data(ALERT, p.now);
        assert_eq!(p.conn.poll_upstream_tls_retry(), None);
        p.run();
        assert_eq!(
            p.conn.poll_close(),
            Some(CloseReason::UpstreamTlsFailed(HandshakeFailure::PeerAlert))
        );

        // An idle leg the upstream closes after the handshake: not a refused session.
        let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
        p.conn.allow_upstream_tls_retry();
        let mut up = ServerConnection::new(pki.server.clone()).unwrap();
        settle_upstream(&mut p, &mut up, &mut Vec::new());
        assert!(p.conn.upstream_handshake_kind().is_some());
        p.conn.handle_upstream_eof(p.now);
        assert_eq!(p.conn.poll_upstream_tls_retry(), None);
        p.run();
        assert!(p.client_closed, "the upstream's end reaches the client");

        // Bytes crossed: a later failure is the client's too.
        let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
        p.conn.allow_upstream_tls_retry();
        let mut up = ServerConnection::new(pki.server.clone()).unwrap();
        let mut up_got = Vec::new();
        p.client.writer().write_all(b"sent").unwrap();
        settle_upstream(&mut p, &mut up, &mut up_got);
        assert_eq!(up_got, b"sent");
        p.conn.handle_upstream_data(ALERT, p.now);
        assert_eq!(p.conn.poll_upstream_tls_retry(), None);
        assert!(matches!(
            p.conn.poll_close(),
            None | Some(CloseReason::UpstreamTlsFailed(_))
        ));
        p.run();
        assert!(matches!(
            p.conn.poll_close(),
            Some(CloseReason::UpstreamTlsFailed(_))
        ));
    }

    #[test]
    fn upstream_reset_closes_at_once() {
        let pki = pki();
        let mut p = Pair::new(&pki);
        p.run();
        p.conn.handle_upstream_error();
        assert_eq!(p.conn.poll_close(), Some(CloseReason::UpstreamReset));
        assert!(!p.conn.wants_client_recv());
    }
}
