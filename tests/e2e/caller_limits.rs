//! Per-caller limits through a real `terminus run` (two workers, so the counts are
//! the process's, not one worker's): `max_connections_per_caller` on TCP listeners
//! (close_notify after the handshake) and HTTP listeners (429 then close),
//! `handshakes_per_second_per_source` (the excess closed before the signature;
//! resumed handshakes do not count), each in `limits_mode = "report"` too, with
//! `terminus_limited_total`, the `limited` access-log lines, and callers the limit
//! is not about served meanwhile. Also `proxy_protocol_client_cert`: the verified
//! leaf in `PP2_SUBTYPE_SSL_CLIENT_CERT`, read by the tests' parser and accepted by
//! HAProxy.

use crate::common::proxy_v2;
use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::tools::certs::LeafSpec;
use terminus::tools::client::{ClientConfigBuilder, Trust};

const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    pki: Pki,
    checkout: Arc<rustls::ClientConfig>,
    batch: Arc<rustls::ClientConfig>,
    /// The DER of checkout's leaf (what PROXY v2 must carry).
    checkout_leaf: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let pki = Pki::generate();
        let ca = pki.client_ca("terminus caller-limits client CA");
        let leaf = |id: &str| ca.leaf(&LeafSpec::client("w", Some(id))).unwrap();
        let cfg = |l: &terminus::tools::certs::TestLeaf| {
            ClientConfigBuilder::new(Trust::Roots(pki.roots()))
                .client_cert(l.chain.clone(), l.key())
                .build()
                .unwrap()
        };
        let (c, b) = (leaf(CHECKOUT), leaf(BATCH));
        Fixture {
            checkout: cfg(&c),
            batch: cfg(&b),
            checkout_leaf: c.chain[0].as_ref().to_vec(),
            pki,
        }
    }

    /// Listener "l" (client auth `mode`) to `up` with `keys` (`k = v` lines),
    /// two workers, the access log and the admin endpoint on.
    fn start(&self, up: SocketAddr, mode: &str, keys: &str) -> Terminus {
        let l = ListenerConf::new("l", &[up]).opts(keys).raw(&format!(
            "[listeners.client_auth]\nmode = \"{mode}\"\nca = [\"client-ca.pem\"]\n"
        ));
        let config = write_config_with_log(&self.pki, Some(2), &[l], "access.log");
        append_tables(&config, ADMIN);
        Terminus::start(&config)
    }

    /// The access log's `limited` lines, once there are `n` (bounded wait).
    fn limited_lines(&self, n: usize) -> Vec<serde_json::Value> {
        log_events(&self.pki.dir().join("access.log"), "limited", n)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.pki.dir().join("access.log")).unwrap_or_default()
    }
}

fn limited_series(limit: &str) -> String {
    format!("terminus_limited_total{{listener=\"l\",limit=\"{limit}\"}}")
}

/// Wait until the metrics page shows `series` at `want` or more; its value.
fn at_least(t: &Terminus, series: &str, want: f64) -> f64 {
    let page = wait_page(t, WAIT, |p| {
        terminus::tools::bench::target::metric(p, series).is_some_and(|v| v >= want)
    });
    sample(&page, series)
}

/// What a TLS connection refused after its handshake reads: nothing, then the end.
fn assert_refused_after_handshake(tls: &mut Tls, what: &str) {
    let _ = tls.write_all(b"hello?");
    let (data, ending) = read_to_end_tls(tls, MIB, what);
    assert!(data.is_empty(), "{what}: got {data:?}");
    assert_ne!(ending, Ending::UncleanEof, "{what}: no close_notify");
}

#[test]
fn connections_per_caller_on_a_tcp_listener_over_all_workers_then_report_mode() {
    let f = Fixture::new();
    let up = Backend::echo();
    let t = f.start(
        up.addr(),
        "require",
        "max_connections_per_caller = 2\nproxy_protocol_client_cert = false\n",
    );
    let addr = t.addr("l");
    let mut a1 = tls_connect(addr, &f.checkout);
    let mut a2 = tls_connect(addr, &f.checkout);
    echo_round_trip(&mut a1, b"a1", "checkout's first connection");
    echo_round_trip(&mut a2, b"a2", "checkout's second connection");
    let accepted = up.accepted();

    // The third is refused after its handshake, and never reaches the upstream.
    let mut a3 = tls_connect(addr, &f.checkout);
    assert_refused_after_handshake(&mut a3, "checkout's third connection");
    // Another caller is served meanwhile, at once.
    let started = Instant::now();
    let mut b1 = tls_connect(addr, &f.batch);
    echo_round_trip(&mut b1, b"b1", "batch while checkout is at its limit");
    let batch_took = started.elapsed();
    assert_eq!(
        up.accepted(),
        accepted + 1,
        "only batch reached the upstream"
    );
    assert_eq!(
        at_least(&t, &limited_series("max_connections_per_caller"), 1.0),
        1.0
    );
    let lines = f.limited_lines(1);
    assert_eq!(lines[0]["caller"], CHECKOUT, "{lines:?}");
    assert_eq!(lines[0]["limit"], "max_connections_per_caller");
    assert_eq!(lines[0]["enforced"], true);
    assert!(
        f.access_log().contains("\"close_reason\":\"limited\""),
        "{}",
        f.access_log()
    );

    // The counts survive a reload: after SIGHUP checkout is still at its limit.
    t.signal("HUP");
    t.wait_stderr("reload: configuration", WAIT);
    let mut a4 = tls_connect(addr, &f.checkout);
    assert_refused_after_handshake(&mut a4, "checkout's third connection after SIGHUP");
    assert_eq!(
        at_least(&t, &limited_series("max_connections_per_caller"), 2.0),
        2.0
    );

    // A closed connection frees its place (the count is released when the slot is).
    drop(a1);
    assert!(
        wait_until(WAIT, || {
            let Ok(mut a) = try_tls_connect(addr, &f.checkout) else {
                return false;
            };
            let _ = a.write_all(b"again");
            let mut buf = [0u8; 5];
            a.read_exact(&mut buf).is_ok() && &buf == b"again"
        }),
        "checkout never got its place back"
    );
    eprintln!("batch served in {batch_took:?} while checkout was limited");
    drop((a2, b1, t));

    // Report mode: the same third connection is served, and counted and logged.
    let f = Fixture::new();
    let t = f.start(
        up.addr(),
        "require",
        "max_connections_per_caller = 2\nlimits_mode = \"report\"\n",
    );
    let addr = t.addr("l");
    let mut conns: Vec<Tls> = (0..3).map(|_| tls_connect(addr, &f.checkout)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        echo_round_trip(c, b"report", &format!("report mode, connection {i}"));
    }
    assert_eq!(
        at_least(&t, &limited_series("max_connections_per_caller"), 1.0),
        1.0
    );
    let lines = f.limited_lines(1);
    assert_eq!(lines[0]["enforced"], false, "{lines:?}");
}

#[test]
fn connections_per_caller_on_an_http_listener_is_429_then_close() {
    let f = Fixture::new();
    let up = Backend::http(b"ok");
    let t = f.start(
        up.addr(),
        "optional",
        "protocol = \"http\"\nmax_connections_per_caller = 1\n",
    );
    let addr = t.addr("l");
    // Anonymous callers are keyed by address: this one holds 127.0.0.1's place.
    let anon = ClientConfigBuilder::new(Trust::Roots(f.pki.roots()))
        .build()
        .unwrap();
    let mut first = tls_connect(addr, &anon);
    // The client is done before the server has read its Finished, and the next
    // connection may land on the other worker: wait until the place is taken.
    at_least(
        &t,
        "terminus_handshakes_total{listener=\"l\",result=\"ok\",resumed=\"false\",client_auth=\"none\"}",
        1.0,
    );
    let mut second = tls_connect(addr, &anon);
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (data, _) = read_to_end_tls(&mut second, MIB, "the second anonymous connection");
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n")
            && text.contains("Connection: close"),
        "{text}"
    );
    // A verified caller is its own key: served.
    let mut named = tls_connect(addr, &f.checkout);
    named
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    named.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    first.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let lines = f.limited_lines(1);
    assert_eq!(lines[0]["caller"], "addr:127.0.0.1", "{lines:?}");
    assert_eq!(
        at_least(&t, &limited_series("max_connections_per_caller"), 1.0),
        1.0
    );
}

/// A client config that never resumes (every handshake is a full one).
fn fresh(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*ClientConfigBuilder::new(Trust::Roots(pki.roots()))
        .build()
        .unwrap())
    .clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// TLS over a socket bound to `local` first (another source address).
fn tls_from(local: &str, addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Tls {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{local}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&addr.into()).unwrap();
    let sock: TcpStream = s.into();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

#[test]
fn handshakes_per_source_refuse_full_handshakes_but_not_resumptions_then_report_mode() {
    let f = Fixture::new();
    let up = Backend::echo();
    let t = f.start(up.addr(), "none", "handshakes_per_second_per_source = 2\n");
    let addr = t.addr("l");
    // A session to resume later (the ticket arrives with the first echo).
    let resuming = ClientConfigBuilder::new(Trust::Roots(f.pki.roots()))
        .build()
        .unwrap();
    let mut first = tls_connect(addr, &resuming);
    echo_round_trip(&mut first, b"ticket", "the first connection");
    drop(first);

    // Full handshakes from 127.0.0.1 until the bucket (2, refilled at 2/s) is dry.
    let full = fresh(&f.pki);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..8 {
        match try_tls_connect(addr, &full) {
            Ok(mut c) => {
                echo_round_trip(&mut c, b"x", "a full handshake let through");
                ok += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 4, "{ok} let through, {refused} refused");
    assert!(ok <= 4, "{ok} let through, {refused} refused");
    // The bucket is dry: a resumption still passes (it signs nothing).
    let mut resumed = tls_connect(addr, &resuming);
    assert_eq!(
        resumed.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    echo_round_trip(&mut resumed, b"resumed", "a resumed handshake");
    // Another source address has its own bucket.
    let mut other = tls_from("127.0.0.2", addr, &full);
    echo_round_trip(&mut other, b"other", "a full handshake from 127.0.0.2");

    let limited = at_least(
        &t,
        &limited_series("handshakes_per_second_per_source"),
        f64::from(refused),
    );
    assert_eq!(limited, f64::from(refused));
    let reason = "terminus_handshake_errors_total{listener=\"l\",reason=\"rate_limited\"}";
    assert_eq!(at_least(&t, reason, f64::from(refused)), f64::from(refused));
    let lines = f.limited_lines(1);
    assert_eq!(lines[0]["caller"], "addr:127.0.0.1", "{lines:?}");
    drop(t);

    // Report mode: every full handshake completes; the excess is counted.
    let f = Fixture::new();
    let t = f.start(
        up.addr(),
        "none",
        "handshakes_per_second_per_source = 2\nlimits_mode = \"report\"\n",
    );
    let full = fresh(&f.pki);
    for i in 0..6 {
        let mut c = tls_connect(t.addr("l"), &full);
        echo_round_trip(&mut c, b"r", &format!("report mode, handshake {i}"));
    }
    assert!(at_least(&t, &limited_series("handshakes_per_second_per_source"), 3.0) >= 3.0);
    assert_eq!(
        scrape_metric(&t, reason).unwrap_or(0.0),
        0.0,
        "report mode fails no handshake"
    );
}

/// A backend that parses the PROXY v2 header, sends it down `tx`, then echoes.
fn proxied_echo() -> (Backend, std::sync::mpsc::Receiver<proxy_v2::ParsedHeader>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let b = Backend::spawn(Arc::new(move |mut s: TcpStream, _: &BackendStats| {
        let (h, rest) = match proxy_v2::read_header(&mut s) {
            Ok(got) => got,
            Err(proxy_v2::HeaderError::Closed(_)) => return,
            Err(e) => panic!("{e}"),
        };
        let _ = tx.lock().unwrap().send(h);
        s.write_all(&rest).unwrap();
        echo_until_eof(&mut s);
    }));
    (b, rx)
}

#[test]
fn proxy_protocol_client_cert_carries_the_verified_leaf_and_nothing_for_others() {
    let f = Fixture::new();
    let (up, headers) = proxied_echo();
    let t = f.start(
        up.addr(),
        "optional",
        "proxy_protocol = \"v2\"\nproxy_protocol_client_cert = true\n",
    );
    let addr = t.addr("l");
    let mut c = tls_connect(addr, &f.checkout);
    echo_round_trip(&mut c, b"with a certificate", "checkout");
    let h = headers.recv_timeout(WAIT).expect("a PROXY v2 header");
    let ssl = h.ssl.expect("SSL TLV");
    assert_eq!(ssl.verify, 0, "verified");
    assert_eq!(
        ssl.client_cert.as_deref(),
        Some(&f.checkout_leaf[..]),
        "PP2_SUBTYPE_SSL_CLIENT_CERT is the client's leaf, DER"
    );
    assert_eq!(h.spiffe.as_deref(), Some(CHECKOUT));
    // No certificate presented: no 0x28.
    let anon = ClientConfigBuilder::new(Trust::Roots(f.pki.roots()))
        .build()
        .unwrap();
    let mut a = tls_connect(addr, &anon);
    echo_round_trip(&mut a, b"without", "anonymous");
    let h = headers.recv_timeout(WAIT).expect("a PROXY v2 header");
    assert_eq!(h.ssl.expect("SSL TLV").client_cert, None);
}

#[test]
fn check_refuses_proxy_protocol_client_cert_without_proxy_v2_or_on_http() {
    let f = Fixture::new();
    let up = Backend::echo();
    for (keys, want) in [
        (
            "proxy_protocol_client_cert = true\n",
            "needs proxy_protocol = \\\"v2\\\"",
        ),
        (
            "protocol = \"http\"\nproxy_protocol = \"v2\"\nproxy_protocol_client_cert = true\n",
            "is for TCP listeners",
        ),
    ] {
        let l = ListenerConf::new("l", &[up.addr()]).opts(keys);
        let config = write_config(&f.pki, Some(1), &[l]);
        let out = std::process::Command::new(bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let want = want.replace("\\\"", "\"");
        assert!(
            err.contains("proxy_protocol_client_cert") && err.contains(&want),
            "{err}"
        );
        assert!(
            err.contains(&config.display().to_string()),
            "names the file: {err}"
        );
    }
}
