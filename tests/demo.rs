//! `terminus demo` end to end (issue 5 item 2): the real binary makes its PKI, starts
//! its backends and terminator in-process, measures four modes and writes the HTML
//! report; Ctrl-C stops it and removes its work dir.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const MODES: [&str; 4] = ["plaintext (direct)", "terminate", "reencrypt", "mtls"];

fn work_dir(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.contains("work dir "))
        .unwrap_or_else(|| panic!("no `work dir` in demo output: {stdout}"));
    PathBuf::from(line.rsplit("work dir ").next().unwrap().trim())
}

#[test]
fn demo_measures_four_modes_and_writes_the_report() {
    let _g = heavy();
    let tmp = TempDir::new("demo");
    let report = tmp.path().join("report.html");
    let (code, out, err) = run_to_exit(
        &[
            OsStr::new("demo"),
            OsStr::new("--seconds"),
            OsStr::new("5"),
            OsStr::new("--report"),
            report.as_os_str(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "demo failed: stdout {out}\nstderr {err}");
    let header = out
        .lines()
        .position(|l| l.starts_with("mode ") && l.contains("handshakes/s"))
        .unwrap_or_else(|| panic!("no table header: {out}"));
    let rows: Vec<&str> = out.lines().skip(header + 1).take(4).collect();
    for (row, mode) in rows.iter().zip(MODES) {
        assert!(row.starts_with(mode), "row {row:?} is not {mode}: {out}");
        // Every mode measured handshakes/s, Gbit/s and rr latency (no "-" there).
        let cells: Vec<&str> = row[19..].split_whitespace().collect();
        // hs/s, ratio, CPU µs/hs, ratio, Gbit/s, ratio, p50, ratio, p99, ratio.
        assert_eq!(cells.len(), 10, "{row:?}");
        for i in [0, 4, 6, 8] {
            assert!(
                cells[i].parse::<f64>().is_ok_and(|v| v > 0.0),
                "{mode}: cell {i} is {:?}: {out}",
                cells[i]
            );
        }
        if mode != MODES[0] {
            assert!(
                cells[2].parse::<f64>().is_ok_and(|v| v > 0.0),
                "{mode}: server CPU per handshake {:?}",
                cells[2]
            );
        }
    }
    assert!(
        rows[1].contains("1.00x"),
        "terminate is the baseline: {}",
        rows[1]
    );
    assert!(
        out.contains(&format!("HTML report: {}", report.display())),
        "{out}"
    );
    let html = std::fs::read_to_string(&report).expect("report written");
    assert!(html.contains("<svg"), "no chart in the report");
    assert_eq!(html.matches("<svg").count(), 4, "one chart per mode");
    assert!(html.contains("<polyline"), "charts have no data");
    assert!(!html.contains("<script"), "self-contained, no JS");
    assert!(
        !work_dir(&out).exists(),
        "the demo's work dir {} was not removed",
        work_dir(&out).display()
    );
}

#[test]
fn ctrl_c_stops_the_demo_and_removes_its_work_dir() {
    let _g = heavy();
    let tmp = TempDir::new("demo-int");
    let mut cmd = Command::new(bin());
    cmd.args(["demo", "--seconds", "50", "--report"])
        .arg(tmp.path().join("r.html"));
    let mut demo = Spawned::new(cmd);
    assert!(
        demo.wait_stdout_contains("work dir ", READY_TIMEOUT),
        "demo did not start: {}",
        demo.stderr()
    );
    let dir = work_dir(&demo.stdout());
    assert!(dir.join("ca.pem").exists(), "work dir holds the PKI");
    std::thread::sleep(Duration::from_millis(1500));
    let st = Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
    let status = demo
        .wait_stdin_open(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("demo still running 20 s after SIGINT: {}", demo.stderr()));
    assert_eq!(status.code(), Some(130), "stderr: {}", demo.stderr());
    assert!(!dir.exists(), "work dir {} left behind", dir.display());
}
