//! Real-socket tests of the trust modes (issue 3): a `terminus run` child between real
//! clients (rustls, `openssl s_client -cert`, `curl --cert`, raw TCP) and in-process
//! backends or a real TLS upstream (`openssl s_server -Verify`), all on 127.0.0.1 with
//! port 0.
//!
//! Certificates are generated here (rcgen through `terminus::tools::certs::TestCa`): terminus'
//! own server certificate comes from `terminus certs`; the client certificates come
//! from a separate client CA written next to the config as `client-ca.pem`, with a CRL
//! `client-ca.crl` revoking one of them. Every refused handshake is checked through the
//! access log file (`[log] access = "access.log"`), whose `handshake_error` lines are
//! matched to the refused client by its address. Every wait is bounded.

use crate::common::proxy_v2::{self, Command as PpCommand, ParsedHeader};
use crate::common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use terminus::tools::certs::{LeafSpec, TestCa, TestLeaf};
use terminus::tools::client::{ClientConfigBuilder, SeenServerCert, Trust};

/// How long a log line, a PROXY header or a process' output may take to show up.
const WAIT: Duration = Duration::from_secs(10);
/// How soon a close must be passed on (far below every timeout that could close the
/// connection instead).
const PROMPT: Duration = Duration::from_secs(2);

const GOOD_SPIFFE: &str = "spiffe://example.org/client";

/// The allow list of the mTLS listeners: one rule of each kind.
const ALLOW: [&str; 4] = [
    GOOD_SPIFFE,
    "spiffe://example.org/ns/prod/*",
    "dns:billing.internal",
    "cn:legacy-batch",
];

// ---------------------------------------------------------------------------------
// Fixture: PKI, client CA, CRL, config, access log
// ---------------------------------------------------------------------------------

/// The test PKI of `terminus certs` (terminus' server certificate), plus a client CA
/// (`client-ca.pem`) and its CRL (`client-ca.crl`, revoking [`Fixture::revoked`]) in
/// the same folder as the configs.
struct Fixture {
    pki: Pki,
    client_ca: TestCa,
    /// Carries the good identity, but its serial is in `client-ca.crl`.
    revoked: TestLeaf,
}

impl Fixture {
    fn new() -> Fixture {
        let pki = Pki::generate();
        let client_ca = TestCa::root("terminus trust-test client CA").expect("client CA");
        let revoked = client_ca
            .leaf(&LeafSpec::client("client", Some(GOOD_SPIFFE)))
            .expect("revoked leaf");
        let (crl_pem, _der) = client_ca.crl(&[&revoked.serial]).expect("CRL");
        assert!(crl_pem.starts_with("-----BEGIN X509 CRL-----"), "{crl_pem}");
        std::fs::write(pki.dir().join("client-ca.pem"), &client_ca.pem).unwrap();
        std::fs::write(pki.dir().join("client-ca.crl"), crl_pem).unwrap();
        Fixture {
            pki,
            client_ca,
            revoked,
        }
    }

    /// A client certificate from the trusted client CA.
    fn leaf(&self, spec: &LeafSpec) -> TestLeaf {
        self.client_ca.leaf(spec).expect("client leaf")
    }

    /// CN `client`, URI SAN `spiffe://example.org/client`.
    fn good(&self) -> TestLeaf {
        self.leaf(&LeafSpec::client("client", Some(GOOD_SPIFFE)))
    }

    /// Write a leaf's chain and key next to the config; returns (cert, key) paths.
    fn write_leaf(&self, name: &str, leaf: &TestLeaf) -> (PathBuf, PathBuf) {
        let cert = self.pki.dir().join(format!("{name}.pem"));
        let key = self.pki.dir().join(format!("{name}.key"));
        std::fs::write(&cert, &leaf.chain_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (cert, key)
    }

    /// Start terminus with these listeners, logging to `access.log`.
    fn start(&self, workers: Option<usize>, listeners: &[ListenerConf]) -> Terminus {
        let config = write_config_with_log(&self.pki, workers, listeners, "access.log");
        Terminus::start(&config)
    }

    fn log(&self) -> AccessLog {
        AccessLog(self.pki.dir().join("access.log"))
    }

    /// A rustls client trusting terminus' CA, presenting `leaf` if given.
    fn client(&self, leaf: Option<&TestLeaf>) -> Arc<ClientConfig> {
        client_with(self.pki.roots(), leaf, rustls::ALL_VERSIONS, &[])
    }
}

fn client_with(
    roots: RootCertStore,
    leaf: Option<&TestLeaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut b = ClientConfigBuilder::new(Trust::Roots(roots))
        .versions(versions)
        .alpn(alpn);
    if let Some(l) = leaf {
        b = b.client_cert(l.chain.clone(), l.key());
    }
    b.build().expect("client config")
}

/// `[listeners.client_auth]` trusting `client-ca.pem`, checking `client-ca.crl`.
fn client_auth(mode: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[listeners.client_auth]\nmode = \"{mode}\"\nca = [\"client-ca.pem\"]\n\
         crl = [\"client-ca.crl\"]\nallow = [{}]\n",
        allow.join(", ")
    )
}

/// A listener requiring a client certificate allowed by [`ALLOW`], sending PROXY v2.
fn mtls_listener(name: &str, upstream: SocketAddr) -> ListenerConf {
    ListenerConf::new(name, &[upstream])
        .opt("proxy_protocol", "\"v2\"")
        .raw(&client_auth("require", &ALLOW))
}

/// The access log file: JSON lines, polled with a deadline.
struct AccessLog(PathBuf);

impl AccessLog {
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// The first line matching `pred`; panics with the whole log after [`WAIT`].
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.lines().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no access log line for {what} within {WAIT:?}; {} has:\n{}",
                    self.0.display(),
                    std::fs::read_to_string(&self.0).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The `handshake_error` line of the connection from `client`.
    fn handshake_error(&self, client: SocketAddr) -> Value {
        let want = client.to_string();
        self.wait_for(&format!("the handshake error of {client}"), |v| {
            v["event"] == "handshake_error" && v["client"] == want.as_str()
        })
    }

    /// Wait until at least `n` lines have this event and reason.
    fn wait_count(&self, event: &str, reason: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines = self.lines();
            let got = lines
                .iter()
                .filter(|v| v["event"] == event && v["reason"] == reason)
                .count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{got} {event} lines with reason {reason} (want at least {n}); log: {lines:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Assert the logged reason, with the whole line in the message.
fn assert_reason(line: &Value, reason: &str, what: &str) {
    assert_eq!(
        line["reason"], reason,
        "{what}: terminus logged reason {} (want {reason:?}); line: {line}",
        line["reason"]
    );
}

// ---------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------

/// TCP connect and complete the TLS handshake as `server_name`; returns the client's
/// own address too (it is how the access log names the client).
fn connect_as(
    addr: SocketAddr,
    cfg: &Arc<ClientConfig>,
    server_name: &str,
) -> Result<(Tls, SocketAddr), rustls::Error> {
    let sock = tcp_connect(addr);
    let local = sock.local_addr().unwrap();
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let conn = ClientConnection::new(cfg.clone(), name)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return Err(rustls_error(&e)
                .unwrap_or_else(|| rustls::Error::General(format!("handshake I/O: {e}"))));
        }
    }
    Ok((tls, local))
}

fn rustls_error(e: &std::io::Error) -> Option<rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
}

/// What a refused client saw.
#[derive(Debug, PartialEq)]
enum Saw {
    Alert(AlertDescription),
    /// The connection ended without an alert.
    Closed(Ending),
    /// Data arrived: the connection was not refused.
    Data(Vec<u8>),
    Other(String),
}

/// Handshake, then read: with TLS 1.3 a client's side of the handshake completes
/// before the server has checked its certificate, so a refusal arrives as an alert
/// on the first read. Returns the client's address and what it saw.
fn attempt(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> (SocketAddr, Saw) {
    attempt_fin(addr, cfg, false)
}

/// [`attempt`]; with `fin`, the client half-closes right after its last handshake
/// flight, so the FIN reaches the server with (or right behind) the bytes it refuses.
fn attempt_fin(addr: SocketAddr, cfg: &Arc<ClientConfig>, fin: bool) -> (SocketAddr, Saw) {
    let sock = tcp_connect(addr);
    let local = sock.local_addr().unwrap();
    let conn = ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
        .expect("client connection");
    let mut tls = StreamOwned::new(conn, sock);
    let result = (|| {
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        if fin {
            tls.sock.shutdown(Shutdown::Write)?;
        }
        let mut buf = [0u8; 1024];
        tls.read(&mut buf).map(|n| buf[..n].to_vec())
    })();
    let saw = match result {
        Ok(data) if data.is_empty() => Saw::Closed(Ending::Clean),
        Ok(data) => Saw::Data(data),
        Err(e) => match rustls_error(&e) {
            Some(rustls::Error::AlertReceived(a)) => Saw::Alert(a),
            Some(other) => Saw::Other(format!("{other:?}")),
            None => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    panic!("the server neither answered nor closed within {IO_TIMEOUT:?}")
                }
                ErrorKind::UnexpectedEof => Saw::Closed(Ending::UncleanEof),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Saw::Closed(Ending::Reset),
                _ => Saw::Other(format!("{e} ({:?})", e.kind())),
            },
        },
    };
    (local, saw)
}

/// Raw TCP: send `bytes` (then FIN if `fin`), read until the server closes.
fn raw_exchange(addr: SocketAddr, bytes: &[u8], fin: bool) -> (SocketAddr, Vec<u8>, Ending) {
    let mut s = tcp_connect(addr);
    let local = s.local_addr().unwrap();
    s.write_all(bytes).unwrap();
    if fin {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let (data, ending) = read_to_end_raw(&mut s, "raw client");
    (local, data, ending)
}

/// The ClientHello of a TLS 1.1-only OpenSSL 3.0 client, field for field as
/// `openssl s_client -tls1_1 -cipher DEFAULT@SECLEVEL=0 -servername localhost` sends it
/// (captured): record version 3.1, client_version 3.2, no supported_versions and, as
/// TLS 1.1 has none, no signature_algorithms.
fn openssl_tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&Pattern::bytes(11, 32)); // random
    body.push(0); // no session id
    let suites: [u16; 9] = [
        0xc00a, 0xc014, 0x0039, 0xc009, 0xc013, 0x0033, 0x0035, 0x002f, 0x00ff,
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let ext: &[u8] = &[
        // server_name: localhost
        0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09, b'l', b'o', b'c', b'a', b'l', b'h',
        b'o', b's', b't', //
        // ec_point_formats: uncompressed, ansiX962_compressed_prime, _char2
        0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, //
        // supported_groups: x25519, secp256r1, x448, secp521r1, secp384r1
        0x00, 0x0a, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00,
        0x18, //
        // session_ticket, encrypt_then_mac, extended_master_secret (all empty)
        0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00,
    ];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    handshake_record(0x01, &body, [0x03, 0x01])
}

/// A rustls client whose only cipher suite is TLS 1.2 ECDHE-RSA: terminus has the
/// suite, but its certificate is ECDSA, so no suite is usable for both.
fn rsa_only_tls12_client(f: &Fixture) -> Arc<ClientConfig> {
    let mut suites = rustls::crypto::aws_lc_rs::default_provider().cipher_suites;
    suites.retain(|s| s.suite() == rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256);
    assert_eq!(suites.len(), 1);
    ClientConfigBuilder::new(Trust::Roots(f.pki.roots()))
        .versions(&[&rustls::version::TLS12])
        .cipher_suites(&suites)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// A backend behind PROXY v2
// ---------------------------------------------------------------------------------

/// What a [`proxied`] backend does after the header.
#[derive(Clone, Copy)]
enum Then {
    Echo,
    /// Answer one HTTP/1.1 request with this body and close.
    Http(&'static [u8]),
}

/// A backend for `proxy_protocol = "v2"`: reads and parses the header terminus sends
/// before any client byte, keeps it for the test, then serves the rest of the stream.
struct Proxied {
    backend: Backend,
    headers: Arc<Mutex<Vec<Result<ParsedHeader, String>>>>,
}

fn proxied(then: Then) -> Proxied {
    let headers: Arc<Mutex<Vec<Result<ParsedHeader, String>>>> = Arc::default();
    let sink = headers.clone();
    let backend = Backend::spawn(Arc::new(move |mut s: TcpStream, _st: &BackendStats| {
        let (header, rest) = match proxy_v2::read_header(&mut s) {
            Ok(got) => got,
            Err(e) => {
                sink.lock().unwrap().push(Err(e.to_string()));
                return;
            }
        };
        sink.lock().unwrap().push(Ok(header));
        match then {
            Then::Echo => echo_rest(s, &rest),
            Then::Http(body) => http_rest(s, rest, body),
        }
    }));
    Proxied { backend, headers }
}

fn echo_rest(mut s: TcpStream, first: &[u8]) {
    if s.write_all(first).is_ok() {
        echo_until_eof(&mut s);
    }
}

fn http_rest(mut s: TcpStream, mut head: Vec<u8>, body: &[u8]) {
    if read_head(&mut s, &mut head, usize::MAX) {
        http_ok_then_drain(&mut s, body);
    }
}

impl Proxied {
    fn addr(&self) -> SocketAddr {
        self.backend.addr()
    }

    /// The `n`-th header (0-based) received, waiting up to [`WAIT`] for it.
    fn header(&self, n: usize) -> ParsedHeader {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(h) = self.headers.lock().unwrap().get(n) {
                return h
                    .clone()
                    .unwrap_or_else(|e| panic!("upstream connection {n}: bad PROXY v2: {e}"));
            }
            assert!(
                Instant::now() < deadline,
                "upstream connection {n} never brought a PROXY v2 header (got {})",
                self.headers.lock().unwrap().len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn count(&self) -> usize {
        self.headers.lock().unwrap().len()
    }
}

/// The SSL TLV says: a certificate was presented on this connection and verified.
fn assert_verified(h: &ParsedHeader, cn: Option<&str>, spiffe: Option<&str>, what: &str) {
    let ssl = h
        .ssl
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no SSL TLV in {h:?}"));
    assert_eq!(
        ssl.client,
        proxy_v2::PP2_CLIENT_SSL | proxy_v2::PP2_CLIENT_CERT_CONN | proxy_v2::PP2_CLIENT_CERT_SESS,
        "{what}: SSL client bits: {h:?}"
    );
    assert_eq!(ssl.verify, 0, "{what}: verify result must be 0 (ok): {h:?}");
    assert_eq!(ssl.cn.as_deref(), cn, "{what}: CN sub-TLV: {h:?}");
    assert_eq!(
        h.spiffe.as_deref(),
        spiffe,
        "{what}: SPIFFE TLV 0xE0: {h:?}"
    );
}

// ---------------------------------------------------------------------------------
// 1. require + allow list: the verified identity reaches the upstream
// ---------------------------------------------------------------------------------

#[test]
fn verified_client_identity_reaches_upstream_in_proxy_v2() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(
        Some(2),
        &[mtls_listener("mtls", up.addr()).opt("alpn", r#"["h2", "http/1.1"]"#)],
    );
    let addr = term.addr("mtls");

    let good = f.good();
    let cfg = client_with(
        f.pki.roots(),
        Some(&good),
        rustls::ALL_VERSIONS,
        &[b"http/1.1"],
    );
    let (mut tls, local) = connect_as(addr, &cfg, "localhost")
        .unwrap_or_else(|e| panic!("good client refused: {e}; stderr: {}", term.stderr()));
    let payload = Pattern::bytes(1, 200_000);
    echo_round_trip(&mut tls, &payload, "good client through mTLS");

    let h = up.header(0);
    assert_eq!(h.command, PpCommand::Proxy, "{h:?}");
    assert_eq!(
        h.addresses,
        Some((local, addr)),
        "PROXY v2 source must be the client's own address, destination the listener"
    );
    assert_eq!(h.authority.as_deref(), Some("localhost"), "AUTHORITY = SNI");
    assert_eq!(h.alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN TLV");
    assert_verified(&h, Some("client"), Some(GOOD_SPIFFE), "good client");
    let ssl = h.ssl.as_ref().unwrap();
    assert_eq!(ssl.version.as_deref(), Some("TLSv1.3"), "{h:?}");
    assert!(
        ssl.cipher.as_deref().is_some_and(|c| c.starts_with("TLS_")),
        "CIPHER sub-TLV: {h:?}"
    );
    assert_eq!(ssl.sig_alg.as_deref(), Some("ecdsa-with-SHA256"), "{h:?}");
    assert_eq!(ssl.key_alg.as_deref(), Some("EC256"), "{h:?}");
    drop(tls);

    // Resumed with the ticket it got: the same server name reaches the upstream.
    // (rustls' unbuffered server session does not expose the SNI; terminus takes it
    // from its certificate resolver, which must therefore run for resumed hellos too.)
    let (mut tls, _) = connect_as(addr, &cfg, "localhost").expect("resumed client");
    echo_round_trip(&mut tls, b"again", "resumed client through mTLS");
    assert_eq!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let h = up.header(1);
    assert_eq!(
        h.authority.as_deref(),
        Some("localhost"),
        "AUTHORITY = SNI, resumed"
    );
    assert!(h.ssl.as_ref().is_some_and(|s| s.resumed()), "{h:?}");
    drop(tls);

    // Every other kind of allow rule lets its client in, and says who it is.
    let cases: [(&str, LeafSpec, Option<&str>); 3] = [
        (
            "spiffe prefix rule",
            LeafSpec::client("billing", Some("spiffe://example.org/ns/prod/sa/billing")),
            Some("spiffe://example.org/ns/prod/sa/billing"),
        ),
        (
            "dns rule",
            LeafSpec {
                dns: vec!["billing.internal".into()],
                ..LeafSpec::client("billing-dns", None)
            },
            None,
        ),
        ("cn rule", LeafSpec::client("legacy-batch", None), None),
    ];
    for (i, (what, spec, spiffe)) in cases.iter().enumerate() {
        let leaf = f.leaf(spec);
        let cfg = f.client(Some(&leaf));
        let (mut tls, local) = connect_as(addr, &cfg, "localhost")
            .unwrap_or_else(|e| panic!("{what}: refused: {e}; log: {:?}", f.log().lines()));
        echo_round_trip(&mut tls, what.as_bytes(), what);
        // Header 1 is the resumed connection's.
        let h = up.header(i + 2);
        assert_eq!(h.addresses.map(|a| a.0), Some(local), "{what}: {h:?}");
        assert_verified(&h, spec.cn.as_deref(), *spiffe, what);
    }
    assert!(
        f.log()
            .lines()
            .iter()
            .all(|v| v["event"] != "handshake_error"),
        "no handshake may have failed: {:?}",
        f.log().lines()
    );
}

// ---------------------------------------------------------------------------------
// 2. Every failure reason a client can provoke
// ---------------------------------------------------------------------------------

/// Start a `require` listener, present `leaf` (or none), and check what the client was
/// told, that the refusal is logged with `reason`, and that nothing reached the
/// upstream. Returns the log line.
fn refused(leaf: Option<&TestLeaf>, reason: &str, alert: AlertDescription) -> Value {
    let f = Fixture::new();
    refused_by(&f, leaf, reason, alert)
}

fn refused_by(
    f: &Fixture,
    leaf: Option<&TestLeaf>,
    reason: &str,
    alert: AlertDescription,
) -> Value {
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    // The alert must reach the client whether or not its FIN came with the
    // refused flight (issue 9: a FIN in the same read used to drop the alert).
    let mut line = Value::Null;
    for fin in [false, true] {
        let (local, saw) = attempt_fin(term.addr("mtls"), &f.client(leaf), fin);
        assert_eq!(
            saw,
            Saw::Alert(alert),
            "{reason} (FIN after the flight: {fin}): the client must be refused with a {alert:?} alert"
        );
        line = f.log().handshake_error(local);
        assert_reason(&line, reason, reason);
        assert_eq!(line["listener"], "mtls", "{line}");
    }
    assert_eq!(
        up.count(),
        0,
        "{reason}: a refused client reached the upstream"
    );
    line
}

/// The presented certificate is named in the log.
fn assert_subject(line: &Value, cn: &str) {
    let subject = line["peer_subject"].as_str().unwrap_or_default();
    assert!(
        subject.contains(&format!("CN={cn}")),
        "log line must carry the presented subject (CN={cn}): {line}"
    );
}

#[test]
fn reason_no_client_cert() {
    let line = refused(
        None,
        "no_client_cert",
        AlertDescription::CertificateRequired,
    );
    assert!(line["peer_subject"].is_null(), "{line}");
}

/// A certificate refused for what it is: the reason and alert of each case, and the
/// presented subject in the log. One fixture (and terminus) a case.
#[test]
fn reason_for_each_refused_certificate() {
    /// The certificate to present; None: the fixture's revoked one.
    type Make = fn(&Fixture) -> Option<TestLeaf>;
    fn valid(f: &Fixture, cn: &str, from_days: i64, to_days: i64) -> Option<TestLeaf> {
        let now = time::OffsetDateTime::now_utc();
        Some(f.leaf(&LeafSpec {
            not_before: now + time::Duration::days(from_days),
            not_after: now + time::Duration::days(to_days),
            ..LeafSpec::client(cn, Some(GOOD_SPIFFE))
        }))
    }
    let cases: [(&str, AlertDescription, &str, Make); 4] = [
        ("unknown_ca", AlertDescription::UnknownCA, "client", |_| {
            let rogue = TestCa::root("rogue CA").unwrap();
            Some(
                rogue
                    .leaf(&LeafSpec::client("client", Some(GOOD_SPIFFE)))
                    .unwrap(),
            )
        }),
        (
            "cert_expired",
            AlertDescription::CertificateExpired,
            "expired",
            |f| valid(f, "expired", -3, -1),
        ),
        // A client whose clock runs a day ahead issued this.
        (
            "cert_not_yet_valid",
            AlertDescription::CertificateExpired,
            "future",
            |f| valid(f, "future", 1, 2),
        ),
        (
            "cert_revoked",
            AlertDescription::CertificateRevoked,
            "client",
            |_| None,
        ),
    ];
    for (reason, alert, cn, make) in cases {
        let f = Fixture::new();
        let made = make(&f);
        let leaf = made.as_ref().unwrap_or(&f.revoked);
        let line = refused_by(&f, Some(leaf), reason, alert);
        assert_subject(&line, cn);
    }
}

#[test]
fn reason_policy_denied_carries_identity_and_access_denied_alert() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    // Valid chains whose identity no rule allows: a wrong ID, a wildcard's trust domain
    // lookalike in another domain, a path that merely starts like the prefix.
    for id in [
        "spiffe://example.org/intruder",
        "spiffe://evil.org/ns/prod/sa/billing",
        "spiffe://example.org/ns/production/sa/billing",
    ] {
        let leaf = f.leaf(&LeafSpec::client("intruder", Some(id)));
        let (local, saw) = attempt(term.addr("mtls"), &f.client(Some(&leaf)));
        assert_eq!(
            saw,
            Saw::Alert(AlertDescription::AccessDenied),
            "{id}: a denied client must get an access_denied alert"
        );
        let line = f.log().handshake_error(local);
        assert_reason(&line, "policy_denied", id);
        assert_eq!(
            line["peer_spiffe"], id,
            "log must carry the denied SPIFFE ID"
        );
        assert_subject(&line, "intruder");
    }
    assert_eq!(up.count(), 0, "a denied client reached the upstream");
    // The good identity still gets through the same listener.
    let (mut tls, _) = connect_as(term.addr("mtls"), &f.client(Some(&f.good())), "localhost")
        .expect("good client after denials");
    echo_round_trip(&mut tls, b"allowed", "good client");
}

#[test]
fn reason_protocol_version_for_tls11_only_client() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    for (fin, tail) in [
        (false, &b""[..]),
        (true, &b""[..]),
        (true, &b"more garbage"[..]),
    ] {
        let mut bytes = openssl_tls11_client_hello();
        bytes.extend_from_slice(tail);
        let (local, data, _) = raw_exchange(term.addr("mtls"), &bytes, fin);
        let alert = first_alert(&data);
        let line = f.log().handshake_error(local);
        // rustls answers handshake_failure (40): no TLS 1.3/1.2 signature schemes.
        assert_eq!(
            alert,
            Some((2, 40)),
            "a TLS 1.1-only client (FIN {fin}, {} bytes after) must get its fatal alert",
            tail.len()
        );
        assert_reason(
            &line,
            "protocol_version",
            &format!("TLS 1.1-only ClientHello (server answered alert {alert:?})"),
        );
    }
}

/// A ClientHello offering no null compression: rustls refuses it with
/// illegal_parameter; terminus must deliver that alert even when the FIN (and more
/// bytes) arrive in the same read.
#[test]
fn illegal_parameter_alert_survives_fin_and_trailing_bytes() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    let mut hello = rustls_client_hello(&f.pki);
    // record(5) + handshake header(4) + version(2) + random(32), then the session id,
    // the cipher suites, and the compression methods ([1, 0] from rustls).
    let sid = 43;
    let suites = sid + 1 + hello[sid] as usize;
    let comp = suites + 2 + u16::from_be_bytes([hello[suites], hello[suites + 1]]) as usize;
    assert_eq!(
        &hello[comp..comp + 2],
        &[1, 0],
        "compression methods of {hello:02x?}"
    );
    hello[comp + 1] = 1; // DEFLATE only
    for (fin, tail) in [
        (false, &b""[..]),
        (true, &b""[..]),
        (true, &b"\x16\x03garbage"[..]),
    ] {
        let mut bytes = hello.clone();
        bytes.extend_from_slice(tail);
        let (local, data, _) = raw_exchange(term.addr("mtls"), &bytes, fin);
        assert_eq!(
            data,
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x2f],
            "FIN {fin}, {} bytes after: the client must get exactly illegal_parameter",
            tail.len()
        );
        let line = f.log().handshake_error(local);
        assert_eq!(line["event"], "handshake_error", "{line}");
    }
    assert_eq!(up.count(), 0, "a refused client reached the upstream");
}

#[test]
fn reason_no_shared_cipher() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    let (local, saw) = attempt(term.addr("mtls"), &rsa_only_tls12_client(&f));
    assert_eq!(saw, Saw::Alert(AlertDescription::HandshakeFailure));
    assert_reason(
        &f.log().handshake_error(local),
        "no_shared_cipher",
        "ECDHE-RSA only",
    );
    // The same ClientHello followed at once by a FIN still gets its alert.
    let mut hello = Vec::new();
    let mut c = ClientConnection::new(
        rsa_only_tls12_client(&f),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    while c.wants_write() {
        c.write_tls(&mut hello).unwrap();
    }
    let (local, data, _) = raw_exchange(term.addr("mtls"), &hello, true);
    assert_eq!(
        first_alert(&data),
        Some((2, 40)),
        "ECDHE-RSA-only hello + FIN must get handshake_failure, got {data:02x?}"
    );
    assert_reason(
        &f.log().handshake_error(local),
        "no_shared_cipher",
        "ECDHE-RSA only, FIN",
    );
}

#[test]
fn reason_malformed_for_garbage() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    for fin in [false, true] {
        let (local, data, _) = raw_exchange(
            term.addr("mtls"),
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            fin,
        );
        assert!(
            matches!(first_alert(&data), Some((2, _))),
            "garbage (FIN {fin}) must get a fatal alert, got {data:02x?}"
        );
        assert_reason(
            &f.log().handshake_error(local),
            "malformed",
            "plaintext HTTP",
        );
    }
}

#[test]
fn reason_timeout_for_silent_client() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(
        Some(1),
        &[mtls_listener("mtls", up.addr()).opt("handshake_timeout_ms", "300")],
    );
    let start = Instant::now();
    let mut s = tcp_connect(term.addr("mtls"));
    let local = s.local_addr().unwrap();
    let (data, _) = read_to_end_raw(&mut s, "silent client");
    let took = start.elapsed();
    assert!(data.is_empty(), "a silent client got {data:02x?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}; handshake_timeout_ms = 300"
    );
    assert_reason(&f.log().handshake_error(local), "timeout", "silent client");
}

#[test]
fn reason_peer_closed_mid_hello() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(Some(1), &[mtls_listener("mtls", up.addr())]);
    let hello = rustls_client_hello(&f.pki);
    let (local, _, _) = raw_exchange(term.addr("mtls"), &hello[..hello.len() / 2], true);
    assert_reason(
        &f.log().handshake_error(local),
        "peer_closed",
        "half a ClientHello, FIN",
    );
}

// ---------------------------------------------------------------------------------
// 3. optional mode
// ---------------------------------------------------------------------------------

#[test]
fn optional_mode_lets_certless_clients_through_but_refuses_bad_certs() {
    let f = Fixture::new();
    let up = proxied(Then::Echo);
    let term = f.start(
        Some(2),
        &[ListenerConf::new("opt", &[up.addr()])
            .opt("proxy_protocol", "\"v2\"")
            .raw(&client_auth("optional", &ALLOW))],
    );
    let addr = term.addr("opt");

    // No certificate: through, and the upstream is told so.
    let (mut tls, local) =
        connect_as(addr, &f.client(None), "localhost").expect("cert-less client in optional");
    echo_round_trip(&mut tls, b"no certificate here", "cert-less client");
    let h = up.header(0);
    assert_eq!(h.addresses.map(|a| a.0), Some(local));
    let ssl = h.ssl.as_ref().expect("SSL TLV");
    assert_eq!(
        ssl.client,
        proxy_v2::PP2_CLIENT_SSL,
        "no certificate presented: only PP2_CLIENT_SSL: {h:?}"
    );
    assert_ne!(
        ssl.verify, 0,
        "no certificate: verify must not say ok: {h:?}"
    );
    assert_eq!(ssl.cn, None, "{h:?}");
    assert_eq!(h.spiffe, None, "{h:?}");
    drop(tls);

    // A good certificate: through, verified.
    let (mut tls, _) =
        connect_as(addr, &f.client(Some(&f.good())), "localhost").expect("good client in optional");
    echo_round_trip(&mut tls, b"with a certificate", "good client");
    assert_verified(
        &up.header(1),
        Some("client"),
        Some(GOOD_SPIFFE),
        "optional, good",
    );
    drop(tls);

    // A certificate that fails verification is refused, even though none is required.
    let rogue = TestCa::root("rogue CA").unwrap();
    let untrusted = rogue
        .leaf(&LeafSpec::client("client", Some(GOOD_SPIFFE)))
        .unwrap();
    let (local, saw) = attempt(addr, &f.client(Some(&untrusted)));
    assert_eq!(saw, Saw::Alert(AlertDescription::UnknownCA));
    assert_reason(
        &f.log().handshake_error(local),
        "unknown_ca",
        "optional, untrusted",
    );
    // So is a verified one the policy refuses.
    let denied = f.leaf(&LeafSpec::client(
        "x",
        Some("spiffe://example.org/intruder"),
    ));
    let (local, saw) = attempt(addr, &f.client(Some(&denied)));
    assert_eq!(saw, Saw::Alert(AlertDescription::AccessDenied));
    assert_reason(
        &f.log().handshake_error(local),
        "policy_denied",
        "optional, denied",
    );
    assert_eq!(
        up.count(),
        2,
        "only the two accepted clients reach the upstream"
    );
}

// ---------------------------------------------------------------------------------
// 4. Real clients: openssl s_client -cert, curl --cert
// ---------------------------------------------------------------------------------

const HTTP_BODY: &[u8] = b"hello, verified workload\n";

#[test]
fn openssl_s_client_and_curl_with_client_certs() {
    require_tool("openssl");
    require_tool("curl");
    let f = Fixture::new();
    let up = proxied(Then::Http(HTTP_BODY));
    let term = f.start(Some(2), &[mtls_listener("mtls", up.addr())]);
    let addr = term.addr("mtls");
    let (cert, key) = f.write_leaf("good", &f.good());

    // openssl s_client
    let mut cmd = openssl_s_client(addr, &f.pki.ca_pem());
    cmd.arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .args(["-verify_hostname", "localhost"]);
    let mut sc = Spawned::new(cmd);
    sc.send(b"GET /s_client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let body = std::str::from_utf8(HTTP_BODY).unwrap();
    assert!(
        sc.wait_stdout_contains(body, WAIT),
        "s_client -cert: no body; stdout:\n{}\nstderr:\n{}\naccess log: {:?}",
        sc.stdout(),
        sc.stderr(),
        f.log().lines()
    );
    assert!(sc.stdout().contains("Verify return code: 0 (ok)"));
    sc.wait(WAIT);
    assert_verified(&up.header(0), Some("client"), Some(GOOD_SPIFFE), "s_client");

    // curl
    let port = addr.port();
    let curl = |with_cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .arg("--cacert")
            .arg(f.pki.ca_pem())
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"));
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        cmd.arg(format!("https://localhost:{port}/curl"));
        let mut c = Spawned::new(cmd);
        let status = c.wait(Duration::from_secs(20));
        (status, c.stdout(), c.stderr())
    };
    let (status, out, err) = curl(true);
    assert!(status.success(), "curl --cert failed ({status}): {err}");
    assert_eq!(out.as_bytes(), HTTP_BODY);
    assert_verified(&up.header(1), Some("client"), Some(GOOD_SPIFFE), "curl");

    // Without a certificate curl is refused, and the log says why.
    let (status, out, err) = curl(false);
    assert!(
        !status.success() && out.is_empty(),
        "curl without --cert must fail; status {status}, stdout {out:?}"
    );
    f.log().wait_for("curl without a certificate", |v| {
        v["event"] == "handshake_error" && v["reason"] == "no_client_cert"
    });
    assert_eq!(
        up.count(),
        2,
        "the refused curl reached the upstream: {err}"
    );
}

// ---------------------------------------------------------------------------------
// 5. Re-encryption to a TLS upstream that itself requires a client certificate
// ---------------------------------------------------------------------------------

/// `openssl s_server -rev` (echoes each line reversed) on 127.0.0.1:0 for one
/// connection (`-naccept 1`: it exits after it, flushing what it printed), serving
/// `cert` and requiring a client certificate from `client_ca`; waits for its ACCEPT
/// line.
fn s_server(f: &Fixture, cert: &str, key: &str, client_ca: &str) -> (Spawned, SocketAddr) {
    let mode = [
        "-rev",
        "-naccept",
        "1",
        "-Verify",
        "2",
        "-verify_return_error",
    ];
    openssl_s_server(f.pki.dir(), cert, key, client_ca, &mode)
}

const UPSTREAM_TLS: &str = "[listeners.upstream_tls]\nca = [\"upstream-ca.pem\"]\n\
                            server_name = \"backend.internal\"\ncert = \"edge.pem\"\n\
                            key = \"edge.key\"\n";

/// Send a line and read s_server's reversed answer.
fn reversed_line(tls: &mut Tls, srv: &Spawned, f: &Fixture) {
    tls.write_all(b"hello through two TLS legs\n").unwrap();
    tls.flush().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        match tls.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            other => panic!(
                "reply from s_server ended after {:?}: {other:?}; s_server stdout:\n{}\n\
                 stderr:\n{}\nterminus log: {:?}",
                String::from_utf8_lossy(&line),
                srv.stdout(),
                srv.stderr(),
                f.log().lines()
            ),
        }
    }
    assert_eq!(
        line, b"sgel SLT owt hguorht olleh\n",
        "s_server -rev reverses the line"
    );
}

#[test]
fn reencrypts_to_openssl_s_server_requiring_client_cert() {
    require_tool("openssl");
    let f = Fixture::new();
    write_upstream_pki(f.pki.dir(), Some(&f.client_ca));
    let (good_srv, good_addr) = s_server(&f, "backend.pem", "backend.key", "client-ca.pem");
    let (rogue_srv, rogue_addr) = s_server(&f, "rogue.pem", "rogue.key", "client-ca.pem");
    let term = f.start(
        Some(2),
        &[
            ListenerConf::new("reencrypt", &[good_addr])
                .raw(&client_auth("require", &ALLOW))
                .raw(UPSTREAM_TLS),
            ListenerConf::new("rogue", &[rogue_addr]).raw(UPSTREAM_TLS),
        ],
    );

    // mTLS client -> terminus -> mTLS upstream, and back.
    let (mut tls, _) = connect_as(
        term.addr("reencrypt"),
        &f.client(Some(&f.good())),
        "localhost",
    )
    .expect("client handshake");
    reversed_line(&mut tls, &good_srv, &f);
    // The client's close_notify is forwarded: s_server sees the end of its
    // connection and (`-naccept 1`) exits, which also completes its report.
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut good_srv = good_srv;
    let exited = good_srv.wait_stdin_open(PROMPT);
    let report = format!("{}{}", good_srv.stdout(), good_srv.stderr());
    assert!(
        report.contains("Peer certificate: CN = terminus-edge"),
        "s_server must have verified terminus' client certificate:\n{report}"
    );
    assert!(
        exited.is_some(),
        "the client's close_notify did not reach the TLS upstream within {PROMPT:?} \
         (s_server still connected); s_server output:\n{report}"
    );
    let (rest, ending) = read_to_end_tls(&mut tls, 0, "re-encrypted connection close");
    assert!(rest.is_empty());
    assert_eq!(
        ending,
        Ending::Clean,
        "the upstream's close must reach the client as close_notify"
    );

    // An upstream terminus cannot verify: the client's connection is closed, nothing
    // comes back, and the failure is logged as the upstream's.
    let (mut tls, local) =
        connect_as(term.addr("rogue"), &f.client(None), "localhost").expect("client handshake");
    let _ = tls.write_all(b"must not reach the rogue\n");
    let _ = tls.flush();
    let (data, ending) = read_to_end_tls(&mut tls, 1024, "client of the rogue upstream");
    assert!(
        data.is_empty(),
        "got {:?} from a rogue upstream",
        String::from_utf8_lossy(&data)
    );
    assert!(
        matches!(ending, Ending::Clean | Ending::UncleanEof | Ending::Reset),
        "{ending:?}"
    );
    let want = local.to_string();
    let line = f.log().wait_for("the rogue upstream", |v| {
        v["event"] == "upstream_tls_error" && v["client"] == want.as_str()
    });
    assert_eq!(line["listener"], "rogue", "{line}");
    assert_eq!(line["reason"], "unknown_ca", "{line}");
    assert!(
        !rogue_srv.stdout().contains("must not reach"),
        "{}",
        rogue_srv.stdout()
    );
}

/// A client that just closes its socket (FIN, no close_notify, as many do) must end
/// the re-encrypted upstream connection too, not leave it open until the idle timeout.
#[test]
fn reencrypted_upstream_sees_client_fin_promptly() {
    require_tool("openssl");
    let f = Fixture::new();
    write_upstream_pki(f.pki.dir(), Some(&f.client_ca));
    let (srv, addr) = s_server(&f, "backend.pem", "backend.key", "client-ca.pem");
    let term = f.start(
        Some(1),
        // Long enough that an idle-timeout close cannot pass for the FIN being
        // forwarded, short enough to end the test soon if it is not.
        &[ListenerConf::new("reencrypt", &[addr])
            .opt("idle_timeout_ms", "6000")
            .raw(UPSTREAM_TLS)],
    );
    let (mut tls, _) =
        connect_as(term.addr("reencrypt"), &f.client(None), "localhost").expect("handshake");
    reversed_line(&mut tls, &srv, &f);
    let closed = Instant::now();
    tls.sock.shutdown(Shutdown::Write).unwrap();
    let mut srv = srv;
    let exited = srv.wait_stdin_open(Duration::from_secs(8));
    assert!(
        exited.is_some_and(|_| closed.elapsed() < PROMPT),
        "the client's FIN reached the TLS upstream only after {:?} (exited: {exited:?}; \
         idle_timeout_ms = 6000): terminus did not pass the close on",
        closed.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 6. SNI
// ---------------------------------------------------------------------------------

#[test]
fn sni_chooses_certificate_and_unknown_names_get_the_default() {
    let f = Fixture::new();
    let sni_ca = TestCa::root("sni CA").unwrap();
    let api = sni_ca.leaf(&LeafSpec::server(&["api.internal"])).unwrap();
    f.write_leaf("api", &api);
    let echo = Backend::echo();
    let term = f.start(
        Some(1),
        &[ListenerConf::new("edge", &[echo.addr()]).raw(
            "[[listeners.sni]]\nserver_names = [\"api.internal\"]\ncert = \"api.pem\"\n\
             key = \"api.key\"\n",
        )],
    );
    let addr = term.addr("edge");
    let default_der = first_cert(&f.pki.dir().join("server.pem"));

    // api.internal: the api certificate, verified for that name.
    let mut roots = f.pki.roots();
    roots.add(sni_ca.der.clone()).unwrap();
    let (mut tls, _) = connect_as(
        addr,
        &client_with(roots, None, rustls::ALL_VERSIONS, &[]),
        "api.internal",
    )
    .unwrap_or_else(|e| panic!("api.internal: {e}"));
    assert_eq!(
        tls.conn.peer_certificates().unwrap()[0],
        *api.der(),
        "api.internal must get the api certificate"
    );
    echo_round_trip(&mut tls, b"api", "api.internal");

    // No SNI (an IP address): the default, verified for 127.0.0.1.
    let (mut tls, _) =
        connect_as(addr, &f.client(None), "127.0.0.1").unwrap_or_else(|e| panic!("no SNI: {e}"));
    assert_eq!(tls.conn.peer_certificates().unwrap()[0], default_der);
    echo_round_trip(&mut tls, b"default", "no SNI");

    // An unknown name: the default (not valid for that name, so just record it).
    let seen = Arc::new(SeenServerCert::default());
    let cfg = ClientConfigBuilder::new(Trust::DangerousRecordServerCert(seen.clone()))
        .build()
        .unwrap();
    let (mut tls, _) = connect_as(addr, &cfg, "unknown.internal")
        .unwrap_or_else(|e| panic!("unknown.internal: {e}"));
    echo_round_trip(&mut tls, b"unknown", "unknown name");
    assert_eq!(
        seen.lock().unwrap().clone(),
        Some(default_der),
        "an unknown name must get the listener's default certificate"
    );
}

/// The first certificate of a PEM file.
fn first_cert(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("open PEM")
        .next()
        .expect("a certificate")
        .expect("parse PEM")
}

// ---------------------------------------------------------------------------------
// 7. Misbehaving clients never disturb an established mTLS stream
// ---------------------------------------------------------------------------------

#[test]
fn misbehaving_clients_do_not_disturb_an_established_mtls_stream() {
    let _heavy = heavy();
    let f = Fixture::new();
    let echo = Backend::echo();
    // One worker: the misbehaving clients share it with the stream.
    let term = f.start(
        Some(1),
        &[ListenerConf::new("mtls", &[echo.addr()])
            .opt("handshake_timeout_ms", "1000")
            .raw(&client_auth("require", &ALLOW))],
    );
    let addr = term.addr("mtls");
    let (mut stream, _) =
        connect_as(addr, &f.client(Some(&f.good())), "localhost").expect("good client");
    echo_round_trip(&mut stream, b"warm-up", "stream warm-up");

    let done = Arc::new(AtomicBool::new(false));
    let misbehave = {
        let done = done.clone();
        let hello = rustls_client_hello(&f.pki);
        let rogue = TestCa::root("rogue CA").unwrap();
        let untrusted = rogue
            .leaf(&LeafSpec::client("client", Some(GOOD_SPIFFE)))
            .unwrap();
        let untrusted_cfg = f.client(Some(&untrusted));
        let denied_cfg = f.client(Some(&f.leaf(&LeafSpec::client(
            "x",
            Some("spiffe://example.org/intruder"),
        ))));
        thread::spawn(move || {
            // Stalled handshakes, held open until terminus times them out.
            let mut stalled = Vec::new();
            for i in 0..10 {
                let mut s = tcp_connect(addr);
                if i % 2 == 1 {
                    s.write_all(&hello[..hello.len() / 2]).unwrap();
                }
                stalled.push(s);
            }
            for i in 0..40u64 {
                match i % 5 {
                    0 => {
                        let mut garbage = b"GARBAGE ".to_vec();
                        garbage.extend_from_slice(&Pattern::bytes(i, 3000));
                        raw_exchange(addr, &garbage, false);
                    }
                    1 => {
                        let (_, saw) = attempt(addr, &untrusted_cfg);
                        assert_eq!(saw, Saw::Alert(AlertDescription::UnknownCA));
                    }
                    2 => {
                        let (_, saw) = attempt(addr, &denied_cfg);
                        assert_eq!(saw, Saw::Alert(AlertDescription::AccessDenied));
                    }
                    3 => {
                        let mut s = tcp_connect(addr);
                        s.write_all(&hello).unwrap();
                        reset_connection(s);
                    }
                    _ => {
                        raw_exchange(addr, &hello[..hello.len() / 3], true);
                    }
                }
            }
            for mut s in stalled {
                let (data, _) = read_to_end_raw(&mut s, "stalled client");
                assert!(data.is_empty(), "a stalled client got {data:02x?}");
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // Stream 64 KiB round trips until the misbehaving is over (and a few more).
    let mut rounds = 0u64;
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 20 {
        assert!(
            Instant::now() < deadline,
            "misbehaving clients took over 20 s"
        );
        if done.load(Ordering::SeqCst) || misbehave.is_finished() {
            after += 1;
        }
        let chunk = Pattern::bytes(1000 + rounds, 64 * 1024);
        let t = Instant::now();
        echo_round_trip(&mut stream, &chunk, &format!("stream round {rounds}"));
        slowest = slowest.max(t.elapsed());
        rounds += 1;
    }
    misbehave.join().expect("misbehaving clients' thread");
    assert!(
        slowest < Duration::from_millis(750),
        "a round trip of the established stream took {slowest:?} while misbehaving clients \
         were around (handshake_timeout_ms = 1000)"
    );
    assert!(rounds > 20, "only {rounds} rounds");
    let log = f.log();
    log.wait_count("handshake_error", "timeout", 10);
    log.wait_count("handshake_error", "unknown_ca", 8);
    log.wait_count("handshake_error", "policy_denied", 8);
    log.wait_count("handshake_error", "malformed", 8);
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let (rest, ending) = read_to_end_tls(&mut stream, 0, "stream close");
    assert!(rest.is_empty());
    assert_eq!(
        ending,
        Ending::Clean,
        "the stream must end with close_notify"
    );
}
