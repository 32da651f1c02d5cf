//! SPIFFE Workload API (issue 27): certificates and trust from a real Workload API
//! server (the test kit's: gRPC over a Unix socket, the standard's messages, the
//! metadata check), rotated live under load; federated bundles added and dropped
//! (resumption included); the start wait and its timeout, `InvalidArgument`, and the
//! loss of the stream. Every case drives a `terminus run` child over real sockets.

use crate::common::*;
use rustls::ClientConfig;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use terminus_testkit::certs::{LeafSpec, TestCa};
use terminus_testkit::client::{ClientConfigBuilder, Trust};
use terminus_testkit::workload_api::{Answer, WorkloadApi};

/// A Workload API server on a socket in `dir` for `spiffe://example.org/edge`.
fn api(dir: &Path, lifetime: Duration) -> WorkloadApi {
    WorkloadApi::new(&dir.join("agent.sock"), "example.org", "edge", lifetime).unwrap()
}

/// A config with one `svid = "workload_api"` listener (plus `extra` TOML after it).
fn spiffe_config(
    dir: &Path,
    endpoint: &str,
    timeout_ms: u64,
    upstream: &str,
    extra: &str,
) -> PathBuf {
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[spiffe]\nendpoint = \"{endpoint}\"\n\
         startup_timeout_ms = {timeout_ms}\n\n[[listeners]]\nname = \"edge\"\n\
         listen = \"127.0.0.1:0\"\nsvid = \"workload_api\"\nupstreams = [\"{upstream}\"]\n{extra}"
    );
    let path = dir.join("spiffe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// terminus on [`spiffe_config`] (10 s to the first SVID) in front of `upstream`.
fn start_edge(dir: &Path, api: &WorkloadApi, upstream: SocketAddr, extra: &str) -> Terminus {
    let endpoint = api.endpoint();
    Terminus::start(&spiffe_config(
        dir,
        &endpoint,
        10_000,
        &upstream.to_string(),
        extra,
    ))
}

fn roots_of(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A client that verifies the SVID (for `localhost`) with the trust domain's CA and
/// never resumes, so every handshake shows the certificate served now.
fn fresh_client(api: &WorkloadApi) -> Arc<ClientConfig> {
    ClientConfigBuilder::new(Trust::Roots(roots_of(&api.ca_pem())))
        .no_resumption()
        .build()
        .unwrap()
}

/// The leaf the server presented.
fn served_leaf(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

/// Push-to-first-use, handshakes and failures of the rotation run.
#[derive(Default)]
struct Probe {
    /// (leaf DER, first time a handshake was served with it).
    first_seen: Mutex<Vec<(Vec<u8>, Instant)>>,
    handshakes: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// Handshake in a loop until `stop`, noting when each SVID is first served.
fn probe(
    addr: std::net::SocketAddr,
    client: Arc<ClientConfig>,
    p: Arc<Probe>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match try_tls_connect(addr, &client) {
            Ok(mut tls) => {
                let leaf = served_leaf(&tls);
                let now = Instant::now();
                let mut seen = p.first_seen.lock().unwrap();
                if !seen.iter().any(|(l, _)| *l == leaf) {
                    seen.push((leaf, now));
                }
                drop(seen);
                p.handshakes.fetch_add(1, Ordering::Relaxed);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            Err(e) => p.failures.lock().unwrap().push(e.to_string()),
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// SVIDs living 10 s rotated every 2 s while `terminus bench` runs handshakes, a
/// probe handshakes every few ms and a kept connection streams: no failed handshake,
/// the stream unbroken, each new SVID served within a second of its push.
#[test]
fn rotation_under_load_serves_each_new_svid_within_a_second() {
    let _heavy = heavy();
    let dir = TempDir::new("spiffe-rotation");
    let mut api = api(dir.path(), Duration::from_secs(10));
    api.start().unwrap();
    let backend = Backend::echo();
    let term = start_edge(dir.path(), &api, backend.addr(), "");
    let addr = term.addr("edge");
    std::fs::write(dir.path().join("ca.pem"), api.ca_pem()).unwrap();

    // The kept connection: 1 KiB echoed every 20 ms for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let kept = {
        let (client, stop) = (fresh_client(&api), stop.clone());
        thread::spawn(move || {
            let mut tls = tls_connect(addr, &client);
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                echo_round_trip(&mut tls, &[rounds as u8; 1024], "kept connection");
                rounds += 1;
                thread::sleep(Duration::from_millis(20));
            }
            rounds
        })
    };
    let p = Arc::new(Probe::default());
    let prober = {
        let (client, p, stop) = (fresh_client(&api), p.clone(), stop.clone());
        thread::spawn(move || probe(addr, client, p, stop))
    };
    let bench = {
        let mut cmd = std::process::Command::new(bin());
        cmd.args([
            "bench",
            "--workload",
            "handshake",
            "--duration",
            "12",
            "--connections",
            "8",
        ])
        .args([
            "--target",
            &addr.to_string(),
            "--server-name",
            "localhost",
            "--json",
            "--quiet",
        ])
        .arg("--ca")
        .arg(dir.path().join("ca.pem"));
        thread::spawn(move || run_command_to_exit(cmd, Duration::from_secs(60)))
    };
    thread::sleep(Duration::from_millis(1500));
    for _ in 0..6 {
        api.rotate().unwrap();
        thread::sleep(Duration::from_secs(2));
    }
    let (code, out, err) = bench.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = kept.join().expect("the kept connection broke");
    prober.join().unwrap();

    assert_eq!(code, Some(0), "bench: {out}{err}");
    let report: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let bench_ok = report["ops"].as_u64().unwrap_or(0);
    let bench_errors = report["errors"]["total"].as_u64().unwrap_or(u64::MAX);
    let failures = p.failures.lock().unwrap().clone();
    let pushes = api.pushes();
    let seen = p.first_seen.lock().unwrap().clone();
    let mut delays = Vec::new();
    // The first SVID was served from start; each rotation's must be seen within 1 s.
    for (leaf, pushed) in &pushes[1..] {
        let first = seen.iter().find(|(l, _)| l == leaf).map(|(_, t)| *t);
        let first = first.unwrap_or_else(|| panic!("an SVID pushed was never served"));
        delays.push(first.saturating_duration_since(*pushed));
    }
    let max = delays.iter().max().copied().unwrap_or_default();
    eprintln!(
        "rotation under load: {} rotations; bench {bench_ok} handshakes, {bench_errors} errors; \
         probe {} handshakes, {} failed; kept connection {rounds} echo rounds unbroken; \
         push to first use: {:?} (max {max:?})",
        pushes.len() - 1,
        p.handshakes.load(Ordering::Relaxed),
        failures.len(),
        delays
    );
    assert!(failures.is_empty(), "probe handshakes failed: {failures:?}");
    assert_eq!(bench_errors, 0, "bench errors: {out}");
    assert!(
        max < Duration::from_secs(1),
        "an SVID took {max:?} to be served"
    );
    assert!(
        rounds > 100,
        "the kept connection made only {rounds} rounds"
    );
    let page = scrape(&term);
    assert!(
        sample(&page, "terminus_spiffe_updates_total{kind=\"svid\"}") >= 7.0,
        "{page}"
    );
    assert_eq!(sample(&page, "terminus_spiffe_stream_up"), 1.0);
    assert!(
        page.contains("cert=\"workload_api:spiffe://example.org/edge\""),
        "{page}"
    );
}

/// A client of `ca` for `spiffe://<td>/client`, resuming (tickets kept per config).
fn federated_client(api: &WorkloadApi, ca: &TestCa, td: &str) -> Arc<ClientConfig> {
    let leaf = ca
        .leaf(&LeafSpec::client(
            "client",
            Some(&format!("spiffe://{td}/client")),
        ))
        .unwrap();
    ClientConfigBuilder::new(Trust::Roots(roots_of(&api.ca_pem())))
        .client_cert(leaf.chain.clone(), leaf.key())
        .build()
        .unwrap()
}

/// Connect, echo a few bytes; Ok(resumed?) when the server let the client through.
fn mtls_echo(addr: std::net::SocketAddr, client: &Arc<ClientConfig>) -> Result<bool, String> {
    let mut tls = try_tls_connect(addr, client).map_err(|e| e.to_string())?;
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
    // Read on briefly, so the TLS 1.3 tickets sent after the handshake are taken in.
    Ok(resumed)
}

/// A client of a federated trust domain is let through while its bundle is pushed
/// and refused once it is dropped: a fresh handshake and a resumption alike (the
/// ticket key file would otherwise resume it: its tickets are bound to the bundles).
#[test]
fn federated_bundle_allows_then_refuses_including_resumption() {
    let dir = TempDir::new("spiffe-federation");
    let mut api = api(dir.path(), Duration::from_secs(3600));
    api.start().unwrap();
    let backend = Backend::echo();
    std::fs::write(
        dir.path().join("tickets.key"),
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let extra = "ticket_key_file = \"tickets.key\"\n[listeners.client_auth]\nmode = \"require\"\n\
                 trust = \"workload_api\"\n";
    let term = start_edge(dir.path(), &api, backend.addr(), extra);
    let addr = term.addr("edge");
    let partner_ca = TestCa::root("partner.org test CA").unwrap();
    let partner = federated_client(&api, &partner_ca, "partner.org");
    let own_leaf = api.client_leaf("client").unwrap();
    let own = ClientConfigBuilder::new(Trust::Roots(roots_of(&api.ca_pem())))
        .client_cert(own_leaf.chain.clone(), own_leaf.key())
        .build()
        .unwrap();

    assert!(
        mtls_echo(addr, &partner).is_err(),
        "partner.org allowed before its bundle"
    );
    api.set_federated("partner.org", &partner_ca.der);
    assert!(
        wait_until(Duration::from_secs(2), || mtls_echo(addr, &partner).is_ok()),
        "partner.org refused with its bundle pushed; stderr:\n{}",
        term.stderr()
    );
    // A partner.org CA vouches for partner.org IDs only, not for the own domain's.
    let impostor = federated_client(&api, &partner_ca, "example.org");
    assert!(
        mtls_echo(addr, &impostor).is_err(),
        "partner.org's CA vouched for example.org"
    );
    // Its tickets resume while the bundle stays.
    let resumed = mtls_echo(addr, &partner).expect("partner.org with its bundle");
    assert!(resumed, "a ticket from the same bundles did not resume");

    let dropped = Instant::now();
    api.drop_federated("partner.org");
    // A fresh client (no ticket) is refused within a second...
    let fresh = federated_client(&api, &partner_ca, "partner.org");
    assert!(
        wait_until(Duration::from_secs(1), || mtls_echo(addr, &fresh).is_err()),
        "partner.org still allowed a second after its bundle was dropped"
    );
    eprintln!(
        "federated bundle drop: refused after {:?}",
        dropped.elapsed()
    );
    // ...and so is the client holding a ticket from before the drop.
    let again = mtls_echo(addr, &partner);
    assert!(
        again.is_err(),
        "a ticket issued under the dropped bundle resumed: {again:?}"
    );
    // The own trust domain is unaffected.
    assert_eq!(
        mtls_echo(addr, &own),
        Ok(false),
        "own trust domain's client refused"
    );
    let page = scrape(&term);
    assert!(
        sample(&page, "terminus_spiffe_updates_total{kind=\"bundle\"}") >= 3.0,
        "{page}"
    );
}

/// A listener that trusts one federated domain only: once that bundle is dropped no
/// anchor is left, and the listener refuses every client certificate (fail closed)
/// instead of keeping the withdrawn trust.
#[test]
fn dropping_the_only_trusted_bundle_fails_closed() {
    let dir = TempDir::new("spiffe-fail-closed");
    let mut api = api(dir.path(), Duration::from_secs(3600));
    let partner_ca = TestCa::root("partner.org test CA").unwrap();
    api.set_federated("partner.org", &partner_ca.der);
    api.start().unwrap();
    let backend = Backend::echo();
    let extra = "[listeners.client_auth]\nmode = \"require\"\ntrust = \"workload_api\"\n\
                 trust_domains = [\"partner.org\"]\n";
    let term = start_edge(dir.path(), &api, backend.addr(), extra);
    let addr = term.addr("edge");
    let partner = federated_client(&api, &partner_ca, "partner.org");
    assert_eq!(
        mtls_echo(addr, &partner),
        Ok(false),
        "partner.org refused with its bundle; stderr:\n{}",
        term.stderr()
    );
    api.drop_federated("partner.org");
    let fresh = federated_client(&api, &partner_ca, "partner.org");
    assert!(
        wait_until(Duration::from_secs(1), || mtls_echo(addr, &fresh).is_err()),
        "partner.org still allowed a second after its (only) bundle was dropped"
    );
    // Pushed again, it is trusted again.
    api.set_federated("partner.org", &partner_ca.der);
    assert!(
        wait_until(Duration::from_secs(2), || mtls_echo(addr, &fresh).is_ok()),
        "partner.org refused after its bundle came back; stderr:\n{}",
        term.stderr()
    );
}

/// The start waits for the Workload API (one log line per attempt), then exits 1
/// naming the socket and its answer; `check` says the same. An API that comes up
/// (or issues the identity) within the wait lets the start complete.
#[test]
fn start_waits_then_names_the_socket_and_its_answer() {
    let dir = TempDir::new("spiffe-start");
    let sock = dir.path().join("agent.sock");
    let endpoint = format!("unix://{}", sock.display());
    let config = spiffe_config(dir.path(), &endpoint, 1500, "127.0.0.1:9", "");
    let started = Instant::now();
    let (code, _out, err) = run_to_exit(
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        Duration::from_secs(20),
    );
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&endpoint) && err.contains("after 1500 ms"),
        "{err}"
    );
    let attempts = err.matches("waiting for the Workload API").count();
    assert!(attempts >= 2, "{attempts} attempt lines:\n{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let (code, _out, err) = run_check(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&endpoint) && err.contains("no X.509-SVID"),
        "{err}"
    );

    // No identity yet (PermissionDenied), then issued: the start waits and completes.
    let mut api = api(dir.path(), Duration::from_secs(3600));
    api.set_answer(Answer::NoIdentity);
    let config = spiffe_config(dir.path(), &api.endpoint(), 10_000, "127.0.0.1:9", "");
    let server = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        api.start().unwrap();
        thread::sleep(Duration::from_millis(700));
        api.set_answer(Answer::Serve);
        api
    });
    let term = Terminus::start(&config);
    let api = server.join().unwrap();
    let err = term.stderr();
    assert!(err.contains("no identity issued"), "{err}");
    let tls = tls_connect(term.addr("edge"), &fresh_client(&api));
    assert!(served_leaf(&tls) == api.pushes()[0].0);
    assert_eq!(api.missing_header_calls(), 0);
    // `check` fetches the SVID too and builds the listener from it.
    let (code, out, err) = run_check(&config);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("config OK"), "{out}");
}

/// `InvalidArgument` is a configuration error: exit 1 at once, not after the wait.
#[test]
fn invalid_argument_is_a_configuration_error() {
    let dir = TempDir::new("spiffe-invalid");
    let mut api = api(dir.path(), Duration::from_secs(3600));
    api.set_answer(Answer::InvalidArgument);
    api.start().unwrap();
    let config = spiffe_config(dir.path(), &api.endpoint(), 20_000, "127.0.0.1:9", "");
    let started = Instant::now();
    let (code, _out, err) = run_to_exit(
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("InvalidArgument, a configuration error"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Listeners with files start without waiting, whatever `[spiffe]` says.
#[test]
fn file_listeners_do_not_wait() {
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new(
            "plain",
            &["127.0.0.1:9".parse().unwrap()],
        )],
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = format!("[spiffe]\nendpoint = \"unix:///nonexistent/agent.sock\"\n\n{text}");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let term = Terminus::start(&config);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!term.stderr().contains("Workload API"), "{}", term.stderr());
}

/// The stream breaks: the last SVID keeps serving, `terminus_spiffe_stream_up` drops,
/// expiry is said loudly; the API back, the stream reconnects and a new SVID is served.
#[test]
fn stream_loss_keeps_serving_then_reconnects() {
    let dir = TempDir::new("spiffe-loss");
    let mut api = api(dir.path(), Duration::from_secs(6));
    api.start().unwrap();
    let config = spiffe_config(dir.path(), &api.endpoint(), 10_000, "127.0.0.1:9", "");
    // Under the builtin seccomp filter: the reconnect's syscalls must be allowed.
    edit_config(&config, |text| {
        format!("[runtime]\nseccomp = \"builtin\"\n\n{text}")
    });
    let term = Terminus::start(&config);
    let addr = term.addr("edge");
    let first = api.pushes()[0].0.clone();
    api.stop();
    wait_metric(&term, "terminus_spiffe_stream_up", 0.0);
    term.wait_stderr("update stream lost", Duration::from_secs(5));
    // Still served with the last SVID while it is valid.
    let tls = tls_connect(addr, &fresh_client(&api));
    assert!(served_leaf(&tls) == first);
    drop(tls);
    term.wait_stderr("under a fifth of its lifetime", Duration::from_secs(8));
    term.wait_stderr("EXPIRED", Duration::from_secs(8));
    assert_metric(&term, "terminus_spiffe_svid_expired", 1.0);

    api.start().unwrap();
    assert_metric(&term, "terminus_spiffe_stream_up", 1.0);
    let newest = api.rotate().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || {
            try_tls_connect(addr, &fresh_client(&api)).is_ok_and(|t| served_leaf(&t) == newest)
        }),
        "the SVID pushed after the reconnect is not served; stderr:\n{}",
        term.stderr()
    );
    assert_metric(&term, "terminus_spiffe_svid_expired", 0.0);
    assert!(term.stderr().contains("seccomp: builtin filter installed"));
}

/// Re-encryption to a SPIFFE upstream with no files: terminus presents its SVID as
/// the client certificate and verifies the upstream with the Workload API's bundle
/// (`openssl s_server -Verify 1 -verify_return_error` refuses anything else).
#[test]
fn upstream_mtls_from_the_workload_api() {
    let dir = TempDir::new("spiffe-upstream");
    let mut api = api(dir.path(), Duration::from_secs(3600));
    api.start().unwrap();
    let up = api
        .issue(&LeafSpec {
            spiffe: Some("spiffe://example.org/billing".into()),
            ..LeafSpec::server(&["localhost"])
        })
        .unwrap();
    std::fs::write(dir.path().join("up.pem"), &up.chain_pem).unwrap();
    std::fs::write(dir.path().join("up.key"), &up.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), api.ca_pem()).unwrap();
    let (_server, up_addr) = openssl_s_server(
        dir.path(),
        "up.pem",
        "up.key",
        "ca.pem",
        &["-www", "-Verify", "1", "-verify_return_error"],
    );
    let extra = "[listeners.upstream_tls]\nserver_name = \"localhost\"\nsvid = \"workload_api\"\n\
                 trust = \"workload_api\"\n";
    let term = start_edge(dir.path(), &api, up_addr, extra);
    let mut tls = tls_connect(term.addr("edge"), &fresh_client(&api));
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut page = Vec::new();
    let _ = tls.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.starts_with("HTTP/1.0 200 ok"),
        "{page}\nstderr:\n{}",
        term.stderr()
    );
}
