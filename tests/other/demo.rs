//! `terminus demo` end to end (issue 5 item 2): the real binary makes its PKI, starts
//! its backends and terminator in-process, measures four modes and writes the HTML
//! report; Ctrl-C stops it and removes its work dir.

use crate::common::*;
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

/// A number cell of the table: `-` is `None`; the noisy marker `*` and the ratio's
/// `x` are dropped.
fn number(cell: &str) -> Option<f64> {
    let c = cell.trim_end_matches('*').trim_end_matches('x');
    (c != "-").then(|| {
        c.parse()
            .unwrap_or_else(|_| panic!("cell {cell:?} is not a number"))
    })
}

/// A `min–max` cell: `None` for `-`.
fn range(cell: &str) -> Option<(f64, f64)> {
    let c = cell.trim_end_matches('x');
    (c != "-").then(|| {
        let (a, b) = c
            .split_once('–')
            .unwrap_or_else(|| panic!("cell {cell:?} is not min–max"));
        (a.parse().unwrap(), b.parse().unwrap())
    })
}

/// Issue 15: `--rounds 2` measures every mode twice, interleaved (round 1 of every
/// mode before round 2 of any), and the table gives per figure and per ratio the
/// median with min–max under it, the foreign CPU of each round and the client's CPU.
#[test]
fn demo_measures_four_modes_and_writes_the_report() {
    let _g = heavy();
    let tmp = TempDir::new("demo");
    let report = tmp.path().join("report.html");
    let (code, out, err) = run_to_exit(
        &[
            OsStr::new("demo"),
            OsStr::new("--rounds"),
            OsStr::new("2"),
            OsStr::new("--seconds"),
            OsStr::new("4"),
            OsStr::new("--report"),
            report.as_os_str(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "demo failed: stdout {out}\nstderr {err}");
    assert!(out.contains("2 rounds of "), "{out}");

    // An unmeasured warm-up, then two rounds per mode and workload: within a round
    // each workload on the four modes back to back.
    assert!(err.contains("warm-up: every workload and mode"), "{err}");
    let started: Vec<&str> = err
        .lines()
        .filter(|l| l.ends_with("measuring..."))
        .collect();
    assert_eq!(started.len(), 2 * 4 * 3, "{err}");
    for (i, line) in started.iter().enumerate() {
        let round = if i < 12 { "round 1/2 " } else { "round 2/2 " };
        assert!(
            line.contains(round),
            "measurement {i} is not in {round}: {err}"
        );
        assert!(line.contains(MODES[i % 4]), "{line}: {err}");
        let workload = ["handshake", "bulk", "rr"][(i % 12) / 4];
        assert!(line.contains(&format!(" {workload} ")), "{line}: {err}");
    }

    let header = out
        .lines()
        .position(|l| l.starts_with("mode ") && l.contains("handshakes/s"))
        .unwrap_or_else(|| panic!("no table header: {out}"));
    let lines: Vec<&str> = out.lines().skip(header + 1).take(8).collect();
    for (m, mode) in MODES.iter().enumerate() {
        let (row, spread) = (lines[2 * m], lines[2 * m + 1]);
        assert!(row.starts_with(mode), "row {row:?} is not {mode}: {out}");
        assert!(spread.starts_with("  min–max"), "{spread:?}: {out}");
        // hs/s, ratio, CPU µs/hs, ratio, Gbit/s, ratio, p50, ratio, p99, ratio.
        let cells: Vec<&str> = row[19..].split_whitespace().collect();
        let ranges: Vec<&str> = spread[19..].split_whitespace().collect();
        assert_eq!(cells.len(), 10, "{row:?}");
        assert_eq!(ranges.len(), 10, "{spread:?}");
        for i in 0..10 {
            let measured = i % 2 == 0 && (i != 2 || m != 0);
            let (med, r) = (number(cells[i]), range(ranges[i]));
            if measured {
                let med = med.filter(|v| *v > 0.0);
                assert!(med.is_some(), "{mode}: cell {i} is {:?}: {out}", cells[i]);
            }
            if i % 2 == 1 && m == 1 {
                assert_eq!(cells[i], "1.00x", "terminate is the baseline: {row}");
                assert_eq!(r, None, "{spread}");
                continue;
            }
            if i % 2 == 1 && (i != 3 || m != 0) {
                assert!(r.is_some(), "{mode}: ratio {i} has no spread: {spread}");
            }
            if let (Some(v), Some((lo, hi))) = (med, r) {
                assert!(
                    lo <= hi && lo <= v && v <= hi,
                    "{mode}: cell {i}: median {v} outside {lo}–{hi}: {out}"
                );
            }
        }
    }
    let foreign = out
        .lines()
        .find(|l| l.starts_with("foreign CPU: "))
        .unwrap_or_else(|| panic!("no foreign CPU line: {out}"));
    let per_round = foreign
        .split("(per round: ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("{foreign}"));
    let values: Vec<f64> = per_round
        .split_whitespace()
        .map(|v| v.trim_end_matches('!').parse().unwrap())
        .collect();
    assert_eq!(values.len(), 2, "{foreign}");
    assert!(values.iter().all(|v| *v >= 0.0), "{foreign}");
    let client = out
        .lines()
        .find(|l| l.starts_with("client CPU "))
        .unwrap_or_else(|| panic!("no client CPU line: {out}"));
    let per_hs: f64 = client
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{client}"));
    assert!(per_hs > 0.0, "{client}");
    if out.lines().any(|l| l.len() > 19 && l[19..].contains('*')) {
        assert!(
            out.contains("* noisy: "),
            "a noisy figure without the legend: {out}"
        );
    }

    assert!(
        out.contains(&format!("HTML report: {}", report.display())),
        "{out}"
    );
    let html = std::fs::read_to_string(&report).expect("report written");
    assert_report(&html);
    assert!(
        !work_dir(&out).exists(),
        "the demo's work dir {} was not removed",
        work_dir(&out).display()
    );
}

/// The HTML report (issue 15): a metadata header, the table as an HTML table with
/// "vs term" explained, bar charts with the spread drawn, one latency CDF per
/// workload with all modes, axis titles on every chart; one file, nothing fetched.
fn assert_report(html: &str) {
    let (meta, results) = report_tables(html, &["io backend", "load"]);
    for needle in ["rustls 0.23", "aws-lc-rs ", "terminus ", "rounds x 4 modes"] {
        assert!(meta.contains(needle), "{needle} missing: {meta}");
    }
    assert_eq!(results.matches("<th>vs term</th>").count(), 5, "{results}");
    for mode in MODES {
        assert!(
            results.contains(&format!("<tr><td>{mode}</td>")),
            "{mode}: {results}"
        );
    }
    assert!(
        results.contains("<span class=\"range\">"),
        "no min–max: {results}"
    );
    assert!(
        html.contains("<b>vs term</b>: "),
        "\"vs term\" is not explained"
    );
    assert!(html.contains("foreign CPU: "), "no foreign CPU note");

    let svgs: Vec<&str> = html.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 5, "3 bar charts and 2 latency CDFs");
    for svg in &svgs {
        assert_eq!(
            svg.matches("class=\"axis-title\"").count(),
            2,
            "axis titles: {svg}"
        );
    }
    // Bars: every measured mode has a bar and a min–max whisker (the plaintext
    // backend has no server CPU figure).
    let bars: usize = svgs[..3]
        .iter()
        .map(|s| s.matches("class=\"bar\"").count())
        .sum();
    let whiskers: usize = svgs[..3]
        .iter()
        .map(|s| s.matches("class=\"spread\"").count())
        .sum();
    assert_eq!((bars, whiskers), (11, 11), "bars and spreads");
    for svg in &svgs[3..] {
        assert_eq!(
            svg.matches("<polyline").count(),
            4,
            "all modes in one chart"
        );
        assert!(svg.contains(">99.999%</text>"));
    }
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
