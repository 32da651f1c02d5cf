//! `terminus check --host` on this machine: the built binary, run under real limits
//! (`prlimit`, `taskset`), against what /proc and /sys say.

use crate::common::*;
use std::process::Command;

/// Run `[prefix...] terminus ARGS` and return (exit code, stdout, stderr).
fn terminus(prefix: &[&str], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let out = cmd.args(args).output().expect("spawn terminus");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report line for item `name` (`STATUS name: detail`).
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|r| r.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no line for {name:?} in:\n{out}"))
}

#[test]
fn io_uring_items_are_ok_here_and_values_are_the_hosts() {
    let (code, out, err) = terminus(&[], &["check", "--host"]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr: {err}");
    for name in [
        "io_uring sysctl",
        "seccomp",
        "io_uring ring",
        "io_uring opcode ACCEPT",
        "io_uring opcode RECV",
        "io_uring opcode SEND",
        "io_uring opcode CONNECT",
        "io_uring opcode SHUTDOWN",
        "io_uring opcode CLOSE",
        "io_uring opcode ASYNC_CANCEL",
        "io_uring buffer ring",
        "io_uring data path",
    ] {
        assert!(line(&out, name).starts_with("OK   "), "{name}:\n{out}");
    }
    assert!(out.contains("host OK: terminus can run here"), "{out}");

    // Sysctl lines show the running value, one line per setting of tuning/sysctl.conf.
    let conf = include_str!("../../tuning/sysctl.conf");
    let mut seen = 0;
    for l in conf.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') || l.starts_with("-kernel.io_uring") {
            continue;
        }
        let key = l.split('=').next().unwrap().trim().trim_start_matches('-');
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let cur = std::fs::read_to_string(&path).unwrap();
        let cur = cur.split_whitespace().collect::<Vec<_>>().join(" ");
        let got = line(&out, &format!("sysctl {key}"));
        assert!(
            got.contains(&format!("{key}: {cur} (recommended ")),
            "{got}"
        );
        seen += 1;
    }
    assert!(seen >= 10, "{seen} sysctls");

    // somaxconn: OK exactly when the running value reaches the recommended 65535.
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let l = line(&out, "sysctl net.core.somaxconn");
    assert_eq!(l.starts_with("OK   "), somaxconn >= 65535, "{l}");
    assert_eq!(
        l.contains("fix: sysctl -w net.core.somaxconn="),
        somaxconn < 65535
    );

    // Governor: sysfs decides what the line says.
    let gov = line(&out, "CPU governor");
    if std::path::Path::new("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").exists() {
        let g = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
            .unwrap();
        assert!(gov.contains(g.trim()), "{gov}");
    } else {
        assert!(
            gov.starts_with("OK   ") && gov.contains("no cpufreq"),
            "{gov}"
        );
    }
}

#[test]
fn nofile_line_reports_the_real_limit_and_warns_when_too_low() {
    let (code, out, _) = terminus(&["prlimit", "--nofile=1024:1024"], &["check", "--host"]);
    assert_eq!(code, Some(0), "a low limit is a WARN, not a FAIL:\n{out}");
    let l = line(&out, "RLIMIT_NOFILE");
    assert!(
        l.starts_with("WARN RLIMIT_NOFILE: soft 1024, hard 1024;") && l.contains("fix: "),
        "{l}"
    );

    // With a config the need follows its listeners' max_connections: 2 x 100 + 1024
    // descriptors fit in 4096, not in 1024. Both checks in one run, exit 0.
    let pki = Pki::generate();
    let cfg = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("edge", &[refused_addr()]).opt("max_connections", "100")],
    );
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = terminus(
        &["prlimit", "--nofile=4096:4096"],
        &["check", "--config", cfg, "--host"],
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr: {err}");
    assert!(out.contains("config OK: 1 listener(s)"), "{out}");
    let l = line(&out, "RLIMIT_NOFILE");
    assert!(
        l.starts_with("OK   RLIMIT_NOFILE: soft 4096, hard 4096;")
            && l.contains("100 connections need about 1224"),
        "{l}"
    );
    let (_, out, _) = terminus(
        &["prlimit", "--nofile=1024:1024"],
        &["check", "--config", cfg, "--host"],
    );
    assert!(
        line(&out, "RLIMIT_NOFILE").starts_with("WARN RLIMIT_NOFILE: soft 1024,"),
        "{out}"
    );
    // The config's runtime.workers = 1 is what the CPU line reports.
    assert!(
        line(&out, "CPUs").contains("terminus starts 1 worker(s)"),
        "{out}"
    );
}

#[test]
fn cpu_line_follows_the_affinity_mask() {
    let cpu = own_allowed_cpus()[0];
    let (code, out, _) = terminus(&["taskset", "-c", &cpu.to_string()], &["check", "--host"]);
    assert_eq!(code, Some(0), "{out}");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = parse_cpu_list(online.trim()).len();
    let l = line(&out, "CPUs");
    assert!(
        l.starts_with(&format!(
            "OK   CPUs: 1 allowed ({cpu}) of {online} online; terminus starts 1 worker(s)"
        )),
        "{l}"
    );
}

#[test]
fn check_needs_config_or_host_and_config_still_works_alone() {
    let (code, _, err) = terminus(&[], &["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config") && err.contains("--host"), "{err}");
    let (code, _, err) = terminus(&[], &["check", "--host", "--host-timeout-ms", "0"]);
    assert_eq!(code, Some(2), "{err}");

    let pki = Pki::generate();
    let cfg = edge_config(&pki, Some(1), refused_addr());
    let (code, out, err) = terminus(&[], &["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("config OK: 1 listener(s)") && !out.contains("RLIMIT"),
        "{out}"
    );

    // An invalid config wins over the host check: exit 2, and the host is still reported.
    let bad = pki.dir().join("bad.toml");
    std::fs::write(&bad, "[[listeners]]\nname = 1\n").unwrap();
    let (code, out, _) = terminus(&[], &["check", "--config", bad.to_str().unwrap(), "--host"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("io_uring ring"), "{out}");
}
