//! scripts/compare-peers.sh --check-only: terminus, nginx and HAProxy each start from
//! the script's generated configs pinned to CPU 0 and, checked with `openssl s_client -tls1_3`,
//! terminate TLS 1.3 with ticket resumption, and in mTLS mode pass a client with a
//! certificate and refuse one without.

mod common;

use common::*;
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
    let nginx = Path::new("/usr/sbin/nginx").exists()
        && Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists();
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
