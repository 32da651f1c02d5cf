//! `terminus certs`, `terminus check` and `terminus run` on good and broken configs:
//! exit codes and the exact one-line messages users see (file, line, field, cause).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use terminus::certs::{test_pki, TestPki};
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

    for (name, secret) in terminus::certs::FILES {
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
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
    let want = format!(
        "terminus: {}:8: listeners[0]: unknown field `listn`, expected one of `name`, `listen`,",
        config.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn wrong_type_names_line_and_field() {
    let (_dir, config) = pki_dir("type", "handshake_timeout_ms = \"x\"\n");
    let out = check(&config);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: {}:8: listeners[0].handshake_timeout_ms: invalid type: string \"x\", expected u64\n",
            config.display()
        )
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
    let out = check(&config);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: listener \"edge\": {}: cannot read private key file: No such file or directory (os error 2)\n",
            dir.path("server.key").display()
        )
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
    let out = check(&config);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: listener \"edge\": {}: no PEM certificate found (expected a \"-----BEGIN CERTIFICATE-----\" section)\n",
            dir.path("server.pem").display()
        )
    );
}

#[test]
fn empty_cert_file_is_named() {
    let (dir, config) = pki_dir("empty", "");
    dir.write("server.pem", "");
    let out = check(&config);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: listener \"edge\": {}: no PEM certificate found: the file is empty\n",
            dir.path("server.pem").display()
        )
    );
}

#[test]
fn key_not_matching_cert_names_both_files() {
    let (dir, config) = pki_dir("mismatch", "");
    let other: TestPki = test_pki(30, "example.org").unwrap();
    dir.write("server.key", &other.server_key_pem);
    let out = check(&config);
    assert_exit(&out, 2);
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: listener \"edge\": {}: private key does not match the certificate in {} \
             (its public key differs from the leaf's)\n",
            dir.path("server.key").display(),
            dir.path("server.pem").display()
        )
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
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
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
fn expired_cert_is_a_warning_not_a_failure() {
    let (dir, config) = pki_dir("expired", "");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 6, 30);
    let cert = params.self_signed(&key).unwrap();
    dir.write("server.pem", &cert.pem());
    dir.write("server.key", &key.serialize_pem());

    let out = check(&config);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "config OK: 1 listener(s)\n");
    assert_eq!(
        stderr(&out),
        format!(
            "terminus: warning: listener \"edge\": {}: certificate expired: notAfter Jun 30 00:00:00 2021 +00:00 (clients will reject it)\n",
            dir.path("server.pem").display()
        )
    );
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
    let out = check(&config);
    assert_exit(&out, 2);
    let err = stderr(&out);
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
