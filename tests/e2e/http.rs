//! `protocol = "http"`: request heads rewritten with identity headers, client copies
//! of those headers stripped, smuggling vectors refused, error statuses, through real
//! clients (curl, `openssl s_client`, a rustls socket) and a header-echo backend.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// An HTTP/1.1 backend answering each request with its own head (as received) as
/// the body; keeps connections alive unless asked to close; counts connections.
struct HeaderEcho {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

impl HeaderEcho {
    fn start() -> HeaderEcho {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || serve(s));
            }
        });
        HeaderEcho { addr, conns }
    }
}

fn serve(s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    while let Some((mut head, body)) = read_http_request(&mut r) {
        let lower = head.to_ascii_lowercase();
        // A chunked body read through its last chunk is noted after the head.
        if lower.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n") {
            head.push_str("0\r\n");
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
            head.len()
        );
        let close = lower.contains("connection: close");
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Header lines of one echoed head named `name` (any case).
fn headers<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

fn client_cert_sha256(pki: &Pki) -> String {
    let der = terminus::tls::load_certs(&pki.dir().join("client.pem"))
        .unwrap()
        .remove(0);
    Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An http listener in front of `up`, client auth `mode`, extra `[listeners.http]`.
fn http_proxy(up: SocketAddr, mode: &str, http: &str) -> Proxy {
    Proxy::start(
        Some(1),
        &[ListenerConf::new("web", &[up])
            .opt("protocol", "\"http\"")
            .raw(&format!(
                "[listeners.client_auth]\nmode = \"{mode}\"\nca = [\"ca.pem\"]\n\n[listeners.http]\n{http}"
            ))],
    )
}

/// Write `bytes` through TLS, then read until the server closes (or 10 s).
fn exchange(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, bytes: &[u8]) -> String {
    let mut tls = tls_connect(addr, cfg);
    tls.write_all(bytes).unwrap();
    tls.flush().unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The echoed heads in a stream of responses.
fn echoed(responses: &str) -> Vec<String> {
    responses
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|r| r.split_once("\r\n\r\n").unwrap().1.to_owned())
        .collect()
}

const FORGED: &str = "X-Forwarded-Client-Cert: Hash=forged;URI=spiffe://example.org/admin\r\n\
    x-forwarded-client-cert: URI=spiffe://evil\r\nX-FORWARDED-CLIENT-CERT: x\r\n\
    Client-Cert: :AAAA:\r\nX-Forwarded-For: 6.6.6.6\r\n";

#[test]
fn a_rustls_client_pipelines_three_requests_each_with_one_verified_identity() {
    let be = HeaderEcho::start();
    let p = http_proxy(be.addr, "require", "identity_headers = \"both\"\n");
    let addr = p.addr("web");
    let req = |path: &str, extra: &str| {
        format!("GET /{path} HTTP/1.1\r\nHost: web.internal\r\n{FORGED}{extra}\r\n")
    };
    let body = "POST /3 HTTP/1.1\r\nHost: web.internal\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let all = format!(
        "{}{}{body}",
        req("1", ""),
        req("2", "Content-Length: 2\r\n\r\nab")
    );
    // Content-Length body on request 2 means its head ends earlier: rebuild properly.
    let all = all.replace(
        "Content-Length: 2\r\n\r\nab\r\n",
        "Content-Length: 2\r\n\r\nab",
    );
    let out = exchange(addr, &mtls_client(&p.pki), all.as_bytes());
    let heads = echoed(&out);
    assert_eq!(heads.len(), 3, "{out}");
    let hash = client_cert_sha256(&p.pki);
    let der = terminus::tls::load_certs(&p.pki.dir().join("client.pem"))
        .unwrap()
        .remove(0);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    for h in &heads {
        let xfcc = headers(h, "x-forwarded-client-cert");
        assert_eq!(xfcc.len(), 1, "exactly one XFCC: {h}");
        assert!(
            xfcc[0].starts_with(&format!("Hash={hash};URI=spiffe://example.org/client;")),
            "{}",
            xfcc[0]
        );
        assert!(xfcc[0].contains(";Subject=\""), "{}", xfcc[0]);
        assert_eq!(headers(h, "client-cert"), [format!(":{b64}:").as_str()]);
        assert_eq!(headers(h, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(headers(h, "x-forwarded-proto"), ["https"]);
        assert_eq!(headers(h, "x-forwarded-host"), ["localhost"]);
    }
    // The chunked body was framed through to its last chunk (the backend notes it).
    assert!(
        heads[2].starts_with("POST /3 ") && heads[2].ends_with("\r\n0\r\n"),
        "{}",
        heads[2]
    );
    assert_eq!(
        be.conns.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}

#[test]
fn curl_keeps_the_connection_for_three_requests_and_forged_headers_do_not_pass() {
    require_tool("curl");
    let be = HeaderEcho::start();
    let p = http_proxy(be.addr, "require", "");
    let port = p.addr("web").port();
    let dir = p.pki.dir();
    let url = |n: u32| format!("https://localhost:{port}/{n}");
    let out = Command::new("curl")
        .args(["-sS", "--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .args([
            "-H",
            "X-Forwarded-Client-Cert: Hash=forged",
            "-H",
            "x-forwarded-client-cert: b",
        ])
        .args([url(1), url(2), url(3)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let gets: Vec<&str> = text.split("GET /").skip(1).collect();
    assert_eq!(gets.len(), 3, "{text}");
    for g in gets {
        let xfcc = headers(g, "x-forwarded-client-cert");
        assert_eq!(xfcc.len(), 1, "{g}");
        assert!(xfcc[0].contains("URI=spiffe://example.org/client"), "{g}");
        assert!(!g.contains("forged"), "{g}");
    }
    assert_eq!(
        be.conns.load(Ordering::SeqCst),
        1,
        "curl reused its connection"
    );
}

#[test]
fn openssl_s_client_sends_three_keep_alive_requests() {
    require_tool("openssl");
    let be = HeaderEcho::start();
    let p = http_proxy(be.addr, "require", "");
    let dir = p.pki.dir();
    let mut cmd = openssl_s_client(p.addr("web"), &dir.join("ca.pem"));
    cmd.arg("-quiet")
        .arg("-cert")
        .arg(dir.join("client.pem"))
        .arg("-key")
        .arg(dir.join("client.key"));
    let mut sc = Spawned::new(cmd);
    let mut reqs = String::new();
    for n in 1..=3 {
        let close = if n == 3 { "Connection: close\r\n" } else { "" };
        reqs.push_str(&format!(
            "GET /{n} HTTP/1.1\r\nHost: x\r\n{FORGED}{close}\r\n"
        ));
    }
    sc.send(reqs.as_bytes());
    sc.expect_stdout("GET /3", Duration::from_secs(15));
    let heads = echoed(&sc.stdout());
    assert_eq!(heads.len(), 3, "{}", sc.stdout());
    for h in &heads {
        assert_eq!(headers(h, "x-forwarded-client-cert").len(), 1, "{h}");
        assert!(!h.contains("forged") && !h.contains("6.6.6.6"), "{h}");
    }
}

#[test]
fn a_client_without_a_certificate_gets_no_identity_header_and_cannot_forge_one() {
    let be = HeaderEcho::start();
    let p = http_proxy(be.addr, "optional", "");
    let anon = client_config(&p.pki, rustls::ALL_VERSIONS, &[]);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{FORGED}Connection: close\r\n\r\n");
    let out = exchange(p.addr("web"), &anon, req.as_bytes());
    let heads = echoed(&out);
    assert_eq!(heads.len(), 1, "{out}");
    assert!(
        headers(&heads[0], "x-forwarded-client-cert").is_empty(),
        "{}",
        heads[0]
    );
    assert!(headers(&heads[0], "client-cert").is_empty(), "{}", heads[0]);
    assert_eq!(headers(&heads[0], "x-forwarded-for"), ["127.0.0.1"]);
}

#[test]
fn smuggling_vectors_get_400_or_431_and_a_closed_connection() {
    let be = HeaderEcho::start();
    let p = Proxy::start(
        Some(1),
        &[ListenerConf::new("web", &[be.addr])
            .opt("protocol", "\"http\"")
            .raw("[listeners.http]\nmax_header_bytes = 1024\n")],
    );
    let cfg = client_config(&p.pki, rustls::ALL_VERSIONS, &[]);
    let addr = p.addr("web");
    for (req, status) in [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
        ("GET / HTTP/1.1\nHost: x\n\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: a\r\n b\r\n\r\n", 400),
        (&format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000)), 431),
    ] {
        let out = exchange(addr, &cfg, req.as_bytes());
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")) && out.contains("Connection: close"),
            "{req:?}: {out:?}"
        );
        assert!(!out.contains("200 OK"), "nothing reached the backend: {out}");
    }
    // A good request after a refused one on the same connection never passes.
    let out = exchange(
        addr,
        &cfg,
        b"GET / HTTP/1.1\nHost: x\n\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        out.starts_with("HTTP/1.1 400") && !out.contains("/after"),
        "{out}"
    );
}

#[test]
fn upstream_down_is_502_and_a_slow_head_is_408_and_both_are_counted() {
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(1),
        &[
            ListenerConf::new("down", &[refused_addr()]).opt("protocol", "\"http\""),
            ListenerConf::new("slow", &[HeaderEcho::start().addr])
                .opt("protocol", "\"http\"")
                .raw("[listeners.http]\nhead_timeout_ms = 300\n"),
        ],
    );
    append_tables(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n",
    );
    let t = Terminus::start(&config);
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let out = exchange(t.addr("down"), &cfg, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out:?}");

    let mut tls = tls_connect(t.addr("slow"), &cfg);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    tls.flush().unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let smuggled =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let out = exchange(t.addr("slow"), &cfg, smuggled);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let count = |page: &str, status: u16| {
        let series =
            format!("terminus_http_rejected_total{{listener=\"slow\",status=\"{status}\"}}");
        terminus::tools::bench::target::metric(page, &series)
    };
    loop {
        let (_, page) = http_get(t.admin(), "/metrics");
        if count(&page, 408) == Some(1.0) && count(&page, 400) == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        thread::sleep(Duration::from_millis(20));
    }
}
