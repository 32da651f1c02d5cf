//! The `deploy/` files, checked by the tools operators use and by running terminus
//! under the conditions they create: `systemd-analyze verify` on the unit,
//! `kubernetes-validate --strict` on the manifests (from the venv `.ci/run` makes),
//! the ConfigMap's `terminus.toml` through `terminus check`, and the container's
//! conditions (an unprivileged user, io_uring denied by a seccomp filter) with a
//! real TLS client — this machine cannot build or run images.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HELPER: &str = env!("CARGO_BIN_EXE_terminus-seccomp-exec");
const WAIT: Duration = Duration::from_secs(60);
/// The image's user (deploy/Dockerfile `USER`, the manifests' `runAsUser`).
const IMAGE_UID: &str = "65532";

fn deploy(rel: &str) -> PathBuf {
    Path::new(ROOT).join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze verify` on `unit` (a file in a temp dir): exit status and stderr.
fn verify_unit(unit: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(unit);
    let (code, _out, err) = run_command_to_exit(cmd, WAIT);
    (code, err)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let dir = TempDir::new("deploy");
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = read(&deploy("systemd/terminus.service")).replace("/usr/local/bin/terminus", bin());
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(key), "the unit sets {key}");
    }
    let path = dir.path().join("terminus.service");
    std::fs::write(&path, &unit).unwrap();
    let (code, err) = verify_unit(&path);
    assert_eq!(code, Some(0), "systemd-analyze verify: {err}");
    assert_eq!(err.trim(), "", "no warnings either");

    // The check has teeth: an unknown key is a warning on stderr (exit status 0).
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        unit.replace("[Service]\n", "[Service]\nNoSuchKey=1\n"),
    )
    .unwrap();
    let (_, err) = verify_unit(&bad);
    assert!(err.contains("NoSuchKey"), "{err}");
}

/// The validator from `.ci/run`'s venv (or `TERMINUS_K8S_VALIDATE`).
fn kubernetes_validate() -> PathBuf {
    let path = std::env::var_os("TERMINUS_K8S_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/ci-venv/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "{} is missing: `.ci/run` installs it (python3 -m venv target/ci-venv && \
         target/ci-venv/bin/pip install kubernetes-validate)",
        path.display()
    );
    path
}

fn validate(files: &[PathBuf]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(kubernetes_validate());
    cmd.arg("--strict").args(files);
    run_command_to_exit(cmd, WAIT)
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (code, out, err) = validate(&files);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for kind in [
        "deployment/terminus",
        "service/terminus",
        "configmap/terminus",
        "poddisruptionbudget/terminus",
        "secret/terminus-tickets",
        "deployment/terminus-spiffe",
        "configmap/terminus-spiffe",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{kind} validated:\n{out}\n{err}"
        );
    }
    // What the issue asks of the Deployment, in the file.
    let d = read(&deploy("kubernetes/deployment.yaml"));
    for want in [
        "path: /readyz",
        "path: /healthz",
        "type: Localhost",
        "topologySpreadConstraints",
        "readOnlyRootFilesystem: true",
        "runAsUser: 65532",
    ] {
        assert!(d.contains(want), "deployment.yaml has {want}");
    }

    // Strict validation has teeth: a misspelt field fails.
    let dir = TempDir::new("deploy");
    let bad = dir.path().join("deployment.yaml");
    std::fs::write(&bad, d.replacen("  replicas: 3", "  replica: 3", 1)).unwrap();
    let (code, out, err) = validate(&[bad]);
    assert_ne!(code, Some(0), "a misspelt field must fail:\n{out}\n{err}");
}

/// The config the ConfigMap carries is valid for this build: with its paths pointed
/// at a test PKI and a ticket key, `terminus check` passes.
#[test]
fn the_configmap_config_passes_terminus_check() {
    let cm = read(&deploy("kubernetes/configmap.yaml"));
    let toml: String = cm
        .split_once("terminus.toml: |\n")
        .expect("configmap.yaml carries terminus.toml")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let pki = Pki::generate();
    let d = pki.dir();
    std::fs::write(d.join("tickets.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    let mut toml = toml;
    for (mounted, file) in [
        ("/etc/terminus/tls/tls.crt", "server.pem"),
        ("/etc/terminus/tls/tls.key", "server.key"),
        ("/etc/terminus/tls/ca.crt", "ca.pem"),
        ("/etc/terminus/tickets/tickets.key", "tickets.key"),
    ] {
        toml = toml.replace(mounted, &d.join(file).display().to_string());
    }
    // A cluster Service name does not resolve here.
    let toml = toml.replace("billing.prod.svc.cluster.local:8080", "localhost:8080");
    let path = d.join("configmap-terminus.toml");
    std::fs::write(&path, &toml).unwrap();
    let (code, out, err) = run_to_exit(
        &["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        WAIT,
    );
    assert_eq!(code, Some(0), "{toml}\nstdout:\n{out}\nstderr:\n{err}");
}

/// What the image creates, without the image: terminus as uid/gid 65532 with no
/// capabilities, under a seccomp filter that denies io_uring like a runtime's default
/// profile, serving a TLS client through epoll.
#[test]
fn the_container_conditions_serve_on_epoll_as_an_unprivileged_user() {
    require_tool("setpriv");
    let file = read(&deploy("Dockerfile"));
    let last_stage = file
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    assert!(
        last_stage.contains(&format!("\nUSER {IMAGE_UID}:{IMAGE_UID}\n")),
        "the runtime stage runs as {IMAGE_UID}"
    );
    assert!(
        !last_stage.contains("cargo"),
        "no toolchain in the runtime stage"
    );

    let pki = Pki::generate();
    let echo = Backend::echo();
    let cfg = edge_config(&pki, Some(1), echo.addr());
    // The unprivileged user must read the config and the key, as in the image's volume.
    let mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(pki.dir(), 0o755);
    for e in std::fs::read_dir(pki.dir()).unwrap() {
        mode(&e.unwrap().path(), 0o644);
    }
    let reuid = format!("--reuid={IMAGE_UID}");
    let regid = format!("--regid={IMAGE_UID}");
    let prefix = [
        "setpriv",
        &reuid,
        &regid,
        "--clear-groups",
        "--inh-caps=-all",
        HELPER,
        "--deny-io-uring",
        "eperm",
        "--",
    ];
    let t = Terminus::builder()
        .config(&cfg)
        .prefix(&prefix)
        .io_from_config()
        .start();
    assert_eq!(t.io_backend().as_deref(), Some("epoll"), "{}", t.stderr());
    let status = read(Path::new(&format!("/proc/{}/status", t.pid())));
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == IMAGE_UID),
        "runs as {IMAGE_UID}: {uid}"
    );
    let mut tls = tls_connect(
        t.addr("edge"),
        &client_config(&pki, rustls::ALL_VERSIONS, &[]),
    );
    echo_round_trip(&mut tls, b"served as 65532 on epoll", "echo");
}
