//! Process conventions, through real `terminus run` children: SIGUSR1 reopens the
//! access log under live traffic, sd_notify messages reach `NOTIFY_SOCKET`, and the
//! drain delay keeps accepting while `/readyz` says 503.

use crate::common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a client loop saw: connections that completed an echo, and the failures
/// (connect refused, handshake or echo errors) with their reason.
#[derive(Debug, Default)]
struct LoopResult {
    ok: usize,
    failed: Vec<String>,
}

/// One connection: connect, handshake, echo 64 bytes, close cleanly, read to EOF.
fn one_connection(addr: SocketAddr, cfg: &Arc<ClientConfig>, seq: u64) -> Result<(), String> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, sock);
    let data = Pattern::bytes(seq, 64);
    tls.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; data.len()];
    tls.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != data {
        return Err("echo mismatch".into());
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    Ok(())
}

/// Make connections one after another until `stop`, at most `max` of them and for at
/// most `limit`.
fn client_loop(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    stop: Arc<AtomicBool>,
    max: usize,
    limit: Duration,
) -> JoinHandle<LoopResult> {
    thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut r = LoopResult::default();
        for seq in 0..max as u64 {
            if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            match one_connection(addr, &cfg, seq) {
                Ok(()) => r.ok += 1,
                Err(e) => r.failed.push(e),
            }
        }
        r
    })
}

/// Complete lines of a file (none if it does not exist).
fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn sigusr1_reopens_the_access_log_under_live_traffic() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let config = write_config_with_log(
        &pki,
        Some(2),
        &[ListenerConf::new("edge", &[backend.addr()])],
        "access.log",
    );
    let mut t = Terminus::start(&config);
    let log = pki.dir().join("access.log");
    let rotated = pki.dir().join("access.log.1");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = client_loop(
        t.addr("edge"),
        client_config(&pki, rustls::ALL_VERSIONS, &[]),
        stop.clone(),
        5000,
        Duration::from_secs(30),
    );
    // Rotate once lines are flowing, signal, and let traffic reach the new file.
    assert!(
        wait_until(Duration::from_secs(10), || lines_of(&log).len() >= 20),
        "no access lines before rotation"
    );
    std::fs::rename(&log, &rotated).unwrap();
    t.signal("USR1");
    let fresh = wait_until(Duration::from_secs(10), || lines_of(&log).len() >= 20);
    stop.store(true, Ordering::SeqCst);
    let r = clients.join().unwrap();
    t.assert_alive();
    assert!(
        fresh,
        "no fresh access.log after SIGUSR1; stderr:\n{}",
        t.stderr()
    );
    assert!(r.failed.is_empty(), "client failures: {:?}", r.failed);
    // Every connection's line lands in one of the two files, whole.
    let complete = wait_until(Duration::from_secs(10), || {
        lines_of(&log).len() + lines_of(&rotated).len() >= r.ok
    });
    let (old, new) = (lines_of(&rotated), lines_of(&log));
    assert!(
        complete,
        "lines: {} + {} < {} connections",
        old.len(),
        new.len(),
        r.ok
    );
    assert_eq!(old.len() + new.len(), r.ok, "a line too many");
    for l in old.iter().chain(&new) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("split or bad line {l:?}: {e}"));
        assert_eq!(v["event"], "connection", "{l}");
    }
    eprintln!(
        "USR1 reopen under traffic: {} connections, {} lines in access.log.1, {} in the new \
         access.log, 0 lost, 0 split",
        r.ok,
        old.len(),
        new.len()
    );
}

#[test]
fn sd_notify_ready_after_ready_line_and_stopping_on_sigterm() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, Some(2));
    let path = pki.dir().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(READY_TIMEOUT)).unwrap();
    // `start` returns once `ready` is on stdout: READY=1 comes after it.
    let mut t = Terminus::builder()
        .config(&config)
        .env("NOTIFY_SOCKET", &path)
        .start();
    let ready = recv_notify(&sock, "READY=1");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", t.pid())),
        "{ready:?}"
    );
    // Serving when READY=1 arrived.
    one_connection(
        t.addr("edge"),
        &client_config(&pki, rustls::ALL_VERSIONS, &[]),
        1,
    )
    .expect("a connection after READY=1");
    t.signal("TERM");
    let stopping = recv_notify(&sock, "STOPPING=1");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert_eq!(
        t.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        t.stderr()
    );
    eprintln!("sd_notify datagrams seen: {ready:?} then {stopping:?}");
}

#[test]
fn drain_delay_keeps_accepting_with_readyz_503_then_refuses_and_drains() {
    const DELAY_MS: u64 = 3000;
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, Some(2));
    append_tables(
        &config,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[runtime]\ndrain_delay_ms = {DELAY_MS}\n\
             drain_timeout_ms = 30000\n"
        ),
    );
    // write_config wrote `[runtime] workers = 2` already: merge the two tables.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[runtime]\nworkers = 2\n", "", 1).replacen(
        "[runtime]\n",
        "[runtime]\nworkers = 2\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut t = Terminus::start(&config);
    let edge = t.addr("edge");
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    assert_eq!(http_get(t.admin(), "/readyz").0, 200);
    // A connection live across the whole sequence.
    let mut held = tls_connect(edge, &cfg);
    echo_round_trip(&mut held, &Pattern::bytes(0, 1000), "before SIGTERM");

    let signalled = Instant::now();
    t.signal("TERM");
    t.wait_stderr("still accepting", Duration::from_secs(10));
    let (status, body) = http_get(t.admin(), "/readyz");
    assert_eq!(status, 503, "/readyz during the delay: {body}");
    one_connection(edge, &cfg, 1).expect("a new connection during the drain delay");
    let served_at = signalled.elapsed();
    assert!(
        served_at < Duration::from_millis(DELAY_MS),
        "test too slow to observe the delay ({served_at:?}): inconclusive"
    );

    // After the delay the listeners close: connects are refused (bounded poll).
    let refused = wait_until(Duration::from_millis(DELAY_MS + 10_000), || {
        matches!(
            TcpStream::connect_timeout(&edge, Duration::from_secs(2)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    });
    let refused_at = signalled.elapsed();
    assert!(refused, "still accepting long after the delay");
    assert!(
        refused_at >= Duration::from_millis(DELAY_MS),
        "refused after {refused_at:?}, before drain_delay_ms"
    );
    // The live connection still works, and the process exits once it ends.
    echo_round_trip(&mut held, &Pattern::bytes(2, 1000), "during the drain");
    t.assert_alive();
    drop(held);
    assert_eq!(
        t.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        t.stderr()
    );
    eprintln!(
        "drain delay {DELAY_MS} ms: /readyz 503 and a new connection served {served_at:?} \
         after SIGTERM; connects refused from {refused_at:?}; exit 0 after the live connection"
    );
}

#[test]
fn reload_metrics_stay_0_while_a_bad_file_is_in_place_and_advance_when_fixed() {
    let pki = Pki::generate();
    let (_backend, config) = echo_edge(&pki, None);
    append_tables(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n\n\
         [runtime]\nreload_interval_ms = 100\n",
    );
    let t = Terminus::start(&config);
    let ok = "terminus_config_last_reload_successful";
    let ts = "terminus_config_last_reload_success_timestamp_seconds";
    let build = format!(
        "terminus_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(scrape_metric(&t, &build), Some(1.0));
    assert_eq!(
        scrape_metric(&t, ok),
        Some(1.0),
        "startup counts as a success"
    );
    let started = scrape_metric(&t, ts).expect("timestamp sample");
    assert!(started > 1.7e9, "a Unix time: {started}");

    let pem = pki.dir().join("server.pem");
    let good = std::fs::read(&pem).unwrap();
    replace_file(&pem, b"not a certificate\n");
    assert!(
        wait_until(Duration::from_secs(10), || scrape_metric(&t, ok)
            == Some(0.0)),
        "last_reload_successful did not turn 0; stderr:\n{}",
        t.stderr()
    );
    // It stays 0 while the bad file stays (polls keep finding the same bad file).
    assert_eq!(
        scrape_metric(&t, ts),
        Some(started),
        "no success since startup"
    );
    replace_file(&pem, &good);
    assert!(
        wait_until(Duration::from_secs(10), || scrape_metric(&t, ok)
            == Some(1.0)),
        "last_reload_successful did not return to 1"
    );
    let fixed = scrape_metric(&t, ts).unwrap();
    assert!(fixed > started, "timestamp advanced: {started} -> {fixed}");
    eprintln!(
        "reload metrics: successful 1 -> 0 (bad cert) -> 1 (fixed); timestamp {started} -> {fixed}"
    );
}

/// `config` with its `127.0.0.1:0` listen and admin addresses replaced by the ones a
/// running instance got (`edge`, `admin`), and `extra_runtime` merged into its
/// `[runtime]` table: a second instance's config for the same addresses.
fn same_addresses(
    config: &Path,
    edge: Option<SocketAddr>,
    admin: SocketAddr,
    extra_runtime: &str,
    name: &str,
) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(config).unwrap();
    if let Some(edge) = edge {
        text = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{edge}\""),
            1,
        );
    }
    text = text
        .replacen(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            &format!("[admin]\nlisten = \"{admin}\""),
            1,
        )
        .replacen("[runtime]\n", &format!("[runtime]\n{extra_runtime}"), 1);
    let out = config.with_file_name(name);
    std::fs::write(&out, text).unwrap();
    out
}

/// A config with listener `edge` (1 worker) and an admin endpoint.
fn edge_with_admin(pki: &Pki, backend: &Backend, log: &str) -> std::path::PathBuf {
    let config = write_config(
        pki,
        Some(1),
        &[ListenerConf::new("edge", &[backend.addr()])],
    );
    edit_config(&config, |text| {
        text.replacen("[log]\naccess = \"off\"\n", log, 1) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    });
    config
}

#[test]
fn startup_line_and_operational_lines_carry_time_and_level_as_text_or_json() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let config = edge_with_admin(&pki, &backend, "[log]\naccess = \"off\"\n");
    let t = Terminus::start(&config);
    let (edge, admin, pid) = (t.addr("edge"), t.admin(), t.pid());
    let backend_name = t.io_backend().expect("io backend line");
    let err = t.wait_stderr(" started: ", IO_TIMEOUT);
    let line = err
        .lines()
        .find(|l| l.contains(" started: "))
        .expect("startup line");
    // `2026-12-02T08:10:11.123456Z INFO terminus: terminus 0.x started: ...`
    let (ts, rest) = line.split_at(27);
    assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line}");
    assert_eq!(
        rest,
        format!(
            " INFO terminus: terminus {} started: 1 worker(s) (runtime.workers), CPUs {}, io \
             {backend_name}, listeners edge={edge}, admin {admin}, pid {pid}",
            env!("CARGO_PKG_VERSION"),
            rest.split("CPUs ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
        ),
        "{line}"
    );
    drop(t);

    let json = edge_with_admin(
        &pki,
        &backend,
        "[log]\naccess = \"off\"\nformat = \"json\"\n",
    );
    let mut t = Terminus::start(&json);
    t.wait_stderr("started", IO_TIMEOUT);
    t.signal("HUP");
    t.wait_stderr("applied", IO_TIMEOUT);
    t.signal("TERM");
    assert_eq!(t.wait_exit(Duration::from_secs(20)), Some(0));
    let err = t.stderr();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    for v in &lines {
        assert!(v["ts"].as_str().is_some_and(|t| t.len() == 27), "{v}");
        assert!(v["level"].is_string() && v["msg"].is_string(), "{v}");
    }
    let start = lines
        .iter()
        .find(|v| v["msg"].as_str().unwrap().contains(" started: "))
        .expect("startup line");
    assert_eq!(start["level"], "info");
    assert_eq!(start["workers"], 1);
    assert_eq!(start["workers_why"], "runtime.workers");
    assert_eq!(start["io_backend"], t.io_backend().unwrap().as_str());
    assert_eq!(start["listeners"][0]["name"], "edge");
    assert_eq!(start["listeners"][0]["addr"], t.addr("edge").to_string());
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    for want in ["reload: configuration", "draining"] {
        assert!(
            lines
                .iter()
                .any(|v| v["msg"].as_str().unwrap().contains(want) && v["level"] == "info"),
            "no {want:?} line: {err}"
        );
    }
}

#[test]
fn a_second_instance_on_the_same_addresses_is_refused_unless_handing_over() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let config = edge_with_admin(&pki, &backend, "[log]\naccess = \"off\"\n");
    let mut first = Terminus::start(&config);
    let (edge, admin, pid) = (first.addr("edge"), first.admin(), first.pid());
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let run = |config: &Path| {
        let mut cmd = command_with_prefix(&[]);
        cmd.arg("run").arg("--config").arg(config);
        run_command_to_exit(cmd, Duration::from_secs(30))
    };

    // Same listener and admin addresses: the listener is refused first.
    let both = same_addresses(&config, Some(edge), admin, "", "both.toml");
    let (code, _, err) = run(&both);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "terminus: listener \"edge\": {edge} is already served by pid {pid} (terminus): \
             starting beside it would split its connections between two processes \
             (SO_REUSEPORT); stop it first, or set [runtime] reuse_port_with_other_instances = \
             true for a handover (README: zero-downtime restart)\n"
        )
    );
    // Only the admin address: refused too.
    let admin_only = same_addresses(&config, None, admin, "", "admin.toml");
    let (code, _, err) = run(&admin_only);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "terminus: admin: {admin} is already served by pid {pid} (terminus): "
        )),
        "{err}"
    );
    // The refused starts took none of the first instance's connections.
    one_connection(edge, &cfg, 1).expect("first instance still serves");
    first.assert_alive();

    // With the switch, the second joins both addresses and serves beside the first.
    let handover = same_addresses(
        &config,
        Some(edge),
        admin,
        "reuse_port_with_other_instances = true\n",
        "handover.toml",
    );
    let second = Terminus::start(&handover);
    assert_eq!(second.addr("edge"), edge);
    assert_eq!(second.admin(), admin);
    for seq in 0..4 {
        one_connection(edge, &cfg, seq).expect("served during the overlap");
    }
    first.assert_alive();
}

/// The restart procedure of the README: start the new instance beside the old one
/// (`reuse_port_with_other_instances = true`), wait for its `ready`, then SIGTERM the
/// old one. Clients connecting without pause through the whole handover: none is
/// refused or reset. The procedure sets `net.ipv4.tcp_migrate_req = 1` (Linux 5.14),
/// which hands connections still waiting in the old listeners' accept queues to the
/// new ones when the old close (without it, such a connection is reset; in 3 runs
/// without it here none was, the window being one accept batch).
#[test]
fn zero_downtime_restart_refuses_no_client() {
    let _heavy = heavy();
    let migrate = "/proc/sys/net/ipv4/tcp_migrate_req";
    if let Err(e) = std::fs::write(migrate, "1") {
        eprintln!("note: cannot set {migrate} ({e}); running the handover without it");
    }
    let pki = Pki::generate();
    let backend = Backend::echo();
    let config = edge_with_admin(&pki, &backend, "[log]\naccess = \"off\"\n");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "[runtime]\n",
        "[runtime]\nreuse_port_with_other_instances = true\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut old = Terminus::start(&config);
    let (edge, admin) = (old.addr("edge"), old.admin());
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            client_loop(
                edge,
                cfg.clone(),
                stop.clone(),
                20_000,
                Duration::from_secs(60),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(300));

    let next = same_addresses(&config, Some(edge), admin, "", "next.toml");
    let mut new = Terminus::start(&next);
    old.signal("TERM");
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.stderr()
    );
    let old_gone = Instant::now();
    // Keep connecting for a while after the old instance is gone.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<LoopResult> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok: usize = results.iter().map(|r| r.ok).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.failed).collect();
    assert!(
        failed.is_empty(),
        "{} client(s) failed: {failed:?}",
        failed.len()
    );
    assert!(ok >= 20, "too few connections to mean anything: {ok}");
    // The new instance serves alone now, admin included.
    one_connection(edge, &cfg, 9).expect("new instance serves");
    assert_eq!(http_get(admin, "/readyz").0, 200);
    new.assert_alive();
    eprintln!(
        "zero-downtime restart: {ok} connections across the handover, 0 refused or reset \
         (old instance exited {:?} before the clients stopped)",
        old_gone.elapsed()
    );
}
