//! The one-command mode: `terminus run --listen … --upstream … --cert … --key …
//! [--client-ca … --allow …]` serves what the same config file would, and `check`
//! takes the same flags.

use crate::common::*;
use std::io::Read;
use std::time::Duration;

/// `--listen 127.0.0.1:0 --upstream UP --cert server.pem --key server.key` (the PKI's
/// files, relative to the working directory), then `more`.
fn flags<'a>(up: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        up,
        "--cert",
        "server.pem",
        "--key",
        "server.key",
    ];
    v.extend_from_slice(more);
    v
}

#[test]
fn flags_terminate_with_relative_paths_from_the_working_directory() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let up = backend.addr().to_string();
    let t = Terminus::builder()
        .args(&flags(&up, &["--workers", "1"]))
        .cwd(pki.dir())
        .start();
    let addr = t.addr("main");
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let mut tls = tls_connect(addr, &cfg);
    echo_round_trip(
        &mut tls,
        &Pattern::bytes(1, 4096),
        "through the flags' listener",
    );
    assert!(t.stderr().contains("listeners main="), "{}", t.stderr());
}

#[test]
fn flags_require_client_certificates_and_apply_the_allow_list() {
    let pki = Pki::generate();
    let backend = Backend::echo();
    let up = backend.addr().to_string();
    let base = flags(&up, &["--client-ca", "ca.pem", "--workers", "1"]);
    let mut allowed = base.clone();
    allowed.extend(["--allow", "spiffe://example.org/client"]);
    let t = Terminus::builder().args(&allowed).cwd(pki.dir()).start();
    let addr = t.addr("main");
    let mut tls = tls_connect(addr, &mtls_client(&pki));
    echo_round_trip(&mut tls, &Pattern::bytes(2, 1000), "allowed client");
    // No certificate: refused.
    let anon = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let refused = try_tls_connect(addr, &anon).and_then(|mut s| s.read(&mut [0u8; 1]));
    assert!(
        refused.is_err(),
        "a client without a certificate: {refused:?}"
    );
    drop(t);

    // Someone else allowed: the same certificate is refused.
    let mut other = base;
    other.extend(["--allow", "spiffe://example.org/someone-else"]);
    let t = Terminus::builder().args(&other).cwd(pki.dir()).start();
    let refused =
        try_tls_connect(t.addr("main"), &mtls_client(&pki)).and_then(|mut s| s.read(&mut [0u8; 1]));
    assert!(refused.is_err(), "not on the allow list: {refused:?}");
}

fn terminus_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = command_with_prefix(&[]);
    cmd.args(args).current_dir(dir);
    run_command_to_exit(cmd, Duration::from_secs(30))
}

#[test]
fn check_takes_the_same_flags_and_bad_ones_are_usage_or_config_errors() {
    let pki = Pki::generate();
    let given = flags("127.0.0.1:9", &["--client-ca", "ca.pem"]);
    let mut args = vec!["check"];
    args.extend(&given);
    let (code, out, err) = terminus_in(pki.dir(), &args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "config OK: 1 listener(s)\n");

    // A missing file is named as in a config file's check.
    let mut args = vec!["check"];
    args.extend(
        given
            .iter()
            .map(|&a| if a == "server.key" { "nope.key" } else { a }),
    );
    let (code, _, err) = terminus_in(pki.dir(), &args);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("nope.key: cannot read private key file: No such file"),
        "{err}"
    );
    // An invalid value names the field the flag sets.
    let (code, _, err) = terminus_in(
        pki.dir(),
        &[
            &["run"][..],
            &flags("127.0.0.1:9", &["--client-auth", "sometimes"]),
        ]
        .concat(),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("terminus: <command line>:")
            && err.contains("listeners[0].client_auth.mode"),
        "{err}"
    );
    // Flags missing, or mixed with --config: usage errors.
    let (code, _, err) = terminus_in(pki.dir(), &["run", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "terminus: run: without --config, --upstream, --cert, --key must be given too (see --help)\n"
    );
    let (code, _, err) = terminus_in(pki.dir(), &["run"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err,
        "terminus: run: needs --config FILE, or --listen, --upstream, --cert and --key (see --help)\n"
    );
    let (code, _, err) = terminus_in(
        pki.dir(),
        &["run", "--config", "x.toml", "--listen", "127.0.0.1:0"],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot be used with"), "{err}");
}
