//! scripts/compare-peers.sh --check-only: terminus, nginx and HAProxy each start from
//! the script's generated configs pinned to CPU 0 and, checked with `openssl s_client -tls1_3`,
//! terminate TLS 1.3 with ticket resumption, and in mTLS mode pass a client with a
//! certificate and refuse one without. A short real run of the script writes the demo's
//! report format (through `terminus report`). scripts/ab-binaries.sh reports a ratio.

use crate::common::*;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The scripts pick free ports by binding port 0 and closing it, then start their
/// servers on them: two scripts at once can pick the same port. One at a time.
fn one_script_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn compare_peers_check_only_verifies_every_peer_and_mode() {
    let _one = one_script_at_a_time();
    let nginx = nginx_installed();
    let haproxy = Path::new("/usr/sbin/haproxy").exists();
    if !(nginx && haproxy) {
        eprintln!(
            "SKIPPED: needs nginx-light + libnginx-mod-stream and haproxy (.ci/run installs them)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare-peers.sh");
    let (status, out, err) = run_for_at_most(
        Command::new("bash")
            .arg(&script)
            .arg("--check-only")
            .env("TERMINUS", bin()),
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for peer in ["terminus", "nginx", "haproxy"] {
        for mode in ["pinning", "terminate", "mtls"] {
            let prefix = format!("OK   {peer} {mode}: ");
            assert!(
                out.lines().any(|l| l.starts_with(&prefix)),
                "no {prefix:?} line:\n{out}\nstderr:\n{err}"
            );
        }
        let mtls = out
            .lines()
            .find(|l| l.starts_with(&format!("OK   {peer} mtls: ")))
            .unwrap();
        assert!(mtls.contains("without a certificate refused"), "{mtls}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.contains("check OK: every peer terminates TLS 1.3 and enforces mTLS"));
}

fn nginx_installed() -> bool {
    Path::new("/usr/sbin/nginx").exists()
        && Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists()
}

/// A short real run (terminus and nginx, termination, full handshakes and rr, 2 rounds
/// of 1 s) writes its figures as JSON and, through `terminus report`, the demo's report:
/// the metadata of the build, the host, the peers and the load; a row per peer whose
/// cells are the medians of the JSON's rounds; the ratio to terminus; bar charts with
/// whiskers and a latency CDF per workload with both peers; one self-contained file.
#[test]
fn compare_peers_writes_the_demo_report() {
    let _one = one_script_at_a_time();
    if !nginx_installed() {
        eprintln!("SKIPPED: needs nginx-light + libnginx-mod-stream (.ci/run installs them)");
        return;
    }
    let tmp = TempDir::new("compare-peers-report");
    let html_path = tmp.path().join("peers.html");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare-peers.sh");
    let (status, out, err) = run_for_at_most(
        Command::new("bash")
            .arg(&script)
            .env("TERMINUS", bin())
            .env("ROUNDS", "2")
            .env("SECONDS_PER_RUN", "1")
            .env("PEERS", "nginx")
            .env("MODES", "term")
            .env("WORKLOADS", "full rr")
            .env("OUT", &html_path),
        Duration::from_secs(120),
    );
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("HTML report: {}", html_path.display())),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("peer ")),
        "text table: {out}"
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("peers.json")).expect("figures JSON"),
    )
    .expect("JSON");
    let section = &json["sections"][0];
    // The floor (issue 28): rustls in memory plus a plain TCP proxy, CPU columns only.
    assert_eq!(
        section["series"],
        serde_json::json!(["terminus", "nginx", "floor"])
    );
    let columns = section["columns"].as_array().unwrap();
    let names: Vec<&str> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["full hs/s", "CPU µs/hs", "rr req/s", "rr p99 µs"]);
    assert_floor(section);
    for c in columns {
        for (peer, rounds) in ["terminus", "nginx"]
            .iter()
            .zip(c["values"].as_array().unwrap())
        {
            let v: Vec<f64> = rounds
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    v.as_f64()
                        .unwrap_or_else(|| panic!("{peer} {}: {rounds}", c["name"]))
                })
                .collect();
            assert_eq!(v.len(), 2, "two rounds: {peer} {}", c["name"]);
            assert!(v.iter().all(|x| *x > 0.0), "{peer} {}: {v:?}", c["name"]);
        }
    }

    let html = std::fs::read_to_string(&html_path).expect("report written");
    let (meta, results) = report_tables(&html, &["terminus under test", "peers", "load"]);
    for needle in ["nginx/", "OpenSSL ", "ROUNDS=2", "io backend "] {
        assert!(meta.contains(needle), "{needle} missing: {meta}");
    }
    assert_eq!(
        results.matches("<th>vs terminus</th>").count(),
        4,
        "{results}"
    );
    // Each peer's first cell is the median of its two rounds of full handshakes/s.
    for (i, peer) in ["terminus", "nginx"].iter().enumerate() {
        let row = results
            .split(&format!("<tr><td>{peer}</td><td"))
            .nth(1)
            .unwrap_or_else(|| panic!("no row for {peer}: {results}"));
        let cell = row.split_once('>').unwrap().1.split('<').next().unwrap();
        let v: Vec<f64> = columns[0]["values"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let median = format!("{:.0}", (v[0] + v[1]) / 2.0);
        assert_eq!(cell.trim_end_matches('*'), median, "{peer}: {row}");
    }
    let svgs: Vec<&str> = html.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 4, "2 bar charts and 2 latency CDFs");
    // Handshakes/s: the two peers; CPU per handshake: the floor's bar beside them.
    for (svg, bars) in svgs[..2].iter().zip([2, 3]) {
        assert_eq!(svg.matches("class=\"bar\"").count(), bars, "{svg}");
        assert_eq!(svg.matches("class=\"spread\"").count(), bars, "{svg}");
    }
    for svg in &svgs[2..] {
        assert_eq!(svg.matches("<polyline").count(), 2, "both peers: {svg}");
    }
    assert!(html.contains("foreign CPU "), "no foreign CPU note");
}

/// scripts/ab-binaries.sh: two builds (here the same one twice) served side by side,
/// one round of two workloads; the report has a row per workload with both medians
/// and their ratio, and a missing binary is a usage error.
#[test]
fn ab_binaries_reports_a_ratio_per_workload() {
    let _one = one_script_at_a_time();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ab-binaries.sh");
    let bin = bin();
    let usage = Command::new("bash")
        .arg(&script)
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert_eq!(usage.status.code(), Some(2), "one binary is a usage error");

    let (status, out, err) = run_for_at_most(
        Command::new("bash")
            .arg(&script)
            .arg(bin)
            .arg(bin)
            .env("ROUNDS", "1")
            .env("SECONDS_PER_RUN", "1")
            .env("WORKLOADS", "rr full"),
        Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for w in ["rr", "full"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {w} | ")))
            .unwrap_or_else(|| panic!("no row for {w}:\n{out}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let ratio: f64 = cells[4]
            .parse()
            .unwrap_or_else(|_| panic!("ratio in {row}"));
        assert!(ratio > 0.0 && ratio.is_finite(), "{row}");
        let a_median: f64 = cells[2].split(' ').next().unwrap().parse().unwrap();
        assert!(a_median > 0.0, "server CPU per op must be measured: {row}");
    }
}

/// Runs `cmd` (stdin closed) and collects its output; killed when `deadline` passes.
fn run_for_at_most(cmd: &mut Command, deadline: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let status = wait_with_deadline(&mut child, deadline);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// The floor row (issue 28): rustls in memory plus a plain TCP proxy, in the CPU
/// columns only, with its note.
fn assert_floor(section: &serde_json::Value) {
    for c in section["columns"].as_array().unwrap() {
        let floor = &c["values"][2];
        if c["name"] == "CPU µs/hs" {
            let v: Vec<f64> = floor
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            // rustls' full handshake alone is tens of µs; the floor is more.
            assert!(v.len() == 2 && v.iter().all(|x| *x > 20.0), "floor {v:?}");
        } else {
            assert_eq!(floor, &serde_json::json!([null, null]), "{}", c["name"]);
        }
    }
    let notes = section["notes"].to_string();
    assert!(
        notes.contains("terminus bench --in-memory") && notes.contains("terminus / floor: full "),
        "{notes}"
    );
}
