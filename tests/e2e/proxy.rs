//! Real-socket tests of the core data path (issue 2): a `terminus run` child between
//! real clients (rustls, curl, openssl s_client, raw TCP) and in-process backends, all
//! on 127.0.0.1 with port 0. Every wait is bounded (socket timeouts, polled deadlines).

use crate::common::*;
use rustls::{HandshakeKind, ProtocolVersion};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How soon a connection the proxy should reject must be closed (the handshake
/// timeout in those tests is far longer, so a close within this is the rejection).
const PROMPT: Duration = Duration::from_secs(5);

fn echo_proxy(workers: Option<usize>, echo: &Backend) -> Proxy {
    Proxy::start(workers, &[ListenerConf::new("edge", &[echo.addr()])])
}

/// The proxy still serves: the long-lived `existing` connection echoes, and so does a
/// fresh one; the process is alive.
fn assert_still_serving(p: &mut Proxy, existing: &mut Tls, what: &str) {
    p.term.assert_alive();
    echo_round_trip(
        existing,
        b"still there?",
        &format!("{what}: existing connection"),
    );
    let mut fresh = tls_connect(p.addr("edge"), &p.client());
    echo_round_trip(
        &mut fresh,
        b"and a new one",
        &format!("{what}: new connection"),
    );
}

fn close_notify(tls: &mut Tls) {
    tls.conn.send_close_notify();
    tls.flush().expect("flush close_notify");
}

// ---------------------------------------------------------------------------------
// Bytes pass unchanged
// ---------------------------------------------------------------------------------

#[test]
fn echo_bytes_pass_unchanged() {
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    echo_round_trip(&mut tls, &all_bytes, "every byte value");
    for (i, len) in [
        1usize,
        2,
        100,
        16 * 1024 - 1,
        16 * 1024,
        16 * 1024 + 1,
        MIB + 7,
    ]
    .into_iter()
    .enumerate()
    {
        let data = Pattern::bytes(i as u64 + 1, len);
        echo_round_trip(&mut tls, &data, &format!("{len} bytes"));
    }
    close_notify(&mut tls);
    let (rest, ending) = read_to_end_tls(&mut tls, 0, "after close_notify");
    assert!(rest.is_empty());
    assert_eq!(
        ending,
        Ending::Clean,
        "echo backend's FIN must reach the client as close_notify"
    );
    assert_eq!(
        echo.accepted(),
        1,
        "one client connection = one upstream connection"
    );
}

#[test]
fn alpn_is_negotiated() {
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(1),
        &[ListenerConf::new("edge", &[echo.addr()]).opt("alpn", r#"["http/1.1"]"#)],
    );
    let cfg = client_config(&p.pki, rustls::ALL_VERSIONS, &[b"h2", b"http/1.1"]);
    let mut tls = tls_connect(p.addr("edge"), &cfg);
    assert_eq!(
        tls.conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "server must pick http/1.1"
    );
    echo_round_trip(&mut tls, b"alpn ok", "echo after ALPN");
}

// ---------------------------------------------------------------------------------
// Real clients: curl and openssl s_client
// ---------------------------------------------------------------------------------

const HTTP_BODY: &[u8] = b"hello from the backend behind terminus\n";

#[test]
fn curl_through_terminus_to_http_backend() {
    require_tool("curl");
    let http = Backend::http(HTTP_BODY);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[http.addr()])]);
    let port = p.addr("edge").port();
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "20",
        "--cacert",
    ])
    .arg(p.pki.ca_pem())
    .arg("--resolve")
    .arg(format!("localhost:{port}:127.0.0.1"))
    .arg(format!("https://localhost:{port}/through-terminus"));
    let mut curl = Spawned::new(cmd);
    let status = curl.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "curl failed ({status}); stderr: {}; terminus stderr: {}",
        curl.stderr(),
        p.term.stderr()
    );
    assert_eq!(
        curl.stdout().as_bytes(),
        HTTP_BODY,
        "curl must print exactly the backend's body"
    );
    assert_eq!(
        http.reports(),
        vec!["GET /through-terminus HTTP/1.1".to_string()]
    );
}

fn s_client(p: &Proxy) -> Command {
    let mut cmd = openssl_s_client(p.addr("edge"), &p.pki.ca_pem());
    cmd.args(["-verify_hostname", "localhost"]);
    cmd
}

#[test]
fn openssl_s_client_through_terminus_to_echo_backend() {
    require_tool("openssl");
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let mut sc = Spawned::new(s_client(&p));
    let line = "a line through terminus and back\n";
    sc.send(line.as_bytes());
    sc.expect_stdout(line, Duration::from_secs(20));
    assert!(
        sc.stdout().contains("Verify return code: 0 (ok)"),
        "s_client did not verify the chain: {}",
        sc.stdout()
    );
    sc.wait(Duration::from_secs(10));
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn openssl_s_client_through_terminus_to_http_backend() {
    require_tool("openssl");
    let http = Backend::http(HTTP_BODY);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[http.addr()])]);
    let mut sc = Spawned::new(s_client(&p));
    sc.send(b"GET /s_client HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let body = std::str::from_utf8(HTTP_BODY).unwrap();
    sc.expect_stdout(body, Duration::from_secs(20));
    assert!(
        sc.stdout().contains("HTTP/1.1 200 OK"),
        "no status line: {}",
        sc.stdout()
    );
    assert!(
        sc.stdout().contains("Verify return code: 0 (ok)"),
        "{}",
        sc.stdout()
    );
    // The backend closed after its response: terminus must close the TLS connection,
    // so s_client exits on its own while its stdin is still open.
    let exited = sc.wait_stdin_open(Duration::from_secs(10));
    assert!(
        exited.is_some(),
        "s_client still connected 10 s after the backend closed; stdout:\n{}",
        sc.stdout()
    );
    assert_eq!(http.reports(), vec!["GET /s_client HTTP/1.1".to_string()]);
}

// ---------------------------------------------------------------------------------
// Protocol versions and resumption
// ---------------------------------------------------------------------------------

fn version_only(version: &'static rustls::SupportedProtocolVersion, expect: ProtocolVersion) {
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let cfg = client_config(&p.pki, &[version], &[]);
    let mut tls = tls_connect(p.addr("edge"), &cfg);
    assert_eq!(tls.conn.protocol_version(), Some(expect));
    assert!(tls.conn.negotiated_cipher_suite().is_some());
    echo_round_trip(&mut tls, &Pattern::bytes(12, 100_000), "echo");
    close_notify(&mut tls);
    assert_eq!(read_to_end_tls(&mut tls, 0, "close").1, Ending::Clean);
}

#[test]
fn tls12_only_client_works() {
    version_only(&rustls::version::TLS12, ProtocolVersion::TLSv1_2);
}

#[test]
fn tls13_only_client_works() {
    version_only(&rustls::version::TLS13, ProtocolVersion::TLSv1_3);
}

/// With two workers (one SO_REUSEPORT socket each, the kernel spreading connections by
/// 4-tuple hash), every reconnect of the same client must resume: the probability
/// that 8 reconnects all land on the worker of the first handshake is 1/256, so this
/// exercises resumption state shared across workers.
fn resumption(version: &'static rustls::SupportedProtocolVersion) {
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let cfg = client_config(&p.pki, &[version], &[]);
    let mut kinds = Vec::new();
    for i in 0..9 {
        let mut tls = tls_connect(p.addr("edge"), &cfg);
        kinds.push(tls.conn.handshake_kind());
        // The round trip also makes the client read the TLS 1.3 NewSessionTicket.
        echo_round_trip(&mut tls, format!("conn {i}").as_bytes(), "echo");
        close_notify(&mut tls);
        let _ = read_to_end_tls(&mut tls, 0, "close");
    }
    assert_eq!(
        kinds[0],
        Some(HandshakeKind::Full),
        "first connection: {kinds:?}"
    );
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == Some(HandshakeKind::Resumed)),
        "every reconnect must resume (workers=2); handshake kinds: {kinds:?}"
    );
}

#[test]
fn session_resumption_tls13_across_workers() {
    resumption(&rustls::version::TLS13);
}

#[test]
fn session_resumption_tls12_across_workers() {
    resumption(&rustls::version::TLS12);
}

// ---------------------------------------------------------------------------------
// Bulk: 64 MiB each way with sha256
// ---------------------------------------------------------------------------------

const BULK: usize = 64 * MIB;
const BULK_DEADLINE: Duration = Duration::from_secs(90);

#[test]
fn upload_64mib_sha256_then_close_notify_half_close() {
    let _g = heavy();
    let digest = Backend::digest();
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[digest.addr()])]);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    let start = Instant::now();
    let mut pat = Pattern::new(64);
    let mut buf = vec![0u8; 64 * 1024];
    let mut h = Sha256::new();
    for _ in 0..BULK / buf.len() {
        assert!(start.elapsed() < BULK_DEADLINE, "upload too slow");
        pat.fill(&mut buf);
        h.update(&buf);
        tls.write_all(&buf).expect("upload write");
    }
    close_notify(&mut tls);
    let (reply, ending) = read_to_end_tls(&mut tls, 1024, "digest reply");
    let want = format!("{BULK} {}\n", hex(&h.finalize()));
    assert_eq!(
        String::from_utf8_lossy(&reply),
        want,
        "upstream must receive exactly the 64 MiB sent (backend reports: {:?})",
        digest.reports()
    );
    assert_eq!(
        ending,
        Ending::Clean,
        "upstream FIN must arrive as close_notify"
    );
}

/// Read `tls` to its end within [`BULK_DEADLINE`], hashing as it comes, at most `max`
/// bytes: (bytes, their SHA-256 in hex, how the stream ended).
fn read_to_end_digest(tls: &mut Tls, max: u64, what: &str) -> (u64, String, Ending) {
    let start = Instant::now();
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let ending = loop {
        assert!(
            start.elapsed() < BULK_DEADLINE,
            "{what} too slow: {got} bytes"
        );
        match tls.read(&mut buf) {
            Ok(0) => break Ending::Clean,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
                assert!(got <= max, "{what}: more bytes than the upstream sent");
            }
            Err(e) => break Ending::Error(format!("{e} ({:?}) after {got} bytes", e.kind())),
        }
    };
    (got, hex(&h.finalize()), ending)
}

#[test]
fn download_64mib_sha256_then_close_notify() {
    let _g = heavy();
    let flood = Backend::flood(BULK as u64, 65);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[flood.addr()])]);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    let (got, digest, ending) = read_to_end_digest(&mut tls, BULK as u64, "download");
    assert_eq!(ending, Ending::Clean, "download must end with close_notify");
    assert_eq!(got, BULK as u64);
    assert_eq!(
        digest,
        hex(&Pattern::sha256(65, BULK as u64)),
        "download corrupted"
    );
}

/// Both directions at once: keep up to 256 KiB in flight through the echo backend.
#[test]
fn echo_64mib_full_duplex_sha256() {
    let _g = heavy();
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    let start = Instant::now();
    let (chunk, window) = (64 * 1024, 256 * 1024);
    let mut pat = Pattern::new(66);
    let mut out = vec![0u8; chunk];
    let mut inb = vec![0u8; 256 * 1024];
    let (mut sent, mut recvd) = (0usize, 0usize);
    let (mut h_sent, mut h_recv) = (Sha256::new(), Sha256::new());
    while recvd < BULK {
        assert!(
            start.elapsed() < BULK_DEADLINE,
            "echo too slow: sent {sent}, got {recvd}"
        );
        while sent < BULK && sent - recvd < window {
            pat.fill(&mut out);
            h_sent.update(&out);
            tls.write_all(&out).expect("echo write");
            sent += chunk;
        }
        tls.flush().expect("flush");
        let n = tls
            .read(&mut inb)
            .unwrap_or_else(|e| panic!("echo read after {recvd}: {e}"));
        assert!(
            n > 0,
            "connection closed after {recvd} of {BULK} echoed bytes"
        );
        h_recv.update(&inb[..n]);
        recvd += n;
        assert!(recvd <= sent, "received more than sent");
    }
    assert_eq!(
        hex(&h_recv.finalize()),
        hex(&h_sent.finalize()),
        "echoed stream differs"
    );
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

/// Bounded rendezvous: count in, wait (polling, with a deadline) for everyone. A thread
/// that panicked never arrives, and the others then fail instead of hanging.
fn rendezvous(counter: &AtomicUsize, n: usize, timeout: Duration) {
    counter.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + timeout;
    while counter.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "other client threads failed or stalled"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_500_connections_each_echo_their_own_data() {
    let _g = heavy();
    const THREADS: usize = 10;
    const PER_THREAD: usize = 50;
    const TOTAL: usize = THREADS * PER_THREAD;
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    let addr = p.addr("edge");
    let cfg = p.client();
    let opened = Arc::new(AtomicUsize::new(0));
    let echoed = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cfg, opened, echoed) = (cfg.clone(), opened.clone(), echoed.clone());
            thread::spawn(move || {
                let mut conns: Vec<(usize, Tls)> = (0..PER_THREAD)
                    .map(|i| {
                        let id = t * PER_THREAD + i;
                        (id, tls_connect(addr, &cfg))
                    })
                    .collect();
                // All 500 TLS connections are open before any data moves.
                rendezvous(&opened, THREADS, Duration::from_secs(120));
                let payload = |id: usize| Pattern::bytes(1000 + id as u64, 4096 + 8 * id);
                for (id, tls) in conns.iter_mut() {
                    let data = payload(*id);
                    tls.write_all(&data)
                        .unwrap_or_else(|e| panic!("conn {id}: write: {e}"));
                    tls.flush().unwrap();
                }
                for (id, tls) in conns.iter_mut() {
                    let want = payload(*id);
                    let got = read_n(tls, want.len(), &format!("conn {id}"));
                    assert!(got == want, "conn {id} received data that is not its own");
                }
                // Keep every connection open until all threads have checked theirs.
                rendezvous(&echoed, THREADS, Duration::from_secs(120));
                for (_, tls) in conns.iter_mut() {
                    close_notify(tls);
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("thread {i}: {msg}"));
        }
    }
    assert!(failures.is_empty(), "client threads failed: {failures:#?}");
    assert_eq!(
        echo.accepted(),
        TOTAL,
        "one upstream connection per client connection"
    );
    assert_eq!(
        echo.max_active(),
        TOTAL,
        "all {TOTAL} upstream connections were open at once"
    );
}

// ---------------------------------------------------------------------------------
// Half-close
// ---------------------------------------------------------------------------------

/// The client ends its direction, with a close_notify or with a bare TCP FIN: the
/// upstream gets every byte then EOF, and its reply (a digest of them) still reaches
/// the client, ended by a close_notify. One case a proxy; each names itself.
#[test]
fn client_half_close_reaches_upstream_and_reply_still_flows() {
    type HalfClose = fn(&mut Tls);
    let cases: [(&str, u64, usize, HalfClose); 2] = [
        ("close_notify", 7, 300_000, |tls| close_notify(tls)),
        ("FIN without close_notify", 8, 200_000, |tls| {
            tls.flush().unwrap();
            tls.sock
                .shutdown(Shutdown::Write)
                .expect("TCP shutdown(Write)");
        }),
    ];
    for (case, seed, len, half_close) in cases {
        let digest = Backend::digest();
        let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[digest.addr()])]);
        let mut tls = tls_connect(p.addr("edge"), &p.client());
        let data = Pattern::bytes(seed, len);
        tls.write_all(&data).unwrap();
        half_close(&mut tls);
        let what = format!("digest reply after {case}");
        let (reply, ending) = read_to_end_tls(&mut tls, 1024, &what);
        let want = format!("{} {}\n", data.len(), hex(&Sha256::digest(&data)));
        assert_eq!(
            String::from_utf8_lossy(&reply),
            want,
            "{case}: backend: {:?}",
            digest.reports()
        );
        assert_eq!(
            ending,
            Ending::Clean,
            "{case}: upstream FIN must arrive as close_notify"
        );
    }
}

const GREETING: &[u8] = b"greetings, and goodbye from the upstream\n";

#[test]
fn upstream_fin_becomes_close_notify() {
    let up = Backend::greet_then_fin(GREETING);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[up.addr()])]);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    let (got, ending) = read_to_end_tls(&mut tls, 1024, "greeting");
    assert_eq!(got, GREETING);
    assert_eq!(
        ending,
        Ending::Clean,
        "after the upstream's FIN the client must get a close_notify (rustls read Ok(0))"
    );
}

/// TLS 1.3 close_notify closes only the sender's direction: after the upstream's FIN
/// became a close_notify, the client's bytes must still reach the upstream.
#[test]
fn upstream_fin_keeps_client_to_upstream_flowing() {
    let up = Backend::greet_then_fin(GREETING);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[up.addr()])]);
    let cfg = client_config(&p.pki, &[&rustls::version::TLS13], &[]);
    let mut tls = tls_connect(p.addr("edge"), &cfg);
    let (got, ending) = read_to_end_tls(&mut tls, 1024, "greeting");
    assert_eq!(got, GREETING);
    assert_eq!(
        ending,
        Ending::Clean,
        "upstream FIN must arrive as close_notify"
    );
    let data = Pattern::bytes(9, 100_000);
    tls.write_all(&data)
        .expect("client write after the upstream's half-close");
    close_notify(&mut tls);
    let reports = up.wait_reports(1, Duration::from_secs(10));
    let want = format!("{} {}", data.len(), hex(&Sha256::digest(&data)));
    assert_eq!(
        reports,
        vec![want],
        "upstream must receive the client's bytes sent after its own FIN, then EOF"
    );
}

// ---------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------

#[test]
fn upstream_down_client_closed_promptly() {
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[refused_addr()])]);
    let start = Instant::now();
    match try_tls_connect(p.addr("edge"), &p.client()) {
        Ok(mut tls) => {
            let _ = tls.write_all(b"anyone there?");
            let _ = tls.flush();
            let (got, ending) = read_to_end_tls(&mut tls, 1024, "upstream down");
            assert!(
                got.is_empty(),
                "no upstream, yet the client received {got:?}"
            );
            eprintln!("upstream down: client saw {ending:?}");
        }
        Err(e) => eprintln!("upstream down: handshake ended with {e}"),
    }
    let took = start.elapsed();
    assert!(
        took < PROMPT,
        "client closed only after {took:?} (upstream refuses at once)"
    );
}

#[test]
fn refused_first_upstream_fails_over_to_second() {
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(2),
        &[ListenerConf::new("edge", &[refused_addr(), echo.addr()])],
    );
    let cfg = p.client();
    for i in 0..6 {
        let mut tls = tls_connect(p.addr("edge"), &cfg);
        echo_round_trip(
            &mut tls,
            format!("failover {i}").as_bytes(),
            &format!("conn {i}"),
        );
        close_notify(&mut tls);
    }
    assert_eq!(
        echo.accepted(),
        6,
        "every connection must end up on the live upstream"
    );
}

/// An upstream reset must not look like a clean end to the client: no close_notify,
/// the connection is aborted (RST) or at least cut without close_notify, promptly.
#[test]
fn upstream_reset_propagates_to_client() {
    let up = Backend::reset_after(5);
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[up.addr()])]);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    tls.write_all(b"hello").unwrap();
    tls.flush().unwrap();
    let start = Instant::now();
    let (got, ending) = read_to_end_tls(&mut tls, 1024, "after upstream RST");
    let took = start.elapsed();
    assert!(got.is_empty(), "unexpected data {got:?}");
    assert_eq!(up.reports(), vec!["reset after 5".to_string()]);
    assert!(
        matches!(ending, Ending::Reset | Ending::UncleanEof),
        "upstream RST reached the client as {ending:?}; a close_notify would claim a clean end"
    );
    assert!(
        took < PROMPT,
        "client learned of the reset only after {took:?}"
    );
}

/// A client reset must not look like a clean end to the upstream: it must see a reset
/// (ECONNRESET), not a FIN that reads as "request complete".
#[test]
fn client_reset_propagates_to_upstream() {
    let up = Backend::echo_observed();
    let p = Proxy::start(Some(2), &[ListenerConf::new("edge", &[up.addr()])]);
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    echo_round_trip(&mut tls, b"before the reset", "echo");
    let rustls::StreamOwned { sock, .. } = tls;
    reset_connection(sock);
    let reports = up.wait_reports(1, PROMPT);
    assert_eq!(
        reports,
        vec!["reset 16".to_string()],
        "the upstream must see the client's RST as a reset within {PROMPT:?}"
    );
}

// ---------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------

#[test]
fn handshake_timeout_closes_silent_and_stalled_clients() {
    let echo = Backend::echo();
    let mut p = Proxy::start(
        Some(2),
        &[ListenerConf::new("edge", &[echo.addr()]).opt("handshake_timeout_ms", "1000")],
    );
    let mut good = tls_connect(p.addr("edge"), &p.client());
    echo_round_trip(&mut good, b"before", "good connection");
    let hello = rustls_client_hello(&p.pki);
    let start = Instant::now();
    let mut silent = tcp_connect(p.addr("edge"));
    let mut stalled = tcp_connect(p.addr("edge"));
    stalled.write_all(&hello[..hello.len() / 2]).unwrap();
    for (name, s) in [
        ("silent", &mut silent),
        ("half a ClientHello", &mut stalled),
    ] {
        let (got, ending) = read_to_end_raw(s, name);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(6),
            "{name} client closed after {took:?}; handshake_timeout_ms = 1000"
        );
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{name}: unexpected bytes before close: {got:02x?}"
        );
        eprintln!("{name}: closed after {took:?} ({ending:?})");
    }
    // The timer must not touch an established connection.
    assert_still_serving(&mut p, &mut good, "after handshake timeouts");
}

#[test]
fn idle_timeout_closes_idle_connection() {
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(2),
        &[ListenerConf::new("edge", &[echo.addr()]).opt("idle_timeout_ms", "1000")],
    );
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    // Activity keeps it open past the timeout (6 x 300 ms > 1000 ms)...
    for i in 0..6 {
        if i > 0 {
            thread::sleep(Duration::from_millis(300));
        }
        echo_round_trip(
            &mut tls,
            format!("tick {i}").as_bytes(),
            "keep-alive traffic",
        );
    }
    // ...silence closes it, about 1000 ms after the last bytes.
    let start = Instant::now();
    let (got, ending) = read_to_end_tls(&mut tls, 0, "idle");
    let took = start.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(6),
        "idle connection closed after {took:?} of silence; idle_timeout_ms = 1000 ({ending:?})"
    );
    assert_ne!(ending, Ending::Reset, "idle close should be orderly");
}

// ---------------------------------------------------------------------------------
// Bad clients are rejected, others keep working
// ---------------------------------------------------------------------------------

/// A listener with a long handshake timeout, so any close within PROMPT is the
/// rejection itself; plus an established connection to check afterwards.
fn reject_setup() -> (Backend, Proxy, Tls) {
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(2),
        &[ListenerConf::new("edge", &[echo.addr()]).opt("handshake_timeout_ms", "30000")],
    );
    let mut good = tls_connect(p.addr("edge"), &p.client());
    echo_round_trip(&mut good, b"before", "good connection");
    (echo, p, good)
}

/// Send `bytes` on a raw TCP connection and return what came back before the close,
/// asserting the close is prompt.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8], fin: bool, what: &str) -> Vec<u8> {
    let mut s = tcp_connect(addr);
    let start = Instant::now();
    s.write_all(bytes).unwrap();
    if fin {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let (got, ending) = read_to_end_raw(&mut s, what);
    let took = start.elapsed();
    assert!(
        took < PROMPT,
        "{what}: connection closed only after {took:?}"
    );
    eprintln!(
        "{what}: closed after {took:?} ({ending:?}), {} bytes back",
        got.len()
    );
    got
}

#[test]
fn garbage_bytes_rejected_with_alert_while_others_keep_working() {
    let (echo, mut p, mut good) = reject_setup();
    let got = send_and_expect_close(
        p.addr("edge"),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        false,
        "plain HTTP to the TLS port",
    );
    let alert = first_alert(&got);
    assert!(
        matches!(alert, Some((2, _))),
        "expected a fatal TLS alert before the close, got {got:02x?}"
    );
    assert_still_serving(&mut p, &mut good, "after garbage");
    assert_eq!(
        echo.accepted(),
        2,
        "rejected connections must not reach the upstream"
    );
}

#[test]
fn truncated_client_hello_rejected_while_others_keep_working() {
    let (echo, mut p, mut good) = reject_setup();
    let hello = rustls_client_hello(&p.pki);

    // (a) A ClientHello whose body is cut short, with consistent record and handshake
    // lengths: undecodable, so the server must answer decode_error (50) and close.
    let body = &hello[9..9 + 40];
    let cut = handshake_record(0x01, body, [hello[1], hello[2]]);
    let got = send_and_expect_close(p.addr("edge"), &cut, false, "ClientHello cut to 40 bytes");
    assert_eq!(
        first_alert(&got),
        Some((2, 50)),
        "expected a fatal decode_error alert, got {got:02x?}"
    );

    // (b) Half a ClientHello record, then FIN: nothing more can come, close at once.
    send_and_expect_close(
        p.addr("edge"),
        &hello[..hello.len() / 2],
        true,
        "half ClientHello + FIN",
    );

    assert_still_serving(&mut p, &mut good, "after truncated ClientHellos");
    assert_eq!(
        echo.accepted(),
        2,
        "rejected connections must not reach the upstream"
    );
}

#[test]
fn tls10_only_client_rejected_with_alert_while_others_keep_working() {
    let (echo, mut p, mut good) = reject_setup();
    let got = send_and_expect_close(
        p.addr("edge"),
        &tls10_client_hello(),
        false,
        "TLS 1.0 hello",
    );
    let alert = first_alert(&got);
    // rustls answers a hello without signature_algorithms with handshake_failure (40);
    // protocol_version (70) is the other fitting answer.
    assert!(
        matches!(alert, Some((2, 40)) | Some((2, 70))),
        "expected a fatal handshake_failure/protocol_version alert, got {got:02x?}"
    );
    assert_still_serving(&mut p, &mut good, "after a TLS 1.0 client");
    assert_eq!(
        echo.accepted(),
        2,
        "rejected connections must not reach the upstream"
    );
}

// ---------------------------------------------------------------------------------
// Backpressure: memory stays bounded
// ---------------------------------------------------------------------------------

#[test]
fn non_reading_client_with_flooding_upstream_keeps_memory_bounded() {
    let _g = heavy();
    const FLOOD: u64 = 256 * MIB as u64;
    const MAX_GROWTH: u64 = 64 * MIB as u64;
    let flood = Backend::flood(FLOOD, 256);
    let echo = Backend::echo();
    let p = Proxy::start(
        Some(2),
        &[
            ListenerConf::new("flood", &[flood.addr()]).opt("max_buffered_bytes", "262144"),
            ListenerConf::new("warm", &[echo.addr()]),
        ],
    );
    let pid = p.term.pid();
    // Warm up allocator, TLS state and receive buffers with a normal connection first.
    {
        let mut w = tls_connect(p.addr("warm"), &p.client());
        for i in 0..16 {
            echo_round_trip(&mut w, &Pattern::bytes(i, 64 * 1024), "warm-up");
        }
    }
    let base_rss = proc_status_bytes(pid, "VmRSS");
    let base_hwm = proc_status_bytes(pid, "VmHWM");

    let mut tls = tls_connect(p.addr("flood"), &p.client());
    // Do not read. Wait until the upstream can no longer write (backpressure reached
    // it) or it has written everything (no backpressure).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut since) = (flood.written(), Instant::now());
    loop {
        thread::sleep(Duration::from_millis(100));
        let w = flood.written();
        if w != last {
            (last, since) = (w, Instant::now());
        }
        if w >= FLOOD || (w > 0 && since.elapsed() >= Duration::from_millis(1500)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flood neither stalled nor finished: {w} bytes"
        );
    }
    let stalled_at = flood.written();
    let rss = proc_status_bytes(pid, "VmRSS");
    let hwm = proc_status_bytes(pid, "VmHWM");
    eprintln!(
        "flood stalled after {} MiB; terminus RSS {} -> {} MiB, peak {} -> {} MiB",
        stalled_at / MIB as u64,
        base_rss / MIB as u64,
        rss / MIB as u64,
        base_hwm / MIB as u64,
        hwm / MIB as u64
    );
    assert!(
        stalled_at < FLOOD / 2,
        "the upstream wrote {stalled_at} of {FLOOD} bytes to a client that reads nothing: \
         the proxy does not push back on the upstream"
    );
    assert!(
        rss.saturating_sub(base_rss) < MAX_GROWTH && hwm.saturating_sub(base_hwm) < MAX_GROWTH,
        "terminus memory grew by {} MiB (peak +{} MiB) while a non-reading client was \
         flooded; limit {} MiB",
        rss.saturating_sub(base_rss) / MIB as u64,
        hwm.saturating_sub(base_hwm) / MIB as u64,
        MAX_GROWTH / MIB as u64
    );

    // Now read: everything must arrive intact, and the stalled upstream resumes.
    let (got, digest, ending) = read_to_end_digest(&mut tls, u64::MAX, "drain");
    assert_eq!(ending, Ending::Clean);
    assert_eq!(got, FLOOD, "bytes lost or added under backpressure");
    assert_eq!(digest, hex(&Pattern::sha256(256, FLOOD)), "data corrupted");
}

// ---------------------------------------------------------------------------------
// Worker threads
// ---------------------------------------------------------------------------------

fn worker_tasks(pid: u32, expect: usize) -> Vec<TaskInfo> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut ws: Vec<TaskInfo> = tasks(pid)
            .into_iter()
            .filter(|t| t.comm.starts_with("terminus-w"))
            .collect();
        if ws.len() >= expect || Instant::now() >= deadline {
            ws.sort_by(|a, b| a.comm.cmp(&b.comm));
            return ws;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn worker_threads_are_named_and_pinned() {
    let echo = Backend::echo();
    let p = echo_proxy(Some(2), &echo);
    // Serve one connection first: by then every worker has started.
    let mut tls = tls_connect(p.addr("edge"), &p.client());
    echo_round_trip(&mut tls, b"pinned", "echo");
    let ws = worker_tasks(p.term.pid(), 2);
    let names: Vec<&str> = ws.iter().map(|t| t.comm.as_str()).collect();
    assert_eq!(
        names,
        ["terminus-w0", "terminus-w1"],
        "worker threads: {ws:?}"
    );
    let allowed = own_allowed_cpus();
    for w in &ws {
        assert_eq!(
            w.cpus_allowed.len(),
            1,
            "{} is not pinned to one CPU: {w:?}",
            w.comm
        );
        assert!(
            allowed.contains(&w.cpus_allowed[0]),
            "{} pinned outside {allowed:?}",
            w.comm
        );
    }
    if allowed.len() >= 2 {
        assert_ne!(
            ws[0].cpus_allowed, ws[1].cpus_allowed,
            "both workers on one CPU: {ws:?}"
        );
    }
}

fn taskset_start(cpu: usize, workers: Option<usize>, echo: &Backend) -> (Pki, Terminus) {
    require_tool("taskset");
    let pki = Pki::generate();
    let config = edge_config(&pki, workers, echo.addr());
    let term = Terminus::builder()
        .config(&config)
        .prefix(&["taskset", "-c", &cpu.to_string()])
        .start();
    (pki, term)
}

#[test]
fn taskset_one_cpu_one_worker_pinned_there() {
    let cpu = own_allowed_cpus()[0];
    let echo = Backend::echo();
    let (pki, term) = taskset_start(cpu, Some(1), &echo);
    // Serve one connection first: by then every worker has started.
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let mut tls = tls_connect(term.addr("edge"), &cfg);
    echo_round_trip(&mut tls, b"taskset", "echo");
    let ws = worker_tasks(term.pid(), 1);
    assert_eq!(ws.len(), 1, "workers = 1 under taskset: {ws:?}");
    assert_eq!(ws[0].comm, "terminus-w0");
    assert_eq!(
        ws[0].cpus_allowed,
        vec![cpu],
        "worker must be pinned to CPU {cpu}: {ws:?}"
    );
}

/// Without `workers`, the default is one worker per CPU the process may use.
#[test]
fn taskset_default_workers_follow_the_affinity_mask() {
    let cpu = own_allowed_cpus()[0];
    let echo = Backend::echo();
    let (pki, term) = taskset_start(cpu, None, &echo);
    // Serve one connection first: by then every worker has started.
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let mut tls = tls_connect(term.addr("edge"), &cfg);
    echo_round_trip(&mut tls, b"taskset default", "echo");
    let ws = worker_tasks(term.pid(), 1);
    assert_eq!(ws.len(), 1, "taskset -c {cpu} with default workers: {ws:?}");
    assert_eq!(ws[0].comm, "terminus-w0");
    assert_eq!(ws[0].cpus_allowed, vec![cpu], "{ws:?}");
}

// ---------------------------------------------------------------------------------
// Startup errors
// ---------------------------------------------------------------------------------

#[test]
fn bad_config_exits_2_naming_file_and_key() {
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        None,
        &[ListenerConf::new("edge", &[refused_addr()]).opt("no_such_key", "1")],
    );
    let (code, _out, err) = run_to_exit(
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "unknown key must exit 2; stderr: {err}");
    let file = config.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains(&file),
        "error must name the file {file}: {err}"
    );
    assert!(
        err.contains("no_such_key"),
        "error must name the field: {err}"
    );
}

/// `openssl s_client` against `addr` with extra arguments, stdin closed: (exit
/// status, stdout + stderr).
fn s_client_brief(pki: &Pki, addr: SocketAddr, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = openssl_s_client(addr, &pki.ca_pem());
    cmd.arg("-brief").args(args);
    let (code, out, err) = run_command_to_exit(cmd, Duration::from_secs(20));
    (code, format!("{out}{err}"))
}

/// The TLS policy knobs as OpenSSL sees them: `min_version = "1.3"` refuses a TLS
/// 1.2 client with a protocol_version alert, `cipher_suites` and `groups` are what
/// gets negotiated.
#[test]
fn openssl_sees_min_version_cipher_suites_and_groups() {
    require_tool("openssl");
    let backend = Backend::echo();
    let t = Proxy::start(
        Some(1),
        &[ListenerConf::new("strict", &[backend.addr()])
            .opt("min_version", "\"1.3\"")
            .opt("cipher_suites", "[\"TLS13_CHACHA20_POLY1305_SHA256\"]")
            .opt("groups", "[\"secp384r1\"]")],
    );
    let (addr, pki) = (t.addr("strict"), &t.pki);
    let (code, out) = s_client_brief(pki, addr, &["-tls1_2"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("alert protocol version"), "{out}");
    let (code, out) = s_client_brief(pki, addr, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Protocol version: TLSv1.3"), "{out}");
    assert!(
        out.contains("Ciphersuite: TLS_CHACHA20_POLY1305_SHA256"),
        "{out}"
    );
    assert!(out.contains("Server Temp Key: ECDH, secp384r1"), "{out}");
    // A client that offers only X25519 has no group in common.
    let (code, out) = s_client_brief(pki, addr, &["-groups", "X25519"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("handshake failure"), "{out}");
}
