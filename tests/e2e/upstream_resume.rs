//! Re-encryption towards real OpenSSL upstreams and TLS session resumption (issue 16).
//!
//! * `socat OPENSSL-LISTEN:…,verify=1,fork EXEC:cat`: an mTLS echo upstream that sets
//!   no session id context, so OpenSSL aborts every handshake that offers it a
//!   session (`session id context uninitialized`). terminus must drop that
//!   upstream's sessions and retry with a full handshake, invisibly to the client.
//! * `openssl s_server -Verify 1 -www`: sets a session id context and resumes; its
//!   status page says `Reused,` for a resumed session, so resumption must be used.
//!
//! Certificates: terminus' own from `terminus certs`; the upstream's from an
//! "upstream CA" (`upstream-ca.pem`, `backend.pem` for backend.internal); terminus'
//! client certificate towards the upstream (`edge.pem`) from a client CA the
//! upstream trusts (`client-ca.pem`). Every wait is bounded.

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use terminus::tools::bench::target::metric;

const WAIT: Duration = Duration::from_secs(10);
fn upstream_tls(resume: bool) -> String {
    format!(
        "[listeners.upstream_tls]\nca = [\"upstream-ca.pem\"]\nserver_name = \"backend.internal\"\n\
         cert = \"edge.pem\"\nkey = \"edge.key\"\nresume = {resume}\n"
    )
}

fn start_terminus(pki: &Pki, listeners: &[ListenerConf]) -> Terminus {
    Terminus::start(&append_tables(
        &write_config(pki, Some(2), listeners),
        ADMIN,
    ))
}

/// Whether something accepts TCP connections on `addr` (socat forks a child for the
/// probe, which fails its handshake and exits).
fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `socat OPENSSL-LISTEN:PORT,…,verify=1,fork EXEC:cat`: the mTLS echo upstream of
/// the issue. Retries with another port if the chosen one was taken meanwhile.
fn socat_echo(dir: &Path) -> (Spawned, SocketAddr) {
    require_tool("socat");
    for _ in 0..5 {
        let port = free_port();
        let p = |f: &str| dir.join(f).display().to_string();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            p("backend.pem"),
            p("backend.key"),
            p("client-ca.pem"),
        );
        let mut cmd = Command::new("socat");
        cmd.arg(listen).arg("EXEC:cat");
        let mut s = Spawned::new(cmd);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if s.child.try_wait().unwrap().is_some() {
                break; // port taken (or a bad option): see below
            }
            if listening(addr) {
                return (s, addr);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = s.child.kill();
        eprintln!(
            "socat on port {port} did not come up; stderr: {}",
            s.stderr()
        );
    }
    panic!("socat did not start on any of 5 ports");
}

const ECHO_BYTES: usize = 200 * 1024;
const CHUNK: usize = 20 * 1024;

/// One client: TLS to terminus, 200 KB through the echo in 20 KB round trips (the
/// first sent right after the handshake, while terminus' upstream handshake runs),
/// byte-exact, then close_notify and a clean end. Errors are returned, not panicked,
/// so a round reports every failure.
fn echo_client(
    addr: SocketAddr,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
    seed: u64,
) -> Result<(), String> {
    let mut tls = try_tls_connect(addr, cfg).map_err(|e| format!("handshake: {e}"))?;
    let data = Pattern::bytes(seed, ECHO_BYTES);
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        tls.write_all(chunk)
            .and_then(|_| tls.flush())
            .map_err(|e| format!("write chunk {i}: {e}"))?;
        let mut back = vec![0u8; chunk.len()];
        let mut got = 0;
        while got < back.len() {
            match tls.read(&mut back[got..]) {
                Ok(0) => return Err(format!("chunk {i}: closed after {got} bytes")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("chunk {i}: read after {got} bytes: {e}")),
            }
        }
        if back != chunk {
            return Err(format!("chunk {i}: echoed bytes differ"));
        }
    }
    tls.conn.send_close_notify();
    tls.flush().map_err(|e| format!("close_notify: {e}"))?;
    let (rest, ending) = read_to_end_tls(&mut tls, 0, "echo close");
    if !rest.is_empty() || ending != Ending::Clean {
        return Err(format!("ended with {} extra bytes, {ending:?}", rest.len()));
    }
    Ok(())
}

/// `rounds` rounds of `conns` concurrent echo clients; every failure, by round.
fn echo_rounds(addr: SocketAddr, pki: &Pki, rounds: usize, conns: usize) -> Vec<String> {
    let cfg = client_config(pki, rustls::ALL_VERSIONS, &[]);
    let mut failures = Vec::new();
    for round in 0..rounds {
        let handles: Vec<_> = (0..conns)
            .map(|c| {
                let cfg = cfg.clone();
                thread::spawn(move || echo_client(addr, &cfg, (round * conns + c) as u64))
            })
            .collect();
        for (c, h) in handles.into_iter().enumerate() {
            if let Err(e) = h.join().unwrap() {
                failures.push(format!("round {round} client {c}: {e}"));
            }
        }
    }
    failures
}

#[test]
fn upstream_refusing_resumption_never_fails_a_client() {
    let _g = heavy();
    let pki = Pki::generate();
    write_upstream_pki(pki.dir(), None);
    let (socat, up) = socat_echo(pki.dir());
    let term = start_terminus(
        &pki,
        &[
            ListenerConf::new("reenc", &[up]).raw(&upstream_tls(true)),
            ListenerConf::new("noresume", &[up]).raw(&upstream_tls(false)),
        ],
    );
    let started = Instant::now();
    let failures = echo_rounds(term.addr("reenc"), &pki, 20, 5);
    let took = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} of 100 client connections failed:\n{}\nterminus stderr:\n{}\nsocat stderr:\n{}",
        failures.len(),
        failures.join("\n"),
        term.stderr(),
        socat.stderr()
    );

    let l = "listener=\"reenc\"";
    let page = wait_page(&term, WAIT, |p| {
        metric(p, &format!("terminus_connections_total{{{l}}}")) == Some(100.0)
            && metric(
                p,
                &format!("terminus_upstream_handshakes_total{{{l},resumed=\"false\"}}"),
            )
            .unwrap_or(0.0)
                + metric(
                    p,
                    &format!("terminus_upstream_handshakes_total{{{l},resumed=\"true\"}}"),
                )
                .unwrap_or(0.0)
                == 100.0
    });
    let refused = resumption_failures(&page, l, up);
    // Round 2 offers the tickets round 1 brought, and the upstream refuses them.
    assert!(refused >= 1.0, "no refusal counted:\n{page}");
    assert_eq!(
        sample(&page, &format!("terminus_upstream_tls_errors_total{{{l}}}")),
        0.0,
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!("terminus_upstream_handshakes_total{{{l},resumed=\"true\"}}")
        ),
        0.0,
        "socat cannot resume:\n{page}"
    );
    // One line per off period (10 s, then 20 s...), not one per refused connection.
    let stderr = term.stderr();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("refused TLS session resumption"))
        .collect::<Vec<_>>();
    let periods = 1 + (took.as_secs() / 10) as usize;
    assert!(
        !lines.is_empty() && lines.len() <= periods && lines.len() as f64 <= refused,
        "{} log lines for {refused} refusals in {took:?}:\n{stderr}",
        lines.len()
    );
    assert!(
        lines[0].contains(&format!("listener \"reenc\": upstream {up} refused")),
        "{}",
        lines[0]
    );

    // resume = false: nothing is offered, so nothing is refused.
    let failures = echo_rounds(term.addr("noresume"), &pki, 2, 5);
    assert!(failures.is_empty(), "{failures:?}");
    let l = "listener=\"noresume\"";
    let handshakes = format!("terminus_upstream_handshakes_total{{{l},resumed=\"false\"}}");
    let page = assert_metric(&term, &handshakes, 10.0);
    assert_eq!(resumption_failures(&page, l, up), 0.0, "{page}");
}

/// GET / through terminus; s_server's status page.
fn www_page(addr: SocketAddr, cfg: &std::sync::Arc<rustls::ClientConfig>) -> String {
    let mut tls = tls_connect(addr, cfg);
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let (page, _) = read_to_end_tls(&mut tls, 1 << 20, "s_server status page");
    String::from_utf8_lossy(&page).into_owned()
}

/// `terminus_upstream_resumption_failures_total` of listener label `l` and upstream `up`.
fn resumption_failures(page: &str, l: &str, up: SocketAddr) -> f64 {
    sample(
        page,
        &format!("terminus_upstream_resumption_failures_total{{{l},upstream=\"{up}\"}}"),
    )
}

/// A test PKI with the upstream's, and `openssl s_server -www` (asking for a client
/// certificate) serving the upstream's certificate.
fn www_upstream() -> (Pki, Spawned, SocketAddr) {
    let pki = Pki::generate();
    write_upstream_pki(pki.dir(), None);
    let (srv, up) = openssl_s_server(
        pki.dir(),
        "backend.pem",
        "backend.key",
        "client-ca.pem",
        &["-www", "-Verify", "1"],
    );
    (pki, srv, up)
}

#[test]
fn upstream_supporting_resumption_resumes() {
    let (pki, srv, up) = www_upstream();
    let term = start_terminus(
        &pki,
        &[ListenerConf::new("reenc", &[up]).raw(&upstream_tls(true))],
    );
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let mut kinds = Vec::new();
    for i in 0..6 {
        let page = www_page(term.addr("reenc"), &cfg);
        let kind = if page.contains("\nReused, ") {
            "reused"
        } else if page.contains("\nNew, ") {
            "new"
        } else {
            panic!(
                "connection {i}: no s_server status page:\n{page}\ns_server stderr:\n{}\n\
                 terminus stderr:\n{}",
                srv.stderr(),
                term.stderr()
            )
        };
        kinds.push(kind);
    }
    // The workers share the upstream's session store: only the first is full.
    assert_eq!(kinds[0], "new", "{kinds:?}");
    let reused = kinds.iter().filter(|k| **k == "reused").count();
    assert!(reused >= 4, "the upstream saw {kinds:?}");
    let l = "listener=\"reenc\"";
    let handshakes = format!("terminus_upstream_handshakes_total{{{l},resumed=\"true\"}}");
    let page = assert_metric(&term, &handshakes, reused as f64);
    assert_eq!(resumption_failures(&page, l, up), 0.0, "{page}");
    assert!(
        !term.stderr().contains("refused TLS session resumption"),
        "{}",
        term.stderr()
    );
}

/// A plaintext stand-in for s_server's status page, for the baseline:
/// reads up to the end of the request head, answers, closes.
fn plain_www(page_len: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let page = vec![b'x'; page_len];
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let page = page.clone();
            thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                if !read_head(&mut s, &mut head, usize::MAX) {
                    return;
                }
                let _ = s.write_all(&page);
            });
        }
    });
    addr
}

/// Upstream handshake CPU with and without resumption, in one run (BENCHMARKING.md):
/// sequential `GET /` through three listeners of one terminus (1 worker): to
/// `openssl s_server -Verify 1 -www` with `resume = true`, with `resume = false`,
/// and to a plaintext page of the same size (the client leg alone). Batches are
/// interleaved; the client leg never resumes. CPU: schedstat of all of terminus'
/// threads (user + kernel, loopback TCP included), access log off, no admin.
///
/// `cargo test --release --test e2e -- --ignored --nocapture upstream_resume::upstream_handshake_cpu`
#[test]
#[ignore = "measurement: run by hand"]
fn upstream_handshake_cpu() {
    use terminus::tools::bench::target::TargetProbe;
    let _g = heavy();
    let (pki, srv, up) = www_upstream();
    // s_server's status page is a few KB (it lists the ciphers): proxying it costs a
    // few µs, noise next to the handshakes.
    let plain = plain_www(4096);
    let config = write_config(
        &pki,
        Some(1),
        &[
            ListenerConf::new("resume", &[up]).raw(&upstream_tls(true)),
            ListenerConf::new("full", &[up]).raw(&upstream_tls(false)),
            ListenerConf::new("plain", &[plain]),
        ],
    );
    let term = Terminus::builder()
        .config(&config)
        .prefix(&["taskset", "-c", "0"])
        .start();
    // Every thread: the worker, and io_uring's io-wq helpers it hands work to.
    let probe = TargetProbe::Pid(term.pid());
    let mut cfg = (*client_config(&pki, rustls::ALL_VERSIONS, &[])).clone();
    cfg.resumption = rustls::client::Resumption::disabled();
    let cfg = std::sync::Arc::new(cfg);
    let get = |name: &str| {
        let page = www_page(term.addr(name), &cfg);
        assert!(page.len() >= 1000, "{name}: {page}");
        page
    };
    // Warm up (and give the resume listener its first tickets).
    for name in ["resume", "full", "plain"] {
        for _ in 0..20 {
            get(name);
        }
    }
    let (rounds, batch) = (10, 50);
    let mut cpu = [0u64; 3];
    let mut reused = 0;
    for _ in 0..rounds {
        for (k, name) in ["resume", "full", "plain"].iter().enumerate() {
            let before = probe.cpu_ns().unwrap();
            for _ in 0..batch {
                let page = get(name);
                reused += (k == 0 && page.contains("\nReused, ")) as usize;
            }
            cpu[k] += probe.cpu_ns().unwrap() - before;
        }
    }
    let n = (rounds * batch) as f64;
    let us = cpu.map(|c| c as f64 / n / 1e3);
    println!(
        "terminus CPU per connection (client leg full handshake + upstream leg + one GET), \
         {n} connections each, interleaved batches of {batch}:"
    );
    println!(
        "  upstream resumed (resume = true):  {:7.1} µs  ({reused} of {n} reused at s_server)",
        us[0]
    );
    println!("  upstream full    (resume = false): {:7.1} µs", us[1]);
    println!("  plaintext upstream (client leg):   {:7.1} µs", us[2]);
    println!(
        "upstream handshake alone: resumed {:.1} µs, full {:.1} µs; full / resumed = {:.2}",
        us[0] - us[2],
        us[1] - us[2],
        (us[1] - us[2]) / (us[0] - us[2])
    );
    println!("whole connection: full / resumed = {:.2}", us[1] / us[0]);
    assert!(
        reused as f64 >= n * 0.9,
        "resumption was not used: {reused} of {n}"
    );
    drop(srv);
}
