use super::*;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    roots: RootCertStore,
}

/// A server config for "localhost" and a client trusting it, from the project's
/// test PKI. Each call makes a new CA with its own name, so another call's
/// certificate is an unknown issuer, not a same-named issuer with a bad signature.
fn pki() -> Pki {
    use terminus_testkit::certs::{LeafSpec, TestCa};
    crate::tls::install_provider();
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ca = TestCa::root(&format!("conn test CA {n}")).unwrap();
    let leaf = ca.leaf(&LeafSpec::server(&["localhost"])).unwrap();
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
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

/// A connection that has seen nothing yet, with the test limits.
fn fresh_conn(pki: &Pki, now: Instant) -> Conn {
    Conn::new(
        UnbufferedServerConnection::new(pki.server.clone()).unwrap(),
        limits(),
        now,
    )
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
                UnbufferedServerConnection::new(pki.server.clone()).unwrap(),
                limits(),
                now,
            ),
            now,
            upstream_got: Vec::new(),
            client_got: Vec::new(),
            client_closed: false,
        }
    }

    /// A pair with the handshake done and the upstream connected.
    fn established() -> Self {
        let mut p = Pair::new(&pki());
        p.run();
        p
    }

    /// The upstream's plaintext reaches the Conn.
    fn upstream_sends(&mut self, bytes: &[u8]) {
        self.conn
            .handle_data(Side::Upstream, &mut bytes.to_vec(), self.now);
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

    /// A send the Conn handed out for the client arrives there whole.
    fn client_receives(&mut self, b: Vec<u8>) {
        self.deliver(&b);
        self.conn.handle_sent(Side::Client, b, self.now);
    }

    /// Run the client handshake without connecting the upstream.
    fn handshake_only(&mut self) {
        for _ in 0..4 {
            let mut buf = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut buf).unwrap();
            }
            self.conn
                .handle_data(Side::Client, &mut buf.to_vec(), self.now);
            if let Some(b) = self.conn.poll_send(Side::Client) {
                self.client_receives(b);
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
                self.conn
                    .handle_data(Side::Client, &mut buf.to_vec(), self.now);
            }
            if self.conn.poll_connect() {
                self.conn
                    .handle_upstream_connected(self.now, Vec::new(), None);
                moved = true;
            }
            if let Some(b) = self.conn.poll_send(Side::Client) {
                moved = true;
                self.client_receives(b);
            }
            if let Some(b) = self.conn.poll_send(Side::Upstream) {
                moved = true;
                self.upstream_got.extend_from_slice(&b);
                self.conn.handle_sent(Side::Upstream, b, self.now);
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
    let mut p = Pair::established();
    assert!(!p.client.is_handshaking());
    assert_eq!(p.conn.phase(), Phase::Streaming);
    p.client.writer().write_all(b"hello upstream").unwrap();
    p.run();
    assert_eq!(p.upstream_got, b"hello upstream");
    p.upstream_sends(b"hello client");
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
    let mut p = Pair::established();
    p.client.writer().write_all(b"request").unwrap();
    p.client.send_close_notify();
    p.run();
    assert_eq!(p.upstream_got, b"request");
    assert!(
        p.conn.poll_shutdown(Side::Upstream),
        "upstream write side shut"
    );
    assert!(!p.conn.wants_recv(Side::Client));
    // The other direction still flows.
    assert!(p.conn.wants_recv(Side::Upstream));
    p.upstream_sends(b"response");
    p.run();
    assert_eq!(p.client_got, b"response");
    assert!(p.conn.poll_close().is_none());
    // Upstream finishes: close_notify to the client, then the connection ends.
    p.conn.handle_eof(Side::Upstream, p.now);
    p.run();
    assert!(p.client_closed, "client saw close_notify");
    assert!(p.conn.poll_shutdown(Side::Client));
    assert_eq!(p.conn.poll_close(), Some(CloseReason::Done));
}

#[test]
fn upstream_eof_sends_close_notify_but_client_may_keep_sending() {
    let mut p = Pair::established();
    p.upstream_sends(b"bye");
    p.conn.handle_eof(Side::Upstream, p.now);
    p.run();
    assert_eq!(p.client_got, b"bye");
    assert!(p.client_closed);
    assert!(p.conn.poll_shutdown(Side::Client));
    assert!(p.conn.poll_close().is_none(), "client->upstream still open");
    p.client.writer().write_all(b"late").unwrap();
    p.run();
    assert_eq!(p.upstream_got, b"late");
    p.conn.handle_eof(Side::Client, p.now);
    assert!(p.conn.poll_shutdown(Side::Upstream));
    assert_eq!(p.conn.poll_close(), Some(CloseReason::Done));
}

#[test]
fn slow_client_stops_upstream_reads_at_high_water_mark() {
    let mut p = Pair::established();
    let chunk = vec![7u8; 16 * 1024];
    let mut fed = 0;
    let mut stuck = None;
    while p.conn.wants_recv(Side::Upstream) {
        p.upstream_sends(&chunk);
        fed += chunk.len();
        // The client never reads: the first send stays in flight.
        if let Some(b) = p.conn.poll_send(Side::Client) {
            assert!(stuck.is_none(), "one send in flight at a time");
            stuck = Some(b);
        }
        assert!(fed < 1 << 20, "backpressure never engaged");
    }
    assert!(fed <= limits().max_buffered + chunk.len());
    // The client reads again: the stuck send completes and reading resumes.
    let b = stuck.unwrap();
    p.client_receives(b);
    p.run();
    assert!(p.conn.wants_recv(Side::Upstream));
    assert_eq!(p.client_got.len(), fed);
}

#[test]
fn garbage_fails_handshake_as_malformed_with_alert() {
    let pki = pki();
    let now = Instant::now();
    let mut c = fresh_conn(&pki, now);
    c.handle_data(
        Side::Client,
        &mut b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        now,
    );
    let alert = c.poll_send(Side::Client).expect("an alert is sent");
    assert_eq!(alert[0], 0x15, "TLS alert record");
    c.handle_sent(Side::Client, alert, now);
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
        let mut c = fresh_conn(&pki, now);
        // All of it lands in one turn, before the driver polls for output.
        c.handle_data(
            Side::Client,
            &mut b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            now,
        );
        c.handle_data(Side::Client, &mut after.to_vec(), now);
        c.handle_eof(Side::Client, now);
        assert_eq!(c.poll_close(), None, "the alert must go out first");
        assert!(!c.wants_recv(Side::Client));
        let alert = c.poll_send(Side::Client).expect("the alert is still sent");
        assert_eq!(alert[0], 0x15, "TLS alert record");
        c.handle_sent(Side::Client, alert, now);
        assert_eq!(
            c.poll_close(),
            Some(CloseReason::HandshakeFailed(HandshakeFailure::Malformed))
        );
    }
    // A reset is different: nothing can be sent any more.
    let now = Instant::now();
    let mut c = fresh_conn(&pki, now);
    c.handle_data(Side::Client, &mut b"GET / HTTP/1.1\r\n\r\n".to_vec(), now);
    c.handle_error(Side::Client);
    assert!(c.poll_close().is_some());
}

#[test]
fn receive_budgets_never_exceed_max_buffered() {
    let mut p = Pair::established();
    let max = limits().max_buffered;
    assert_eq!(p.conn.recv_budget(Side::Upstream), max);
    // The client never reads: feed exactly what the budget allows each time.
    let mut stuck = None;
    let mut fed = 0;
    while p.conn.recv_budget(Side::Upstream) > 0 {
        let n = p.conn.recv_budget(Side::Upstream).min(10_000);
        p.conn.handle_data(Side::Upstream, &mut vec![1u8; n], p.now);
        fed += n;
        if let Some(b) = p.conn.poll_send(Side::Client) {
            stuck.get_or_insert(b);
        }
        assert!(
            p.conn.buffered_to(Side::Client) <= max + 4096,
            "TLS overhead only"
        );
    }
    assert!(fed <= max && fed > max - 4096, "fed {fed} of {max}");
    // Upload side: independent budget.
    assert_eq!(p.conn.recv_budget(Side::Client), max);
    let b = stuck.unwrap();
    p.client_receives(b);
    p.run();
    assert!(
        p.conn.recv_budget(Side::Upstream) > 0,
        "reading resumes once sent"
    );
    assert_eq!(p.client_got.len(), fed);
}

#[test]
fn silent_client_times_out_in_handshake() {
    let pki = pki();
    let now = Instant::now();
    let mut c = fresh_conn(&pki, now);
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
    let b = p.conn.poll_send(Side::Client).expect("close_notify");
    let mut s = &b[..];
    p.client.read_tls(&mut s).unwrap();
    let st = p.client.process_new_packets().unwrap();
    assert!(st.peer_has_closed());
    p.conn.handle_sent(Side::Client, b, p.now);
    assert_eq!(p.conn.poll_close(), Some(CloseReason::UpstreamUnavailable));
}

/// Drive the upstream leg against an in-memory rustls server ("the upstream").
fn settle_upstream(p: &mut Pair, up: &mut rustls::ServerConnection, up_got: &mut Vec<u8>) {
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
            p.upstream_sends(&out);
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
    let tls = up_client
        .map(|c| UnbufferedClientConnection::new(c, "localhost".try_into().unwrap()).unwrap());
    p.conn
        .handle_upstream_connected(p.now, preamble.to_vec(), tls);
    p
}

#[test]
fn reencrypts_both_ways_after_the_preamble() {
    let pki = pki();
    let mut p = connected_pair(&pki, b"PREAMBLE", Some(pki.client.clone()));
    let first = p
        .conn
        .poll_send(Side::Upstream)
        .expect("preamble + ClientHello");
    assert!(first.starts_with(b"PREAMBLE"), "preamble goes first");
    assert_eq!(first[8], 0x16, "then a TLS handshake record");
    let mut up = rustls::ServerConnection::new(pki.server.clone()).unwrap();
    let mut s = &first[8..];
    while !s.is_empty() {
        up.read_tls(&mut s).unwrap();
    }
    up.process_new_packets().unwrap();
    p.conn.handle_sent(Side::Upstream, first, p.now);
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
    assert!(p.conn.poll_shutdown(Side::Upstream));
}

#[test]
fn upstream_that_fails_verification_closes_the_client() {
    let pki = pki();
    let other = self::pki(); // a CA the upstream leg does not trust
    let mut p = connected_pair(&pki, b"", Some(other.client.clone()));
    let mut up = rustls::ServerConnection::new(pki.server.clone()).unwrap();
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
    p.upstream_sends(ALERT);
    assert_eq!(
        p.conn.poll_upstream_tls_retry(),
        Some(HandshakeFailure::PeerAlert)
    );
    assert_eq!(p.conn.poll_upstream_tls_retry(), None, "asked once");
    assert_eq!(p.conn.phase(), Phase::Connecting);
    assert!(p.conn.upstream_tls_retried());
    assert_eq!(p.conn.poll_close(), None);
    assert_eq!(
        p.conn.poll_send(Side::Upstream),
        None,
        "nothing for the old socket"
    );
    // Leftovers of the old socket change nothing.
    p.upstream_sends(b"stale");
    p.conn.handle_eof(Side::Upstream, p.now);
    p.conn.handle_error(Side::Upstream);
    p.client.writer().write_all(b", more").unwrap();
    p.run();
    assert!(!p.client_closed && p.conn.poll_close().is_none());

    // The new connection: a handshake, then the client's bytes, all of them.
    p.upstream_got.clear();
    let tls = UnbufferedClientConnection::new(pki.client.clone(), "localhost".try_into().unwrap());
    p.conn
        .handle_upstream_connected(p.now, Vec::new(), Some(tls.unwrap()));
    p.conn.allow_upstream_tls_retry(); // no second retry
    let mut up = rustls::ServerConnection::new(pki.server.clone()).unwrap();
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
    p.upstream_sends(ALERT);
    assert!(p.conn.poll_upstream_tls_retry().is_some());
    let tls = UnbufferedClientConnection::new(pki.client.clone(), "localhost".try_into().unwrap());
    p.conn
        .handle_upstream_connected(p.now, Vec::new(), Some(tls.unwrap()));
    p.conn.allow_upstream_tls_retry();
    p.run();
    p.upstream_sends(ALERT);
    assert_eq!(p.conn.poll_upstream_tls_retry(), None);
    p.run();
    assert_eq!(
        p.conn.poll_close(),
        Some(CloseReason::UpstreamTlsFailed(HandshakeFailure::PeerAlert))
    );

    // An idle leg the upstream closes after the handshake: not a refused session.
    let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
    p.conn.allow_upstream_tls_retry();
    let mut up = rustls::ServerConnection::new(pki.server.clone()).unwrap();
    settle_upstream(&mut p, &mut up, &mut Vec::new());
    assert!(p.conn.upstream_handshake_kind().is_some());
    p.conn.handle_eof(Side::Upstream, p.now);
    assert_eq!(p.conn.poll_upstream_tls_retry(), None);
    p.run();
    assert!(p.client_closed, "the upstream's end reaches the client");

    // Bytes crossed: a later failure is the client's too.
    let mut p = connected_pair(&pki, b"", Some(pki.client.clone()));
    p.conn.allow_upstream_tls_retry();
    let mut up = rustls::ServerConnection::new(pki.server.clone()).unwrap();
    let mut up_got = Vec::new();
    p.client.writer().write_all(b"sent").unwrap();
    settle_upstream(&mut p, &mut up, &mut up_got);
    assert_eq!(up_got, b"sent");
    p.upstream_sends(ALERT);
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
    let mut p = Pair::established();
    p.conn.handle_error(Side::Upstream);
    assert_eq!(p.conn.poll_close(), Some(CloseReason::UpstreamReset));
    assert!(!p.conn.wants_recv(Side::Client));
}

/// Unbuffered rustls: a record split between two receives waits, alone, in the leg
/// (the first half copied, nothing decrypted); the second half completes it, the
/// plaintext moves on and the leg holds no TLS memory again. Records that arrive
/// whole are decrypted where they were received (`Conn::handle_data`).
#[test]
fn a_record_split_between_receives_waits_then_the_leg_holds_nothing() {
    let mut p = Pair::established();
    assert_eq!(p.conn.phase(), Phase::Streaming);
    let held = |p: &Pair| p.conn.client.tls.as_ref().unwrap().held();
    assert_eq!(held(&p), 0, "idle after the handshake");

    let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    p.client.writer().write_all(&payload).unwrap();
    let mut wire = Vec::new();
    while p.client.wants_write() {
        p.client.write_tls(&mut wire).unwrap();
    }
    // Two records, and the second cut in the middle of its header: the first is
    // used in place, the rest waits.
    p.client.writer().write_all(b"second").unwrap();
    let first_len = wire.len();
    while p.client.wants_write() {
        p.client.write_tls(&mut wire).unwrap();
    }
    let cut = first_len + 3;
    let mut a = wire[..cut].to_vec();
    p.conn.handle_data(Side::Client, &mut a, p.now);
    assert_eq!(
        p.conn.client.plain_in.len(),
        payload.len(),
        "first record decrypted"
    );
    assert!(held(&p) >= 3, "the header's start waits");
    let mut b = wire[cut..].to_vec();
    p.conn.handle_data(Side::Client, &mut b, p.now);
    assert_eq!(held(&p), 0, "nothing held once the record is complete");
    p.run();
    let mut want = payload.clone();
    want.extend_from_slice(b"second");
    assert_eq!(p.upstream_got, want);

    // Every byte in its own receive: the same plaintext, nothing held after.
    p.upstream_got.clear();
    p.client.writer().write_all(b"byte by byte").unwrap();
    let mut wire = Vec::new();
    while p.client.wants_write() {
        p.client.write_tls(&mut wire).unwrap();
    }
    for byte in &wire {
        p.conn.handle_data(Side::Client, &mut [*byte], p.now);
    }
    assert_eq!(held(&p), 0);
    p.run();
    assert_eq!(p.upstream_got, b"byte by byte");
}

/// A client that pipelines requests the rules deny and never reads the 403s: its
/// receive budget closes once the answers owed to it reach `max_buffered`, so it
/// cannot make terminus hold more than that.
#[test]
fn unread_local_answers_stop_the_client_reads_at_max_buffered() {
    use crate::proxy::authz::{gate::Policy, limits::CallerLimits, Action, Mode, Rules};
    let pki = pki();
    let mut p = Pair::new(&pki);
    p.conn = fresh_conn(&pki, p.now)
        .with_http(crate::proxy::http::HttpSettings {
            identity: crate::proxy::http::IdentityHeaders::Xfcc,
            max_header_bytes: 8192,
            allow_bare_lf: false,
            head_timeout: Duration::from_secs(10),
            h2: None,
            upstream_h2: false,
        })
        .with_http_policy((
            Arc::new(Policy {
                rules: Rules::new(vec![], Action::Deny, Mode::Enforce).unwrap(),
                limits: Default::default(),
            }),
            Arc::new(CallerLimits::new(16)),
        ));
    p.handshake_only();
    assert!(p.conn.poll_connect());
    p.conn.handle_upstream_connected(p.now, Vec::new(), None);
    p.conn.set_http_client(None);
    let max = limits().max_buffered;
    let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut closed = false;
    for _ in 0..20_000 {
        if p.conn.recv_budget(Side::Client) == 0 {
            closed = true;
            break;
        }
        p.client.writer().write_all(request).unwrap();
        let mut buf = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut buf).unwrap();
        }
        p.conn.handle_data(Side::Client, &mut buf, p.now);
        // The 403s are sealed for the client, which never takes them.
        let _ = p.conn.poll_send(Side::Upstream);
    }
    assert!(
        closed,
        "the client was still read with {} B owed to it",
        p.conn.buffered_to(Side::Client)
    );
    let owed = p.conn.buffered_to(Side::Client);
    assert!(owed >= max && owed < max + 4096, "{owed}");
    assert!(
        p.upstream_got.is_empty(),
        "nothing denied reaches the upstream"
    );
}

/// HTTP/2: a client that floods PINGs and never reads the pongs. What is owed to it
/// stops at `max_buffered` in its leg plus the codec's pipe, then its receive budget
/// closes (the codec stops reading it, its frames wait unread).
#[test]
fn an_h2_ping_flood_from_a_client_that_never_reads_closes_its_budget() {
    let pki = pki();
    let mut p = Pair::new(&pki);
    p.conn = fresh_conn(&pki, p.now).with_http(crate::proxy::http::HttpSettings {
        identity: crate::proxy::http::IdentityHeaders::Xfcc,
        max_header_bytes: 8192,
        allow_bare_lf: false,
        head_timeout: Duration::from_secs(10),
        h2: Some(crate::proxy::h2::H2Settings::default()),
        upstream_h2: true,
    });
    p.handshake_only();
    assert!(p.conn.poll_connect());
    p.conn.set_http_client(None);
    p.conn.handle_upstream_connected(p.now, Vec::new(), None);
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut first = Some(hello);
    let mut closed = false;
    for _ in 0..20_000 {
        if p.conn.recv_budget(Side::Client) == 0 {
            closed = true;
            break;
        }
        let mut burst = first.take().unwrap_or_default();
        for _ in 0..64 {
            burst.extend_from_slice(&ping);
        }
        p.client.writer().write_all(&burst).unwrap();
        let mut buf = Vec::new();
        while p.client.wants_write() {
            p.client.write_tls(&mut buf).unwrap();
        }
        p.conn.handle_data(Side::Client, &mut buf, p.now);
        // The driver takes the client's sends, which never complete.
        let _ = p.conn.poll_send(Side::Client);
        let _ = p.conn.poll_send(Side::Upstream);
    }
    let owed = p.conn.buffered_to(Side::Client);
    assert!(closed, "the client was still read with {owed} B owed to it");
    let max = limits().max_buffered;
    let pipe = crate::proxy::h2::PIPE_LIMIT;
    assert!(owed >= max && owed <= 2 * max + pipe + 4096, "{owed}");
    assert!(p.conn.poll_close().is_none(), "still open, only not read");
}
