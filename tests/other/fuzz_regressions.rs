//! The fuzz harnesses on stable (fuzz/src, included by path): every input a fuzzer
//! found a crash with (tests/fuzz-regressions/TARGET/*) and every committed seed
//! (fuzz/seeds/TARGET/*) runs through its target's harness, which panics on what
//! the fuzzer reported. A crash input is added here when its cause is fixed;
//! `scripts/fuzz.sh` runs the targets themselves (nightly, cargo-fuzz).

use crate::harness;

use std::path::Path;

/// Run every file of `dir/TARGET/` through TARGET; returns how many ran. Fails
/// naming every file that panicked.
fn replay(dir: &Path) -> usize {
    let mut ran = 0;
    let mut failed = Vec::new();
    for (name, run) in harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(format!("{name}: {}", f.display()));
            }
            ran += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "inputs that fail:\n{}",
        failed.join("\n")
    );
    ran
}

#[test]
fn crash_inputs_found_by_fuzzing_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    replay(&dir);
}

#[test]
fn every_target_runs_its_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (name, _) in harness::TARGETS {
        let n = std::fs::read_dir(dir.join(name)).map_or(0, |d| d.count());
        assert!(n > 0, "fuzz/seeds/{name}/ is empty");
    }
    assert!(replay(&dir) > 0);
}

/// The Conn harness reaches past the handshake: the http-get seed's request reaches
/// the upstream rewritten (the forged X-Forwarded-For replaced) and the upstream's
/// answer reaches the client.
#[test]
fn the_session_harness_carries_a_request_both_ways() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/conn_session/http-get");
    let s = harness::conn_session::session(&std::fs::read(seed).unwrap());
    let up = String::from_utf8_lossy(&s.sim.to_upstream);
    assert!(up.starts_with("GET /a HTTP/1.1\r\n"), "{up}");
    assert!(
        up.contains("X-Forwarded-For: 192.0.2.7\r\n") && !up.contains("6.6.6.6"),
        "{up}"
    );
    assert!(s.client_got.ends_with(b"\r\n\r\nhi"), "{:?}", s.client_got);
}
