//! `run` and `check --host` when io_uring is disabled by sysctl: forced
//! `io = "io_uring"` exits 1 naming the cause and the fix and `check --host` reports
//! FAIL; under `auto` terminus runs on epoll (one line says why) and `check --host`
//! says `auto` picks epoll, as WARNs, and exits 0. (A seccomp filter is the other
//! way io_uring gets blocked: tests/other/seccomp.rs.)
//!
//! Flipping `kernel.io_uring_disabled` is system-wide, so this lives in its own test
//! binary (cargo runs test binaries one after another); its tests take one lock so
//! they never overlap (tests in one binary run in parallel), and the sysctl is
//! restored by a guard even if a test fails.

mod common;

use common::*;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Holds the lock and the value to put back; restores it on drop.
struct Disabled {
    before: String,
    _lock: MutexGuard<'static, ()>,
}

impl Drop for Disabled {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.before);
    }
}

/// Set kernel.io_uring_disabled=2 until the guard drops; None (test skipped) where the
/// kernel lacks the sysctl or we can't write it.
fn disable_io_uring() -> Option<Disabled> {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(before) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("SKIPPED: {SYSCTL} does not exist on this kernel");
        return None;
    };
    if std::fs::write(SYSCTL, "2").is_err() {
        // CI runs as root; a developer's unprivileged run cannot flip the sysctl.
        eprintln!("SKIPPED: cannot write {SYSCTL} (needs root)");
        return None;
    }
    Some(Disabled {
        before,
        _lock: lock,
    })
}

/// `args` with `TERMINUS_IO` set to `io` (or removed), so the setting under test is
/// the one in force whatever the suite's switch says.
fn run_io(io: Option<&str>, args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args);
    match io {
        Some(v) => cmd.env("TERMINUS_IO", v),
        None => cmd.env_remove("TERMINUS_IO"),
    };
    run_command_to_exit(cmd, Duration::from_secs(20))
}

#[test]
fn forced_io_uring_exits_1_with_cause_and_fix_when_io_uring_is_disabled() {
    let pki = Pki::generate();
    let cfg = edge_config(&pki, Some(1), refused_addr());
    let Some(_disabled) = disable_io_uring() else {
        return;
    };
    let (code, _out, err) = run_io(
        Some("io_uring"),
        &["run".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    );
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(
        err.contains("kernel.io_uring_disabled=2")
            && err.contains("sysctl -w kernel.io_uring_disabled=0"),
        "names the sysctl and the fix: {err}"
    );
}

#[test]
fn auto_runs_on_epoll_and_serves_when_io_uring_is_disabled() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let cfg = edge_config(&pki, Some(1), backend.addr());
    let Some(_disabled) = disable_io_uring() else {
        return;
    };
    let t = Terminus::builder().config(&cfg).io_from_config().start();
    assert_eq!(t.io_backend().as_deref(), Some("epoll"));
    let mut tls = tls_connect(
        t.addr("edge"),
        &client_config(&pki, rustls::ALL_VERSIONS, &[]),
    );
    echo_round_trip(&mut tls, b"ping through epoll", "echo under auto/epoll");
    let err = t.stderr();
    let notice: Vec<_> = err.lines().filter(|l| l.contains("using epoll")).collect();
    assert_eq!(notice.len(), 1, "one line says why: {err}");
    assert!(
        notice[0].contains("kernel.io_uring_disabled=2"),
        "names the cause: {err}"
    );
}

#[test]
fn check_host_under_auto_warns_and_names_epoll_when_io_uring_is_disabled() {
    let Some(_disabled) = disable_io_uring() else {
        return;
    };
    let (code, out, err) = run_io(None, &["check".as_ref(), "--host".as_ref()]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr: {err}");
    let has = |prefix: &str| out.lines().any(|l| l.starts_with(prefix));
    assert!(
        has("WARN io backend: io = \"auto\" picks epoll because io_uring is unavailable: io_uring is disabled by sysctl"),
        "{out}"
    );
    assert!(
        has("OK   epoll data path: loopback self-test passed"),
        "{out}"
    );
    assert!(has("WARN io_uring ring: cannot create"), "{out}");
    assert!(out.contains("terminus can run here"), "{out}");
}

#[test]
fn check_host_fails_when_io_uring_is_forced_and_disabled() {
    let Some(_disabled) = disable_io_uring() else {
        return;
    };
    let (code, out, err) = run_io(Some("io_uring"), &["check".as_ref(), "--host".as_ref()]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr: {err}");
    let has = |prefix: &str| out.lines().any(|l| l.starts_with(prefix));
    assert!(
        has("FAIL io_uring sysctl: kernel.io_uring_disabled=2")
            && has("FAIL io_uring ring: cannot create: io_uring is disabled by sysctl kernel.io_uring_disabled=2"),
        "{out}"
    );
    // Nothing that needs a ring claims to have run.
    assert!(has("FAIL io_uring opcodes: not probed"), "{out}");
    assert!(!out.contains("io_uring data path"), "{out}");
    assert!(
        out.contains("sysctl -w kernel.io_uring_disabled=0"),
        "{out}"
    );
    assert!(out.contains("terminus cannot run here"), "{out}");
    // The rest of the report still runs.
    assert!(has("OK   CPUs: ") || has("WARN CPUs: "), "{out}");
}
