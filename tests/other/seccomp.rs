//! terminus where a seccomp filter denies io_uring (issue 11), as the default profiles
//! of Docker ≥ 25, containerd ≥ 1.7 and Kubernetes' `RuntimeDefault` do.
//!
//! Every terminus here runs under `terminus-seccomp-exec --deny-io-uring eperm|enosys`
//! (filters in `terminus_testkit::seccomp`: `io_uring_setup`, `io_uring_enter` and
//! `io_uring_register` fail with that errno, everything else is allowed; the filter is
//! inherited across exec). Under each errno:
//! - with `[runtime] io` unset (`auto`), terminus falls back to epoll: one stderr line
//!   naming the cause and the fix (`using epoll`), `io backend=epoll` before `ready`,
//!   `terminus_io_backend_info{backend="epoll"} 1` on /metrics; and it serves curl, an
//!   8 MiB echo compared byte for byte (rustls client) and an mTLS client;
//! - with `io = "io_uring"` forced, it exits 1 with the clear message: EPERM names
//!   seccomp; ENOSYS (on this ≥ 6.0 kernel) names a filter, not an old kernel.
//!
//!
//! And under the profile shipped for containers, `deploy/seccomp-io_uring.json`
//! (`terminus-seccomp-exec --profile FILE --strict`: the syscalls it lists are allowed,
//! any other kills the process with SIGSYS): terminus lives its whole life on io_uring
//! (`auto`) and on epoll (`TERMINUS_IO=epoll`) — start, sd_notify, TLS, mTLS, an
//! upstream by name, /metrics, SIGHUP, SIGUSR1, SIGTERM drain to exit 0; and the profile
//! is enforced: without `io_uring_setup` in it, `auto` falls back to epoll.
//!
//! terminus's own filter, `[runtime] seccomp = "builtin"` (the same list less
//! `execve`, installed after start-up): the same whole life on io_uring and on epoll,
//! `Seccomp: 2` in /proc/PID/status; and a syscall outside it (a test hook's getppid
//! on SIGHUP) kills the process with SIGSYS after one `FATAL` line naming it.
//!
//! `TERMINUS_IO` is removed from every child's environment here, so these tests test
//! `auto` and the config's `io` even in a suite run under `TERMINUS_IO=epoll`.

use crate::common::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use terminus::tools::bench::target::metric;
use terminus::tools::certs::{LeafSpec, TestCa, TestLeaf};
use terminus::tools::client::{ClientConfigBuilder, Trust};
use terminus_testkit::seccomp::Deny;

const HELPER: &str = env!("CARGO_BIN_EXE_terminus-seccomp-exec");
const SPIFFE: &str = "spiffe://example.org/client";
const HTTP_BODY: &[u8] = b"served through epoll under a seccomp filter\n";
const ECHO_LEN: usize = 8 * MIB;
/// How long a log line, a metric or a process' exit may take.
const WAIT: Duration = Duration::from_secs(20);

/// How `std::io::Error` shows the errno the filter answers the io_uring syscalls with.
fn os_error(deny: Deny) -> String {
    format!("os error {})", deny.errno())
}

/// `terminus-seccomp-exec --deny-io-uring ERRNO --`, the prefix for `terminus`.
fn deny_prefix(deny: Deny) -> [&'static str; 4] {
    [HELPER, "--deny-io-uring", deny.name(), "--"]
}

/// `terminus run` on `config` under `prefix` (`io_from_config`), which must fall back
/// to epoll: the readiness line says so and stderr has one line about it, returned
/// (`what` names the case in failures).
fn start_on_epoll(config: &Path, prefix: &[&str], what: &str) -> (Terminus, String) {
    let t = Terminus::builder()
        .config(config)
        .prefix(prefix)
        .io_from_config()
        .start();
    assert_eq!(
        t.io_backend().as_deref(),
        Some("epoll"),
        "{what}: `io backend=` line; stderr:\n{}",
        t.stderr()
    );
    let err = t.wait_stderr("using epoll", WAIT);
    let fallback: Vec<&str> = err.lines().filter(|l| l.contains("using epoll")).collect();
    assert_eq!(fallback.len(), 1, "{what}: one fallback line:\n{err}");
    let line = fallback[0].to_owned();
    (t, line)
}

/// The text that says why io_uring is unavailable must blame the filter: EPERM names
/// seccomp; ENOSYS names a filter or seccomp and does not call this ≥ 6.0 kernel too old.
fn assert_blames_the_filter(deny: Deny, text: &str, what: &str) {
    let lower = text.to_lowercase();
    match deny {
        Deny::Eperm => assert!(lower.contains("seccomp"), "{what}: names seccomp: {text}"),
        Deny::Enosys => {
            assert!(
                lower.contains("filter") || lower.contains("seccomp"),
                "{what}: ENOSYS on a kernel >= 6.0 means a filter: {text}"
            );
            assert!(
                !lower.contains("too old") && !lower.contains("not supported by this kernel"),
                "{what}: must not blame the kernel version: {text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// The helper itself (independent of the epoll backend)
// ---------------------------------------------------------------------------------

/// The filter is installed and survives exec: `/proc/self/status` of the exec'd
/// program shows seccomp mode 2 and no_new_privs.
#[test]
fn helper_installs_a_filter_that_survives_exec() {
    for deny in [Deny::Eperm, Deny::Enosys] {
        let mut cmd = Command::new(HELPER);
        cmd.args([
            "--deny-io-uring",
            deny.name(),
            "--",
            "cat",
            "/proc/self/status",
        ]);
        let (code, out, err) = run_command_to_exit(cmd, WAIT);
        assert_eq!(code, Some(0), "{deny:?}: stderr: {err}");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in /proc/self/status:\n{out}"))
        };
        assert_eq!(field("Seccomp:"), "2", "{deny:?}: filter mode");
        assert_eq!(field("NoNewPrivs:"), "1", "{deny:?}");
    }
}

/// Under the filter, creating a ring fails with exactly the chosen errno: `terminus
/// check --host` reports the ring's error (`os error 1` for EPERM, 38 for ENOSYS).
#[test]
fn helper_denies_io_uring_with_the_chosen_errno() {
    for deny in [Deny::Eperm, Deny::Enosys] {
        let mut cmd = command_with_prefix(&deny_prefix(deny));
        cmd.args(["check", "--host"]).env_remove(IO_ENV);
        let (_code, out, err) = run_command_to_exit(cmd, WAIT);
        assert!(
            out.lines()
                .any(|l| l.contains("io_uring") && l.contains(&os_error(deny))),
            "{deny:?}: no io_uring line with {:?}; stdout:\n{out}\nstderr: {err}",
            os_error(deny)
        );
    }
}

#[test]
fn helper_usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--deny-io-uring", "eacces", "--", "true"][..],
        &["--deny-io-uring", "eperm", "true"][..],
        &["--deny-io-uring", "eperm", "--"][..],
    ] {
        let mut cmd = Command::new(HELPER);
        cmd.args(args);
        let (code, _out, err) = run_command_to_exit(cmd, WAIT);
        assert_eq!(code, Some(2), "{args:?}: stderr: {err}");
        assert!(
            err.contains("usage: terminus-seccomp-exec"),
            "{args:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------
// `auto` falls back to epoll and serves
// ---------------------------------------------------------------------------------

/// A PKI, a client CA (`client-ca.pem` next to the config) with one client leaf, and the
/// backends of the three listeners.
struct Setup {
    pki: Pki,
    client: TestLeaf,
    http: Backend,
    echo: Backend,
}

impl Setup {
    fn new() -> Setup {
        let pki = Pki::generate();
        let ca = TestCa::root("seccomp-test client CA").expect("client CA");
        std::fs::write(pki.dir().join("client-ca.pem"), &ca.pem).unwrap();
        let client = ca
            .leaf(&LeafSpec::client("client", Some(SPIFFE)))
            .expect("client leaf");
        Setup {
            pki,
            client,
            http: Backend::http(HTTP_BODY),
            echo: Backend::echo(),
        }
    }

    /// Listeners `web` (HTTP backend), `echo` and `mtls` (echo, client cert required),
    /// an admin endpoint, and `runtime_extra` lines in `[runtime]`.
    fn config(&self, runtime_extra: &str) -> PathBuf {
        let mtls = ListenerConf::new("mtls", &[self.echo.addr()]).raw(&format!(
            "[listeners.client_auth]\nmode = \"require\"\nca = [\"client-ca.pem\"]\n\
             allow = [\"{SPIFFE}\"]\n"
        ));
        let config = write_config(
            &self.pki,
            Some(2),
            &[
                ListenerConf::new("web", &[self.http.addr()]),
                ListenerConf::new("echo", &[self.echo.addr()]),
                mtls,
            ],
        );
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.starts_with("[runtime]\n"), "{text}");
        let text = text.replacen("[runtime]\n", &format!("[runtime]\n{runtime_extra}"), 1)
            + "\n[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n";
        std::fs::write(&config, text).unwrap();
        config
    }

    fn client(&self, leaf: Option<&TestLeaf>) -> Arc<rustls::ClientConfig> {
        let mut b = ClientConfigBuilder::new(Trust::Roots(self.pki.roots()));
        if let Some(l) = leaf {
            b = b.client_cert(l.chain.clone(), l.key());
        }
        b.build().expect("client config")
    }
}

fn falls_back_to_epoll_and_serves(deny: Deny) {
    let _g = heavy();
    let s = Setup::new();
    let config = s.config("");
    // Where: the readiness line, one stderr line with cause and fix, the metric.
    let (t, fallback) = start_on_epoll(&config, &deny_prefix(deny), &format!("{deny:?}"));
    assert_blames_the_filter(deny, &fallback, "fallback line");
    assert_backend_metric(&t, "epoll");

    // curl through the `web` listener.
    let (curl, status) = curl_web(&t, &s.pki, "/under-seccomp");
    assert!(
        status.success(),
        "{deny:?}: curl failed ({status}); stderr: {}; terminus stderr: {}",
        curl.stderr(),
        t.stderr()
    );
    assert_eq!(curl.stdout().as_bytes(), HTTP_BODY, "{deny:?}: curl body");
    assert_eq!(
        s.http.reports(),
        vec!["GET /under-seccomp HTTP/1.1".to_string()]
    );

    // 8 MiB through the `echo` listener, both directions at once, byte for byte.
    let mut tls = tls_connect(t.addr("echo"), &s.client(None));
    echo_compare(&mut tls, ECHO_LEN, 11, &format!("{deny:?}: 8 MiB echo"));

    // mTLS: the client certificate is accepted and bytes flow; without one, refused.
    let mut tls = tls_connect(t.addr("mtls"), &s.client(Some(&s.client)));
    echo_round_trip(&mut tls, b"mutual TLS under seccomp", "mTLS echo");
    let refused = match try_tls_connect(t.addr("mtls"), &s.client(None)) {
        Err(_) => true,
        Ok(mut tls) => {
            // TLS 1.3: the server's refusal arrives after the client's handshake ends.
            let _ = tls.write_all(b"x");
            let _ = tls.flush();
            let mut b = [0u8; 1];
            !matches!(tls.read(&mut b), Ok(1))
        }
    };
    assert!(
        refused,
        "{deny:?}: a client without a certificate must be refused"
    );
    assert_eq!(t.io_backend().as_deref(), Some("epoll"));
}

/// `terminus_io_backend_info{backend="<want>"} 1` on /metrics (polled, bounded).
fn assert_backend_metric(t: &Terminus, want: &str) {
    let series = format!("terminus_io_backend_info{{backend=\"{want}\"}}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = http_get(t.admin(), "/metrics");
        assert_eq!(status, 200, "/metrics: {page}");
        if metric(&page, &series) == Some(1.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{series} 1` on /metrics:\n{page}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Send `len` bytes of `Pattern::new(seed)` with up to 256 KiB in flight, read the echo,
/// and compare the whole echo with what was sent, byte for byte.
fn echo_compare(tls: &mut Tls, len: usize, seed: u64, what: &str) {
    let sent_all = Pattern::bytes(seed, len);
    let (chunk, window) = (64 * 1024, 256 * 1024);
    let mut back = Vec::with_capacity(len);
    let mut inb = vec![0u8; 256 * 1024];
    let mut sent = 0usize;
    let start = Instant::now();
    while back.len() < len {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: too slow: sent {sent}, got {}",
            back.len()
        );
        while sent < len && sent - back.len() < window {
            let end = (sent + chunk).min(len);
            tls.write_all(&sent_all[sent..end])
                .unwrap_or_else(|e| panic!("{what}: write after {sent}: {e}"));
            sent = end;
        }
        tls.flush().unwrap_or_else(|e| panic!("{what}: flush: {e}"));
        let n = tls
            .read(&mut inb)
            .unwrap_or_else(|e| panic!("{what}: read after {}: {e}", back.len()));
        assert!(n > 0, "{what}: closed after {} of {len} bytes", back.len());
        back.extend_from_slice(&inb[..n]);
        assert!(back.len() <= sent, "{what}: received more than sent");
    }
    if let Some(i) = back.iter().zip(&sent_all).position(|(a, b)| a != b) {
        panic!("{what}: echoed byte {i} differs from the byte sent");
    }
    assert_eq!(back.len(), len, "{what}");
}

#[test]
fn auto_falls_back_to_epoll_and_serves_under_eperm_filter() {
    falls_back_to_epoll_and_serves(Deny::Eperm);
}

#[test]
fn auto_falls_back_to_epoll_and_serves_under_enosys_filter() {
    falls_back_to_epoll_and_serves(Deny::Enosys);
}

// ---------------------------------------------------------------------------------
// Forced io_uring exits 1 with the clear message
// ---------------------------------------------------------------------------------

fn forced_io_uring_exits_1(deny: Deny) {
    let s = Setup::new();
    let config = s.config("io = \"io_uring\"\n");
    let (code, _out, err) = run_under(deny, &config);
    assert_eq!(
        code,
        Some(1),
        "{deny:?}: forced io_uring must exit 1; stderr: {err}"
    );
    assert!(err.contains("io_uring"), "{deny:?}: names io_uring: {err}");
    assert!(
        !err.contains("using epoll"),
        "{deny:?}: a forced io_uring never falls back: {err}"
    );
    assert_blames_the_filter(deny, &err, "forced io_uring");
}

/// `terminus run --config CONFIG` under the filter, `TERMINUS_IO` removed, to its exit.
fn run_under(deny: Deny, config: &Path) -> (Option<i32>, String, String) {
    let mut cmd = command_with_prefix(&deny_prefix(deny));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env_remove(IO_ENV);
    run_command_to_exit(cmd, WAIT)
}

#[test]
fn forced_io_uring_exits_1_naming_seccomp_under_eperm_filter() {
    forced_io_uring_exits_1(Deny::Eperm);
}

#[test]
fn forced_io_uring_exits_1_naming_a_filter_not_the_kernel_under_enosys_filter() {
    forced_io_uring_exits_1(Deny::Enosys);
}

// ---------------------------------------------------------------------------------
// Under deploy/seccomp-io_uring.json, the profile shipped for containers
// ---------------------------------------------------------------------------------

/// The profile shipped for containers (Docker `--security-opt seccomp=`, Kubernetes
/// `Localhost`): every syscall `terminus run` makes, plus io_uring; EPERM for the rest.
const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/seccomp-io_uring.json");
const SIGSYS: i32 = 31;
const NAMED: &str = "echo.seccomp.test";

/// `env VARS... terminus-seccomp-exec --profile PROFILE [--strict] --`: `env` sets the
/// variables outside the filter (the `io_from_config` child has no
/// `TERMINUS_IO` of its own, so `TERMINUS_IO=epoll` here is the only one it sees).
fn profile_prefix(vars: &[String], profile: &str, strict: bool) -> Vec<String> {
    let mut p = vec!["env".to_string()];
    p.extend(vars.iter().cloned());
    p.extend([HELPER.into(), "--profile".into(), profile.into()]);
    if strict {
        p.push("--strict".into());
    }
    p.push("--".into());
    p
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `curl https://localhost:PORT/PATH` through the `web` listener, trusting the PKI's
/// CA; the finished child and its exit status.
fn curl_web(t: &Terminus, pki: &Pki, path: &str) -> (Spawned, std::process::ExitStatus) {
    require_tool("curl");
    let port = t.addr("web").port();
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail", "--max-time", "20"])
        .arg("--cacert")
        .arg(pki.ca_pem())
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg(format!("https://localhost:{port}{path}"));
    let mut curl = Spawned::new(cmd);
    let status = curl.wait(WAIT);
    (curl, status)
}

/// The exit status must not be SIGSYS: under `--strict` a syscall missing from the
/// profile kills terminus with it.
fn assert_not_sigsys(status: std::process::ExitStatus, what: &str, stderr: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        status.signal(),
        Some(SIGSYS),
        "{what}: killed by SIGSYS: a syscall missing from the filter; stderr:\n{stderr}"
    );
}

/// Everything `terminus run` does in its life, under the shipped profile with
/// `--strict` (a syscall missing from it kills terminus): start on `want` (`auto`
/// picking io_uring, or `TERMINUS_IO=epoll`), sd_notify, curl, an echo compared byte
/// for byte, mTLS, an upstream by name (hosts file and the system resolver, resolved
/// again every 100 ms), /metrics, the reload poll, SIGHUP, SIGUSR1 with a renamed
/// access log, and a SIGTERM drain (after a drain delay) that exits 0.
fn serves_under_the_profile(want: &str) {
    serves_under(want, Filter::Profile)
}

/// Whose filter [`serves_under`] runs terminus under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// `terminus-seccomp-exec --profile deploy/seccomp-io_uring.json --strict`.
    Profile,
    /// `[runtime] seccomp = "builtin"`: terminus's own, installed after start-up.
    Builtin,
}

fn serves_under(want: &str, filter: Filter) {
    let _g = heavy();
    let s = Setup::new();
    let dir = s.pki.dir().to_path_buf();
    std::fs::write(dir.join("hosts"), format!("127.0.0.1 {NAMED}\n")).unwrap();
    let builtin = if filter == Filter::Builtin {
        "seccomp = \"builtin\"\n"
    } else {
        ""
    };
    let config = s.config(&format!(
        "reload_interval_ms = 100\ndrain_delay_ms = 200\n{builtin}"
    ));
    let echo_port = s.echo.addr().port();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("access = \"off\""), "{text}");
    let text = text.replace("access = \"off\"", "access = \"access.log\"")
        + &format!(
            "\n[resolver]\nhosts_file = \"hosts\"\n\n[[listeners]]\nname = \"named\"\n\
             listen = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
             upstreams = [\"{NAMED}:{echo_port}\", \"localhost:{echo_port}\"]\n\
             resolve_interval_ms = 100\n"
        );
    std::fs::write(&config, &text).unwrap();

    let notify = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut vars = vec![format!("NOTIFY_SOCKET={}", notify.display())];
    if want == "epoll" {
        vars.push(format!("{IO_ENV}=epoll"));
    }
    let (prefix, what) = match filter {
        Filter::Profile => (
            profile_prefix(&vars, PROFILE, true),
            format!("{want} under {PROFILE} --strict"),
        ),
        Filter::Builtin => (
            std::iter::once("env".to_string()).chain(vars).collect(),
            format!("{want} under [runtime] seccomp = \"builtin\""),
        ),
    };
    let mut t = Terminus::builder()
        .config(&config)
        .prefix(&as_strs(&prefix))
        .io_from_config()
        .start();
    if filter == Filter::Builtin {
        assert_builtin_filter_on(&t, &what);
    }

    assert_eq!(
        t.io_backend().as_deref(),
        Some(want),
        "{what}: `io backend=` line; stderr:\n{}",
        t.stderr()
    );
    assert!(
        !t.stderr().contains("using epoll"),
        "{what}: no fallback notice: {}",
        t.stderr()
    );
    let ready = recv_notify(&sock, "READY=1");
    assert!(ready.lines().any(|l| l == "READY=1"), "{what}: {ready:?}");
    assert_backend_metric(&t, want);

    // curl through `web`, an echo compared byte for byte, mTLS, the named upstream.
    let (curl, status) = curl_web(&t, &s.pki, "/profile");
    assert!(
        status.success(),
        "{what}: curl failed ({status}); stderr: {}; terminus stderr: {}",
        curl.stderr(),
        t.stderr()
    );
    assert_eq!(curl.stdout().as_bytes(), HTTP_BODY, "{what}: curl body");
    let mut tls = tls_connect(t.addr("echo"), &s.client(None));
    echo_compare(&mut tls, MIB, 12, &format!("{what}: 1 MiB echo"));
    drop(tls);
    let mtls = s.client(Some(&s.client));
    let mut tls = tls_connect(t.addr("mtls"), &mtls);
    echo_round_trip(&mut tls, b"mutual TLS under the profile", "mTLS echo");
    drop(tls);
    // A few re-resolution rounds, then the named upstream.
    thread::sleep(Duration::from_millis(300));
    let mut tls = tls_connect(t.addr("named"), &s.client(None));
    echo_round_trip(&mut tls, b"upstream by name", "named upstream echo");
    drop(tls);

    reload_allows_another_identity(&t, &s, &config, &what);
    reopen_access_log(&t, &s, &what);

    // SIGTERM: STOPPING=1, the drain delay, then exit 0 (not SIGSYS).
    t.assert_alive();
    t.signal("TERM");
    let stopping = recv_notify(&sock, "STOPPING=1");
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "{what}: {stopping:?}"
    );
    let status = t.wait_exit_status(WAIT);
    assert_not_sigsys(status, &what, &t.stderr());
    assert_eq!(
        status.code(),
        Some(0),
        "{what}: {status}; stderr:\n{}",
        t.stderr()
    );
}

/// SIGHUP: a reloadable change (one more allowed identity) counts an ok reload, and
/// mTLS still serves.
fn reload_allows_another_identity(t: &Terminus, s: &Setup, config: &Path, what: &str) {
    let reloads = "terminus_config_reloads_total{result=\"ok\"}";
    let text = std::fs::read_to_string(config).unwrap();
    let changed = text.replace(
        &format!("allow = [\"{SPIFFE}\"]"),
        &format!("allow = [\"{SPIFFE}\", \"spiffe://example.org/other\"]"),
    );
    assert_ne!(changed, text);
    std::fs::write(config, changed).unwrap();
    t.signal("HUP");
    assert!(
        wait_until(WAIT, || metric(&http_get(t.admin(), "/metrics").1, reloads)
            >= Some(1.0)),
        "{what}: no `{reloads} 1` after SIGHUP; stderr:\n{}",
        t.stderr()
    );
    let mut tls = tls_connect(t.addr("mtls"), &s.client(Some(&s.client)));
    echo_round_trip(&mut tls, b"mTLS after the reload", "mTLS after SIGHUP");
    drop(tls);
}

/// SIGUSR1: rename the access log, signal, and the next connection's line lands in a
/// fresh file.
fn reopen_access_log(t: &Terminus, s: &Setup, what: &str) {
    let dir = s.pki.dir();
    let log = dir.join("access.log");
    assert!(
        wait_until(WAIT, || log.exists()),
        "{what}: no access.log; stderr:\n{}",
        t.stderr()
    );
    std::fs::rename(&log, dir.join("access.log.1")).unwrap();
    t.signal("USR1");
    let fresh = wait_until(WAIT, || {
        let mut tls = tls_connect(t.addr("echo"), &s.client(None));
        echo_round_trip(&mut tls, b"after USR1", "echo after SIGUSR1");
        drop(tls);
        thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() >= 1)
    });
    assert!(
        fresh,
        "{what}: no fresh access.log after SIGUSR1; stderr:\n{}",
        t.stderr()
    );
}

#[test]
fn serves_reloads_reopens_and_drains_on_io_uring_under_the_shipped_profile() {
    serves_under_the_profile("io_uring");
}

#[test]
fn serves_reloads_reopens_and_drains_on_epoll_under_the_shipped_profile() {
    serves_under_the_profile("epoll");
}

/// The builtin filter is in force: its start-up line, and the kernel's word for it
/// (`Seccomp: 2`, filter mode, in /proc/PID/status; `env` exec'ed terminus, so the
/// pid is terminus's).
fn assert_builtin_filter_on(t: &Terminus, what: &str) {
    let err = t.wait_stderr("seccomp: builtin filter installed", WAIT);
    assert!(
        err.contains("any other kills the process (SIGSYS)"),
        "{what}: {err}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "{what}: not in seccomp filter mode:\n{status}"
    );
}

/// `[runtime] seccomp = "builtin"`, everything `run` does (as under the profile
/// above, with no filter from outside): io_uring.
#[test]
fn serves_reloads_reopens_and_drains_on_io_uring_under_the_builtin_filter() {
    serves_under("io_uring", Filter::Builtin);
}

#[test]
fn serves_reloads_reopens_and_drains_on_epoll_under_the_builtin_filter() {
    serves_under("epoll", Filter::Builtin);
}

/// A syscall outside the builtin filter kills terminus with SIGSYS, after one line on
/// stderr naming it. The syscall comes from the test hook (getppid, made by the reload
/// thread on SIGHUP when `TERMINUS_TEST_SECCOMP_VIOLATION=1`): a thread that is not
/// the one that installed the filter, and the whole process dies.
fn builtin_filter_kills_with_a_message(want: &str) {
    use std::os::unix::process::ExitStatusExt;
    let _g = heavy();
    let s = Setup::new();
    let config = s.config("seccomp = \"builtin\"\n");
    let mut b = Terminus::builder()
        .config(&config)
        .io_from_config()
        .env("TERMINUS_TEST_SECCOMP_VIOLATION", "1");
    if want == "epoll" {
        // Through `env`: `io_from_config` removes TERMINUS_IO from the child's own.
        b = b.prefix(&["env", "TERMINUS_IO=epoll"]);
    }
    let mut t = b.start();
    let what = format!("{want}, builtin filter, test hook on");
    assert_eq!(t.io_backend().as_deref(), Some(want), "{what}");
    assert_builtin_filter_on(&t, &what);
    // Serving until the violation: the hook does nothing before it.
    let mut tls = tls_connect(t.addr("echo"), &s.client(None));
    echo_round_trip(&mut tls, b"before the violation", "echo");
    t.signal("HUP");
    let status = t.wait_exit_status(WAIT);
    assert_eq!(
        status.signal(),
        Some(SIGSYS),
        "{what}: {status}; stderr:\n{}",
        t.stderr()
    );
    let line = format!(
        "FATAL terminus: seccomp: syscall {} is not allowed by the builtin filter \
         ([runtime] seccomp = \"builtin\"): terminus is killed (SIGSYS)",
        libc::SYS_getppid
    );
    assert!(
        t.stderr().lines().any(|l| l == line),
        "{what}: no `{line}` line:\n{}",
        t.stderr()
    );
}

#[test]
fn a_syscall_outside_the_builtin_filter_kills_with_a_message_on_io_uring() {
    builtin_filter_kills_with_a_message("io_uring");
}

#[test]
fn a_syscall_outside_the_builtin_filter_kills_with_a_message_on_epoll() {
    builtin_filter_kills_with_a_message("epoll");
}

/// The profile with `name` removed from its allow list, in a temp file.
fn profile_without(name: &str) -> (TempDir, String) {
    let text = std::fs::read_to_string(PROFILE).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names = v["syscalls"][0]["names"].as_array_mut().unwrap();
    let before = names.len();
    names.retain(|n| n != name);
    assert_eq!(names.len() + 1, before, "{name} was in the profile once");
    let dir = TempDir::new("seccomp-profile");
    let path = dir.path().join(format!("without-{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    (dir, path.display().to_string())
}

/// The profile is enforced: without `io_uring_setup` in it (not strict, so the call
/// fails with the profile's EPERM), `auto` falls back to epoll with the notice that
/// blames seccomp, and serves.
#[test]
fn a_profile_without_io_uring_setup_makes_auto_fall_back_to_epoll() {
    let s = Setup::new();
    let config = s.config("");
    let (_dir, profile) = profile_without("io_uring_setup");
    let prefix = profile_prefix(&[], &profile, false);
    let (t, fallback) = start_on_epoll(&config, &as_strs(&prefix), "io_uring_setup denied");
    assert!(fallback.contains("io_uring_setup"), "{fallback}");
    assert_blames_the_filter(Deny::Eperm, &fallback, "fallback line");
    let mut tls = tls_connect(t.addr("echo"), &s.client(None));
    echo_round_trip(&mut tls, b"epoll under a narrower profile", "echo");
}

/// `--strict` kills on a syscall the profile lacks (SIGSYS), where the plain profile
/// answers EPERM: `terminus --version` without `write` in the profile.
#[test]
fn strict_kills_on_a_syscall_missing_from_the_profile() {
    use std::os::unix::process::ExitStatusExt;
    let (_dir, profile) = profile_without("write");
    let mut cmd = Command::new(HELPER);
    cmd.args(["--profile", &profile, "--strict", "--", bin(), "--version"]);
    let mut child = Spawned::new(cmd);
    let status = child.wait(WAIT);
    assert_eq!(
        status.signal(),
        Some(SIGSYS),
        "{status}: {}",
        child.stderr()
    );
    // The shipped profile has `write`: the same command prints the version.
    let mut cmd = Command::new(HELPER);
    cmd.args(["--profile", PROFILE, "--strict", "--", bin(), "--version"]);
    let (code, out, err) = run_command_to_exit(cmd, WAIT);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("terminus "), "{out}");
}

/// A profile this tool cannot enforce as written is refused before PROGRAM runs
/// (exit 125), naming what is wrong.
#[test]
fn helper_refuses_a_profile_it_cannot_enforce() {
    let dir = TempDir::new("seccomp-profile");
    for (text, needle) in [
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["frobnicate"], "action": "SCMP_ACT_ALLOW"}]}"#,
            "frobnicate",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}]}"#,
            "args",
        ),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(HELPER);
        cmd.arg("--profile").arg(&path).args(["--", "true"]);
        let (code, _out, err) = run_command_to_exit(cmd, WAIT);
        assert_eq!(code, Some(125), "{text}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}
