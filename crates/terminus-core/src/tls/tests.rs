use super::pem::certified_key_from;
use super::settings::{ListenerTls, UpstreamTls};
use super::validity::{crl_warning, unix_now, validity_findings, Role};
use super::*;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::CertificateRevocationListDer;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use terminus_testkit::certs::test_pki;

/// A folder with a fresh test PKI and a listener pointing at its server files.
struct Fixture {
    dir: PathBuf,
    listener: ListenerTls,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("terminus-tls-{tag}-{}", std::process::id()));
        test_pki(30, "example.org").unwrap().write(&dir).unwrap();
        let listener = ListenerTls {
            name: "edge".into(),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            alpn: vec!["h2".into(), "http/1.1".into()],
            session_cache: 16 * 1024,
            tls13_tickets: 2,
            ticket_lifetime_s: 6 * 3600,
            upstreams: vec!["127.0.0.1:8080".parse().unwrap()],
            ..ListenerTls::default()
        };
        Fixture { dir, listener }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn server_config_completes_a_handshake_with_alpn() {
    let fx = Fixture::new("hs");
    let server_cfg = server_config(&fx.listener).unwrap();
    assert_eq!(server_cfg.send_tls13_tickets, 2);
    assert_eq!(server_cfg.max_early_data_size, 0);
    assert!(listener_problems(&fx.listener).is_empty());
    assert!(cert_warnings(&fx.listener).is_empty());

    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&fx.dir.join("ca.pem")).unwrap() {
        roots.add(ca).unwrap();
    }
    let mut client_cfg =
        rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    client_cfg.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::client::UnbufferedClientConnection::new(
        Arc::new(client_cfg),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let server = handshake(&mut client, &server_cfg);
    assert!(!server.is_handshaking());
    assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
}

/// A TLS 1.2 client that resumes by session ID only: the server's session store
/// (`session_cache`, tls/session_cache.rs) is what lets it resume; 0 turns it off.
#[test]
fn tls12_session_ids_resume_through_the_session_store() {
    for (size, want) in [
        (16 * 1024, rustls::HandshakeKind::Resumed),
        (0, rustls::HandshakeKind::Full),
    ] {
        let mut fx = Fixture::new(&format!("sid{size}"));
        fx.listener.session_cache = size;
        let server_cfg = server_config(&fx.listener).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs(&fx.dir.join("ca.pem")).unwrap() {
            roots.add(ca).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(8)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        let cfg = Arc::new(cfg);
        let connect = || {
            let mut c = rustls::client::UnbufferedClientConnection::new(
                cfg.clone(),
                "localhost".try_into().unwrap(),
            )
            .unwrap();
            handshake(&mut c, &server_cfg);
            c.handshake_kind().unwrap()
        };
        assert_eq!(connect(), rustls::HandshakeKind::Full);
        assert_eq!(connect(), want, "session_cache = {size}");
    }
}

/// Run an in-memory handshake to the end (tickets included); the server's side.
fn handshake(
    client: &mut rustls::client::UnbufferedClientConnection,
    server_cfg: &Arc<rustls::ServerConfig>,
) -> rustls::ServerConnection {
    use rustls::unbuffered::ConnectionState;
    let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
    // The upstream leg's client session is unbuffered (as `UpstreamClients::connect`
    // makes it); `incoming` is what the server sent and the client has not used.
    let mut incoming: Vec<u8> = Vec::new();
    for _ in 0..64 {
        let mut to_server = Vec::new();
        let st = client.process_tls_records(&mut incoming);
        let discard = st.discard;
        let mut progressed = discard > 0;
        match st.state.unwrap() {
            ConnectionState::EncodeTlsData(mut e) => {
                let mut b = vec![0u8; 16 * 1024];
                let n = e.encode(&mut b).unwrap();
                to_server.extend_from_slice(&b[..n]);
                progressed = true;
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                progressed = true;
            }
            ConnectionState::ReadTraffic(mut r) => {
                while r.next_record().is_some() {}
                progressed = true;
            }
            _ => {}
        }
        incoming.drain(..discard);
        if !to_server.is_empty() {
            server.read_tls(&mut to_server.as_slice()).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut from_server = Vec::new();
        server.write_tls(&mut from_server).unwrap();
        progressed |= !from_server.is_empty();
        incoming.extend_from_slice(&from_server);
        if !progressed && !client.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking());
    server
}

#[test]
fn upstream_sessions_are_per_address_and_dropped_when_refused() {
    let mut fx = Fixture::new("upsess");
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    fx.listener.upstreams = vec![a, b];
    fx.listener.upstream_tls = Some(UpstreamTls {
        ca: vec![fx.dir.join("ca.pem")],
        server_name: "localhost".into(),
        cert: None,
        key: None,
        svid: None,
        trust: None,
        resume: true,
        alpn: Vec::new(),
    });
    let server = server_config(&fx.listener).unwrap();
    let up = upstream_clients(&fx.listener).unwrap().unwrap();
    let kind = |c: &rustls::client::UnbufferedClientConnection| c.handshake_kind().unwrap();

    let (mut c, offered) = up.connect(a, false).unwrap();
    assert!(!offered, "nothing stored yet");
    handshake(&mut c, &server);
    assert_eq!(kind(&c), rustls::HandshakeKind::Full);
    assert_eq!(up.sessions(a), 2, "the server's two tickets");
    assert_eq!(up.sessions(b), 0, "another address has its own store");
    assert!(!up.connect(b, false).unwrap().1);
    assert!(!up.connect(a, true).unwrap().1, "full: nothing offered");
    let (mut c, offered) = up.connect(a, false).unwrap();
    assert!(offered);
    handshake(&mut c, &server);
    assert_eq!(kind(&c), rustls::HandshakeKind::Resumed);
    up.resumed(a);

    // Refused: every session of that address goes, and none is kept or offered
    // during the off period; one report per period.
    assert!(up.sessions(a) > 0);
    assert_eq!(up.refused(a), Some(super::client::RESUME_OFF_FIRST));
    assert_eq!(up.sessions(a), 0);
    assert_eq!(up.refused(a), None);
    let (mut c, offered) = up.connect(a, false).unwrap();
    assert!(!offered);
    handshake(&mut c, &server);
    assert_eq!(kind(&c), rustls::HandshakeKind::Full);
    assert_eq!(up.sessions(a), 0, "not kept while off");

    // resume = false: never offered, never kept.
    fx.listener.upstream_tls.as_mut().unwrap().resume = false;
    let up = upstream_clients(&fx.listener).unwrap().unwrap();
    for _ in 0..2 {
        let (mut c, offered) = up.connect(a, false).unwrap();
        assert!(!offered);
        handshake(&mut c, &server);
        assert_eq!(kind(&c), rustls::HandshakeKind::Full);
    }
    assert_eq!(up.refused(a), None);
}

#[test]
fn mismatched_key_names_both_files() {
    let mut fx = Fixture::new("mismatch");
    fx.listener.key = fx.dir.join("client.key");
    let e = server_config(&fx.listener).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: private key does not match the certificate in {} (its public key differs \
             from the leaf's)",
            fx.dir.join("client.key").display(),
            fx.dir.join("server.pem").display()
        )
    );
}

#[test]
fn problems_lists_cert_and_key_errors_together() {
    let mut fx = Fixture::new("both");
    fx.listener.cert = fx.dir.join("missing.pem");
    std::fs::write(fx.dir.join("empty.key"), "\n").unwrap();
    fx.listener.key = fx.dir.join("empty.key");
    let problems: Vec<String> = listener_problems(&fx.listener)
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("missing.pem: cannot read certificate file: No such file"));
    assert!(problems[1].ends_with("empty.key: no PEM private key found: the file is empty"));
}

#[test]
fn pem_problems_name_the_file() {
    let dir = std::env::temp_dir().join(format!("terminus-tls-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("empty.pem", "", "no PEM certificate found: the file is empty"),
        ("text.pem", "hello\n", "no PEM certificate found (expected"),
        (
            "b64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "unparsable PEM: bad base64",
        ),
        (
            "open.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            "unparsable PEM: no \"-----END CERTIFICATE-----\" line after \"-----BEGIN CERTIFICATE-----\"",
        ),
        (
            "der.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate #1 is not valid X.509",
        ),
    ];
    for (name, text, why) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let e = load_certs(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: {why}", path.display())), "{e}");
    }
    let path = dir.join("bad.key");
    std::fs::write(
        &path,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let der = load_key(&path).unwrap();
    let provider = aws_lc_rs::default_provider();
    let certs = load_certs(&dir.join("der.pem"));
    assert!(certs.is_err());
    let e = certified_key_from(&dir.join("x.pem"), &path, Vec::new(), der, &provider)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.key: unsupported or malformed PKCS#8 private key"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn encrypted_keys_and_misordered_chains_say_so() {
    let dir = std::env::temp_dir().join(format!("terminus-tls-enc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = dir.join("legacy.key");
    std::fs::write(
        &legacy,
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
         -----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = load_key(&legacy).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: the private key is encrypted (OpenSSL \"Proc-Type: 4,ENCRYPTED\")",
            legacy.display()
        )),
        "{e}"
    );
    // An encrypted key next to a plain one: the plain one is used.
    let pki = test_pki(30, "example.org").unwrap();
    let both = dir.join("both.key");
    std::fs::write(
        &both,
        format!(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n{}",
            pki.server_key_pem
        ),
    )
    .unwrap();
    assert!(load_key(&both).is_ok());

    // Two leaves, the key belonging to the second: named as an order problem.
    let other = test_pki(30, "example.org").unwrap();
    let chain = dir.join("chain.pem");
    std::fs::write(&chain, format!("{}{}", other.server_pem, pki.server_pem)).unwrap();
    let key = dir.join("server.key");
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    let e = certified_key(&chain, &key, &aws_lc_rs::default_provider())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: certificate chain in the wrong order: the private key in {} belongs to \
             certificate #2 (\"CN=localhost\"), which must come first (the server \
             certificate, then its intermediates)",
            chain.display(),
            key.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stale_crl_is_a_warning() {
    let ca = terminus_testkit::certs::TestCa::root("crl CA").unwrap();
    let (_, der) = ca.crl(&[&[1]]).unwrap();
    let crl = CertificateRevocationListDer::from(der);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert_eq!(crl_warning(Path::new("c.crl"), &crl, now), None);
    let w = crl_warning(Path::new("c.crl"), &crl, now + 2 * 86400).unwrap();
    assert!(
        w.starts_with("c.crl: CRL of \"CN=crl CA\" is past its nextUpdate ("),
        "{w}"
    );
}

#[test]
fn validity_findings_for_expired_future_and_expiring_certs() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let chain = [cert.der().clone()];
    let path = Path::new("old.pem");
    let messages = |now, role| -> Vec<(bool, String)> {
        validity_findings(path, &chain, role, now)
            .into_iter()
            .map(|f| (f.refused, f.message))
            .collect()
    };
    let in_2022 = 1_640_995_200;
    assert_eq!(
        messages(in_2022, Role::Server),
        [(true, "old.pem: certificate expired: notAfter Jan  1 00:00:00 2021 +00:00 (clients will reject it)".to_owned())]
    );
    assert_eq!(
        messages(in_2022, Role::Client)[0].1,
        "old.pem: certificate expired: notAfter Jan  1 00:00:00 2021 +00:00 (the upstream will reject it)"
    );
    let in_2019 = 1_546_300_800;
    let w = messages(in_2019, Role::Server);
    assert_eq!(w.len(), 1);
    assert!(w[0].0);
    assert!(w[0]
        .1
        .starts_with("old.pem: certificate not yet valid: notBefore Jan  1 00:00:00 2020"));
    assert!(messages(1_600_000_000, Role::Server).is_empty());
    let end = 1_609_459_200;
    assert_eq!(leaf_not_after(&chain), Some(end));
    let soon = |left: i64| messages(end - left, Role::Server);
    assert!(soon(14 * 86400).is_empty());
    assert_eq!(
        soon(5 * 86400 - 30),
        [(false, "old.pem: certificate expires in 5 days: notAfter Jan  1 00:00:00 2021 +00:00; renew it".to_owned())]
    );
    assert!(soon(86400)[0].1.contains("in 1 day:"));
    assert!(soon(3600)[0].1.contains("in 1 hour:"));
    assert!(soon(7000)[0].1.contains("in 2 hours:"));
}

#[test]
fn chain_findings_name_the_certificate() {
    let ca = terminus_testkit::certs::TestCa::root("dates CA").unwrap();
    let leaf = ca
        .leaf(&terminus_testkit::certs::LeafSpec::server(&["a.internal"]))
        .unwrap();
    let chain = [leaf.der().clone(), ca.der.clone()];
    // Both are valid for a day (minus the seconds since): within the window.
    let f = validity_findings(Path::new("c.pem"), &chain, Role::Server, unix_now());
    assert_eq!(f.len(), 2, "{f:?}");
    // A day from now, give or take the second boundary: "24 hours" or "1 day".
    assert!(
        f[0].message.starts_with("c.pem: certificate expires in "),
        "{}",
        f[0].message
    );
    assert!(
        f[1].message
            .starts_with("c.pem: certificate #2 (\"CN=dates CA\") expires in "),
        "{}",
        f[1].message
    );
}

#[test]
fn worker_config_records_the_refused_client_and_refuses_it_alike() {
    use rustls::{CertificateError, Error};
    let mut fx = Fixture::new("sink");
    fx.listener.client_auth = Some(super::settings::ClientAuth {
        mode: super::settings::ClientAuthMode::Require,
        ca: vec![fx.dir.join("ca.pem")],
        crl: Vec::new(),
        allow: vec!["spiffe://example.org/someone-else".into()],
        verify_cache_size: 4096,
        ..Default::default()
    });
    let tls = server_tls(&fx.listener).unwrap();
    let sink = RejectSink::default();
    let worker = tls.config_for(&sink);
    assert_eq!(worker.alpn_protocols, tls.config.alpn_protocols);
    assert_eq!(worker.send_tls13_tickets, tls.config.send_tls13_tickets);
    assert!(Arc::ptr_eq(&worker.ticketer, &tls.config.ticketer));

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(load_certs(&fx.dir.join("ca.pem")).unwrap()[0].clone())
        .unwrap();
    let chain = load_certs(&fx.dir.join("client.pem")).unwrap();
    let key = load_key(&fx.dir.join("client.key")).unwrap();
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    // The shared config and the worker's refuse the same way; only the worker's
    // records who it was.
    for (cfg, records) in [(&tls.config, false), (&worker, true)] {
        let mut client =
            rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(cfg.clone()).unwrap();
        let mut failed = None;
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = server.process_new_packets() {
                failed = Some(e);
                break;
            }
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert_eq!(
            failed,
            Some(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        );
        let rejected = sink.take();
        assert_eq!(rejected.is_some(), records);
        if let Some(r) = rejected {
            let id = r.identity.expect("the refused leaf's identity");
            assert_eq!(id.spiffe.as_deref(), Some("spiffe://example.org/client"));
        }
        assert!(sink.take().is_none(), "taken once");
    }
}

/// `config_for` rebuilds the listener's config around a worker's verifier and copies
/// the settings over (`copy_settings`): any setting `build_server_config` gains must be
/// copied too, or workers would serve differently from the shared config.
#[test]
fn worker_config_differs_from_the_shared_one_only_in_its_verifier() {
    let mut fx = Fixture::new("copy");
    fx.listener.client_auth = Some(super::settings::ClientAuth {
        mode: super::settings::ClientAuthMode::Optional,
        ca: vec![fx.dir.join("ca.pem")],
        crl: Vec::new(),
        allow: Vec::new(),
        verify_cache_size: 4096,
        ..Default::default()
    });
    fx.listener.alpn = vec!["h2".into(), "http/1.1".into()];
    fx.listener.tls13_tickets = 1;
    fx.listener.session_cache = 0;
    let tls = server_tls(&fx.listener).unwrap();
    let worker = tls.config_for(&RejectSink::default());
    // Every top-level field of the Debug form but the verifier's.
    let fields = |c: &rustls::ServerConfig| -> String {
        let mut out = String::new();
        let mut skip = false;
        for line in format!("{c:#?}").lines() {
            if line.starts_with("    ") && !line.starts_with("     ") {
                skip = line.trim_start().starts_with("verifier:");
            }
            if !skip {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    };
    assert!(fields(&tls.config).contains("alpn_protocols"));
    assert_eq!(fields(&worker), fields(&tls.config));
}

/// Always presents the same certificate and key, matched or not.
#[derive(Debug)]
struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Drive a handshake between `client_cfg` and the worker config `cfg` in memory;
/// the server's error, if it refused.
fn drive(
    cfg: &Arc<rustls::ServerConfig>,
    client_cfg: &Arc<rustls::ClientConfig>,
) -> Result<(), rustls::Error> {
    let mut client =
        rustls::ClientConnection::new(client_cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut server = rustls::ServerConnection::new(cfg.clone()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        let _ = client.read_tls(&mut buf.as_slice());
        let _ = client.process_new_packets();
        if !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 10 flights");
}

/// The chain cache skips only the chain: a client that presents a cached chain with
/// a key that is not its certificate's fails CertificateVerify, though the chain was
/// a hit; and a cache of size 0 counts nothing.
#[test]
fn a_cached_chain_with_the_wrong_key_is_still_refused() {
    let fx = Fixture::new("impostor");
    let mut listener = fx.listener.clone();
    listener.client_auth = Some(super::settings::ClientAuth {
        mode: super::settings::ClientAuthMode::Require,
        ca: vec![fx.dir.join("ca.pem")],
        crl: Vec::new(),
        allow: Vec::new(),
        verify_cache_size: 16,
        ..Default::default()
    });
    let tls = server_tls(&listener).unwrap();
    let worker = tls.config_for(&RejectSink::default());
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(load_certs(&fx.dir.join("ca.pem")).unwrap()[0].clone())
        .unwrap();
    let chain = load_certs(&fx.dir.join("client.pem")).unwrap();
    let client_for = |key: &Path| {
        let key = load_key(key).unwrap();
        let signer = provider.key_provider.load_private_key(key).unwrap();
        let presented = rustls::sign::CertifiedKey::new(chain.clone(), signer);
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(Arc::new(Present(Arc::new(presented))));
        // Full handshakes only: a resumed one verifies no chain.
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    };
    let honest = client_for(&fx.dir.join("client.key"));
    let impostor = client_for(&fx.dir.join("server.key"));
    drive(&worker, &honest).expect("the honest client");
    drive(&worker, &honest).expect("the honest client again");
    assert_eq!(tls.chain_cache_counts(), Some((1, 1)));
    let e = drive(&worker, &impostor).expect_err("the impostor");
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                | rustls::Error::PeerMisbehaved(_)
                | rustls::Error::General(_)
        ),
        "{e:?}"
    );
    assert_eq!(
        tls.chain_cache_counts(),
        Some((2, 1)),
        "its chain was a hit"
    );

    listener.client_auth.as_mut().unwrap().verify_cache_size = 0;
    let off = server_tls(&listener).unwrap();
    assert_eq!(off.chain_cache_counts(), None);
    drive(&off.config_for(&RejectSink::default()), &honest).expect("no cache");
}
