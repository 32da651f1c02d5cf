//! Trust modes in the TLS layer, without sockets: real rustls handshakes between an
//! in-memory client and the server config `terminus::tls` builds from a listener's
//! config, with certificates generated here (rcgen).
//!
//! Covers client authentication (none / optional / require), chain building through
//! client-sent intermediates, CRL revocation, the allow-list policy (denial is an
//! `access_denied` alert inside the handshake), the failure reason each refusal is
//! classified as (`terminus::proxy::conn::HandshakeFailure::classify`), SNI certificate
//! choice, and the upstream client config (mTLS towards an upstream).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, Error};
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::path::PathBuf;
use std::sync::Arc;
use terminus::config::{Config, Listener};
use terminus::proxy::conn::HandshakeFailure;
use terminus::tls::identity::PeerIdentity;
use terminus::tools::certs::{LeafSpec, TestCa, TestLeaf};
use terminus::tools::client::{ClientConfigBuilder, Trust};
use time::{Duration, OffsetDateTime};

/// A temp folder removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("terminus-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server CA + server cert written to `dir` (once per folder), and a listener config
/// around them with `extra` appended (client_auth, sni...).
fn listener(dir: &Dir, extra: &str) -> Listener {
    if !dir.0.join("server-ca.pem").exists() {
        let server_ca = TestCa::root("server CA").unwrap();
        let server = server_ca.leaf(&LeafSpec::server(&["localhost"])).unwrap();
        dir.write("server-ca.pem", &server_ca.pem);
        dir.write("server.pem", &server.chain_pem);
        dir.write("server.key", &server.key_pem);
    }
    let text = format!(
        "[[listeners]]\nname = \"edge\"\nlisten = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nupstreams = [\"127.0.0.1:1\"]\n{extra}"
    );
    let cfg = Config::parse(&text, &dir.0.join("config.toml")).unwrap();
    cfg.listeners.into_iter().next().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(
    dir: &Dir,
    versions: &[&'static rustls::SupportedProtocolVersion],
    auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in terminus::tls::load_certs(&dir.0.join("server-ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let mut b = ClientConfigBuilder::new(Trust::Roots(roots)).versions(versions);
    if let Some((chain, key)) = auth {
        b = b.client_cert(chain, key);
    }
    b.build().unwrap()
}

fn with_cert(leaf: &TestLeaf) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    Some((leaf.chain.clone(), leaf.key()))
}

/// A server config and the sink its verifier leaves refused clients in (what a
/// worker has), or a bare config.
#[derive(Clone)]
struct Server {
    config: Arc<ServerConfig>,
    rejects: Option<terminus::tls::RejectSink>,
}

impl From<Arc<ServerConfig>> for Server {
    fn from(config: Arc<ServerConfig>) -> Server {
        Server {
            config,
            rejects: None,
        }
    }
}

/// The outcome of one in-memory handshake.
struct Outcome {
    server: Result<(), Error>,
    client: Result<(), Error>,
    server_conn: ServerConnection,
    /// Taken right after the server's failing `process_new_packets`.
    rejected: Option<terminus::tls::RejectedClient>,
}

/// Drive a handshake to completion or failure, delivering the failing side's alert
/// to the other side and letting the client read once more after the server finished
/// (a TLS 1.3 client considers itself done before the server has checked its cert).
fn handshake(server_cfg: impl Into<Server>, client_cfg: Arc<ClientConfig>, sni: &str) -> Outcome {
    let server_cfg = server_cfg.into();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut client = ClientConnection::new(client_cfg, name).unwrap();
    let mut server = ServerConnection::new(server_cfg.config).unwrap();
    let mut server_res = Ok(());
    let mut client_res = Ok(());
    let mut rejected = None;
    let mut buf = Vec::new();
    for _ in 0..20 {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        if !buf.is_empty() && server_res.is_ok() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = server.process_new_packets() {
                rejected = server_cfg.rejects.as_ref().and_then(|r| r.take());
                server_res = Err(e);
            }
        }
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        if !buf.is_empty() && client_res.is_ok() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = client.process_new_packets() {
                client_res = Err(e);
            }
        }
        let done = !client.is_handshaking() && !server.is_handshaking();
        let quiet = !client.wants_write() && !server.wants_write();
        if (server_res.is_err() || client_res.is_err() || done) && quiet {
            break;
        }
    }
    Outcome {
        server: server_res,
        client: client_res,
        server_conn: server,
        rejected,
    }
}

/// Client PKI: a root CA whose bundle the listener trusts, and the root's CRL file.
struct Clients {
    ca: TestCa,
    dir: Dir,
}

impl Clients {
    fn new(tag: &str) -> Clients {
        let dir = Dir::new(tag);
        let ca = TestCa::root("clients CA").unwrap();
        dir.write("clients-ca.pem", &ca.pem);
        Clients { ca, dir }
    }

    fn leaf(&self, spiffe: &str) -> TestLeaf {
        self.ca
            .leaf(&LeafSpec::client("client", Some(spiffe)))
            .unwrap()
    }

    /// The listener's server config as a worker has it (with a sink).
    fn server(&self, client_auth: &str) -> Server {
        let l = listener(&self.dir, client_auth);
        let tls = terminus::tls::server_tls(&l.tls()).unwrap();
        let rejects = terminus::tls::RejectSink::default();
        Server {
            config: tls.config_for(&rejects),
            rejects: Some(rejects),
        }
    }

    fn client(&self, auth: Option<&TestLeaf>) -> Arc<ClientConfig> {
        client_config(
            &self.dir,
            &[&rustls::version::TLS13],
            auth.and_then(with_cert),
        )
    }
}

const REQUIRE: &str = "[listeners.client_auth]\nmode = \"require\"\nca = [\"clients-ca.pem\"]\n";
const OPTIONAL: &str = "[listeners.client_auth]\nmode = \"optional\"\nca = [\"clients-ca.pem\"]\n";
const GOOD_ID: &str = "spiffe://example.org/ns/prod/sa/billing";

fn assert_refused(
    o: &Outcome,
    server_err: Error,
    reason: HandshakeFailure,
    alert: AlertDescription,
) {
    assert_eq!(o.server.as_ref().unwrap_err(), &server_err);
    assert_eq!(
        HandshakeFailure::classify(o.server.as_ref().unwrap_err()),
        reason,
        "{:?}",
        o.server
    );
    assert_eq!(
        o.client.as_ref().unwrap_err(),
        &Error::AlertReceived(alert),
        "client side"
    );
}

#[test]
fn good_client_is_verified_and_identified() {
    let c = Clients::new("good");
    let leaf = c.leaf(GOOD_ID);
    let o = handshake(
        c.server(&format!(
            "{REQUIRE}allow = [\"spiffe://example.org/ns/prod/*\"]\n"
        )),
        c.client(Some(&leaf)),
        "localhost",
    );
    assert!(
        o.server.is_ok() && o.client.is_ok(),
        "{:?} {:?}",
        o.server,
        o.client
    );
    assert!(o.rejected.is_none());
    let certs = o
        .server_conn
        .peer_certificates()
        .expect("a verified client cert");
    let id = PeerIdentity::from_der(&certs[0]).unwrap();
    assert_eq!(id.spiffe.as_deref(), Some(GOOD_ID));
    assert_eq!(id.cn.as_deref(), Some("client"));
}

#[test]
fn untrusted_ca_is_unknown_ca() {
    let c = Clients::new("untrusted");
    let other = TestCa::root("someone else's CA").unwrap();
    let leaf = other
        .leaf(&LeafSpec::client("client", Some(GOOD_ID)))
        .unwrap();
    let o = handshake(c.server(REQUIRE), c.client(Some(&leaf)), "localhost");
    assert_refused(
        &o,
        Error::InvalidCertificate(CertificateError::UnknownIssuer),
        HandshakeFailure::UnknownCa,
        AlertDescription::UnknownCA,
    );
    let r = o.rejected.expect("the refused client is recorded");
    assert_eq!(r.identity.unwrap().spiffe.as_deref(), Some(GOOD_ID));
}

/// A client certificate outside its validity window is refused with
/// `certificate_expired`, before the window as after it; each case names itself.
#[test]
fn client_cert_outside_its_validity_window() {
    let now = OffsetDateTime::now_utc();
    type Matches = fn(&Error) -> bool;
    let cases: [(
        &str,
        OffsetDateTime,
        OffsetDateTime,
        Matches,
        HandshakeFailure,
    ); 2] = [
        (
            "expired",
            now - Duration::days(10),
            now - Duration::days(1),
            |e| {
                matches!(
                    e,
                    Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                )
            },
            HandshakeFailure::CertExpired,
        ),
        (
            "future",
            now + Duration::hours(2),
            now + Duration::days(1),
            |e| {
                matches!(
                    e,
                    Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
                )
            },
            HandshakeFailure::CertNotYetValid,
        ),
    ];
    for (case, not_before, not_after, server_error, reason) in cases {
        let c = Clients::new(case);
        let mut spec = LeafSpec::client("client", Some(GOOD_ID));
        spec.not_before = not_before;
        spec.not_after = not_after;
        let leaf = c.ca.leaf(&spec).unwrap();
        let o = handshake(c.server(REQUIRE), c.client(Some(&leaf)), "localhost");
        let err = o.server.as_ref().unwrap_err();
        assert!(server_error(err), "{case}: {err:?}");
        assert_eq!(HandshakeFailure::classify(err), reason, "{case}");
        assert_eq!(
            o.client.unwrap_err(),
            Error::AlertReceived(AlertDescription::CertificateExpired),
            "{case}: client side"
        );
    }
}

#[test]
fn revoked_client_cert_via_crl_pem_and_der() {
    let c = Clients::new("revoked");
    let revoked = c.leaf(GOOD_ID);
    let fine = c.leaf("spiffe://example.org/ns/prod/sa/other");
    let (pem, der) = c.ca.crl(&[&revoked.serial]).unwrap();
    c.dir.write("clients.crl.pem", pem);
    c.dir.write("clients.crl", der);
    for crl in ["clients.crl.pem", "clients.crl"] {
        let server = c.server(&format!("{REQUIRE}crl = [\"{crl}\"]\n"));
        let o = handshake(server.clone(), c.client(Some(&revoked)), "localhost");
        assert_refused(
            &o,
            Error::InvalidCertificate(CertificateError::Revoked),
            HandshakeFailure::CertRevoked,
            AlertDescription::CertificateRevoked,
        );
        let o = handshake(server, c.client(Some(&fine)), "localhost");
        assert!(
            o.server.is_ok() && o.client.is_ok(),
            "{crl}: {:?}",
            o.server
        );
    }
}

#[test]
fn wrong_spiffe_id_is_access_denied_inside_the_handshake() {
    let c = Clients::new("policy");
    let leaf = c.leaf("spiffe://example.org/ns/dev/sa/billing");
    let allow = format!("{REQUIRE}allow = [\"spiffe://example.org/ns/prod/*\", \"cn:admin\"]\n");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let server = c.server(&allow);
        let client = client_config(&c.dir, &[version], with_cert(&leaf));
        let o = handshake(server, client, "localhost");
        assert_refused(
            &o,
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            HandshakeFailure::PolicyDenied,
            AlertDescription::AccessDenied,
        );
        let r = o.rejected.expect("the denied client is recorded");
        let id = r.identity.unwrap();
        assert_eq!(
            id.spiffe.as_deref(),
            Some("spiffe://example.org/ns/dev/sa/billing")
        );
        assert_eq!(id.subject, "CN=client");
        assert_eq!(r.error, o.server.unwrap_err());
    }
    // Another trust domain with the same path is not allowed either.
    let evil = c.leaf("spiffe://example.org.evil/ns/prod/sa/billing");
    let o = handshake(c.server(&allow), c.client(Some(&evil)), "localhost");
    assert_eq!(
        HandshakeFailure::classify(o.server.as_ref().unwrap_err()),
        HandshakeFailure::PolicyDenied
    );
}

#[test]
fn no_client_cert_with_require() {
    let c = Clients::new("nocert");
    let o = handshake(c.server(REQUIRE), c.client(None), "localhost");
    assert_refused(
        &o,
        Error::NoCertificatesPresented,
        HandshakeFailure::NoClientCert,
        AlertDescription::CertificateRequired,
    );
    assert!(o.rejected.is_none(), "the verifier never saw a certificate");
}

#[test]
fn optional_lets_clients_without_a_cert_through_but_not_bad_certs() {
    let c = Clients::new("optional");
    let o = handshake(c.server(OPTIONAL), c.client(None), "localhost");
    assert!(o.server.is_ok() && o.client.is_ok(), "{:?}", o.server);
    assert!(o.server_conn.peer_certificates().is_none());

    let good = c.leaf(GOOD_ID);
    let o = handshake(c.server(OPTIONAL), c.client(Some(&good)), "localhost");
    assert!(o.server.is_ok(), "{:?}", o.server);
    assert!(o.server_conn.peer_certificates().is_some());

    let other = TestCa::root("someone else's CA").unwrap();
    let bad = other
        .leaf(&LeafSpec::client("client", Some(GOOD_ID)))
        .unwrap();
    let o = handshake(c.server(OPTIONAL), c.client(Some(&bad)), "localhost");
    assert_eq!(
        HandshakeFailure::classify(o.server.as_ref().unwrap_err()),
        HandshakeFailure::UnknownCa
    );

    let denied = format!("{OPTIONAL}allow = [\"cn:someone-else\"]\n");
    let o = handshake(c.server(&denied), c.client(Some(&good)), "localhost");
    assert_eq!(
        o.client.unwrap_err(),
        Error::AlertReceived(AlertDescription::AccessDenied)
    );
}

#[test]
fn mode_none_asks_for_no_certificate() {
    let c = Clients::new("none");
    let leaf = c.leaf(GOOD_ID);
    // The CA list may stay in place while rolled back to "none".
    let none = "[listeners.client_auth]\nmode = \"none\"\nca = [\"missing.pem\"]\n";
    for extra in ["", none] {
        let o = handshake(c.server(extra), c.client(Some(&leaf)), "localhost");
        assert!(o.server.is_ok() && o.client.is_ok(), "{:?}", o.server);
        assert!(o.server_conn.peer_certificates().is_none());
    }
}

#[test]
fn intermediates_sent_by_the_client_build_the_chain() {
    let c = Clients::new("intermediate");
    let issuing = c.ca.intermediate("issuing CA").unwrap();
    let leaf = issuing
        .leaf(&LeafSpec::client("client", Some(GOOD_ID)))
        .unwrap();
    assert_eq!(leaf.chain.len(), 2);
    let o = handshake(c.server(REQUIRE), c.client(Some(&leaf)), "localhost");
    assert!(o.server.is_ok() && o.client.is_ok(), "{:?}", o.server);
    assert_eq!(o.server_conn.peer_certificates().unwrap().len(), 2);

    // Without the intermediate the chain cannot be built.
    let leaf_only = Some((vec![leaf.chain[0].clone()], leaf.key()));
    let client = client_config(&c.dir, &[&rustls::version::TLS13], leaf_only);
    let o = handshake(c.server(REQUIRE), client, "localhost");
    assert_eq!(
        HandshakeFailure::classify(o.server.as_ref().unwrap_err()),
        HandshakeFailure::UnknownCa
    );

    // A revoked intermediate (root's CRL) takes its leaves down; the issuing CA's own
    // CRL revokes a leaf; a CRL for an unrelated CA changes nothing.
    let (root_crl, _) = c.ca.crl(&[&serial_of(&issuing.der)]).unwrap();
    c.dir.write("root.crl", root_crl);
    let o = handshake(
        c.server(&format!("{REQUIRE}crl = [\"root.crl\"]\n")),
        c.client(Some(&leaf)),
        "localhost",
    );
    assert_eq!(
        o.server.unwrap_err(),
        Error::InvalidCertificate(CertificateError::Revoked)
    );
    let (issuing_crl, _) = issuing.crl(&[&leaf.serial]).unwrap();
    c.dir.write("issuing.crl", issuing_crl);
    let o = handshake(
        c.server(&format!("{REQUIRE}crl = [\"issuing.crl\"]\n")),
        c.client(Some(&leaf)),
        "localhost",
    );
    assert_eq!(
        o.server.unwrap_err(),
        Error::InvalidCertificate(CertificateError::Revoked)
    );
    let unrelated = TestCa::root("unrelated").unwrap();
    let (unrelated_crl, _) = unrelated.crl(&[&leaf.serial]).unwrap();
    c.dir.write("unrelated.crl", unrelated_crl);
    let o = handshake(
        c.server(&format!("{REQUIRE}crl = [\"unrelated.crl\"]\n")),
        c.client(Some(&leaf)),
        "localhost",
    );
    assert!(o.server.is_ok(), "{:?}", o.server);
}

fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

#[test]
fn several_ca_bundles() {
    let c = Clients::new("bundles");
    let second = TestCa::root("second clients CA").unwrap();
    c.dir.write("second-ca.pem", &second.pem);
    let leaf = second
        .leaf(&LeafSpec::client("client", Some(GOOD_ID)))
        .unwrap();
    let both = "[listeners.client_auth]\nmode = \"require\"\nca = [\"clients-ca.pem\", \"second-ca.pem\"]\n";
    let o = handshake(c.server(both), c.client(Some(&leaf)), "localhost");
    assert!(o.server.is_ok(), "{:?}", o.server);
    let o = handshake(c.server(REQUIRE), c.client(Some(&leaf)), "localhost");
    assert!(o.server.is_err());
}

#[test]
fn ca_and_crl_problems_name_the_file() {
    let c = Clients::new("badfiles");
    c.dir.write("empty.pem", "");
    c.dir.write("garbage.crl", "hello\n");
    c.dir.write("bad.crl", [0x30, 0x03, 0x01, 0x02, 0x03]);
    let base = c.dir.0.display().to_string();
    let cases = [
        (
            "ca = [\"nope.pem\"]",
            format!("{base}/nope.pem: cannot read certificate file: No such file"),
        ),
        (
            "ca = [\"empty.pem\"]",
            format!("{base}/empty.pem: no PEM certificate found: the file is empty"),
        ),
        (
            "ca = [\"clients-ca.pem\"]\ncrl = [\"nope.crl\"]",
            format!("{base}/nope.crl: cannot read CRL file: No such file"),
        ),
        (
            "ca = [\"clients-ca.pem\"]\ncrl = [\"garbage.crl\"]",
            format!("{base}/garbage.crl: no CRL found (expected a \"-----BEGIN X509 CRL-----\" section or a DER CRL)"),
        ),
        (
            "ca = [\"clients-ca.pem\"]\ncrl = [\"bad.crl\"]",
            format!("{base}/bad.crl: CRL #1 is not a valid X.509 CRL"),
        ),
        (
            "ca = [\"clients-ca.pem\"]\ncrl = [\"clients-ca.pem\"]",
            format!("{base}/clients-ca.pem: no CRL found"),
        ),
    ];
    for (keys, want) in cases {
        let l = listener(
            &c.dir,
            &format!("[listeners.client_auth]\nmode = \"require\"\n{keys}\n"),
        );
        let e = terminus::tls::server_config(&l.tls())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&want), "{keys}:\n got {e}\nwant {want}");
        let problems = terminus::tls::listener_problems(&l.tls());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].to_string().starts_with(&want),
            "{}",
            problems[0]
        );
    }
    // listener_problems reports every bad file at once.
    let l = listener(
        &c.dir,
        "[listeners.client_auth]\nmode = \"optional\"\nca = [\"nope.pem\", \"empty.pem\"]\ncrl = [\"garbage.crl\"]\n\
         [listeners.upstream_tls]\nca = [\"nope2.pem\"]\nserver_name = \"backend\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
    );
    let problems: Vec<String> = terminus::tls::listener_problems(&l.tls())
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(problems.len(), 6, "{problems:#?}");
}

// ---------------------------------------------------------------------------------
// SNI
// ---------------------------------------------------------------------------------

#[test]
fn sni_chooses_the_certificate_by_name() {
    let dir = Dir::new("sni");
    let ca = TestCa::root("sni CA").unwrap();
    dir.write("sni-ca.pem", &ca.pem);
    for (file, names) in [
        ("api", &["api.internal"][..]),
        ("wild", &["*.example.org"][..]),
        ("exact", &["www.example.org"][..]),
    ] {
        let leaf = ca.leaf(&LeafSpec::server(names)).unwrap();
        dir.write(&format!("{file}.pem"), &leaf.chain_pem);
        dir.write(&format!("{file}.key"), &leaf.key_pem);
    }
    let extra = "[[listeners.sni]]\nserver_names = [\"API.internal\"]\ncert = \"api.pem\"\nkey = \"api.key\"\n\
                 [[listeners.sni]]\nserver_names = [\"*.example.org\"]\ncert = \"wild.pem\"\nkey = \"wild.key\"\n\
                 [[listeners.sni]]\nserver_names = [\"www.example.org\"]\ncert = \"exact.pem\"\nkey = \"exact.key\"\n";
    let l = listener(&dir, extra);
    let tls = terminus::tls::server_tls(&l.tls()).unwrap();
    let cn = |name: Option<&str>| {
        let der = &tls.certs.choose(name).key.cert[0];
        PeerIdentity::from_der(der).unwrap().cn.unwrap()
    };
    assert_eq!(cn(None), "localhost");
    assert_eq!(cn(Some("api.internal")), "api.internal");
    assert_eq!(cn(Some("Api.Internal")), "api.internal");
    assert_eq!(cn(Some("a.example.org")), "*.example.org");
    assert_eq!(cn(Some("www.example.org")), "www.example.org");
    assert_eq!(cn(Some("a.b.example.org")), "localhost");
    assert_eq!(cn(Some("example.org")), "localhost");
    assert_eq!(cn(Some("unknown.internal")), "localhost");
    let algs = &tls.certs.choose(Some("api.internal")).algorithms;
    assert_eq!(
        (algs.sig_alg.as_str(), algs.key_alg.as_str()),
        ("ecdsa-with-SHA256", "EC256")
    );

    // Real handshakes: a client trusting only the SNI CA succeeds for the SNI names
    // and fails (unknown issuer) for names that get the default certificate.
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let client = ClientConfigBuilder::new(Trust::Roots(roots))
        .build()
        .unwrap();
    for name in ["api.internal", "x.example.org", "www.example.org"] {
        let o = handshake(tls.config.clone(), client.clone(), name);
        assert!(o.client.is_ok(), "{name}: {:?}", o.client);
        assert_eq!(o.server_conn.server_name(), Some(name));
    }
    let o = handshake(tls.config.clone(), client, "other.internal");
    assert_eq!(
        o.client.unwrap_err(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn sni_cert_problems_name_the_file() {
    let dir = Dir::new("sni-bad");
    let extra = "[[listeners.sni]]\nserver_names = [\"api.internal\"]\ncert = \"missing.pem\"\nkey = \"server.key\"\n";
    let l = listener(&dir, extra);
    let e = terminus::tls::server_config(&l.tls())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{}: cannot read certificate file",
            dir.0.join("missing.pem").display()
        )),
        "{e}"
    );
    assert_eq!(terminus::tls::listener_problems(&l.tls()).len(), 1);
}

// ---------------------------------------------------------------------------------
// Upstream TLS
// ---------------------------------------------------------------------------------

/// An upstream that requires a client certificate from `client_ca`.
fn upstream_server(cert: &TestLeaf, client_ca: &TestCa) -> Arc<ServerConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(client_ca.der.clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain.clone(), cert.key())
            .unwrap(),
    )
}

fn upstream_listener(dir: &Dir, keys: &str) -> Listener {
    listener(dir, &format!("[listeners.upstream_tls]\n{keys}\n"))
}

#[test]
fn upstream_mtls_is_verified_both_ways() {
    let dir = Dir::new("upstream");
    let up_ca = TestCa::root("upstream CA").unwrap();
    let up = up_ca
        .leaf(&LeafSpec::server(&["backend.internal"]))
        .unwrap();
    let client_ca = TestCa::root("terminus-as-client CA").unwrap();
    let me = client_ca
        .leaf(&LeafSpec::client(
            "terminus",
            Some("spiffe://example.org/terminus"),
        ))
        .unwrap();
    dir.write("up-ca.pem", &up_ca.pem);
    dir.write("me.pem", &me.chain_pem);
    dir.write("me.key", &me.key_pem);
    let server = upstream_server(&up, &client_ca);

    let l = upstream_listener(
        &dir,
        "ca = [\"up-ca.pem\"]\nserver_name = \"backend.internal\"\ncert = \"me.pem\"\nkey = \"me.key\"",
    );
    assert!(terminus::tls::listener_problems(&l.tls()).is_empty());
    let (cfg, name) = terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .unwrap();
    assert_eq!(name, ServerName::try_from("backend.internal").unwrap());
    let o = handshake(server.clone(), cfg.clone(), "backend.internal");
    assert!(
        o.server.is_ok() && o.client.is_ok(),
        "{:?} {:?}",
        o.server,
        o.client
    );
    let id = PeerIdentity::from_der(&o.server_conn.peer_certificates().unwrap()[0]).unwrap();
    assert_eq!(id.spiffe.as_deref(), Some("spiffe://example.org/terminus"));
    // The second connection resumes.
    let o = handshake(server.clone(), cfg.clone(), "backend.internal");
    assert_eq!(
        o.server_conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );

    // Wrong name: the upstream's certificate is not valid for it.
    let l = upstream_listener(
        &dir,
        "ca = [\"up-ca.pem\"]\nserver_name = \"other.internal\"\ncert = \"me.pem\"\nkey = \"me.key\"",
    );
    let (cfg, _) = terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .unwrap();
    let o = handshake(server.clone(), cfg, "other.internal");
    assert!(
        matches!(
            o.client,
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{:?}",
        o.client
    );

    // Wrong CA: unknown issuer.
    dir.write("other-ca.pem", &client_ca.pem);
    let l = upstream_listener(
        &dir,
        "ca = [\"other-ca.pem\"]\nserver_name = \"backend.internal\"\ncert = \"me.pem\"\nkey = \"me.key\"",
    );
    let (cfg, _) = terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .unwrap();
    let o = handshake(server.clone(), cfg, "backend.internal");
    assert_eq!(
        o.client.unwrap_err(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );

    // No client certificate: the upstream refuses.
    let l = upstream_listener(
        &dir,
        "ca = [\"up-ca.pem\"]\nserver_name = \"backend.internal\"",
    );
    let (cfg, _) = terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .unwrap();
    let o = handshake(server, cfg, "backend.internal");
    assert_eq!(o.server.unwrap_err(), Error::NoCertificatesPresented);
}

#[test]
fn upstream_tls_absent_and_file_errors() {
    let dir = Dir::new("upstream-bad");
    let l = listener(&dir, "");
    assert!(terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .is_none());
    let ca = TestCa::root("x").unwrap();
    dir.write("up-ca.pem", &ca.pem);
    let l = upstream_listener(
        &dir,
        "ca = [\"up-ca.pem\"]\nserver_name = \"127.0.0.1\"\ncert = \"server.pem\"\nkey = \"nope.key\"",
    );
    let e = terminus::tls::upstream_client_config(&l.tls())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{}: cannot read private key file",
            dir.0.join("nope.key").display()
        )),
        "{e}"
    );
    let l = upstream_listener(&dir, "ca = [\"up-ca.pem\"]\nserver_name = \"127.0.0.1\"");
    let (_, name) = terminus::tls::upstream_client_config(&l.tls())
        .unwrap()
        .unwrap();
    assert!(matches!(name, ServerName::IpAddress(_)));
}

// ---------------------------------------------------------------------------------
// What PROXY v2 reports about a real connection
// ---------------------------------------------------------------------------------

#[test]
fn proxy_v2_ssl_describes_the_connection() {
    use terminus::proxy::proxy_v2::Ssl;
    let c = Clients::new("ppssl");
    let leaf = c.leaf(GOOD_ID);
    let l = listener(&c.dir, REQUIRE);
    let tls = terminus::tls::server_tls(&l.tls()).unwrap();
    let client = c.client(Some(&leaf));
    let o = handshake(tls.config.clone(), client.clone(), "localhost");
    assert!(o.server.is_ok(), "{:?}", o.server);
    let conn = &o.server_conn;
    let peer = PeerIdentity::from_der(&conn.peer_certificates().unwrap()[0]).unwrap();
    let served = &tls.certs.choose(conn.server_name()).algorithms;
    let ssl = Ssl::from_tls(conn, Some(served), Some(&peer));
    assert_eq!(ssl, crate::common::proxy_v2::verified_tls13_ssl("client"));
    // Resumed: the certificate belongs to the session, not this connection.
    let o = handshake(tls.config.clone(), client, "localhost");
    assert_eq!(
        o.server_conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let ssl = Ssl::from_tls(&o.server_conn, Some(served), Some(&peer));
    assert!(ssl.client_cert_presented && ssl.resumed && ssl.verified);

    // No certificate (optional): not verified, no CN.
    let l = listener(&c.dir, OPTIONAL);
    let tls = terminus::tls::server_tls(&l.tls()).unwrap();
    let o = handshake(tls.config.clone(), c.client(None), "localhost");
    let ssl = Ssl::from_tls(&o.server_conn, None, None);
    assert!(!ssl.client_cert_presented && !ssl.verified && ssl.cn.is_none());
}

/// A client config offering exactly `suites` and `groups` (None: the provider's).
fn client_with(
    dir: &Dir,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
    groups: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
) -> Arc<ClientConfig> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(s) = suites {
        p.cipher_suites = s;
    }
    if let Some(g) = groups {
        p.kx_groups = g;
    }
    let mut roots = RootCertStore::empty();
    for c in terminus::tls::load_certs(&dir.0.join("server-ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_server(dir: &Dir, extra: &str) -> Arc<ServerConfig> {
    terminus::tls::server_tls(&listener(dir, extra).tls())
        .unwrap()
        .config
}

#[test]
fn min_version_13_refuses_a_tls12_only_client() {
    let dir = Dir::new("minver");
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let tls12 = &[&rustls::version::TLS12][..];
    // Default: a TLS 1.2 client is served.
    let o = handshake(
        tls_server(&dir, ""),
        client_with(&dir, tls12, None, None),
        "localhost",
    );
    assert!(o.server.is_ok() && o.client.is_ok(), "{:?}", o.server);
    let only13 = tls_server(&dir, "min_version = \"1.3\"\n");
    let o = handshake(
        only13.clone(),
        client_with(&dir, tls12, None, None),
        "localhost",
    );
    assert!(
        matches!(o.server, Err(Error::PeerIncompatible(_))),
        "{:?}",
        o.server
    );
    let o = handshake(only13, client_with(&dir, both, None, None), "localhost");
    assert!(o.server.is_ok(), "{:?}", o.server);
    assert_eq!(
        o.server_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn cipher_suites_are_the_servers_order_and_nothing_else() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let dir = Dir::new("suites");
    let server = tls_server(
        &dir,
        "cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\", \"TLS13_AES_256_GCM_SHA384\"]\n",
    );
    let v13 = &[&rustls::version::TLS13][..];
    // The client prefers AES-128, which is not allowed, then AES-256, then ChaCha20:
    // the server's order picks ChaCha20.
    let all = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let o = handshake(
        server.clone(),
        client_with(&dir, v13, Some(all), None),
        "localhost",
    );
    assert!(o.server.is_ok(), "{:?}", o.server);
    assert_eq!(
        o.server_conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
    let only128 = vec![cs::TLS13_AES_128_GCM_SHA256];
    let o = handshake(
        server,
        client_with(&dir, v13, Some(only128), None),
        "localhost",
    );
    assert!(
        matches!(o.server, Err(Error::PeerIncompatible(_))),
        "{:?}",
        o.server
    );
}

#[test]
fn groups_can_require_the_post_quantum_hybrid() {
    use rustls::crypto::aws_lc_rs::kx_group;
    let dir = Dir::new("groups");
    let server = tls_server(&dir, "groups = [\"X25519MLKEM768\"]\n");
    let v13 = &[&rustls::version::TLS13][..];
    // rustls' default client sends an X25519 key share first and lists the hybrid:
    // the server asks for the hybrid (HelloRetryRequest) and gets it.
    let o = handshake(
        server.clone(),
        client_with(&dir, v13, None, None),
        "localhost",
    );
    assert!(o.server.is_ok(), "{:?}", o.server);
    assert_eq!(
        o.server_conn
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    let classic: Vec<&'static dyn rustls::crypto::SupportedKxGroup> =
        vec![kx_group::X25519, kx_group::SECP256R1];
    let o = handshake(
        server,
        client_with(&dir, v13, None, Some(classic)),
        "localhost",
    );
    assert!(
        matches!(o.server, Err(Error::PeerIncompatible(_))),
        "{:?}",
        o.server
    );
    // The default server keeps X25519 first.
    let o = handshake(
        tls_server(&dir, ""),
        client_with(&dir, v13, None, None),
        "localhost",
    );
    assert_eq!(
        o.server_conn
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519)
    );
}
