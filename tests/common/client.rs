//! Test clients: TLS (the one client config, `terminus::tools::client`), raw TCP,
//! plain HTTP, hand-made ClientHellos, and how a connection ended.

use super::{Pattern, Pki, IO_TIMEOUT, MIB};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned, SupportedProtocolVersion};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::tools::client::{ClientConfigBuilder, Trust};

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting the PKI's CA, with the given versions and ALPN list
/// (`terminus::tools::client`). Resumption uses rustls' default in-memory cache
/// (shared by every connection made with the returned config).
pub fn client_config(
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    ClientConfigBuilder::new(Trust::Roots(pki.roots()))
        .versions(versions)
        .alpn(alpn)
        .build()
        .expect("client config")
}

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// TCP connect and complete the TLS handshake (server name `localhost`).
pub fn try_tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> io::Result<Tls> {
    let sock = tcp_connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    let deadline = Instant::now() + IO_TIMEOUT;
    while tls.conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "handshake did not finish",
            ));
        }
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

pub fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Tls {
    try_tls_connect(addr, cfg).unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"))
}

/// Abort a connection with a TCP RST (SO_LINGER 0, then close).
pub fn reset_connection(sock: TcpStream) {
    socket2::SockRef::from(&sock)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(sock);
}

/// Read exactly `n` bytes, with a useful message on failure.
pub fn read_n(r: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut v[got..]) {
            Ok(0) => panic!("{what}: connection closed after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: read failed after {got} of {n} bytes: {e} ({:?})",
                e.kind()
            ),
        }
    }
    v
}

/// Write `data`, then read the same number of bytes back and compare.
pub fn echo_round_trip(tls: &mut Tls, data: &[u8], what: &str) {
    tls.write_all(data)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    tls.flush().unwrap_or_else(|e| panic!("{what}: flush: {e}"));
    let back = read_n(tls, data.len(), what);
    assert!(
        back == data,
        "{what}: echoed bytes differ from the bytes sent"
    );
}

/// How a connection ended from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// TLS: a close_notify (rustls reader returned Ok(0)); raw TCP: FIN.
    Clean,
    /// TLS: TCP EOF without close_notify.
    UncleanEof,
    /// ECONNRESET / broken pipe.
    Reset,
    /// Any other error (TLS alert received, decode error, ...).
    Error(String),
}

/// Read until the peer ends the connection; returns everything read and how it ended.
/// A read timeout panics: the peer never closed.
pub fn read_to_end_tls(tls: &mut Tls, limit: usize, what: &str) -> (Vec<u8>, Ending) {
    read_to_end_within(tls, limit, what)
}

/// Raw TCP: read until FIN/RST; a timeout panics.
pub fn read_to_end_raw(s: &mut TcpStream, what: &str) -> (Vec<u8>, Ending) {
    read_to_end_within(s, MIB, what)
}

/// Read to the end, at most `limit` bytes (more panics), classifying how it ended.
fn read_to_end_within(r: &mut impl Read, limit: usize, what: &str) -> (Vec<u8>, Ending) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (data, Ending::Clean),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                assert!(
                    data.len() <= limit,
                    "{what}: more than {limit} bytes received"
                );
            }
            Err(e) => return (data, classify(e, what)),
        }
    }
}

fn classify(e: io::Error, what: &str) -> Ending {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            panic!("{what}: the proxy neither sent data nor closed within {IO_TIMEOUT:?}")
        }
        ErrorKind::UnexpectedEof => Ending::UncleanEof,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Ending::Reset
        }
        _ => Ending::Error(format!("{e} ({:?})", e.kind())),
    }
}

/// The first TLS alert in raw bytes from the server: `(level, description)`.
pub fn first_alert(bytes: &[u8]) -> Option<(u8, u8)> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest[0] == 0x15 && rest.len() >= 7 {
            return Some((rest[5], rest[6]));
        }
        if rest.len() < 5 + len {
            break;
        }
        rest = &rest[5 + len..];
    }
    None
}

/// A real ClientHello record as rustls sends it (TLS 1.2 + 1.3, SNI localhost).
pub fn rustls_client_hello(pki: &Pki) -> Vec<u8> {
    let cfg = client_config(pki, rustls::ALL_VERSIONS, &[]);
    let mut conn =
        ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls to Vec");
    }
    assert_eq!(out[0], 0x16, "not a handshake record");
    assert_eq!(out[5], 0x01, "not a ClientHello");
    out
}

/// A ClientHello of a TLS 1.0-only client (as `openssl s_client -tls1` would send:
/// record and client_version 3.1, no supported_versions, no signature_algorithms).
pub fn tls10_client_hello() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x01]); // client_version TLS 1.0
    body.extend_from_slice(&Pattern::bytes(10, 32)); // random
    body.push(0); // session id
    let suites: [u16; 5] = [0xc014, 0xc013, 0x0035, 0x002f, 0x00ff];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    // server_name: localhost
    let host = b"localhost";
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((host.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(host.len() as u16).to_be_bytes());
    ext.extend_from_slice(host);
    // supported_groups: secp256r1, secp384r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x18]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    handshake_record(0x01, &body, [0x03, 0x01])
}

/// Wrap a handshake message body in a handshake header and one plaintext record.
pub fn handshake_record(msg_type: u8, body: &[u8], record_version: [u8; 2]) -> Vec<u8> {
    let mut hs = vec![msg_type];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(body);
    let mut rec = vec![0x16, record_version[0], record_version[1]];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// One HTTP/1.1 GET with `Connection: close`; (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tcp_connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// A client trusting the PKI's CA and presenting its client certificate
/// (`client.pem`/`client.key` of `terminus certs`).
pub fn mtls_client(pki: &Pki) -> Arc<ClientConfig> {
    let dir = pki.dir();
    ClientConfigBuilder::new(Trust::Roots(pki.roots()))
        .client_cert(
            terminus::tls::load_certs(&dir.join("client.pem")).unwrap(),
            terminus::tls::load_key(&dir.join("client.key")).unwrap(),
        )
        .build()
        .unwrap()
}
