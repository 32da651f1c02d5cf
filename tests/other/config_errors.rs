//! `terminus certs`, `terminus check` and `terminus run` on good and broken configs:
//! exit codes and the exact one-line messages users see (file, line, field, cause).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terminus::tools::certs::{test_pki, LeafSpec, TestCa, TestPki};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

const BIN: &str = env!("CARGO_BIN_EXE_terminus");

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "terminus-config-errors-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One listener using `server.pem` / `server.key` next to the config; line 8 is
/// the first line after it.
const LISTENER: &str = r#"# terminus test config
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:8080"]
"#;

fn terminus(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run terminus")
}

fn check(config: &Path) -> Output {
    terminus(&["check", "--config", config.to_str().unwrap()])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `check --config CONFIG` fails (exit 2) with exactly `want` on stderr; its output.
fn assert_check_error(config: &Path, want: impl AsRef<str>) -> Output {
    let out = check(config);
    assert_exit(&out, 2);
    assert_eq!(stderr(&out), want.as_ref());
    out
}

/// `check --config CONFIG` fails (exit 2): its stderr.
fn check_refused(config: &Path) -> String {
    let out = check(config);
    assert_exit(&out, 2);
    stderr(&out)
}

/// `check --config CONFIG` fails (exit 2) with one line on stderr that starts with
/// `start` after "terminus: CONFIG:"; its output.
fn assert_check_line(config: &Path, start: &str) -> Output {
    let out = check(config);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let want = format!("terminus: {}:{start}", config.display());
    assert!(err.starts_with(&want), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    out
}

/// [`assert_check_error`] with the one line that names listener "edge" and `file` (in
/// `dir`) before `message`.
fn assert_file_error(dir: &TempDir, config: &Path, file: &str, message: &str) -> Output {
    let path = dir.path(file);
    let want = format!(
        "terminus: listener \"edge\": {}: {message}\n",
        path.display()
    );
    assert_check_error(config, want)
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// A folder holding a valid test PKI and `config.toml` with `extra` appended.
fn pki_dir(tag: &str, extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    test_pki(30, "example.org").unwrap().write(&dir.0).unwrap();
    let config = dir.write("config.toml", &format!("{LISTENER}{extra}"));
    (dir, config)
}

fn san_names(pem: &Path) -> Vec<String> {
    let der = terminus::tls::load_certs(pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("has SAN");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => format!(
                    "ip:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                ),
                _ => format!(
                    "ip:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())
                ),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn certs_writes_six_files_that_parse() {
    let dir = TempDir::new("certs");
    let out = dir.path("pki/nested");
    let run = terminus(&[
        "certs",
        "--out",
        out.to_str().unwrap(),
        "--days",
        "30",
        "--trust-domain",
        "prod.example",
    ]);
    assert_exit(&run, 0);

    for (name, secret) in terminus::tools::certs::FILES {
        let path = out.join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if secret {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            terminus::tls::load_key(&path).unwrap();
        } else {
            assert_eq!(terminus::tls::load_certs(&path).unwrap().len(), 1, "{name}");
        }
    }
    assert_eq!(
        san_names(&out.join("server.pem")),
        ["dns:localhost", "ip:127.0.0.1", "ip:::1"]
    );
    assert_eq!(
        san_names(&out.join("client.pem")),
        ["uri:spiffe://prod.example/client"]
    );
    let der = terminus::tls::load_certs(&out.join("ca.pem"))
        .unwrap()
        .remove(0);
    let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(
        ca.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "terminus test CA"
    );

    // The generated files make a config that checks clean.
    let config = dir.write(
        "pki/nested/config.toml",
        &format!("{LISTENER}alpn = [\"h2\"]\n"),
    );
    let run = check(&config);
    assert_exit(&run, 0);
    assert_eq!(stdout(&run), "config OK: 1 listener(s)\n");
}

#[test]
fn check_good_config_exits_0() {
    let (_dir, config) = pki_dir("good", "");
    let out = check(&config);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "config OK: 1 listener(s)\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn relative_paths_follow_the_config_folder_not_the_cwd() {
    let dir = TempDir::new("relative");
    test_pki(30, "example.org")
        .unwrap()
        .write(&dir.path("sub"))
        .unwrap();
    dir.write("sub/config.toml", LISTENER);
    for (cwd, config) in [
        (dir.0.clone(), "sub/config.toml"),
        (dir.path("sub"), "config.toml"),
    ] {
        let out = Command::new(BIN)
            .args(["check", "--config", config])
            .current_dir(&cwd)
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }
    // A config that cannot be read is named as given on the command line.
    let out = Command::new(BIN)
        .args(["check", "--config", "sub/missing.toml"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        "terminus: sub/missing.toml: cannot read config file: No such file or directory (os error 2)\n"
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let (_dir, config) = pki_dir("unknown", "listn = \"127.0.0.1:1\"\n");
    let unknown = "8: listeners[0]: unknown field `listn`, expected one of `name`, `listen`,";
    let out = assert_check_line(&config, unknown);
    assert_eq!(stdout(&out), "");
}

#[test]
fn wrong_type_names_line_and_field() {
    let (_dir, config) = pki_dir("type", "handshake_timeout_ms = \"x\"\n");
    assert_check_error(
        &config,
        format!(
            "terminus: {}:8: listeners[0].handshake_timeout_ms: invalid type: string \"x\", expected u64\n",
            config.display()
        ),
    );
}

#[test]
fn invalid_values_are_all_reported_with_lines() {
    let (_dir, config) = pki_dir(
        "values",
        "proxy_protocol = \"v1\"\n\n[runtime]\nring_entries = 1000\n",
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let f = config.display();
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {f}:11: runtime.ring_entries: must be a power of two between 2 and 32768, got 1000\n\
             terminus: {f}:8: listeners[0].proxy_protocol: must be \"v2\" (the only supported version), got \"v1\"\n"
        )
    );
}

#[test]
fn missing_key_file_is_named() {
    let (dir, config) = pki_dir("nokey", "");
    std::fs::remove_file(dir.path("server.key")).unwrap();
    assert_file_error(
        &dir,
        &config,
        "server.key",
        "cannot read private key file: No such file or directory (os error 2)",
    );
}

#[test]
fn garbage_pem_is_named() {
    let (dir, config) = pki_dir("garbage", "");
    dir.write(
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nthis is not base64!\n-----END CERTIFICATE-----\n",
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let want = format!(
        "terminus: listener \"edge\": {}: unparsable PEM: bad base64 in a PEM section",
        dir.path("server.pem").display()
    );
    assert!(stderr(&out).starts_with(&want), "{}", stderr(&out));

    dir.write("server.pem", "just some text\n");
    assert_file_error(
        &dir,
        &config,
        "server.pem",
        "no PEM certificate found (expected a \"-----BEGIN CERTIFICATE-----\" section)",
    );
}

#[test]
fn empty_cert_file_is_named() {
    let (dir, config) = pki_dir("empty", "");
    dir.write("server.pem", "");
    let empty = "no PEM certificate found: the file is empty";
    assert_file_error(&dir, &config, "server.pem", empty);
}

#[test]
fn key_not_matching_cert_names_both_files() {
    let (dir, config) = pki_dir("mismatch", "");
    let other: TestPki = test_pki(30, "example.org").unwrap();
    dir.write("server.key", &other.server_key_pem);
    assert_file_error(
        &dir,
        &config,
        "server.key",
        &format!(
            "private key does not match the certificate in {} (its public key differs from the \
             leaf's)",
            dir.path("server.pem").display()
        ),
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let second = LISTENER
        .replace("\"edge\"", "\"second\"")
        .replace("server.pem", "nope.pem")
        .replace("server.key", "nope.key");
    let (dir, config) = pki_dir("every", &second);
    dir.write("server.pem", "");
    let err = check_refused(&config);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].ends_with("server.pem: no PEM certificate found: the file is empty"));
    assert!(
        lines[1].starts_with("terminus: listener \"second\": "),
        "{err}"
    );
    assert!(lines[1].contains("nope.pem: cannot read certificate file: No such file"));
    assert!(lines[2].contains("nope.key: cannot read private key file: No such file"));
}

#[test]
fn run_with_bad_config_exits_2() {
    let (dir, config) = pki_dir("run", "idle_timeout_ms = 0\n");
    let out = terminus(&["run", "--config", config.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {}:8: listeners[0].idle_timeout_ms: must be greater than 0\n",
            config.display()
        )
    );

    let missing = dir.path("missing.toml");
    let out = terminus(&["run", "--config", missing.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {}: cannot read config file: No such file or directory (os error 2)\n",
            missing.display()
        )
    );

    let syntax = dir.write("syntax.toml", "[[listeners]\nname = 1\n");
    let out = terminus(&["run", "--config", syntax.to_str().unwrap()]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("terminus: {}:1: invalid TOML: ", syntax.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn operate_settings_are_validated_with_lines() {
    let (_dir, config) = pki_dir(
        "operate",
        "ticket_lifetime_s = 0\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntimeout_ms = 0\n",
    );
    let err = check_refused(&config);
    let f = config.display();
    assert!(
        err.contains(&format!("{f}:12: admin.timeout_ms: must be greater than 0")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:8: listeners[0].ticket_lifetime_s: must be between 1 and 604800 seconds"
        )),
        "{err}"
    );
}

#[test]
fn bad_ticket_key_file_is_named_with_its_line() {
    let (dir, config) = pki_dir("tickets", "ticket_key_file = \"tickets.key\"\n");
    dir.write("tickets.key", "# fleet key\nnot-a-key\n");
    let out = check(&config);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains(&format!(
            "{}:2: ticket key must be 64 hex digits",
            dir.path("tickets.key").display()
        )),
        "{}",
        stderr(&out)
    );
    dir.write("tickets.key", &format!("{}\n", "ab".repeat(32)));
    assert_exit(&check(&config), 0);
}

// ---------------------------------------------------------------------------------
// Configurations that look safe and are not (issue 9, part 4)
// ---------------------------------------------------------------------------------

#[test]
fn allow_list_with_mode_none_is_an_error_naming_the_field() {
    for mode in ["mode = \"none\"\n", ""] {
        let (_dir, config) = pki_dir(
            "allow-none",
            &format!("[listeners.client_auth]\n{mode}allow = [\"cn:billing\"]\n"),
        );
        let out = check(&config);
        assert_exit(&out, 2);
        let line = if mode.is_empty() { 9 } else { 10 };
        assert_eq!(
            stderr(&out),
            format!(
                "terminus: {}:{line}: listeners[0].client_auth.allow: mode is \"none\" (also the \
                 default when `mode` is left out): no client certificate is asked for, so this \
                 allow-list would be silently ignored; set mode = \"require\" (or \"optional\") \
                 to enforce it, or remove `allow`\n",
                config.display()
            )
        );
        assert_eq!(stdout(&out), "");
    }
}

/// A loopback port held by this test process (std's bind: no SO_REUSEPORT), as
/// another program holding the port would.
fn busy_port() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// The start of what `check` says about a port this test process holds.
fn held_by_me(addr: SocketAddr) -> String {
    format!(
        "{addr} is already in use, held by pid {} (",
        std::process::id()
    )
}

#[test]
fn every_problem_run_would_refuse_is_found_in_one_pass() {
    let (_admin, admin) = busy_port();
    let (_listen, listen) = busy_port();
    let dir = TempDir::new("onepass");
    test_pki(30, "example.org").unwrap().write(&dir.0).unwrap();
    let config = dir.write(
        "config.toml",
        &format!(
            "[runtime]\ncpus = [9999]\n\n[admin]\nlisten = \"{admin}\"\n\n\
             {}[listeners.client_auth]\nmode = \"require\"\nca = [\"missing-ca.pem\"]\n\
             allow = [\"billing\"]\n",
            LISTENER.replace("127.0.0.1:0", &listen.to_string())
        ),
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    let f = config.display();
    assert_eq!(lines.len(), 5, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "terminus: {f}:17: listeners[0].client_auth.allow[0]: \"billing\" is not an allow \
             entry: expected \"spiffe://TRUST.DOMAIN/PATH\", \"spiffe://TRUST.DOMAIN/PREFIX/*\", \
             \"dns:NAME\" or \"cn:NAME\""
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "terminus: {f}:2: runtime.cpus[0]: CPU 9999 is not in this process's affinity mask ("
        )) && lines[1].ends_with("run would refuse to pin a worker to it; list only allowed CPUs, or leave `cpus` out to use the mask"),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "terminus: {f}:5: admin.listen: {}",
            held_by_me(admin)
        )),
        "{err}"
    );
    assert!(
        lines[3].starts_with(&format!(
            "terminus: {f}:10: listeners[0].listen: {}",
            held_by_me(listen)
        )),
        "{err}"
    );
    assert!(
        lines[3].ends_with("): stop it or choose another address"),
        "{err}"
    );
    assert_eq!(
        lines[4],
        format!(
            "terminus: listener \"edge\": {}: cannot read certificate file: No such file or \
             directory (os error 2)",
            dir.path("missing-ca.pem").display()
        )
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn cpus_outside_the_affinity_mask_are_refused() {
    let cpu = terminus::host::cpus::allowed_cpus()[0].to_string();
    let (_dir, config) = pki_dir(
        "cpus",
        &format!("\n[runtime]\nworkers = 1\ncpus = [{cpu}, 9999]\n"),
    );
    let check_on_one_cpu = || {
        Command::new("taskset")
            .args(["-c", &cpu, BIN, "check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let why = format!(
        "{}:11: runtime.cpus[1]: CPU 9999 is not in this process's affinity mask ({cpu}; set \
         by taskset, cpusets or systemd CPUAffinity=)",
        config.display()
    );
    // CPU 9999 is listed but no worker uses it (1 worker): a warning only.
    let out = check_on_one_cpu();
    assert_exit(&out, 0);
    assert_eq!(
        stderr(&out),
        format!("terminus: warning: {why}: unused with 1 worker(s), refused with more\n")
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("workers = 1", "workers = 2")).unwrap();
    let out = check_on_one_cpu();
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {why}: run would refuse to pin a worker to it; list only allowed CPUs, \
             or leave `cpus` out to use the mask\n"
        )
    );
}

#[test]
fn listen_address_held_by_another_process_is_named() {
    let (_held, addr) = busy_port();
    let dir = TempDir::new("listen-busy");
    test_pki(30, "example.org").unwrap().write(&dir.0).unwrap();
    let config = dir.write(
        "config.toml",
        &LISTENER.replace("127.0.0.1:0", &addr.to_string()),
    );
    assert_check_line(
        &config,
        &format!("4: listeners[0].listen: {}", held_by_me(addr)),
    );
}

#[test]
fn admin_port_in_use_is_refused() {
    let (_held, addr) = busy_port();
    let (_dir, config) = pki_dir("admin-busy", &format!("\n[admin]\nlisten = \"{addr}\"\n"));
    assert_check_line(&config, &format!("10: admin.listen: {}", held_by_me(addr)));
}

#[test]
fn privileged_port_says_how_to_grant_the_capability() {
    // Needs an unprivileged user that cannot bind port 80: root drops to nobody.
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());
    let setpriv = Path::new("/usr/bin/setpriv");
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !(root && setpriv.exists() && start.is_some_and(|p| p > 80)) {
        eprintln!("skipped: needs root, /usr/bin/setpriv and ip_unprivileged_port_start > 80");
        return;
    }
    let (dir, config) = pki_dir("eacces", "");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("127.0.0.1:0", "127.0.0.1:80"),
    )
    .unwrap();
    // Readable by nobody (keys are written 0600).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "check",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {}:4: listeners[0].listen: cannot bind 127.0.0.1:80: permission denied: \
             ports below {} need CAP_NET_BIND_SERVICE; grant it with `setcap \
             cap_net_bind_service=+ep {BIN}`, or under systemd with \
             AmbientCapabilities=CAP_NET_BIND_SERVICE, or listen on a port >= {}\n",
            config.display(),
            start.unwrap(),
            start.unwrap()
        )
    );
}

/// Write `server.pem` and `server.key` for a leaf signed by a fresh CA.
fn write_leaf(dir: &TempDir, spec: &LeafSpec) {
    let ca = TestCa::root("leaf CA").unwrap();
    let leaf = ca.leaf(spec).unwrap();
    dir.write("server.pem", &leaf.chain_pem);
    dir.write("server.key", &leaf.key_pem);
}

fn server_spec(not_before: OffsetDateTime, not_after: OffsetDateTime) -> LeafSpec {
    LeafSpec {
        not_before,
        not_after,
        ..LeafSpec::server(&["localhost"])
    }
}

#[test]
fn expired_cert_fails_check() {
    let (dir, config) = pki_dir("expired", "");
    write_leaf(&dir, &LeafSpec::expired_server(&["localhost"]));

    let out = assert_file_error(
        &dir,
        &config,
        "server.pem",
        "certificate expired: notAfter Jun 30 00:00:00 2021 +00:00 (clients will reject it)",
    );
    assert_eq!(stdout(&out), "");
}

/// A certificate not valid yet, or valid 14 days at most: one stderr line naming the
/// file and the date; an error (exit 2) for the first, a warning (exit 0) for the
/// second. Each case names itself.
#[test]
fn cert_not_yet_valid_fails_and_expiring_soon_warns() {
    let now = OffsetDateTime::now_utc();
    let days = Duration::days;
    // (case, notBefore, notAfter, exit code, before the path, after it, line end)
    let cases = [
        (
            "future",
            now + days(2),
            now + days(60),
            2,
            "terminus: listener \"edge\": ",
            ": certificate not yet valid: notBefore ",
            " (clients will reject it)\n",
        ),
        (
            "expiring",
            now - days(80),
            now + days(5),
            0,
            "terminus: warning: listener \"edge\": ",
            ": certificate expires in 5 days: notAfter ",
            "; renew it\n",
        ),
    ];
    for (case, not_before, not_after, code, head, what, end) in cases {
        let (dir, config) = pki_dir(case, "");
        write_leaf(&dir, &server_spec(not_before, not_after));
        let out = check(&config);
        assert_exit(&out, code);
        if code == 0 {
            assert_eq!(stdout(&out), "config OK: 1 listener(s)\n", "{case}");
        }
        let err = stderr(&out);
        let path = dir.path("server.pem");
        let start = format!("{head}{}{what}", path.display());
        assert!(
            err.starts_with(&start) && err.ends_with(end),
            "{case}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{case}: {err}");
    }
}

#[test]
fn chain_with_the_ca_first_says_wrong_order() {
    let (dir, config) = pki_dir("order", "");
    let ca = std::fs::read_to_string(dir.path("ca.pem")).unwrap();
    let leaf = std::fs::read_to_string(dir.path("server.pem")).unwrap();
    dir.write("server.pem", &format!("{ca}{leaf}"));
    let out = assert_file_error(
        &dir,
        &config,
        "server.pem",
        "certificate chain in the wrong order: certificate #1 (\"CN=terminus test CA\") is a \
         CA certificate and certificate #2 (\"CN=localhost\") is not; the server certificate \
         must come first, then its intermediates (the root last, or left out)",
    );
    let err = stderr(&out);
    assert!(!err.contains("does not match"), "{err}");
}

#[test]
fn encrypted_private_key_is_named_as_such() {
    let (dir, config) = pki_dir("encrypted", "");
    let plain = dir.path("server.key");
    let enc = dir.path("server.enc.key");
    let st = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:x",
            "-in",
        ])
        .arg(&plain)
        .arg("-out")
        .arg(&enc)
        .status()
        .expect("run openssl");
    assert!(st.success());
    let pem = std::fs::read_to_string(&enc).unwrap();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{pem}"
    );
    std::fs::rename(&enc, &plain).unwrap();
    let out = check(&config);
    assert_exit(&out, 2);
    let k = plain.display();
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: listener \"edge\": {k}: the private key is encrypted (PKCS#8 \
             \"ENCRYPTED PRIVATE KEY\"); encrypted keys are not supported (terminus cannot ask \
             for a passphrase): decrypt it, e.g. `openssl pkey -in {k} -out {k}.plain`, keep \
             the result readable only by terminus (mode 0600) and point `key` at it\n"
        )
    );
}

#[test]
fn server_cert_without_server_auth_eku_is_refused() {
    let (dir, config) = pki_dir("eku", "");
    write_leaf(
        &dir,
        &LeafSpec {
            dns: vec!["localhost".into()],
            not_after: OffsetDateTime::now_utc() + Duration::days(60),
            ..LeafSpec::client("localhost", None)
        },
    );
    let want = format!(
        "{}: certificate \"CN=localhost\" is not a server certificate: its extended key usage \
         is clientAuth without serverAuth, so clients will refuse it; use a certificate issued \
         for TLS servers (EKU serverAuth)",
        dir.path("server.pem").display()
    );
    assert_check_error(&config, format!("terminus: listener \"edge\": {want}\n"));
    // `run` refuses it too (before binding anything).
    let out = terminus(&["run", "--config", config.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
}

#[test]
fn tls_policy_names_are_checked_and_the_valid_ones_listed() {
    let (_dir, config) = pki_dir(
        "policy",
        "min_version = \"1.1\"\ncipher_suites = [\"TLS13_AES_128_GCM_SHA256\", \"RC4-MD5\"]\n\
         groups = [\"X25519MLKEM768\", \"ffdhe2048\"]\n",
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let f = config.display();
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "terminus: {f}:8: listeners[0].min_version: must be \"1.2\" or \"1.3\", got \"1.1\""
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "terminus: {f}:9: listeners[0].cipher_suites[1]: unknown cipher suite \"RC4-MD5\"; \
             valid: \"TLS13_AES_256_GCM_SHA384\", \"TLS13_AES_128_GCM_SHA256\", \
             \"TLS13_CHACHA20_POLY1305_SHA256\", \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\""
        )),
        "{err}"
    );
    assert_eq!(
        lines[2],
        format!(
            "terminus: {f}:10: listeners[0].groups[1]: unknown key exchange group \"ffdhe2048\"; \
             valid: \"X25519\", \"secp256r1\", \"secp384r1\", \"X25519MLKEM768\", \
             \"secp256r1MLKEM768\", \"MLKEM768\", \"MLKEM1024\""
        )
    );

    // TLS 1.3 only, but only TLS 1.2 suites: nothing could be negotiated.
    let (_dir, config) = pki_dir(
        "policy13",
        "min_version = \"1.3\"\ncipher_suites = [\"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]\n",
    );
    assert_check_error(
        &config,
        format!(
            "terminus: {}:9: listeners[0].cipher_suites: min_version = \"1.3\" but no TLS 1.3 \
             suite is listed (TLS13_...)\n",
            config.display()
        ),
    );
    // Any case is accepted.
    let (_dir, config) = pki_dir(
        "policyok",
        "min_version = \"1.3\"\ncipher_suites = [\"tls13_chacha20_poly1305_sha256\"]\n\
         groups = [\"x25519mlkem768\", \"X25519\"]\n",
    );
    assert_exit(&check(&config), 0);
}

#[test]
fn http_listener_settings_are_validated() {
    let (_dir, config) = pki_dir("http", "protocol = \"smtp\"\n");
    assert_check_error(
        &config,
        format!(
            "terminus: {}:8: listeners[0].protocol: must be \"tcp\" or \"http\", got \"smtp\"\n",
            config.display()
        ),
    );
    let (_dir, config) = pki_dir(
        "http2",
        "protocol = \"http\"\nalpn = [\"http/1.1\", \"h3\"]\n\n[listeners.http]\n\
         identity_headers = \"spiffe\"\nmax_header_bytes = 10\n",
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].ends_with(
            "listeners[0].alpn: an http listener with upstream_protocol = \"http1\" offers \
             \"http/1.1\" or \"h2\" only (HTTP/1.1 clients are forwarded as they are, HTTP/2 \
             ones translated), got \"h3\""
        ),
        "{err}"
    );
    assert!(
        lines[1].ends_with(
            "listeners[0].http.identity_headers: must be \"xfcc\", \"rfc9440\" or \"both\", got \"spiffe\""
        ),
        "{err}"
    );
    assert!(
        lines[2].ends_with(
            "listeners[0].http.max_header_bytes: must be between 256 and 1048576, got 10"
        ),
        "{err}"
    );
    let (_dir, config) = pki_dir(
        "http3",
        "protocol = \"http\"\nupstream_protocol = \"h3\"\n\n[listeners.http.h2]\n\
         max_concurrent_streams = 0\nstream_window = 10\n",
    );
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0]
            .ends_with("listeners[0].upstream_protocol: must be \"http1\" or \"h2\", got \"h3\""),
        "{err}"
    );
    let (_dir, config) = pki_dir(
        "http4",
        "protocol = \"http\"\nupstream_protocol = \"h2\"\nalpn = [\"http/1.1\"]\n\n\
         [listeners.http.h2]\nmax_concurrent_streams = 0\nstream_window = 10\n",
    );
    let err = check_refused(&config);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].contains("listeners[0].alpn: an http listener with upstream_protocol = \"h2\" offers \"h2\" only"), "{err}");
    assert!(
        lines[1].ends_with("listeners[0].http.h2.max_concurrent_streams: must be at least 1"),
        "{err}"
    );
    assert!(
        lines[2].ends_with(
            "listeners[0].http.h2.stream_window: must be between 65535 and 2147483647, got 10"
        ),
        "{err}"
    );
}

/// `[[listeners.http.rules]]` problems name the rule's field and line; an
/// unreachable rule names the rule before it that covers it.
#[test]
fn http_rule_problems_name_the_rule_and_field() {
    const HTTP: &str = "protocol = \"http\"\n[listeners.http]\n";
    let rule = |name: &str, body: &str| {
        format!("[[listeners.http.rules]]\nname = \"{name}\"\n{body}action = \"deny\"\n")
    };
    for (tag, rules, want) in [
        (
            "method",
            rule("m", "identities = [\"any\"]\nmethods = [\"FETCH\"]\n"),
            "13: listeners[0].http.rules[0].methods: unknown method \"FETCH\": expected one of \
             GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (upper case)",
        ),
        (
            "empty-ids",
            rule("e", "identities = []\n"),
            "12: listeners[0].http.rules[0].identities: a rule needs `identities` (allow-list \
             entries, \"anonymous\" or \"any\")",
        ),
        (
            "duplicate",
            rule("d", "identities = [\"anonymous\"]\n") + &rule("d", "identities = [\"dns:a.b\"]\n"),
            "15: listeners[0].http.rules[1].name: two rules are named \"d\"; names are unique \
             per listener",
        ),
        (
            "unreachable",
            rule("all-admin", "identities = [\"any\"]\npaths = [\"/admin/*\"]\n")
                + &rule(
                    "ops-admin",
                    "identities = [\"spiffe://example.org/ops\"]\nmethods = [\"GET\"]\npaths = [\"/admin/x\"]\n",
                ),
            "16: listeners[0].http.rules[1].name: rule \"ops-admin\" can never match: rule \
             \"all-admin\" before it matches every request it would",
        ),
    ] {
        let (_dir, config) = pki_dir(tag, &format!("{HTTP}{rules}"));
        let out = check(&config);
        assert_exit(&out, 2);
        assert_eq!(
            stderr(&out),
            format!("terminus: {}:{want}\n", config.display()),
            "{tag}"
        );
    }
    // Limit keys: a rate on a tcp listener, a burst without a rate, an unknown mode.
    let (_dir, config) = pki_dir(
        "limits",
        "requests_per_second_per_caller = 5\nburst = 3\nlimits_mode = \"watch\"\n",
    );
    let err = check_refused(&config);
    for want in [
        ":8: listeners[0].requests_per_second_per_caller: counts HTTP requests: needs protocol = \"http\"",
        ":10: listeners[0].limits_mode: mode \"watch\": expected \"enforce\" or \"report\"",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    // A valid rule set passes.
    let (_dir, config) =
        pki_dir(
            "rules-ok",
            &format!(
            "requests_per_second_per_caller = 5\nburst = 10\n{HTTP}rules_mode = \"report\"\n{}{}",
            rule("no-admin", "identities = [\"any\"]\npaths = [\"/admin/*\"]\n"),
            rule("no-anon-writes", "identities = [\"anonymous\"]\nmethods = [\"POST\", \"PUT\"]\n"),
        ),
        );
    assert_exit(&check(&config), 0);
}
