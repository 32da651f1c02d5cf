//! sim: one `Conn` driven the way a worker drives it (runtime/worker.rs: `admit`,
//! `handshake_done`, `upstream_connected`, `retry_upstream`, `flush`), with the
//! sockets replaced by byte vectors. It feeds a side only while the Conn asks for
//! input and at most its receive budget, hands every send buffer back, and checks
//! what any driver relies on: a close reason, once given, stays; a closed
//! connection asks for no more input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::proxy::conn::{CloseReason, Conn, Side};
use terminus::proxy::proxy_v2;
use terminus::runtime::listener::ListenerLive;
use terminus::tls::RejectSink;

/// The client's address as the Conn is told (`X-Forwarded-For`, PROXY v2).
pub const CLIENT: &str = "192.0.2.7:40000";
const LISTENER: &str = "198.51.100.1:443";
const UPSTREAM: &str = "127.0.0.1:9";

pub struct Sim {
    pub conn: Conn,
    live: Arc<ListenerLive>,
    sink: RejectSink,
    pub now: Instant,
    /// The upstream socket is "connected".
    pub connected: bool,
    /// Connects so far (a TLS retry reconnects).
    pub connects: usize,
    /// Everything the Conn sent to the client, and to the upstream (each connect's
    /// bytes appended; `upstream_starts` says where each began).
    pub to_client: Vec<u8>,
    pub to_upstream: Vec<u8>,
    pub upstream_starts: Vec<usize>,
    pub client_shut: bool,
    pub upstream_shut: bool,
    closed: Option<CloseReason>,
}

impl Sim {
    /// A new connection on `live`, as `Worker::admit` makes it.
    pub fn new(live: &Arc<ListenerLive>) -> Sim {
        let sink = RejectSink::default();
        let config = live.tls.config_for(&sink);
        let now = Instant::now();
        let tls = rustls::server::UnbufferedServerConnection::new(config).expect("server conn");
        let mut conn = Conn::new(tls, live.limits, now).with_reject_sink(sink.clone());
        if let Some(h) = live.http {
            conn = conn.with_http(h);
            if let Some(p) = &live.http_policy {
                let limits = Arc::new(terminus::proxy::authz::limits::CallerLimits::new(64));
                conn = conn.with_http_policy((p.clone(), limits));
            }
        }
        Sim {
            conn,
            live: live.clone(),
            sink,
            now,
            connected: false,
            connects: 0,
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            upstream_starts: Vec::new(),
            client_shut: false,
            upstream_shut: false,
            closed: None,
        }
    }

    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Offer `data` from `side`; returns how much the Conn took (it takes nothing
    /// while it does not want that side's input, and at most its budget per receive).
    pub fn recv(&mut self, side: Side, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() && self.wants(side) {
            let budget = self.conn.recv_budget(side).max(1);
            let n = budget.min(data.len() - used).min(65_536);
            let mut buf = data[used..used + n].to_vec();
            self.conn.handle_data(side, &mut buf, self.now);
            used += n;
            self.flush();
        }
        used
    }

    /// Whether the Conn reads `side` now (the upstream only once connected).
    pub fn wants(&self, side: Side) -> bool {
        self.closed.is_none()
            && self.conn.wants_recv(side)
            && (side == Side::Client || self.connected)
    }

    pub fn eof(&mut self, side: Side) {
        if self.closed.is_none() && (side == Side::Client || self.connected) {
            self.conn.handle_eof(side, self.now);
            self.flush();
        }
    }

    pub fn error(&mut self, side: Side) {
        if self.closed.is_none() && (side == Side::Client || self.connected) {
            self.conn.handle_error(side);
            self.flush();
        }
    }

    /// Let time pass and fire the deadline if it is due.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if self.closed.is_none() && self.now >= self.conn.deadline() {
            let _ = self.conn.handle_timeout(self.now);
        }
        self.flush();
    }

    /// A far-future timeout: whatever the Conn waits for, it must close now.
    pub fn finish(&mut self) {
        for _ in 0..4 {
            if self.closed.is_some() {
                break;
            }
            self.now += Duration::from_secs(3600);
            let _ = self.conn.handle_timeout(self.now);
            self.flush();
        }
        assert!(
            self.closed.is_some(),
            "no close reason after the driver's last-resort timeout (phase {:?})",
            self.conn.phase()
        );
    }

    /// One turn of the worker's `flush`: start the upstream once the handshake is
    /// done, retry a refused upstream TLS session, deliver sends, apply shutdowns,
    /// until nothing moves.
    pub fn flush(&mut self) {
        for _ in 0..1000 {
            let _ = self.conn.drain_http_events().map(Iterator::count);
            if let Some(r) = self.conn.poll_close() {
                self.close(r);
                return;
            }
            let mut moved = false;
            if self.conn.poll_connect() {
                self.handshake_done();
                self.connect();
                moved = true;
            }
            if self.conn.poll_upstream_tls_retry().is_some() {
                self.connected = false;
                self.connect();
                moved = true;
            }
            while let Some(b) = self.conn.poll_send(Side::Client) {
                self.to_client.extend_from_slice(&b);
                self.conn.handle_sent(Side::Client, b, self.now);
                moved = true;
            }
            if self.connected {
                while let Some(b) = self.conn.poll_send(Side::Upstream) {
                    self.to_upstream.extend_from_slice(&b);
                    self.conn.handle_sent(Side::Upstream, b, self.now);
                    moved = true;
                }
                if self.conn.poll_shutdown(Side::Upstream) {
                    self.upstream_shut = true;
                    moved = true;
                }
            }
            if self.conn.poll_shutdown(Side::Client) {
                self.client_shut = true;
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the connection kept moving for 1000 rounds without input");
    }

    fn close(&mut self, r: CloseReason) {
        if let Some(old) = self.closed {
            assert_eq!(old, r, "the close reason changed");
            return;
        }
        if let CloseReason::HandshakeFailed(f) = r {
            // What the worker's `handshake_failed` reads.
            let record = self.conn.take_auth_record();
            let _ = self.live.tls.failed_outcome(
                record,
                f == terminus::proxy::conn::HandshakeFailure::NoClientCert,
            );
            let _ = self.sink.take();
        }
        let _ = self.conn.rejected_client().map(|r| r.leaf.len());
        self.closed = Some(r);
        for side in [Side::Client, Side::Upstream] {
            assert!(
                !self.conn.wants_recv(side),
                "closed ({r:?}) but still wants {side:?} input"
            );
        }
    }

    fn handshake_done(&mut self) {
        if self.live.tls.has_dual_policy() {
            let record = self.conn.take_auth_record();
            let chain = self.conn.tls().peer_certificates();
            if let Some(outcome) = self.live.tls.completed_outcome(chain, record) {
                self.conn.set_auth(outcome);
            }
        }
    }

    /// `Worker::upstream_connected`: the PROXY v2 preamble, the client's address for
    /// an http listener, the upstream TLS session.
    fn connect(&mut self) {
        self.conn.handle_connect_started(self.now);
        self.connected = true;
        self.connects += 1;
        self.upstream_starts.push(self.to_upstream.len());
        let client: SocketAddr = CLIENT.parse().unwrap();
        let upstream: SocketAddr = UPSTREAM.parse().unwrap();
        let preamble = if self.live.proxy_v2 {
            let sni = self.conn.server_name();
            let served = &self.live.tls.certs.choose(sni).algorithms;
            let peer = self.conn.verified_peer_certificates();
            let h = proxy_v2::Header::for_client(
                self.conn.tls(),
                peer,
                sni,
                served,
                client,
                LISTENER.parse().unwrap(),
            );
            h.to_bytes()
        } else {
            Vec::new()
        };
        if self.live.http.is_some() {
            self.conn.set_http_client(Some(client));
        }
        let retried = self.conn.upstream_tls_retried();
        let tls = self.live.upstream_tls.as_ref();
        let tls = tls.and_then(|up| up.connect(upstream, retried));
        let offered = tls.as_ref().is_some_and(|t| t.1);
        self.conn
            .handle_upstream_connected(self.now, preamble, tls.map(|t| t.0));
        if offered {
            self.conn.allow_upstream_tls_retry();
        }
    }
}
