//! OCSP stapling: responses made by `openssl ocsp` for the test PKI, served by a
//! running terminus and checked with `openssl s_client -status`; a response for
//! another certificate, a revoked one and an expired one are not stapled, but
//! logged and counted.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use terminus::tools::bench::target::metric;

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let (code, out, err) = run_command_to_exit(cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "openssl {args:?}: {out}{err}");
}

fn serial_of(dir: &Path, pem: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", pem])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

/// An OCSP response signed by the test CA for `cert`, saying `status` (`V` good, `R`
/// revoked), written to `out`.
fn response(dir: &Path, cert: &str, status: char, out: &str) {
    let serial = serial_of(dir, cert);
    let line = match status {
        'R' => format!("R\t491231235959Z\t260101000000Z\t{serial}\tunknown\t/CN=x\n"),
        _ => format!("V\t491231235959Z\t\t{serial}\tunknown\t/CN=x\n"),
    };
    std::fs::write(dir.join("index.txt"), line).unwrap();
    openssl(
        dir,
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            cert,
            "-reqout",
            "req.der",
            "-no_nonce",
        ],
    );
    openssl(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-rsigner",
            "ca.pem",
            "-rkey",
            "ca.key",
            "-CA",
            "ca.pem",
            "-reqin",
            "req.der",
            "-respout",
            out,
            "-ndays",
            "1",
        ],
    );
}

/// `openssl s_client -status`: its output (handshake must succeed).
fn status(pki: &Pki, addr: std::net::SocketAddr) -> String {
    let mut cmd = openssl_s_client(addr, &pki.ca_pem());
    cmd.arg("-status");
    let (code, out, err) = run_command_to_exit(cmd, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}{err}");
    out
}

fn wait_reloads(t: &Terminus, n: f64) {
    let ok = "terminus_config_reloads_total{result=\"ok\"}";
    let page = wait_metric(t, ok, n);
    assert_eq!(
        metric(&page, ok),
        Some(n),
        "reload {n} not seen: {}",
        t.stderr()
    );
}

#[test]
fn stapled_when_good_and_for_the_certificate_refused_and_counted_otherwise() {
    require_tool("openssl");
    let pki = Pki::generate();
    let dir = pki.dir();
    response(dir, "server.pem", 'V', "good.der");
    response(dir, "client.pem", 'V', "other.der");
    response(dir, "server.pem", 'R', "revoked.der");
    std::fs::copy(dir.join("good.der"), dir.join("server.ocsp")).unwrap();

    // The expiry check, on the real response: valid now, not after nextUpdate.
    let good = std::fs::read(dir.join("good.der")).unwrap();
    let leaf = terminus::tls::load_certs(&dir.join("server.pem"))
        .unwrap()
        .remove(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let staple = terminus::tls::ocsp::check_staple(&good, &leaf, now).expect("good now");
    let next = staple.next_update.expect("openssl sets nextUpdate");
    assert!(
        (next - now - 86_400).abs() < 600,
        "nextUpdate {next} vs now {now}"
    );
    let e = terminus::tls::ocsp::check_staple(&good, &leaf, next + 1).unwrap_err();
    assert!(e.to_string().starts_with("it expired: nextUpdate "), "{e}");
    let e = terminus::tls::ocsp::check_staple(&good, &leaf, now - 86_400).unwrap_err();
    assert!(e.to_string().starts_with("it is not valid yet"), "{e}");

    let backend = Backend::echo();
    let config = write_config(
        &pki,
        Some(1),
        &[ListenerConf::new("edge", &[backend.addr()]).opt("ocsp", "\"server.ocsp\"")],
    );
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[runtime]\n",
        "[runtime]\nreload_interval_ms = 600000\n",
        1,
    );
    std::fs::write(
        &config,
        text + "\n[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n",
    )
    .unwrap();
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    let out = status(&pki, addr);
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    let series = format!(
        "terminus_ocsp_next_update_timestamp_seconds{{listener=\"edge\",cert=\"{}\"}}",
        dir.join("server.pem").display()
    );
    assert_eq!(scrape_metric(&t, &series), Some(next as f64));
    assert_eq!(
        scrape_metric(&t, "terminus_ocsp_responses_refused_total"),
        Some(0.0)
    );

    // A response for another certificate, then a revoked one: not stapled, counted.
    for (n, (file, why)) in [
        ("other.der", "it is for another certificate"),
        ("revoked.der", "it says the certificate is revoked"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::copy(dir.join(file), dir.join("server.ocsp")).unwrap();
        t.signal("HUP");
        wait_reloads(&t, n as f64 + 1.0);
        let out = status(&pki, addr);
        assert!(
            out.contains("OCSP response: no response sent"),
            "{file}: {out}"
        );
        assert_eq!(
            scrape_metric(&t, "terminus_ocsp_responses_refused_total"),
            Some(n as f64 + 1.0)
        );
        assert_eq!(scrape_metric(&t, &series), None, "no staple, no nextUpdate");
        let err = t.stderr();
        assert!(
            err.contains(&format!(
                "server.ocsp: OCSP response not stapled with {}: {why}",
                dir.join("server.pem").display()
            )),
            "{err}"
        );
    }
    // Good again: stapled again.
    std::fs::copy(dir.join("good.der"), dir.join("server.ocsp")).unwrap();
    t.signal("HUP");
    wait_reloads(&t, 3.0);
    assert!(status(&pki, addr).contains("Cert Status: good"));
}
