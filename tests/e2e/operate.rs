//! Operating terminus: `/metrics` counts what really happened, scrapes do not stall
//! traffic, certificates reload under load (plain rewrite and the Kubernetes `..data`
//! symlink swap), broken replacements keep the old material, SIGHUP reloads the
//! config, two instances resume each other's tickets, SIGTERM drains, and the access
//! log carries the peer identity. Real `terminus run` processes, real rustls clients.

use crate::common::*;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use terminus::tools::bench::target::metric;
use terminus::tools::certs::{LeafSpec, TestCa, TestLeaf};
use terminus::tools::client::{ClientConfigBuilder, Trust};

const SPIFFE: &str = "spiffe://example.org/client";

fn client_with_cert(pki: &Pki, leaf: Option<&TestLeaf>) -> Arc<ClientConfig> {
    let mut b = ClientConfigBuilder::new(Trust::Roots(pki.roots()));
    if let Some(l) = leaf {
        b = b.client_cert(l.chain.clone(), l.key());
    }
    b.build().unwrap()
}

/// Client CA (`client-ca.pem` next to the configs) and a leaf with [`SPIFFE`].
fn client_ca(pki: &Pki) -> (TestCa, TestLeaf) {
    let ca = TestCa::root("operate client CA").unwrap();
    std::fs::write(pki.dir().join("client-ca.pem"), &ca.pem).unwrap();
    let leaf = ca.leaf(&LeafSpec::client("client", Some(SPIFFE))).unwrap();
    (ca, leaf)
}

fn require(allow: &str) -> String {
    format!(
        "[listeners.client_auth]\nmode = \"require\"\nca = [\"client-ca.pem\"]\nallow = [\"{allow}\"]\n"
    )
}

/// Echo `n` bytes through a fresh connection and close it cleanly; true if resumed.
fn echo_once(addr: SocketAddr, cfg: &Arc<ClientConfig>, n: usize, seed: u64) -> bool {
    let mut tls = tls_connect(addr, cfg);
    echo_round_trip(&mut tls, &Pattern::bytes(seed, n), "echo");
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    resumed
}

fn garbage(addr: SocketAddr) {
    let mut s = tcp_connect(addr);
    let _ = s.write_all(b"GARBAGE GARBAGE GARBAGE\r\n\r\n");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn metrics_count_connections_handshakes_errors_bytes_and_latency() {
    let pki = Pki::generate();
    let (_ca, leaf) = client_ca(&pki);
    let backend = Backend::echo();
    let up = backend.addr();
    let config = write_config(
        &pki,
        Some(2),
        &[
            ListenerConf::new("edge", &[up]),
            ListenerConf::new("mtls", &[up]).raw(&require(SPIFFE)),
            ListenerConf::new("deny", &[up]).raw(&require("spiffe://example.org/other")),
        ],
    );
    let t = Terminus::start(&append_tables(&config, ADMIN));
    let (edge, mtls, deny) = (t.addr("edge"), t.addr("mtls"), t.addr("deny"));
    assert_eq!(http_get(t.admin(), "/healthz").0, 200);
    assert_eq!(http_get(t.admin(), "/readyz").0, 200);
    assert_eq!(http_get(t.admin(), "/nope").0, 404);

    // edge: 1 full + 3 resumed handshakes (one client config = one session cache),
    // each echoing a different size; 2 garbage clients.
    let plain = client_with_cert(&pki, None);
    let sizes = [1000usize, 20_000, 3, 70_000];
    let resumed: Vec<bool> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| echo_once(edge, &plain, n, i as u64))
        .collect();
    assert_eq!(resumed, [false, true, true, true], "tickets resume");
    garbage(edge);
    garbage(edge);
    // mtls: 2 verified clients. deny: 1 verified but refused by the allow-list.
    let with_cert = client_with_cert(&pki, Some(&leaf));
    assert!(!echo_once(mtls, &with_cert, 500, 9));
    echo_once(mtls, &with_cert, 500, 10);
    assert!(try_tls_connect(deny, &with_cert)
        .and_then(|mut s| s.read(&mut [0u8; 1]))
        .is_err());

    let e = "listener=\"edge\"";
    wait_metric(&t, "terminus_connections_total{listener=\"deny\"}", 1.0);
    wait_metric(&t, &format!("terminus_connections_total{{{e}}}"), 6.0);
    let page = wait_metric(
        &t,
        &format!("terminus_bytes_total{{{e},direction=\"upstream_to_client\"}}"),
        sizes.iter().sum::<usize>() as f64,
    );
    let ok = |l: &str, resumed: bool, auth: &str| {
        sample(
            &page,
            &format!("terminus_handshakes_total{{listener=\"{l}\",result=\"ok\",resumed=\"{resumed}\",client_auth=\"{auth}\"}}"),
        )
    };
    assert_eq!(ok("edge", false, "none"), 1.0);
    assert_eq!(ok("edge", true, "none"), 3.0);
    assert_eq!(
        ok("mtls", false, "verified") + ok("mtls", true, "verified"),
        2.0
    );
    let total = sizes.iter().sum::<usize>() as f64;
    // One handshake sample and one upstream connect per successful handshake.
    let exact = [
        (format!("terminus_connections_total{{{e}}}"), 6.0),
        (
            format!("terminus_handshakes_total{{{e},result=\"error\",resumed=\"false\",client_auth=\"none\"}}"),
            2.0,
        ),
        (format!("terminus_handshake_errors_total{{{e},reason=\"malformed\"}}"), 2.0),
        (
            "terminus_handshake_errors_total{listener=\"deny\",reason=\"policy_denied\"}".into(),
            1.0,
        ),
        ("terminus_policy_denied_total{listener=\"deny\"}".into(), 1.0),
        (format!("terminus_bytes_total{{{e},direction=\"client_to_upstream\"}}"), total),
        (format!("terminus_bytes_total{{{e},direction=\"upstream_to_client\"}}"), total),
        (format!("terminus_handshake_duration_seconds_count{{{e}}}"), 4.0),
        (format!("terminus_handshake_duration_seconds_bucket{{{e},le=\"+Inf\"}}"), 4.0),
        (format!("terminus_upstream_connect_duration_seconds_count{{{e}}}"), 4.0),
        (format!("terminus_connections_active{{{e}}}"), 0.0),
        (format!("terminus_upstream_connect_errors_total{{{e},upstream=\"{up}\"}}"), 0.0),
    ];
    for (name, want) in &exact {
        assert_eq!(sample(&page, name), *want, "{name}");
    }
    assert!(
        sample(
            &page,
            &format!("terminus_handshake_duration_seconds_sum{{{e}}}")
        ) > 0.0
    );
    let expiry = sample(
        &page,
        &format!(
            "terminus_cert_expiry_timestamp_seconds{{{e},cert=\"{}\"}}",
            pki.dir().join("server.pem").display()
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86400.0, "365-day cert: {expiry}");
    assert!(sample(&page, "process_cpu_seconds_total") > 0.0);
    assert!(sample(&page, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&page, "process_open_fds") > 5.0);
    assert_eq!(sample(&page, "terminus_workers"), 2.0);
}

#[test]
fn a_scrape_storm_does_not_stall_traffic() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, Some(1));
    let t = Terminus::start(&append_tables(&config, ADMIN));
    let (edge, admin) = (t.addr("edge"), t.admin());
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, scrapes) = (stop.clone(), scrapes.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = http_get(admin, "/metrics");
                    assert_eq!(status, 200);
                    assert!(body.contains("terminus_connections_total"));
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Meanwhile: 1000 echo round trips on one connection (more, until 50 scrapes
    // have overlapped them: a fast host can finish 1000 in 80 ms, before the
    // scrapers got going), plus 30 new handshakes.
    let cfg = client_with_cert(&pki, None);
    let mut tls = tls_connect(edge, &cfg);
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut i = 0u64;
    while i < 1000
        || (scrapes.load(Ordering::Relaxed) < 50 && started.elapsed() < Duration::from_secs(30))
    {
        let t0 = Instant::now();
        echo_round_trip(&mut tls, &Pattern::bytes(i, 512), "rr under scrape storm");
        worst = worst.max(t0.elapsed());
        i += 1;
    }
    for i in 0..30 {
        echo_once(edge, &cfg, 100, i);
    }
    let traffic = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.join().unwrap();
    }
    let n = scrapes.load(Ordering::Relaxed);
    assert!(n >= 50, "only {n} scrapes completed in {traffic:?}");
    // Not a speed target: a stall (a worker waiting on a scrape) would show as a
    // round trip of seconds; the admin threads only compete for CPU.
    assert!(
        worst < Duration::from_secs(2),
        "worst round trip {worst:?} during {n} scrapes"
    );
    let page = wait_metric(&t, "terminus_connections_total{listener=\"edge\"}", 31.0);
    assert_eq!(
        sample(&page, "terminus_connections_total{listener=\"edge\"}"),
        31.0
    );
    eprintln!(
        "{n} scrapes alongside {i} round trips + 30 handshakes in {traffic:?}; worst rr {worst:?}"
    );
}

/// A second server CA and a `localhost` leaf from it; clients trust both CAs.
fn new_server_cert() -> (TestCa, TestLeaf) {
    let ca = TestCa::root("operate rotated server CA").unwrap();
    let leaf = ca.leaf(&LeafSpec::server(&["localhost"])).unwrap();
    (ca, leaf)
}

fn client_trusting(pki: &Pki, extra: &TestCa) -> Arc<ClientConfig> {
    let mut roots = pki.roots();
    for c in CertificateDer::pem_slice_iter(extra.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    ClientConfigBuilder::new(Trust::Roots(roots))
        .build()
        .unwrap()
}

use rustls::pki_types::pem::PemObject;

/// The leaf a fresh connection is served.
fn served_leaf(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Vec<u8> {
    let tls = tls_connect(addr, cfg);
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

fn wait_served(addr: SocketAddr, cfg: &Arc<ClientConfig>, want: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_leaf(addr, cfg) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: new certificate not served within 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Stream `total` bytes through an echo connection in a thread, checking every byte.
fn long_transfer(addr: SocketAddr, cfg: Arc<ClientConfig>, total: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut tls = tls_connect(addr, &cfg);
        let chunk = 256 * 1024;
        let mut sent = 0;
        let mut seed = 0;
        while sent < total {
            // Paced: the transfer spans the reload window.
            echo_round_trip(&mut tls, &Pattern::bytes(seed, chunk), "long transfer");
            sent += chunk;
            seed += 1;
            thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn certificates_reload_by_rewrite_and_by_symlink_swap_during_a_long_transfer() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let dir = pki.dir();
    // Kubernetes secret volume layout: tls.crt -> ..data/tls.crt, ..data -> ..v1.
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::copy(dir.join("server.pem"), dir.join("..v1/tls.crt")).unwrap();
    std::fs::copy(dir.join("server.key"), dir.join("..v1/tls.key")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let config = write_config(
        &pki,
        None,
        &[
            ListenerConf::new("plain", &[backend.addr()]),
            ListenerConf::new("k8s", &[backend.addr()])
                .raw("")
                .opt("cert", "\"tls.crt\"")
                .opt("key", "\"tls.key\""),
        ],
    );
    // `cert`/`key` appear twice in the k8s table; TOML forbids that, so rewrite them.
    let text = std::fs::read_to_string(&config).unwrap();
    let k8s = text.find("name = \"k8s\"").unwrap();
    let (head, tail) = text.split_at(k8s);
    let tail =
        tail.replacen("cert = \"server.pem\"\n", "", 1)
            .replacen("key = \"server.key\"\n", "", 1);
    std::fs::write(&config, format!("{head}{tail}")).unwrap();
    let t = Terminus::start(&append_tables(
        &config,
        &format!("{ADMIN}[runtime]\nreload_interval_ms = 100\n"),
    ));
    let (plain, k8s) = (t.addr("plain"), t.addr("k8s"));
    let (new_ca, new_leaf) = new_server_cert();
    let cfg = client_trusting(&pki, &new_ca);
    let old = served_leaf(plain, &cfg);
    assert_eq!(served_leaf(k8s, &cfg), old);

    let transfers = [
        long_transfer(plain, cfg.clone(), 24 * MIB),
        long_transfer(k8s, cfg.clone(), 24 * MIB),
    ];
    thread::sleep(Duration::from_millis(300));
    // Plain rewrite: key first, then the chain (a poll in between sees a mismatch,
    // keeps the old pair and retries when the chain lands).
    std::fs::write(dir.join("server.key"), &new_leaf.key_pem).unwrap();
    std::fs::write(dir.join("server.pem"), &new_leaf.chain_pem).unwrap();
    wait_served(plain, &cfg, new_leaf.der(), "plain rewrite");
    // Symlink swap: a new versioned folder, then `..data` flipped by rename(2).
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/tls.crt"), &new_leaf.chain_pem).unwrap();
    std::fs::write(dir.join("..v2/tls.key"), &new_leaf.key_pem).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    wait_served(k8s, &cfg, new_leaf.der(), "symlink swap");

    for h in transfers {
        h.join()
            .expect("long transfers complete byte-exact across the reload");
    }
    let page = scrape(&t);
    assert!(
        sample(&page, "terminus_config_reloads_total{result=\"ok\"}") >= 2.0,
        "{page}"
    );
    let expiry = sample(
        &page,
        &format!(
            "terminus_cert_expiry_timestamp_seconds{{listener=\"k8s\",cert=\"{}\"}}",
            dir.join("tls.crt").display()
        ),
    );
    assert!(expiry > 0.0);
}

#[test]
fn a_broken_replacement_keeps_the_old_certificate_and_counts_an_error() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, None);
    let t = Terminus::start(&append_tables(
        &config,
        &format!("{ADMIN}[runtime]\nreload_interval_ms = 100\n"),
    ));
    let edge = t.addr("edge");
    let cfg = client_with_cert(&pki, None);
    let old = served_leaf(edge, &cfg);
    let errors = "terminus_config_reloads_total{result=\"error\"}";

    // 1. A key that does not match the certificate.
    let (_, other) = new_server_cert();
    let good_key = std::fs::read(pki.dir().join("server.key")).unwrap();
    replace_file(&pki.dir().join("server.key"), other.key_pem.as_bytes());
    wait_metric(&t, errors, 1.0);
    // 2. Garbage in the certificate file (key restored).
    replace_file(&pki.dir().join("server.key"), &good_key);
    let good_cert = std::fs::read(pki.dir().join("server.pem")).unwrap();
    // The restore alone is a valid change: counts one ok reload.
    wait_metric(&t, "terminus_config_reloads_total{result=\"ok\"}", 1.0);
    replace_file(&pki.dir().join("server.pem"), b"not a certificate\n");
    wait_metric(&t, errors, 2.0);
    // 3. The certificate file deleted.
    std::fs::remove_file(pki.dir().join("server.pem")).unwrap();
    assert_metric(&t, errors, 3.0);
    // The old pair keeps serving throughout.
    assert_eq!(served_leaf(edge, &cfg), old);
    echo_once(edge, &cfg, 1000, 1);
    let err = t.stderr();
    let pem = pki.dir().join("server.pem").display().to_string();
    assert!(
        err.contains("does not match") && err.contains(&pem) && err.contains("keeping"),
        "stderr names the file and why: {err}"
    );
    replace_file(&pki.dir().join("server.pem"), &good_cert);
    wait_metric(&t, "terminus_config_reloads_total{result=\"ok\"}", 2.0);
}

#[test]
fn sighup_reloads_the_allow_list_and_reports_what_needs_a_restart() {
    let pki = Pki::generate();
    let (_ca, leaf) = client_ca(&pki);
    let backend = Backend::echo();
    let config = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("mtls", &[backend.addr()]).raw(&require(SPIFFE))],
    );
    let config = append_tables(&config, ADMIN);
    let t = Terminus::start(&config);
    let addr = t.addr("mtls");
    let cfg = client_with_cert(&pki, Some(&leaf));
    echo_once(addr, &cfg, 100, 1);

    // Allow someone else, and change the worker count (restart-only).
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(SPIFFE, "spiffe://example.org/someone-else")
        .replace("workers = 1", "workers = 2");
    std::fs::write(&config, text).unwrap();
    t.signal("HUP");
    wait_metric(&t, "terminus_config_reloads_total{result=\"ok\"}", 1.0);
    // A fresh client (no session to resume) is now refused by the policy.
    let fresh = client_with_cert(&pki, Some(&leaf));
    let refused = try_tls_connect(addr, &fresh).and_then(|mut s| s.read(&mut [0u8; 1]));
    assert!(refused.is_err(), "allow-list change applied: {refused:?}");
    let err = t.stderr();
    assert!(err.contains("[runtime] needs a restart"), "{err}");

    // A config that does not parse keeps everything and counts an error.
    std::fs::write(&config, "[[listeners]\n").unwrap();
    t.signal("HUP");
    wait_metric(&t, "terminus_config_reloads_total{result=\"error\"}", 1.0);
    assert!(t.stderr().contains(&config.display().to_string()));
}

fn ticket_key(pki: &Pki) -> PathBuf {
    let p = pki.dir().join("tickets.key");
    let key: String = Pattern::bytes(77, 32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&p, format!("# shared by the fleet\n{key}\n")).unwrap();
    p
}

#[test]
fn two_instances_with_one_ticket_key_file_resume_each_others_sessions() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    ticket_key(&pki);
    let shared = |name: &str| {
        ListenerConf::new(name, &[backend.addr()]).opt("ticket_key_file", "\"tickets.key\"")
    };
    let a = Terminus::start(&write_config(&pki, Some(1), &[shared("a")]));
    let b = Terminus::start(&write_config(&pki, Some(1), &[shared("b")]));
    let c = Terminus::start(&write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("c", &[backend.addr()])],
    ));
    // Each client config has its own session cache; the ticket comes from A.
    let cfg = client_with_cert(&pki, None);
    assert!(
        !echo_once(a.addr("a"), &cfg, 100, 1),
        "first handshake is full"
    );
    assert!(
        echo_once(b.addr("b"), &cfg, 100, 2),
        "B resumes the session A issued"
    );
    assert!(echo_once(a.addr("a"), &cfg, 100, 3), "and A resumes B's");
    // An instance with its own (default) keys cannot, and falls back to a full handshake.
    let cfg2 = client_with_cert(&pki, None);
    echo_once(a.addr("a"), &cfg2, 100, 4);
    assert!(!echo_once(c.addr("c"), &cfg2, 100, 5));
}

#[test]
fn sigterm_drains_an_inflight_transfer_then_exits_0() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, None);
    let mut t = Terminus::start(&append_tables(
        &config,
        &format!("{ADMIN}[runtime]\nworkers = 1\ndrain_timeout_ms = 20000\n"),
    ));
    let (edge, admin) = (t.addr("edge"), t.admin());
    let cfg = client_with_cert(&pki, None);
    let mut tls = tls_connect(edge, &cfg);
    echo_round_trip(&mut tls, &Pattern::bytes(0, 1000), "before SIGTERM");
    t.signal("TERM");
    // Draining: not ready, new connections refused, the live one keeps working.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(admin, "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 while draining"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(admin, "/healthz").0, 200);
    // The listening sockets are closed: new connections are refused outright.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect_timeout(&edge, Duration::from_secs(2)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting while draining: {other:?}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for i in 1..=40u64 {
        echo_round_trip(&mut tls, &Pattern::bytes(i, 256 * 1024), "during drain");
    }
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert_eq!(
        t.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        t.stderr()
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, None);
    let mut t = Terminus::start(&append_tables(
        &config,
        "[runtime]\nworkers = 1\ndrain_timeout_ms = 60000\n",
    ));
    let cfg = client_with_cert(&pki, None);
    let _held = tls_connect(t.addr("edge"), &cfg);
    t.signal("TERM");
    thread::sleep(Duration::from_millis(200));
    t.signal("INT");
    assert_eq!(
        t.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        t.stderr()
    );
}

#[test]
fn access_log_lines_are_json_and_carry_the_peer_identity() {
    let pki = Pki::generate();
    let (_ca, leaf) = client_ca(&pki);
    let backend = Backend::echo();
    let config = write_config_with_log(
        &pki,
        Some(1),
        &[ListenerConf::new("mtls", &[backend.addr()])
            .opt("alpn", r#"["h2", "http/1.1"]"#)
            .raw(&require(SPIFFE))],
        "access.log",
    );
    let t = Terminus::start(&config);
    let addr = t.addr("mtls");
    let mut cfg = (*client_with_cert(&pki, Some(&leaf))).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let mut tls = tls_connect(addr, &cfg);
    let local = tls.sock.local_addr().unwrap();
    echo_round_trip(&mut tls, &Pattern::bytes(1, 4321), "logged");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    // And one refused client: no certificate.
    let (bad_local, _) = {
        let s = try_tls_connect(addr, &client_with_cert(&pki, None));
        let s = s.and_then(|mut s| {
            let l = s.sock.local_addr()?;
            s.read(&mut [0u8; 1]).map(|_| l)
        });
        (s, ())
    };
    assert!(bad_local.is_err());

    let path = pki.dir().join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "one line per connection: {lines:?}");
    let ok = lines
        .iter()
        .find(|v| v["event"] == "connection")
        .expect("connection line");
    for field in [
        "ts",
        "listener",
        "worker",
        "client",
        "upstream",
        "sni",
        "alpn",
        "tls_version",
        "cipher",
        "resumed",
        "client_auth",
        "peer_spiffe",
        "peer_dns",
        "peer_cn",
        "peer_serial",
        "handshake_us",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "close_reason",
    ] {
        assert!(ok.get(field).is_some(), "field {field} missing: {ok}");
    }
    // RFC 3339 UTC with microseconds; the duration in whole microseconds.
    let ts = ok["ts"].as_str().expect("ts is a string");
    let b = ts.as_bytes();
    assert!(
        ts.len() == 27 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && ts.ends_with('Z'),
        "{ts}"
    );
    let duration = serde_json::to_string(&ok["duration_ms"]).unwrap();
    let decimals = duration.split_once('.').map_or(0, |(_, f)| f.len());
    assert!(
        decimals <= 3,
        "duration_ms {duration} is not rounded to microseconds"
    );
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(ok["listener"], "mtls");
    assert_eq!(ok["client"], local.to_string());
    assert_eq!(ok["upstream"], backend.addr().to_string());
    assert_eq!(ok["sni"], "localhost");
    assert_eq!(ok["alpn"], "http/1.1");
    assert_eq!(ok["tls_version"], "TLSv1.3");
    assert_eq!(ok["client_auth"], "verified");
    assert_eq!(ok["peer_spiffe"], SPIFFE);
    assert_eq!(ok["peer_cn"], "client");
    let serial: String = leaf.serial.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        ok["peer_serial"].as_str().unwrap().trim_start_matches('0'),
        serial.trim_start_matches('0')
    );
    assert_eq!(ok["bytes_in"], 4321);
    assert_eq!(ok["bytes_out"], 4321);
    assert_eq!(ok["close_reason"], "done");
    assert!(ok["handshake_us"].as_u64().unwrap() > 0);
    let bad = lines
        .iter()
        .find(|v| v["event"] == "handshake_error")
        .expect("refused line");
    assert_eq!(bad["reason"], "no_client_cert");
    assert_eq!(bad["client_auth"], "none");
    assert_eq!(bad["close_reason"], "handshake_failed");
}

/// One full handshake (a fresh client config: no session to resume) plus an echo;
/// the error if the server refused.
fn full_handshake(addr: SocketAddr, pki: &Pki, leaf: &TestLeaf) -> Result<(), String> {
    let cfg = client_with_cert(pki, Some(leaf));
    let mut tls = try_tls_connect(addr, &cfg).map_err(|e| e.to_string())?;
    let data = Pattern::bytes(7, 64);
    tls.write_all(&data).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; data.len()];
    tls.read_exact(&mut got).map_err(|e| e.to_string())?;
    assert_eq!(got, data);
    Ok(())
}

/// The verified-chain cache: a returning client's chain is a hit on its next full
/// handshake; a reload that revokes it (CRL) or stops allowing it refuses it on its
/// very next handshake, and the counters carry across reloads.
#[test]
fn chain_cache_hits_returning_clients_and_a_reload_refuses_revoked_or_denied_at_once() {
    let pki = Pki::generate();
    let (ca, leaf) = client_ca(&pki);
    let other_id = "spiffe://example.org/other";
    let other = ca.leaf(&LeafSpec::client("other", Some(other_id))).unwrap();
    let crl = pki.dir().join("clients.crl");
    std::fs::write(&crl, ca.crl(&[]).unwrap().0).unwrap();
    let auth = format!(
        "[listeners.client_auth]\nmode = \"require\"\nca = [\"client-ca.pem\"]\n\
         crl = [\"clients.crl\"]\nallow = [\"{SPIFFE}\", \"{other_id}\"]\n"
    );
    let backend = Backend::echo();
    let config = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("mtls", &[backend.addr()]).raw(&auth)],
    );
    let config = append_tables(&config, ADMIN);
    // Reloads only on SIGHUP here, so the reload counter is exact.
    edit_config(&config, |text| {
        text.replacen("[runtime]\n", "[runtime]\nreload_interval_ms = 600000\n", 1)
    });
    let t = Terminus::start(&config);
    let addr = t.addr("mtls");
    let hit = "terminus_client_chain_cache_total{listener=\"mtls\",result=\"hit\"}";
    let miss = "terminus_client_chain_cache_total{listener=\"mtls\",result=\"miss\"}";

    for _ in 0..3 {
        full_handshake(addr, &pki, &leaf).expect("allowed client");
    }
    full_handshake(addr, &pki, &other).expect("other allowed client");
    let page = scrape(&t);
    assert_eq!(
        (sample(&page, hit), sample(&page, miss)),
        (2.0, 2.0),
        "{page}"
    );

    // Revoke the cached client: its very next handshake is refused.
    let serial: &[u8] = &leaf.serial;
    std::fs::write(&crl, ca.crl(&[serial]).unwrap().0).unwrap();
    t.signal("HUP");
    wait_metric(&t, "terminus_config_reloads_total{result=\"ok\"}", 1.0);
    let e = full_handshake(addr, &pki, &leaf).expect_err("revoked client refused");
    let page = wait_metric(
        &t,
        "terminus_handshake_errors_total{listener=\"mtls\",reason=\"cert_revoked\"}",
        1.0,
    );
    assert_eq!(
        sample(
            &page,
            "terminus_handshake_errors_total{listener=\"mtls\",reason=\"cert_revoked\"}"
        ),
        1.0,
        "{e}\n{page}"
    );
    // The other client is verified afresh (a miss), then cached again (a hit).
    full_handshake(addr, &pki, &other).expect("other still allowed");
    full_handshake(addr, &pki, &other).expect("other still allowed");
    let page = scrape(&t);
    assert_eq!(
        (sample(&page, hit), sample(&page, miss)),
        (3.0, 4.0),
        "{page}"
    );

    // Stop allowing the other client: refused on its very next handshake too.
    edit_config(&config, |text| {
        text.replace(&format!(", \"{other_id}\""), "")
    });
    t.signal("HUP");
    wait_metric(&t, "terminus_config_reloads_total{result=\"ok\"}", 2.0);
    full_handshake(addr, &pki, &other).expect_err("no longer allowed");
    assert_metric(&t, "terminus_policy_denied_total{listener=\"mtls\"}", 1.0);
}

/// The batching engine's batch sizes are on `/metrics`: completions and connections
/// per loop turn, per worker, as Prometheus histograms that add up.
#[test]
fn loop_turn_histograms_count_the_work_of_each_turn() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, Some(1));
    let config = append_tables(&config, ADMIN);
    let t = Terminus::start(&config);
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    for seed in 0..20 {
        echo_once(t.addr("edge"), &cfg, 256, seed);
    }
    let series =
        |kind: &str, suffix: &str| format!("terminus_worker_loop_{kind}_{suffix}{{worker=\"0\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = scrape(&t);
        if metric(&page, &series("completions", "sum")).is_some_and(|s| s >= 20.0 * 4.0) {
            break page;
        }
        assert!(Instant::now() < deadline, "{page}");
        thread::sleep(Duration::from_millis(20));
    };
    for kind in ["completions", "connections"] {
        let count = sample(&page, &series(kind, "count"));
        let mut last = 0.0;
        for le in ["1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"] {
            let b = sample(
                &page,
                &format!("terminus_worker_loop_{kind}_bucket{{worker=\"0\",le=\"{le}\"}}"),
            );
            assert!(b >= last, "{kind} buckets are cumulative: {page}");
            last = b;
        }
        assert_eq!(last, count, "+Inf is the count");
        assert!(count > 0.0, "{page}");
    }
    // One turn per wakeup: sequential connections show the per-connection cost.
    let (turns, handled) = (
        sample(&page, &series("completions", "count")),
        sample(&page, &series("completions", "sum")),
    );
    assert!(
        handled >= 20.0 * 4.0,
        "accept, receives and sends per connection: {page}"
    );
    eprintln!(
        "20 sequential connections: {turns} loop turns with work, {handled} completions \
         ({:.1} turns and {:.1} completions per connection)",
        turns / 20.0,
        handled / 20.0
    );
}
