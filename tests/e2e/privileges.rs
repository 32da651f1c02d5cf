//! `[runtime] user`/`group` (issue 29 §3), as root with real clients: terminus binds a
//! port below 1024 and the admin socket as root, then runs as `nobody`/`nogroup`
//! (every thread: all uids and gids the target's, no supplementary group but it,
//! `CapPrm`/`CapEff`/`CapAmb` 0), with `seccomp = "builtin"` on as well; TLS and the
//! admin endpoint work; a key made unreadable by the user is refused on reload (the
//! poll and SIGHUP) naming the file while serving goes on, `terminus check` names it,
//! and it is picked up once readable again. Config errors (unknown user or group,
//! `group` without `user`) name file, line and field, and need no root.
//!
//! The tests that switch users need root; run as anyone else they say so and pass
//! (CI runs as root).

use crate::common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `getent DB NAME`'s third field: the uid of a user or the gid of a group.
fn getent_id(db: &str, name: &str) -> u32 {
    let out = Command::new("getent").args([db, name]).output().unwrap();
    assert!(out.status.success(), "getent {db} {name}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// A free TCP port below 1024 on 127.0.0.1 (only root can bind it).
fn privileged_port() -> u16 {
    (700..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 700..1000")
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every line of `/proc/PID/task/*/status` that starts with `key:`, one per thread.
fn thread_lines(pid: u32, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .unwrap()
            .to_string();
        out.push(line);
    }
    out
}

/// Every thread of `pid`: real, effective, saved and fs ids; the one group; no
/// capability; no new privileges; the seccomp filter.
fn assert_every_thread_is(pid: u32, uid: u32, gid: u32) {
    let threads = thread_lines(pid, "Uid");
    assert!(threads.len() >= 3, "workers and helpers: {threads:?}");
    for (key, want) in [
        ("Uid", format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")),
        ("Gid", format!("Gid:\t{gid}\t{gid}\t{gid}\t{gid}")),
        ("Groups", format!("Groups:\t{gid} ")),
        ("CapPrm", "CapPrm:\t0000000000000000".into()),
        ("CapEff", "CapEff:\t0000000000000000".into()),
        ("CapAmb", "CapAmb:\t0000000000000000".into()),
        ("NoNewPrivs", "NoNewPrivs:\t1".into()),
        ("Seccomp", "Seccomp:\t2".into()),
    ] {
        for line in thread_lines(pid, key) {
            assert_eq!(
                line.trim_end(),
                want.trim_end(),
                "{key} of a thread of {pid}"
            );
        }
    }
}

/// The key becomes unreadable by the user: the poll's reload and SIGHUP are
/// refused naming it, the material in use keeps serving, and `check` names the file,
/// the user and the field.
fn unreadable_key_is_refused_and_serving_continues(
    t: &Terminus,
    config: &std::path::Path,
    key: &std::path::Path,
    client: &std::sync::Arc<rustls::ClientConfig>,
) {
    chmod(key, 0o600);
    let err = t.wait_stderr("keeping the material in use", WAIT);
    let refused: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("keeping the material in use"))
        .collect();
    assert!(
        refused[0].contains("reload: listener edge")
            && refused[0].contains(&key.display().to_string())
            && refused[0].contains("ermission denied"),
        "{refused:?}"
    );
    let mut tls = tls_connect(t.addr("edge"), client);
    echo_round_trip(&mut tls, b"still served", "echo after the refused reload");
    drop(tls);
    // SIGHUP reads every file again: refused the same way.
    t.signal("HUP");
    let err = t.wait_stderr("keeping the running configuration", WAIT);
    assert!(
        err.lines()
            .any(|l| l.contains("keeping the running configuration")
                && l.contains(&key.display().to_string())),
        "{err}"
    );
    // `check` names the file, the user and the field.
    let (code, out, err) = run_check(config);
    assert_eq!(code, Some(2), "check: {out}{err}");
    let line = format!(
        "runtime.user: user nobody (group nogroup) cannot open {}: Permission denied",
        key.display()
    );
    assert!(err.contains(&line), "check: no `{line}`:\n{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn binds_as_root_then_serves_as_the_user_with_no_capabilities_and_refuses_unreadable_reloads() {
    if !is_root() {
        eprintln!("skipped: switching users needs root (CI runs as root)");
        return;
    }
    let _g = heavy();
    let (uid, gid) = (getent_id("passwd", "nobody"), getent_id("group", "nogroup"));
    let pki = Pki::generate();
    let dir = pki.dir();
    // The folder traversable by all, the key readable through the group only.
    chmod(dir, 0o755);
    for f in ["server.pem", "ca.pem"] {
        chmod(&dir.join(f), 0o644);
    }
    let key = dir.join("server.key");
    chown(&key, 0, gid);
    chmod(&key, 0o640);

    let echo = Backend::echo();
    let port = privileged_port();
    let config = write_config(&pki, Some(2), &[ListenerConf::new("edge", &[echo.addr()])]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "[runtime]\n",
            "[runtime]\nuser = \"nobody\"\ngroup = \"nogroup\"\nseccomp = \"builtin\"\n\
             reload_interval_ms = 100\n",
            1,
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        + ADMIN;
    std::fs::write(&config, text).unwrap();
    chmod(&config, 0o644);

    let (code, out, err) = run_check(&config);
    assert_eq!(code, Some(0), "check: {out}{err}");

    let mut t = Terminus::start(&config);
    assert_eq!(t.addr("edge").port(), port);
    let err = t.wait_stderr("running as user nobody", WAIT);
    assert!(
        err.contains(&format!(
            "running as user nobody (uid {uid}), group nogroup (gid {gid}), no capabilities"
        )),
        "{err}"
    );
    assert_every_thread_is(t.pid(), uid, gid);

    // Traffic: TLS on the port below 1024, the admin endpoint.
    let client = client_config(&pki, &[&rustls::version::TLS13], &[]);
    let mut tls = tls_connect(t.addr("edge"), &client);
    echo_round_trip(&mut tls, b"served as nobody", "echo");
    drop(tls);
    let (status, _) = http_get(t.admin(), "/readyz");
    assert_eq!(status, 200);

    unreadable_key_is_refused_and_serving_continues(&t, &config, &key, &client);

    // Readable again: the poll picks it up.
    chmod(&key, 0o640);
    t.wait_stderr("new certificates and keys in use", WAIT);
    let mut tls = tls_connect(t.addr("edge"), &client);
    echo_round_trip(&mut tls, b"after the fix", "echo after the fix");
    drop(tls);
    t.assert_alive();
    t.signal("TERM");
    assert_eq!(t.wait_exit(WAIT), Some(0), "{}", t.stderr());
}

/// Names that do not resolve, and `group` alone, are config errors at their line,
/// for `check` and `run` alike (exit 2).
#[test]
fn bad_user_and_group_are_config_errors_naming_file_line_and_field() {
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("edge", &[refused_addr()])],
    );
    let base = std::fs::read_to_string(&config).unwrap();
    let f = config.display().to_string();
    for (runtime, want) in [
        (
            "user = \"no-such-user-29\"\n",
            format!("{f}:3: runtime.user: no user named \"no-such-user-29\" on this host"),
        ),
        (
            "user = \"nobody\"\ngroup = \"no-such-group-29\"\n",
            format!("{f}:4: runtime.group: no group named \"no-such-group-29\" on this host"),
        ),
        (
            "group = \"nogroup\"\n",
            format!("{f}:3: runtime.group: needs `user` too"),
        ),
        (
            "seccomp = \"strict\"\n",
            format!("{f}:3: runtime.seccomp: "),
        ),
    ] {
        let text = base.replacen(
            "[runtime]\nworkers = 1\n",
            &format!("[runtime]\nworkers = 1\n{runtime}"),
            1,
        );
        assert_ne!(text, base);
        std::fs::write(&config, text).unwrap();
        let (code, out, err) = run_check(&config);
        assert_eq!(code, Some(2), "check with {runtime:?}: {out}{err}");
        assert!(
            err.contains(&want),
            "check with {runtime:?}: no `{want}`:\n{err}"
        );
        let (code, _, err) = run_to_exit(
            &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            WAIT,
        );
        assert_eq!(code, Some(2), "run with {runtime:?}: {err}");
        assert!(
            err.contains(&want),
            "run with {runtime:?}: no `{want}`:\n{err}"
        );
    }
}
