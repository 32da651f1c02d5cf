//! conn: the sans-IO state machine of one proxied connection.
//!
//! Inputs are `handle_*` calls (bytes received, a send finished, the upstream
//! connected, EOF, an error, the time), outputs are `poll_*`/`wants_*` queries
//! (bytes to send to either side, connect now, shut down a side, stop or resume
//! receiving, close). It never sees a file descriptor or reads the clock, so the
//! whole proxy logic — TLS, half-close, backpressure, timeouts — is unit-tested with
//! an in-memory rustls client (see the tests below) and any driver can run it.
//!
//! Send buffers are handed to the driver by value ([`Conn::poll_send`]) and come back
//! with [`Conn::handle_sent`], so the driver's I/O layer owns them while the kernel does.
//!
//! Owns [`Conn`] (phases, deadlines, close decisions, the upstream TLS retry) over two
//! `leg::Leg`s of one type, one per side: every per-side rule (send queue, EOF,
//! close_notify, shutdown, budgets) lives there once. `chunks` holds the send
//! queue, `close` the close and failure vocabulary.
//!
//! I/O contract: none; no clock (`now` is an input).
#![forbid(unsafe_code)]

mod chunks;
mod close;
mod h2;
mod leg;
mod session;
#[cfg(test)]
mod tests;

pub use self::h2::Redial;
pub use close::{CloseReason, Expired, HandshakeFailure};
pub use leg::Side;

use leg::Leg;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use session::Session;
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

pub struct Conn {
    phase: Phase,
    limits: ConnLimits,
    started: Instant,
    last_activity: Instant,
    connect_started: Instant,
    handshake_done: Option<Instant>,
    want_connect: bool,

    /// The client's side: TLS server session, client plaintext for the upstream,
    /// bytes for the client socket.
    client: Leg,
    /// The upstream's side: TLS client session once connected (re-encryption) or
    /// none, upstream plaintext for the client (sealed into records at the next poll
    /// so a turn's worth of bytes becomes as few records as possible), bytes for the
    /// upstream socket (preamble first).
    upstream: Leg,

    /// Close at once.
    close: Option<CloseReason>,
    /// Close once the client's queue (an alert, a close_notify) has been sent.
    close_after_flush: Option<CloseReason>,

    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// The client certificate the verifier refused, when that failed the handshake.
    rejected: Option<Box<crate::tls::RejectedClient>>,
    /// Where the verifier of this connection's config leaves a refused client.
    rejects: Option<crate::tls::RejectSink>,
    /// Retrying the upstream leg after a refused TLS session.
    up_retry: UpRetry,
    /// An `http` listener's request filter (None: bytes pass as they are).
    http: Option<Box<HttpConn>>,
    /// The server name the client asked for (SNI), once its hello was read.
    server_name: Option<Box<str>>,
    /// What a candidate-aware verifier recorded during this handshake
    /// (`tls::candidate`), until the driver turns it into `auth`.
    auth_record: Option<Box<crate::tls::candidate::AuthRecord>>,
    /// Both client-auth verdicts, on a listener with a candidate or anonymous policy.
    auth: Option<Box<crate::tls::candidate::AuthOutcome>>,
}

/// The HTTP side of a connection on an `http` listener.
struct HttpConn {
    filter: crate::proxy::http::RequestFilter,
    /// Rewritten client bytes not sealed for the upstream yet.
    out: Vec<u8>,
    /// When the request head now being read began (the head timer).
    head_since: Option<Instant>,
    /// Rules and limits, until the caller is known ([`Conn::set_http_client`]
    /// then gives the filter its gate).
    policy: Option<HttpPolicy>,
    /// HTTP/2 (an `upstream_protocol = "h2"` listener), from the handshake's end.
    h2: Option<Box<crate::proxy::h2::H2Proxy>>,
}

/// A listener's per-request policy and its callers' shared limit state.
pub type HttpPolicy = (
    std::sync::Arc<crate::proxy::authz::gate::Policy>,
    std::sync::Arc<crate::proxy::authz::limits::CallerLimits>,
);

/// The one retry of an upstream TLS handshake that offered a session to resume
/// ([`Conn::allow_upstream_tls_retry`]). Whether client bytes (or its close_notify)
/// went into the upstream TLS, which makes a retry too late, is the upstream leg's
/// `committed`.
#[derive(Debug, Default, Clone, Copy)]
struct UpRetry {
    /// This handshake offered a session: an early failure may be retried.
    allowed: bool,
    /// A new upstream connection the driver has not polled yet, and why.
    pending: Option<Redial>,
    /// The retry was used (the upstream leg now makes full handshakes only).
    used: bool,
}

impl Conn {
    pub fn new(tls: UnbufferedServerConnection, limits: ConnLimits, now: Instant) -> Self {
        Conn {
            phase: Phase::Handshaking,
            limits,
            started: now,
            last_activity: now,
            connect_started: now,
            handshake_done: None,
            want_connect: false,
            client: Leg::new(Some(Session::server(tls))),
            upstream: Leg::default(),
            close: None,
            close_after_flush: None,
            bytes_client_to_upstream: 0,
            bytes_upstream_to_client: 0,
            rejected: None,
            rejects: None,
            up_retry: UpRetry::default(),
            http: None,
            server_name: None,
            auth_record: None,
            auth: None,
        }
    }

    /// Treat the client's bytes as HTTP/1.1 requests (an `http` listener): heads are
    /// rewritten (see [`crate::proxy::http`]), refusals answered with a status.
    pub fn with_http(mut self, settings: crate::proxy::http::HttpSettings) -> Self {
        self.http = Some(Box::new(HttpConn {
            filter: crate::proxy::http::RequestFilter::new(settings),
            out: Vec::new(),
            head_since: None,
            policy: None,
            h2: None,
        }));
        self
    }

    /// Decide each request by the listener's rules and limits (after
    /// [`Conn::with_http`]): denied and limited requests are answered here, in their
    /// place among the upstream's responses.
    pub fn with_http_policy(mut self, policy: HttpPolicy) -> Self {
        if let Some(h) = self.http.as_deref_mut() {
            h.policy = Some(policy);
        }
        self
    }

    /// What the rules and limits decided since the last call (none without them).
    pub fn drain_http_events(
        &mut self,
    ) -> Option<std::vec::Drain<'_, crate::proxy::authz::gate::GateEvent>> {
        let g = self.http.as_deref_mut()?.filter.gate_mut()?;
        g.has_events().then(|| g.drain_events())
    }

    fn gate_mut(&mut self) -> Option<&mut crate::proxy::authz::gate::RequestGate> {
        self.http.as_deref_mut()?.filter.gate_mut()
    }

    /// Once the handshake is done: the client's address for `X-Forwarded-For`; the
    /// server name and verified certificate come from the TLS session.
    pub fn set_http_client(&mut self, client: Option<std::net::SocketAddr>) {
        let tls = match self.client.tls.as_deref() {
            Some(s) => s.common(),
            None => return,
        };
        let verified = self.auth.as_ref().is_none_or(|a| a.verified);
        if let Some(h) = self.http.as_deref_mut() {
            if h.h2.is_some() {
                // Set once: a new upstream connection (redial) keeps the client's.
                return;
            }
            let s = h.filter.settings();
            let alpn_h2 = tls.alpn_protocol() == Some(&b"h2"[..]);
            if let Some(h2) = s.h2.filter(|_| s.upstream_h2 || alpn_h2) {
                let pipe = self.limits.max_buffered.min(crate::proxy::h2::PIPE_LIMIT);
                let kind = if s.upstream_h2 {
                    crate::proxy::h2::UpstreamKind::H2
                } else {
                    crate::proxy::h2::UpstreamKind::Http1
                };
                h.h2 = Some(Box::new(crate::proxy::h2::H2Proxy::new(&h2, pipe, kind)));
            }
            let chain = tls.peer_certificates().filter(|_| verified);
            h.filter
                .set_connection(client, self.server_name.as_deref(), chain);
            if let Some((policy, limits)) = h.policy.take() {
                // A certificate is here only when the enforced policy verified it.
                let caller = chain
                    .and_then(|c| c.first())
                    .and_then(|leaf| crate::tls::identity::PeerIdentity::from_der(leaf).ok());
                h.filter
                    .set_gate(crate::proxy::authz::gate::RequestGate::new(
                        policy,
                        limits,
                        caller,
                        client.map(|c| c.ip()),
                        self.last_activity,
                    ));
            }
        }
    }

    /// What the client-auth verifier recorded during the handshake (taken once).
    pub fn take_auth_record(&mut self) -> Option<crate::tls::candidate::AuthRecord> {
        self.auth_record.take().map(|b| *b)
    }

    /// Both client-auth verdicts, as the driver derived them at the handshake's end.
    pub fn set_auth(&mut self, outcome: crate::tls::candidate::AuthOutcome) {
        self.auth = Some(Box::new(outcome));
    }

    /// Both client-auth verdicts (None: a listener without a candidate or anonymous
    /// policy, or before the handshake ended).
    pub fn auth(&self) -> Option<&crate::tls::candidate::AuthOutcome> {
        self.auth.as_deref()
    }

    /// The client's chain if the enforced policy verified it: what may be forwarded
    /// as its identity. Without a candidate or anonymous policy, any chain rustls
    /// kept (it keeps only verified ones).
    pub fn verified_peer_certificates(
        &self,
    ) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        let verified = self.auth.as_ref().is_none_or(|a| a.verified);
        self.tls().peer_certificates().filter(|_| verified)
    }

    /// Move the client's plaintext through the request filter (an input step, so that
    /// a refusal's response is queued before the driver polls the client's sends);
    /// only once the upstream is connected: until then the bytes wait as they came.
    fn run_http(&mut self, now: Instant) {
        if self.phase != Phase::Streaming || self.closing() || self.run_h2(now) {
            return;
        }
        let Some(h) = self.http.as_deref_mut() else {
            return;
        };
        if let Some(g) = h.filter.gate_mut() {
            g.set_now(now);
        }
        if let Err(refused) = h.filter.feed(&mut self.client.plain_in, &mut h.out) {
            self.respond_and_close(refused.status, CloseReason::HttpRejected(refused.status));
            return;
        }
        if h.filter.in_head() {
            h.head_since.get_or_insert(now);
        } else {
            h.head_since = None;
        }
    }

    /// Answer the client with a bodiless `status` response, then close_notify; what
    /// the upstream sent and the client did not get yet is dropped (it would follow
    /// our response).
    fn respond_and_close(&mut self, status: u16, reason: CloseReason) {
        self.upstream.plain_in = Vec::new();
        if self.speaks_h2() {
            // An HTTP/2 client reads no HTTP/1.1 status: close_notify only.
            self.client.send_close_notify();
            self.close_after_flush.get_or_insert(reason);
            return;
        }
        if let Some(g) = self.gate_mut() {
            g.to_client = Vec::new();
        }
        let mut resp = crate::proxy::http::status_response(status);
        self.client.seal(&mut resp, false);
        self.client.send_close_notify();
        self.close_after_flush.get_or_insert(reason);
    }

    /// Refuse the connection after its handshake, before any client byte reaches
    /// an upstream: an HTTP listener answers (`429` for a per-caller limit, else
    /// `502`) then closes, a TCP listener sends close_notify and closes (rustls can
    /// send no other alert once the handshake is done).
    pub fn refuse(&mut self, reason: CloseReason) {
        self.want_connect = false;
        if self.http.is_some() {
            let status = if reason == CloseReason::Limited {
                429
            } else {
                502
            };
            self.respond_and_close(status, reason);
            return;
        }
        self.client.send_close_notify();
        self.close_after_flush.get_or_insert(reason);
    }

    /// Where the verifier of the config `tls` was made from leaves a client it
    /// refuses ([`crate::tls::ServerTls::config_for`]): read when the handshake
    /// fails, for [`Conn::rejected_client`].
    pub fn with_reject_sink(mut self, sink: crate::tls::RejectSink) -> Self {
        self.rejects = Some(sink);
        self
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The client's TLS session (protocol, suite, ALPN, peer certificates).
    pub fn tls(&self) -> &rustls::CommonState {
        match self.client.tls.as_deref() {
            Some(s) => s.common(),
            None => unreachable!("the client leg is always a TLS server session"),
        }
    }

    /// The server name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time from accept to handshake completion, once done.
    pub fn handshake_duration(&self) -> Option<Duration> {
        self.handshake_done.map(|t| t - self.started)
    }

    fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::Client => &self.client,
            Side::Upstream => &self.upstream,
        }
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

    /// Bytes arrived from `side`, in the driver's receive buffer: TLS is decrypted
    /// there, in place (the buffer's contents are garbage afterwards).
    pub fn handle_data(&mut self, side: Side, data: &mut [u8], now: Instant) {
        match side {
            Side::Client => self.client_data(data, now),
            Side::Upstream => self.upstream_data(data, now),
        }
    }

    fn client_data(&mut self, data: &mut [u8], now: Instant) {
        if self.closing() || self.client.read_closed {
            return;
        }
        self.last_activity = now;
        // Spare capacity counts against the direction's bound like the bytes do.
        let limit = self.staging_limit().saturating_sub(self.upstream.queued());
        let hello = self.phase == Phase::Handshaking && self.server_name.is_none();
        let handshaking = self.phase == Phase::Handshaking;
        if hello {
            // Only what this connection's hello leaves counts (see below).
            crate::tls::take_seen_server_name();
        }
        if handshaking {
            // Likewise the client-auth record (`tls::candidate`): only this call's.
            crate::tls::candidate::take_auth_record();
        }
        let fed = self
            .client
            .receive(data, limit, &mut self.bytes_client_to_upstream);
        if hello {
            // rustls' unbuffered server session does not expose the SNI; the
            // certificate resolver saw it while this receive ran, on this thread.
            self.server_name = crate::tls::take_seen_server_name();
        }
        if handshaking {
            if let Some(r) = crate::tls::candidate::take_auth_record() {
                self.auth_record = Some(Box::new(r));
            }
        }
        if let Err(e) = fed {
            self.fail_tls(&e);
            return;
        }
        if self.phase == Phase::Handshaking && !self.client.handshaking() {
            self.phase = Phase::Connecting;
            self.handshake_done = Some(now);
            self.want_connect = true;
            self.connect_started = now;
        }
        // What rustls had to send (handshake flight, alert) is in the queue already:
        // receiving runs the session until it waits for bytes.
        self.run_http(now);
    }

    /// `side`'s TCP stream ended (FIN).
    pub fn handle_eof(&mut self, side: Side, now: Instant) {
        match side {
            Side::Client => self.client_eof(now),
            Side::Upstream => self.upstream_eof(now),
        }
    }

    /// `side`'s socket failed (reset, broken pipe...).
    pub fn handle_error(&mut self, side: Side) {
        match side {
            Side::Client => self.client_error(),
            Side::Upstream => self.upstream_error(),
        }
    }

    /// The client's TCP stream ended (FIN).
    fn client_eof(&mut self, now: Instant) {
        self.last_activity = now;
        self.client.read_closed = true;
        if self.phase == Phase::Streaming && !self.closing() {
            self.run_h2(now);
        }
        // A refusal already queued its alert: a FIN in the same read must not cut
        // it off (the client half-closed; it can still read the alert).
        if self.phase == Phase::Handshaking && self.close_after_flush.is_none() {
            self.close
                .get_or_insert(CloseReason::HandshakeFailed(HandshakeFailure::PeerClosed));
        }
    }

    /// The client socket failed (reset, broken pipe...).
    fn client_error(&mut self) {
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
        tls: Option<UnbufferedClientConnection>,
    ) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Streaming;
            self.last_activity = now;
            debug_assert!(self.upstream.out.is_empty());
            self.upstream.out.push(preamble);
            self.upstream.tls = tls.map(|t| Box::new(Session::client(t)));
            self.upstream.pump();
            self.h2_redialled();
            self.run_http(now);
        }
    }

    /// No upstream could be reached.
    pub fn handle_upstream_unavailable(&mut self) {
        if self.h2_unavailable() {
            return;
        }
        if self.http.is_some() {
            self.respond_and_close(502, CloseReason::UpstreamUnavailable);
            return;
        }
        self.client.send_close_notify();
        self.close_after_flush
            .get_or_insert(CloseReason::UpstreamUnavailable);
    }

    fn upstream_data(&mut self, data: &mut [u8], now: Instant) {
        // Not Streaming: what is left of an upstream leg being retried.
        if self.closing() || self.phase != Phase::Streaming {
            return;
        }
        self.last_activity = now;
        let limit = self.staging_limit().saturating_sub(self.client.queued());
        let fed = self
            .upstream
            .receive(data, limit, &mut self.bytes_upstream_to_client);
        if let Err(e) = fed {
            let reason = HandshakeFailure::classify(&e);
            if !self.retry_upstream_tls(reason) {
                self.fail_upstream_tls(reason);
            }
            return;
        }
        if self.run_h2(now) {
            return;
        }
        // Rules or limits: the responses are followed so that local answers go in
        // their places. A stream that cannot be followed cannot be answered into.
        let plain = &mut self.upstream.plain_in;
        if let Some(g) = self.http.as_deref_mut().and_then(|h| h.filter.gate_mut()) {
            if g.upstream(plain).is_err() {
                self.close.get_or_insert(CloseReason::UpstreamReset);
            }
        }
    }

    /// The upstream's TLS failed (verification, protocol): tell the client with
    /// close_notify and close; the reason is the upstream's.
    fn fail_upstream_tls(&mut self, reason: HandshakeFailure) {
        self.client.send_close_notify();
        self.close_after_flush
            .get_or_insert(CloseReason::UpstreamTlsFailed(reason));
    }

    /// The upstream's stream ended (FIN): close_notify goes to the client after the
    /// bytes already received.
    fn upstream_eof(&mut self, now: Instant) {
        if self.phase != Phase::Streaming || self.retry_upstream_tls(HandshakeFailure::PeerClosed) {
            return;
        }
        self.last_activity = now;
        self.upstream.read_closed = true;
        self.run_h2(now);
    }

    fn upstream_error(&mut self) {
        if self.phase != Phase::Streaming || self.retry_upstream_tls(HandshakeFailure::PeerClosed) {
            return;
        }
        if self.h2_upstream_lost() {
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
        match self.up_retry.pending {
            Some(Redial::TlsRetry(r)) => {
                self.up_retry.pending = None;
                Some(r)
            }
            _ => None,
        }
    }

    /// Whether the upstream leg was retried (its handshakes must not offer a session).
    pub fn upstream_tls_retried(&self) -> bool {
        self.up_retry.used
    }

    /// How the upstream leg's TLS handshake went (full or resumed), once done.
    pub fn upstream_handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        let t = self.upstream.tls.as_ref().filter(|t| !t.is_handshaking())?;
        t.common().handshake_kind()
    }

    /// Turn an early upstream TLS failure into a retry, if allowed (see
    /// [`Conn::allow_upstream_tls_retry`]); false: fail as usual.
    fn retry_upstream_tls(&mut self, reason: HandshakeFailure) -> bool {
        let r = &mut self.up_retry;
        // A refused session fails the handshake; a failure after it (an idle leg the
        // upstream closes, say) is not the session's.
        let up = &self.upstream;
        if !r.allowed || up.committed || !up.handshaking() || self.bytes_upstream_to_client > 0 {
            return false;
        }
        *r = UpRetry {
            pending: Some(Redial::TlsRetry(reason)),
            used: true,
            ..UpRetry::default()
        };
        // A fresh leg; nothing of the old one's reached the client (checked above).
        self.upstream = Leg::default();
        self.phase = Phase::Connecting;
        true
    }

    /// A send to `side` finished completely. The buffer is dropped, not kept for
    /// reuse: an idle connection then holds no send memory (the allocator recycles it).
    pub fn handle_sent(&mut self, side: Side, buf: Vec<u8>, now: Instant) {
        match side {
            Side::Client => self.client.handle_sent(buf),
            Side::Upstream => self.upstream.handle_sent(buf),
        }
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
                let head = self
                    .http
                    .as_ref()
                    .and_then(|h| h.head_since.zip(Some(h.filter.settings().head_timeout)));
                if let Some((since, limit)) = head.filter(|_| self.close_after_flush.is_none()) {
                    if now >= since + limit {
                        // A request head too slow (slowloris): 408, then close.
                        if let Some(h) = self.http.as_deref_mut() {
                            h.head_since = None;
                        }
                        self.respond_and_close(408, CloseReason::HttpRejected(408));
                        return Expired::Close;
                    }
                }
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
            Phase::Streaming => {
                let idle = self.last_activity + self.limits.idle_timeout;
                match self
                    .http
                    .as_ref()
                    .and_then(|h| Some(h.head_since? + h.filter.settings().head_timeout))
                {
                    Some(head) if self.close_after_flush.is_none() => idle.min(head),
                    _ => idle,
                }
            }
        }
    }

    /// Start connecting the upstream (true once, after the handshake).
    pub fn poll_connect(&mut self) -> bool {
        std::mem::take(&mut self.want_connect) && !self.closing()
    }

    /// Bytes to send to `side`, if none are in flight (and, for the upstream, once
    /// connected).
    pub fn poll_send(&mut self, side: Side) -> Option<Vec<u8>> {
        match side {
            Side::Client => self.client_send(),
            Side::Upstream => self.upstream_send(),
        }
    }

    /// Bytes to send to the client, if none are in flight. Seals the upstream
    /// plaintext gathered since the last call into records first.
    fn client_send(&mut self) -> Option<Vec<u8>> {
        if self.close.is_some() {
            return None;
        }
        if self.seal_h2(Side::Client) {
            return self.client.poll_send();
        }
        let done = self.upstream.read_closed;
        if let Some(g) = self.http.as_deref_mut().and_then(|h| h.filter.gate_mut()) {
            if done {
                g.upstream_closed();
            }
            self.client.seal(&mut g.to_client, done);
            return self.client.poll_send();
        }
        self.client.seal(&mut self.upstream.plain_in, done);
        self.client.poll_send()
    }

    /// Bytes to send to the upstream, if connected and none are in flight. Moves
    /// (or, for a TLS upstream, seals) the client plaintext gathered so far first.
    fn upstream_send(&mut self) -> Option<Vec<u8>> {
        if self.phase != Phase::Streaming || self.closing() {
            return None;
        }
        if self.seal_h2(Side::Upstream) {
            return self.upstream.poll_send();
        }
        if let Some(h) = self.http.as_deref_mut() {
            self.upstream.seal(&mut h.out, self.client.read_closed);
            return self.upstream.poll_send();
        }
        self.upstream
            .seal(&mut self.client.plain_in, self.client.read_closed);
        self.upstream.poll_send()
    }

    /// Bytes held for the traffic towards `side`: the other side's plaintext waiting,
    /// bytes queued for `side`'s socket or in flight to it.
    pub fn buffered_to(&self, side: Side) -> usize {
        let http = match (side, self.http.as_deref()) {
            (Side::Upstream, Some(h)) => h.out.len() + h.filter.held(),
            (Side::Client, Some(h)) => h.filter.gate().map_or(0, |g| g.held()),
            _ => 0,
        };
        self.leg(side.other()).plain_in.len() + self.leg(side).queued() + http + self.h2_held(side)
    }

    /// Whether the driver should have a receive armed on `side`'s socket.
    pub fn wants_recv(&self, side: Side) -> bool {
        self.recv_budget(side) > 0
    }

    /// How many bytes the next receive from `side` may take: what is left of
    /// `max_buffered` in the direction away from it (0: do not receive). The driver
    /// must never receive more, so a slow peer pins at most `max_buffered` here.
    pub fn recv_budget(&self, side: Side) -> usize {
        let open = match side {
            Side::Client => true,
            Side::Upstream => self.phase == Phase::Streaming,
        };
        if !open || self.closing() || self.leg(side).read_closed {
            return 0;
        }
        let mut held = self.buffered_to(side.other());
        // With rules or limits terminus answers requests itself (403/429): a client
        // that pipelines such requests and never reads the answers would grow them
        // without bound, so its requests wait while what is owed to it is full.
        let gated = self
            .http
            .as_deref()
            .is_some_and(|h| h.filter.gate().is_some());
        // HTTP/2 answers each side's frames to that side itself (SETTINGS acks,
        // pongs, resets, refusals): likewise, in both directions.
        if (side == Side::Client && gated) || self.http.as_deref().is_some_and(|h| h.h2.is_some()) {
            held = held.max(self.buffered_to(side));
        }
        self.limits.max_buffered.saturating_sub(held)
    }

    /// Shut down `side`'s write side (true once).
    pub fn poll_shutdown(&mut self, side: Side) -> bool {
        match side {
            Side::Client => self.client_shutdown(),
            Side::Upstream => self.upstream_shutdown(),
        }
    }

    /// Shut down the upstream's write side (true once): the client finished
    /// sending and everything it sent has been delivered (after close_notify, for a
    /// TLS upstream).
    fn upstream_shutdown(&mut self) -> bool {
        let ready = self.phase == Phase::Streaming
            && self.client.read_closed
            && self.client.plain_in.is_empty()
            && self.http.as_ref().is_none_or(|h| h.out.is_empty())
            && self.h2_held(Side::Upstream) == 0
            && !self.closing();
        self.upstream.poll_shutdown(ready)
    }

    /// Shut down the client's TCP write side (true once), after close_notify went out.
    fn client_shutdown(&mut self) -> bool {
        let ready = self.close.is_none();
        self.client.poll_shutdown(ready)
    }

    /// Whether the connection is over, and why. The driver then cancels what is
    /// in flight, waits for it, and closes both sockets.
    pub fn poll_close(&self) -> Option<CloseReason> {
        if let Some(r) = self.close {
            return Some(r);
        }
        if let Some(r) = self.close_after_flush {
            if self.client.queued() == 0 {
                return Some(r);
            }
            return None;
        }
        if self.upstream.shut && self.client.shut {
            return Some(CloseReason::Done);
        }
        None
    }

    // ---- internals ----------------------------------------------------------

    /// Who presented the certificate that failed the handshake, if one did.
    pub fn rejected_client(&self) -> Option<&crate::tls::RejectedClient> {
        self.rejected.as_deref()
    }

    fn fail_tls(&mut self, e: &rustls::Error) {
        // The verifier ran inside the process_tls_records call that just failed.
        self.rejected = self.rejects.as_ref().and_then(|s| s.take()).map(Box::new);
        // rustls' alert describing the failure is queued already (the session is
        // drained before an error is returned); it goes out before the close.
        let reason = if self.phase == Phase::Handshaking {
            CloseReason::HandshakeFailed(HandshakeFailure::classify(e))
        } else {
            CloseReason::ClientProtocolError
        };
        self.close_after_flush.get_or_insert(reason);
    }
}
