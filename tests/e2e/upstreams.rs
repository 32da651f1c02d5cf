//! Upstreams by name and passive health, through a real `terminus run`:
//!
//! * a name in `upstreams` is resolved again every `resolve_interval_ms`: after the
//!   `[resolver] hosts_file` moves `svc.test` from backend A (127.0.0.2) to backend B
//!   (127.0.0.3, same port), new connections reach B within a bounded time while a
//!   connection opened before keeps working through A;
//! * a failed re-resolution (unparsable hosts file, then the name removed) keeps the
//!   last good set, is counted in `terminus_upstream_resolve_errors_total` and logged
//!   once per failure streak;
//! * a name that does not resolve at start fails `run` (exit 2) and `check`, naming
//!   file, line and field; a SIGHUP reload resolves new names, and one that does not
//!   resolve fails the reload;
//! * an upstream whose connect is refused is skipped by every worker until its
//!   backoff ends (`terminus_upstream_connect_errors_total` stays at 1,
//!   `terminus_upstream_up` is 0), then real traffic tries it again.
//!
//! Names resolve without a network: `localhost` and the hosts file.

use crate::common::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::tools::bench::target::metric;

/// How long any condition below may take to become true.
const WAIT: Duration = Duration::from_secs(15);

/// Echo backends on 127.0.0.2 and 127.0.0.3 with the same port (retried with a new
/// port if the second address has it taken).
fn backends_a_and_b() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let a = Backend::echo_on(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let port = a.addr().port();
        if let Ok(b) = Backend::echo_on(SocketAddr::from(([127, 0, 0, 3], port))) {
            return (a, b, port);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// A config with one listener (2 workers) whose upstream is `svc.test:PORT`,
/// resolved through `hosts` (re-resolved every 50 ms), with the admin endpoint.
fn svc_config(pki: &Pki, port: u16, extra_tables: &str) -> std::path::PathBuf {
    let config = write_config(
        pki,
        Some(2),
        &[ListenerConf::new("edge", &[]).opt("resolve_interval_ms", "50")],
    );
    set_upstream_entries(&config, &[&format!("svc.test:{port}")]);
    append_tables(
        &config,
        &format!("{ADMIN}\n[resolver]\nhosts_file = \"hosts\"\n{extra_tables}"),
    );
    config
}

/// terminus on [`svc_config`] with `hosts` as the hosts file, its listener's address
/// and a client of the PKI.
fn start_svc(
    port: u16,
    hosts_file: &str,
) -> (Pki, Terminus, SocketAddr, Arc<rustls::ClientConfig>) {
    let pki = Pki::generate();
    hosts(&pki, hosts_file);
    let t = Terminus::start(&svc_config(&pki, port, ""));
    let addr = t.addr("edge");
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    (pki, t, addr, cfg)
}

fn hosts(pki: &Pki, content: &str) {
    replace_file(&pki.dir().join("hosts"), content.as_bytes());
}

/// One connection: handshake, echo `n` bytes, close cleanly.
fn echo_once(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, seed: u64) {
    let mut tls = tls_connect(addr, cfg);
    echo_round_trip(&mut tls, &Pattern::bytes(seed, 1000), "echo");
    tls.conn.send_close_notify();
    let _ = std::io::Write::flush(&mut tls);
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut rest);
}

#[test]
fn a_renamed_address_reaches_new_connections_while_a_live_one_keeps_its_upstream() {
    let (a, b, port) = backends_a_and_b();
    let (pki, t, addr, cfg) = start_svc(port, "127.0.0.2 svc.test\n");

    let mut live = tls_connect(addr, &cfg);
    echo_round_trip(&mut live, &Pattern::bytes(1, 5000), "live connection via A");
    assert_eq!((a.accepted(), b.accepted()), (1, 0));
    let page = scrape(&t);
    let up_a = format!("terminus_upstream_up{{listener=\"edge\",upstream=\"127.0.0.2:{port}\"}}");
    assert_eq!(metric(&page, &up_a), Some(1.0), "{page}");

    hosts(&pki, "# moved\n127.0.0.3 svc.test\n");
    let mut seed = 10;
    assert!(
        wait_until(WAIT, || {
            seed += 1;
            echo_once(addr, &cfg, seed);
            b.accepted() > 0
        }),
        "not within {WAIT:?}: a new connection reaches B"
    );
    // From now on every new connection goes to B...
    let a_before = a.accepted();
    for i in 0..4 {
        echo_once(addr, &cfg, 100 + i);
    }
    assert_eq!(
        a.accepted(),
        a_before,
        "new connections after the switch went to A"
    );
    // ...while the connection opened before still runs through A.
    echo_round_trip(
        &mut live,
        &Pattern::bytes(2, 70_000),
        "live connection after the switch",
    );
    let up_b = format!("terminus_upstream_up{{listener=\"edge\",upstream=\"127.0.0.3:{port}\"}}");
    let page = scrape(&t);
    assert_eq!(metric(&page, &up_b), Some(1.0), "{page}");
    assert_eq!(
        metric(&page, &up_a),
        None,
        "one series per resolved address: {page}"
    );
    t.wait_stderr(&format!("upstreams now [127.0.0.3:{port}]"), WAIT);
}

#[test]
fn a_failed_re_resolution_keeps_the_last_good_set_counts_and_logs_once_per_streak() {
    let (_a, b, port) = backends_a_and_b();
    let (pki, t, addr, cfg) = start_svc(port, "127.0.0.3 svc.test\n");
    echo_once(addr, &cfg, 1);
    assert_eq!(b.accepted(), 1);

    let errors = format!(
        "terminus_upstream_resolve_errors_total{{listener=\"edge\",upstream=\"svc.test:{port}\"}}"
    );
    assert_eq!(metric(&scrape(&t), &errors), Some(0.0));
    hosts(&pki, "127.0.0.3 svc.test\nthis line is not an address\n");
    assert!(
        wait_until(WAIT, || {
            metric(&scrape(&t), &errors).unwrap_or(0.0) >= 3.0
        }),
        "not within {WAIT:?}: resolve errors counted"
    );
    echo_once(addr, &cfg, 2);
    assert_eq!(b.accepted(), 2, "the last good set stays in use");
    // The name removed: the system resolver does not know it either; same streak.
    hosts(&pki, "127.0.0.9 other.test\n");
    let n = metric(&scrape(&t), &errors).unwrap();
    assert!(
        wait_until(WAIT, || {
            metric(&scrape(&t), &errors).unwrap_or(0.0) >= n + 3.0
        }),
        "not within {WAIT:?}: more resolve errors"
    );
    echo_once(addr, &cfg, 3);
    assert_eq!(b.accepted(), 3, "the last good set stays in use");
    let err = t.stderr();
    assert_eq!(
        err.matches("cannot resolve").count(),
        1,
        "one line per failure streak:\n{err}"
    );
    assert!(
        err.contains(&format!("hosts:2: \"this\" is not an IP address; keeping its last good addresses [127.0.0.3:{port}]")),
        "{err}"
    );
    hosts(&pki, "127.0.0.3 svc.test\n");
    t.wait_stderr(&format!("upstream svc.test:{port}: resolves again"), WAIT);
}

#[test]
fn a_name_that_does_not_resolve_at_start_fails_run_and_check_with_its_line() {
    let pki = Pki::generate();
    hosts(&pki, "127.0.0.2 svc.test\n");
    let config = write_config(&pki, Some(1), &[ListenerConf::new("edge", &[])]);
    set_upstream_entries(&config, &["svc.test:8080", "nowhere.test:8080"]);
    append_tables(&config, "[resolver]\nhosts_file = \"hosts\"\n");
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("upstreams = "))
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}: listeners[0].upstreams[1]: cannot resolve nowhere.test:8080: ",
        config.display()
    );
    let c = config.as_os_str();
    let (code, _, err) = run_to_exit(&["run".as_ref(), "--config".as_ref(), c], WAIT);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&want), "{err}");
    let (code, _, err) = run_check(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&want), "{err}");
    // `listen` by name, and a clear error for one without a port.
    edit_config(&config, |text| {
        text.replace(", \"nowhere.test:8080\"", "")
            .replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\"")
    });
    let (code, _, err) = run_check(&config);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("listeners[0].listen: \"localhost\" has no port: write HOST:PORT"),
        "{err}"
    );
}

#[test]
fn listen_by_name_and_a_reload_resolves_new_upstream_names() {
    let (a, b, port) = backends_a_and_b();
    let pki = Pki::generate();
    hosts(&pki, "127.0.0.2 svc.test\n127.0.0.3 next.test\n");
    let config = svc_config(&pki, port, "");
    edit_config(&config, |text| {
        text.replacen("listen = \"127.0.0.1:0\"", "listen = \"localhost:0\"", 1)
    });
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    assert_eq!(
        addr.ip(),
        "127.0.0.1".parse::<IpAddr>().unwrap(),
        "localhost binds 127.0.0.1 here"
    );
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    echo_once(addr, &cfg, 1);
    assert_eq!((a.accepted(), b.accepted()), (1, 0));

    // A new entry that does not resolve fails the reload; the old set stays.
    set_upstream_entries(&config, &["gone.test:1"]);
    t.signal("HUP");
    t.wait_stderr("cannot resolve gone.test:1", WAIT);
    t.wait_stderr("keeping the running configuration", WAIT);
    echo_once(addr, &cfg, 2);
    assert_eq!((a.accepted(), b.accepted()), (2, 0));

    set_upstream_entries(&config, &[&format!("next.test:{port}")]);
    t.signal("HUP");
    t.wait_stderr("applied", WAIT);
    echo_once(addr, &cfg, 3);
    assert_eq!(
        (a.accepted(), b.accepted()),
        (2, 1),
        "the reloaded name is used"
    );
    // The resolver follows the new entry.
    hosts(&pki, "127.0.0.2 next.test\n");
    assert!(
        wait_until(WAIT, || {
            echo_once(addr, &cfg, 4);
            a.accepted() > 2
        }),
        "not within {WAIT:?}: the new entry is re-resolved"
    );
}

fn series(name: &str, upstream: SocketAddr) -> String {
    format!("{name}{{listener=\"edge\",upstream=\"{upstream}\"}}")
}

#[test]
fn a_refused_upstream_is_skipped_by_every_worker_until_its_backoff_ends() {
    let live = Backend::echo();
    let dead = refused_addr();
    let backoff = Duration::from_millis(1500);
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(2),
        &[ListenerConf::new("edge", &[dead, live.addr()])
            .opt("upstream_backoff_ms", &backoff.as_millis().to_string())
            .opt("upstream_backoff_max_ms", "30000")],
    );
    append_tables(&config, ADMIN);
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let errors = series("terminus_upstream_connect_errors_total", dead);
    let up = series("terminus_upstream_up", dead);
    let up_live = series("terminus_upstream_up", live.addr());
    assert_eq!(metric(&scrape(&t), &up), Some(1.0));

    // Until a connection tries the dead one (each worker's cursor starts elsewhere).
    let mut first_failure = None;
    for i in 0..20 {
        let started = Instant::now();
        echo_once(addr, &cfg, i);
        if metric(&scrape(&t), &up) == Some(0.0) {
            first_failure = Some(started);
            break;
        }
    }
    let failed_at = first_failure.expect("no connection tried the dead upstream in 20");
    // Within the backoff, sequential connections on both workers all skip it.
    let mut during = 0;
    while Instant::now() < failed_at + backoff * 6 / 10 {
        echo_once(addr, &cfg, 100 + during);
        during += 1;
    }
    assert!(during >= 2, "only {during} connections within the backoff");
    let page = scrape(&t);
    assert_eq!(metric(&page, &up_live), Some(1.0), "{page}");
    // Once the backoff is over (the gauge says so), the count is still the first
    // failure alone: no connection of the window tried it.
    assert!(
        wait_until(WAIT, || metric(&scrape(&t), &up) == Some(1.0)),
        "not within {WAIT:?}: the backoff ends"
    );
    assert!(Instant::now() >= failed_at + backoff - Duration::from_millis(50));
    assert_eq!(
        metric(&scrape(&t), &errors),
        Some(1.0),
        "{during} connections within the backoff"
    );
    // Then real traffic tries it again: it fails again and is skipped again.
    let mut tries = 0;
    while metric(&scrape(&t), &up) != Some(0.0) {
        tries += 1;
        assert!(
            tries <= 20,
            "no connection retried the dead upstream after its backoff"
        );
        echo_once(addr, &cfg, 200 + tries);
    }
    assert!(
        wait_until(WAIT, || { metric(&scrape(&t), &errors) == Some(2.0) }),
        "not within {WAIT:?}: the second failure is counted"
    );
}

/// The hosts file path relative to the config is made absolute like other paths.
#[test]
fn hosts_file_path_is_relative_to_the_config() {
    let pki = Pki::generate();
    hosts(&pki, "127.0.0.1 svc.test\n");
    let config = write_config(&pki, Some(1), &[ListenerConf::new("edge", &[])]);
    set_upstream_entries(&config, &["svc.test:9"]);
    append_tables(&config, "[resolver]\nhosts_file = \"hosts\"\n");
    let (code, out, err) = run_check(&config);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn localhost_and_literal_entries_share_one_round_robin_without_duplicates() {
    let backend = Backend::echo();
    let port = backend.addr().port();
    let pki = Pki::generate();
    let config = write_config(&pki, Some(1), &[ListenerConf::new("edge", &[])]);
    let entries = [format!("localhost:{port}"), format!("127.0.0.1:{port}")];
    set_upstream_entries(&config, &[&entries[0], &entries[1]]);
    append_tables(&config, ADMIN);
    let t = Terminus::start(&config);
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    echo_once(t.addr("edge"), &cfg, 1);
    assert_eq!(backend.accepted(), 1);
    let page = scrape(&t);
    let mut want: Vec<SocketAddr> = Vec::new();
    let localhost = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port)).unwrap();
    for a in localhost.chain([backend.addr()]) {
        if !want.contains(&a) {
            want.push(a);
        }
    }
    let ups: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("terminus_upstream_up{"))
        .collect();
    assert_eq!(
        ups.len(),
        want.len(),
        "one series per distinct address: {ups:?}"
    );
    let v4 = format!("terminus_upstream_up{{listener=\"edge\",upstream=\"127.0.0.1:{port}\"}} 1");
    assert_eq!(ups.iter().filter(|l| **l == v4).count(), 1, "{ups:?}");
    let errors = format!(
        "terminus_upstream_resolve_errors_total{{listener=\"edge\",upstream=\"localhost:{port}\"}}"
    );
    assert_eq!(metric(&page, &errors), Some(0.0), "{page}");
}
