//! `run` when io_uring is unavailable exits 1 naming the cause and the fix.
//!
//! Flipping `kernel.io_uring_disabled` is system-wide, so this lives in its own test
//! binary (cargo runs test binaries one after another) with a single test, and the
//! sysctl is restored by a guard even if the test fails.

mod common;

use common::*;
use std::time::Duration;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

#[test]
fn run_exits_1_with_cause_and_fix_when_io_uring_is_disabled() {
    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("SKIPPED: {SYSCTL} does not exist on this kernel");
        return;
    };
    let pki = Pki::generate();
    let cfg = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("edge", &[refused_addr()])],
    );
    if std::fs::write(SYSCTL, "2").is_err() {
        // CI runs as root; a developer's unprivileged run cannot flip the sysctl.
        eprintln!("SKIPPED: cannot write {SYSCTL} (needs root)");
        return;
    }
    let _restore = Restore(before);
    let (code, _out, err) = run_to_exit(
        &["run".as_ref(), "--config".as_ref(), cfg.as_os_str()],
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("kernel.io_uring_disabled=2")
            && err.contains("sysctl -w kernel.io_uring_disabled=0"),
        "names the sysctl and the fix: {err}"
    );
}
