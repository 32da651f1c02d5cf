//! Shared by the criterion benches: rustls configs shaped like terminus's own, and
//! in-memory byte shuttling between a client and a server (no sockets, no clock
//! except the timing the benches ask for).
//!
//! The server config mirrors `terminus::tls::build_server_config`
//! (`terminus::tls::server_provider()`, i.e. aws-lc-rs with AES-128-GCM-SHA256
//! first and the server's suite order enforced; TLS 1.3 + 1.2; a 16 Ki-entry
//! session cache; a stateless ticketer; one TLS 1.3 ticket per handshake; no early
//! data), so a full handshake pays for the ticket it issues, as in production.
#![allow(dead_code)] // each bench uses a different subset

use rustls::crypto::{aws_lc_rs, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SupportedCipherSuite,
};
use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::tools::certs::{LeafKey, LeafSpec};
use terminus::tools::client::{ClientConfigBuilder, Trust};

pub const SERVER_NAME: &str = "localhost";

/// A server certificate chain and its key.
pub struct ServerCreds {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The terminus test PKI (ECDSA P-256 CA, server and client), plus an RSA-2048
/// server certificate signed by the same CA.
pub struct Pki {
    pub roots: RootCertStore,
    pub ecdsa: ServerCreds,
    pub rsa: ServerCreds,
    /// The client certificate (ECDSA P-256) for mTLS.
    pub client: ServerCreds,
}

pub fn pki() -> Pki {
    terminus::tls::install_provider();
    let t = terminus::tools::certs::test_pki(2, "example.org").expect("test PKI");
    let mut roots = RootCertStore::empty();
    roots.add(t.ca_der.clone()).expect("CA into root store");

    let rsa = t
        .ca()
        .expect("CA as issuer")
        .leaf(&LeafSpec {
            key: LeafKey::Rsa2048,
            ..LeafSpec::server(&[SERVER_NAME])
        })
        .expect("RSA leaf");

    Pki {
        roots,
        ecdsa: ServerCreds {
            chain: vec![t.server_der.clone()],
            key: t.server_key(),
        },
        rsa: ServerCreds {
            chain: vec![rsa.der().clone()],
            key: rsa.key(),
        },
        client: ServerCreds {
            chain: vec![t.client_der.clone()],
            key: t.client_key(),
        },
    }
}

/// A server config like terminus's; `client_roots` makes it require a client
/// certificate chaining to them (mTLS).
pub fn server_config(
    creds: &ServerCreds,
    client_roots: Option<&RootCertStore>,
) -> Arc<ServerConfig> {
    let provider = terminus::tls::server_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("TLS versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider)
                .build()
                .expect("client verifier"),
        ),
    };
    let mut cfg = builder
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .expect("server cert and key");
    cfg.ignore_client_order = true;
    cfg.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = aws_lc_rs::Ticketer::new().expect("ticketer");
    cfg.send_tls13_tickets = 1;
    cfg.max_early_data_size = 0;
    Arc::new(cfg)
}

/// What a bench client offers.
pub struct ClientOpts<'a> {
    /// The only key exchange group offered (so it is the one negotiated).
    pub kx: &'static dyn SupportedKxGroup,
    /// The only cipher suite offered; `None` offers aws-lc-rs's defaults.
    pub suite: Option<SupportedCipherSuite>,
    /// Keep tickets and resume with them (the config must then be reused).
    pub resume: bool,
    /// Present this certificate when asked (mTLS).
    pub cert: Option<&'a ServerCreds>,
}

/// A TLS 1.3 client config that verifies the server against `roots`
/// (`terminus::tools::client`).
pub fn client_config(roots: &RootCertStore, o: ClientOpts<'_>) -> Arc<ClientConfig> {
    let mut b = ClientConfigBuilder::new(Trust::Roots(roots.clone()))
        .versions(&[&rustls::version::TLS13])
        .kx_groups(&[o.kx]);
    if let Some(s) = o.suite {
        b = b.cipher_suites(&[s]);
    }
    if let Some(c) = o.cert {
        b = b.client_cert(c.chain.clone(), c.key.clone_key());
    }
    if !o.resume {
        b = b.no_resumption();
    }
    b.build().expect("client config")
}

pub fn client(cfg: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(cfg.clone(), SERVER_NAME.try_into().unwrap()).expect("client connection")
}

/// Feed `data` to a connection: read_tls + process_new_packets until all is taken.
/// Plaintext is left in the connection's reader.
pub fn feed<D>(c: &mut ConnectionCommon<D>, data: &[u8]) {
    let mut s = data;
    while !s.is_empty() {
        c.read_tls(&mut s).expect("read_tls");
        c.process_new_packets().expect("process_new_packets");
    }
}

/// Append everything the connection wants to send to `out`.
pub fn drain<D>(c: &mut ConnectionCommon<D>, out: &mut Vec<u8>) {
    while c.wants_write() {
        c.write_tls(out).expect("write_tls");
    }
}

/// Read all available plaintext into `buf` (overwriting it), returning how much.
pub fn read_plain<D>(c: &mut ConnectionCommon<D>, buf: &mut [u8]) -> usize {
    let mut n = 0;
    loop {
        match c.reader().read(&mut buf[n..]) {
            Ok(0) => return n,
            Ok(k) => {
                n += k;
                if n == buf.len() {
                    return n;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("reader: {e}"),
        }
    }
}

/// Run a handshake to the end (including the server's tickets reaching the client),
/// returning the time spent inside the server's calls: `ServerConnection::new`,
/// `read_tls`, `process_new_packets` and `write_tls`. Client work is not counted.
pub fn handshake(
    client: &mut ClientConnection,
    server_cfg: &Arc<ServerConfig>,
) -> (ServerConnection, Duration) {
    let t = Instant::now();
    let mut server = ServerConnection::new(server_cfg.clone()).expect("server connection");
    let mut server_time = t.elapsed();
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        buf.clear();
        drain(&mut **client, &mut buf);
        let from_client = !buf.is_empty();
        let t = Instant::now();
        if from_client {
            feed(&mut server, &buf);
        }
        buf.clear();
        drain(&mut server, &mut buf);
        server_time += t.elapsed();
        let from_server = !buf.is_empty();
        if from_server {
            feed(&mut **client, &buf);
        }
        if !from_client && !from_server {
            break;
        }
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    (server, server_time)
}
