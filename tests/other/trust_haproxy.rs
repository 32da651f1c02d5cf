//! A real consumer of terminus' PROXY v2 header: Debian's HAProxy (2.6) with
//! `accept-proxy`.
//!
//! * `mode http`: HAProxy reads our header (addresses, AUTHORITY, UNIQUE_ID, and the
//!   SSL TLV with a real client leaf in `PP2_SUBTYPE_SSL_CLIENT_CERT` and the custom
//!   SPIFFE TLV, which it must skip), and forwards what it understood as request
//!   headers to an in-test HTTP backend, which checks them. HAProxy 2.6 has no
//!   sample fetch for SSL sub-TLVs (`fc_pp_tlv` arrived in 2.9 and reads top-level
//!   TLVs only), so what it proves about 0x28 is that a header carrying it is framed
//!   as HAProxy's parser expects; its content is checked by `tests/e2e/caller_limits.rs`.
//! * `mode tcp` with `send-proxy-v2`: HAProxy re-emits a v2 header of its own to an
//!   in-test TCP backend, which parses it with the test kit's `proxy_v2::parse`
//!   (`terminus_testkit::proxy_v2`) — our parser against HAProxy's encoder.
//! * A header with a broken TLV is refused: HAProxy really checks what we send.
//!
//! Needs `haproxy` (`apt-get install haproxy`). Without it the tests say so and
//! skip, unless `CI` is set, where a missing HAProxy fails them.
//!
//! Ports: the backends listen on 127.0.0.1:0; HAProxy's frontends use a port found
//! by binding 127.0.0.1:0 and releasing it. Every wait is bounded; HAProxy is killed
//! when the test ends.

use crate::common::free_port;
use crate::common::proxy_v2::{self, Header, Ssl};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(10);

fn haproxy_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// The haproxy binary, or `None` (after saying why) when the test must skip.
fn haproxy_or_skip(test: &str) -> Option<PathBuf> {
    let bin = haproxy_bin();
    if bin.is_none() {
        let msg = "haproxy is not installed (Debian: apt-get install haproxy)";
        assert!(std::env::var_os("CI").is_none(), "{test}: {msg}");
        eprintln!("SKIPPED {test}: {msg}");
    }
    bin
}

/// A running HAProxy, killed on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    stderr: PathBuf,
}

impl Haproxy {
    /// Start HAProxy in the foreground with `config` and wait until every port in
    /// `ports` accepts connections.
    fn start(bin: &Path, tag: &str, config: &str, ports: &[u16]) -> Haproxy {
        let dir =
            std::env::temp_dir().join(format!("terminus-haproxy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let stderr = dir.join("stderr");
        let check = Command::new(bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy rejects the test config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut h = Haproxy { child, dir, stderr };
        let deadline = Instant::now() + TIMEOUT;
        for &port in ports {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = h.child.try_wait().unwrap() {
                    panic!("haproxy exited ({status}):\n{}", h.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not listening on {port} after {TIMEOUT:?}:\n{}",
                    h.log()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP backend answering `200 ok` and sending each request's head (lines) down
/// the channel.
fn http_backend() -> (SocketAddr, mpsc::Receiver<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push(line.trim_end().to_owned()),
                }
            }
            let mut sock = sock;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            if tx.send(head).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A TCP backend sending the first bytes of each connection down the channel (until
/// `want` bytes or EOF).
fn raw_backend(want: &'static [u8]) -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(want) {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            if tx.send(got).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn header_value<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A real client leaf (DER), for `PP2_SUBTYPE_SSL_CLIENT_CERT`.
fn client_leaf() -> Vec<u8> {
    use terminus::tools::certs::{LeafSpec, TestCa};
    let ca = TestCa::root("terminus haproxy client CA").unwrap();
    let spec = LeafSpec::client("billing", Some("spiffe://example.org/ns/prod/sa/billing"));
    ca.leaf(&spec).unwrap().chain[0].as_ref().to_vec()
}

/// What terminus would send for a verified mTLS client.
fn terminus_header() -> Header {
    let mut h = proxy_v2::verified_client_header(b"http/1.1", b"terminus-conn-42");
    if let Some(ssl) = h.ssl.as_mut() {
        ssl.client_cert = Some(client_leaf());
    }
    h
}

fn send(port: u16, header: &[u8], request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(request);
    s.write_all(&bytes).unwrap();
    let mut response = Vec::new();
    // HAProxy closes after the response (Connection: close) or on a bad header; a
    // reset also ends the read.
    let _ = s.read_to_end(&mut response);
    response
}

const REQUEST: &[u8] = b"GET /who HTTP/1.1\r\nHost: api.example.org\r\nConnection: close\r\n\r\n";

fn http_config(front: u16, backend: SocketAddr) -> String {
    format!(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    log global\n    mode http\n    option httplog\n\
         \x20   timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{front} accept-proxy\n\
         \x20   http-request set-header X-Authority %[fc_pp_authority]\n\
         \x20   http-request set-header X-Unique-Id %[fc_pp_unique_id]\n\
         \x20   http-request set-header X-Proxied %[fc_rcvd_proxy]\n\
         \x20   http-request set-header X-Src %[src]\n\
         \x20   http-request set-header X-Src-Port %[src_port]\n\
         \x20   http-request set-header X-Dst %[dst]\n\
         \x20   http-request set-header X-Dst-Port %[dst_port]\n\
         \x20   default_backend be\n\
         backend be\n    server s1 {backend}\n"
    )
}

#[test]
fn haproxy_reads_authority_addresses_and_unique_id() {
    let Some(bin) = haproxy_or_skip("haproxy_reads_authority_addresses_and_unique_id") else {
        return;
    };
    let (backend, requests) = http_backend();
    let front = free_port();
    let hp = Haproxy::start(&bin, "http", &http_config(front, backend), &[front]);

    // IPv4, every TLV terminus sends.
    let response = send(front, &terminus_header().to_bytes(), REQUEST);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}\n{}", hp.log());
    let head = requests
        .recv_timeout(TIMEOUT)
        .expect("backend got the request");
    let h = |name| header_value(&head, name).unwrap_or_else(|| panic!("{name} in {head:?}"));
    assert_eq!(h("X-Authority"), "api.example.org");
    assert_eq!(h("X-Unique-Id"), "terminus-conn-42");
    assert_eq!(h("X-Proxied"), "1");
    assert_eq!(h("X-Src"), "192.0.2.10");
    assert_eq!(h("X-Src-Port"), "51234");
    assert_eq!(h("X-Dst"), "198.51.100.1");
    assert_eq!(h("X-Dst-Port"), "443");

    // IPv6, and a client without a certificate (no CN, no SPIFFE TLV).
    let v6 = Header {
        src: "[2001:db8::7]:40000".parse().unwrap(),
        dst: "[2001:db8::1]:8443".parse().unwrap(),
        authority: Some("www.example.org".into()),
        ssl: Some(Ssl {
            version: Some("TLSv1.2".into()),
            cipher: Some("ECDHE-ECDSA-AES128-GCM-SHA256".into()),
            ..Ssl::default()
        }),
        spiffe: None,
        unique_id: None,
        ..terminus_header()
    };
    let response = send(front, &v6.to_bytes(), REQUEST);
    assert!(response.starts_with(b"HTTP/1.1 200"), "{}", hp.log());
    let head = requests.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(header_value(&head, "X-Authority"), Some("www.example.org"));
    assert_eq!(header_value(&head, "X-Src"), Some("2001:db8::7"));
    assert_eq!(header_value(&head, "X-Src-Port"), Some("40000"));
    assert_eq!(header_value(&head, "X-Dst"), Some("2001:db8::1"));
}

#[test]
fn haproxy_refuses_a_broken_header() {
    let Some(bin) = haproxy_or_skip("haproxy_refuses_a_broken_header") else {
        return;
    };
    let (backend, requests) = http_backend();
    let front = free_port();
    let _hp = Haproxy::start(&bin, "broken", &http_config(front, backend), &[front]);
    // The AUTHORITY TLV claims more bytes than the header holds.
    let mut bytes = terminus_header().to_bytes();
    let at = 16 + 12 + 3 + b"http/1.1".len();
    assert_eq!(bytes[at], proxy_v2::PP2_TYPE_AUTHORITY);
    bytes[at + 2] = 0xff;
    let response = send(front, &bytes, REQUEST);
    assert!(
        !response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert!(requests.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn our_parser_reads_haproxys_header() {
    let Some(bin) = haproxy_or_skip("our_parser_reads_haproxys_header") else {
        return;
    };
    let (backend, received) = raw_backend(b"hello");
    let front = free_port();
    let config = format!(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{front} accept-proxy\n\
         \x20   unique-id-format %[fc_pp_unique_id]\n    default_backend be\n\
         backend be\n    server s1 {backend} send-proxy-v2 proxy-v2-options authority,unique-id\n"
    );
    let hp = Haproxy::start(&bin, "tcp", &config, &[front]);
    let mut s = TcpStream::connect(("127.0.0.1", front)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut bytes = terminus_header().to_bytes();
    bytes.extend_from_slice(b"hello");
    s.write_all(&bytes).unwrap();
    let got = received
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("backend got nothing\n{}", hp.log()));
    let (parsed, used) = proxy_v2::parse(&got).unwrap_or_else(|e| panic!("{e}: {got:?}"));
    assert_eq!(&got[used..], b"hello");
    assert_eq!(parsed.command, proxy_v2::Command::Proxy);
    let (src, dst) = parsed.addresses.unwrap();
    assert_eq!(src, "192.0.2.10:51234".parse().unwrap());
    assert_eq!(dst, "198.51.100.1:443".parse().unwrap());
    assert_eq!(parsed.authority.as_deref(), Some("api.example.org"));
    assert_eq!(parsed.unique_id.as_deref(), Some(&b"terminus-conn-42"[..]));
}
