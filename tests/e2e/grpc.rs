//! gRPC through an http listener with `upstream_protocol = "h2"`, end to end: Python
//! grpcio on both sides (tests/grpc/*.py, raw-bytes methods, no generated code), the
//! client over mTLS with SPIFFE certificates, the upstream in cleartext h2 (and once
//! over mTLS with ALPN h2, `upstream_tls`). Unary and
//! bidi-streaming calls, metadata both ways, trailers and status codes arrive intact;
//! the upstream sees the caller's XFCC and not a forged one; a rule denies one method
//! to one identity (PERMISSION_DENIED, logged as `http_denied`) and allows it to
//! another; a per-caller rate answers RESOURCE_EXHAUSTED.

use crate::common::*;
use std::path::Path;
use std::process::Command;

struct Fixture {
    pki: Pki,
    upstream: GrpcUpstream,
}

impl Fixture {
    /// Callers' certificates from `client-ca.pem`; the upstream in cleartext, or
    /// (`tls`) over TLS requiring terminus' certificate (`edge.pem`, same CA).
    fn new(tls: bool) -> Fixture {
        let pki = Pki::generate();
        let ca = pki.write_callers("terminus grpc client CA");
        let dir = pki.dir();
        let upstream = if tls {
            write_upstream_pki(dir, Some(&ca));
            let at = |f: &str| dir.join(f);
            GrpcUpstream::start_tls(&at("backend.pem"), &at("backend.key"), &at("client-ca.pem"))
        } else {
            GrpcUpstream::start()
        };
        Fixture { pki, upstream }
    }

    /// An http listener "grpc" speaking h2 to the upstream; `keys` at listener
    /// level, `http` under `[listeners.http]`.
    fn start(&self, keys: &[(&str, &str)], http: &str) -> Terminus {
        self.start_with(keys, http, "")
    }

    /// [`Fixture::start`] with `tables` after `[listeners.http]`.
    fn start_with(&self, keys: &[(&str, &str)], http: &str, tables: &str) -> Terminus {
        let mut l = ListenerConf::new("grpc", &[self.upstream.addr])
            .opt("protocol", "\"http\"")
            .opt("upstream_protocol", "\"h2\"");
        for (k, v) in keys {
            l = l.opt(k, v);
        }
        let l = l.http_callers(&format!("{http}\n{tables}"));
        let config = write_config_with_log(&self.pki, Some(2), &[l], "access.log");
        Terminus::start(&config)
    }

    /// client.py as `who` (checkout, batch): its JSON.
    fn client(&self, t: &Terminus, who: &str, mode: &[&str]) -> serde_json::Value {
        let dir = self.pki.dir();
        let out = Command::new(grpc_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/client.py"))
            .arg(t.addr("grpc").to_string())
            .arg(dir.join("ca.pem"))
            .arg(dir.join(format!("{who}.pem")))
            .arg(dir.join(format!("{who}.key")))
            .args(mode)
            .output()
            .expect("run client.py");
        assert!(
            out.status.success(),
            "client.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("client.py prints JSON")
    }

    /// The `http_denied` lines, once `n` are there (bounded wait).
    fn denied(&self, n: usize) -> Vec<serde_json::Value> {
        log_events(&self.pki.dir().join("access.log"), "http_denied", n)
    }
}

#[test]
fn grpc_calls_cross_intact_with_the_callers_identity_and_its_rules() {
    let fx = Fixture::new(false);
    let mut t = fx.start(&[], &checkout_only("/echo.Admin/*"));

    let c = fx.client(&t, "checkout", &["calls"]);
    let u = &c["unary"];
    assert_eq!(u["code"], "OK", "{c}");
    assert_eq!(u["reply"], "hello");
    assert_eq!(
        u["initial"]["x-echo-meta"], "m1",
        "request metadata reached the upstream"
    );
    assert_eq!(
        u["trailing"]["x-trailer"], "t1",
        "trailers reached the client"
    );
    let xfcc = u["trailing"]["x-xfcc"].as_str().unwrap();
    assert!(xfcc.contains(&format!("URI={CHECKOUT}")), "{xfcc}");
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert_eq!(c["stream"], serde_json::json!(["a!", "b!", "c!"]), "{c}");
    assert_eq!(c["fail"]["code"], "NOT_FOUND", "{c}");
    assert_eq!(c["fail"]["details"], "no such thing");
    assert_eq!(c["admin"]["code"], "OK", "{c}");
    assert_eq!(c["admin"]["reply"], "admin:now");

    let b = fx.client(&t, "batch", &["calls"]);
    assert_eq!(b["unary"]["code"], "OK", "{b}");
    let xfcc = b["unary"]["trailing"]["x-xfcc"].as_str().unwrap();
    assert!(xfcc.contains(&format!("URI={BATCH}")), "{xfcc}");
    assert_eq!(b["admin"]["code"], "PERMISSION_DENIED", "{b}");
    assert_eq!(b["admin"]["details"], "denied by rule \"no-admin\"");
    assert_eq!(b["stream"], serde_json::json!(["a!", "b!", "c!"]), "{b}");

    let denied = fx.denied(1);
    assert_eq!(denied.len(), 1, "{denied:?}");
    let d = &denied[0];
    assert_eq!(d["rule"], "no-admin");
    assert_eq!(d["method"], "POST");
    assert_eq!(d["path"], "/echo.Admin/Reset");
    assert_eq!(d["identity"], BATCH);
    assert_eq!(d["enforced"], true);
    t.assert_alive();
}

#[test]
fn a_callers_rate_limit_answers_resource_exhausted() {
    let fx = Fixture::new(false);
    let t = fx.start(
        &[("requests_per_second_per_caller", "1"), ("burst", "3")],
        "",
    );
    let r = fx.client(&t, "checkout", &["burst", "8"]);
    let codes: Vec<&str> = r["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&codes[..3], ["OK"; 3], "{codes:?}");
    assert!(codes[3..].contains(&"RESOURCE_EXHAUSTED"), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| *c == "OK" || *c == "RESOURCE_EXHAUSTED"),
        "{codes:?}"
    );
}

#[test]
fn grpc_is_reencrypted_to_an_h2_upstream_over_mtls() {
    let fx = Fixture::new(true);
    let t = fx.start_with(
        &[],
        "",
        "[listeners.upstream_tls]\nca = [\"upstream-ca.pem\"]\nserver_name = \"backend.internal\"\n\
         cert = \"edge.pem\"\nkey = \"edge.key\"\n",
    );
    let c = fx.client(&t, "checkout", &["calls"]);
    assert_eq!(c["unary"]["code"], "OK", "{c}");
    assert_eq!(c["unary"]["trailing"]["x-trailer"], "t1");
    let xfcc = c["unary"]["trailing"]["x-xfcc"].as_str().unwrap();
    assert!(xfcc.contains(&format!("URI={CHECKOUT}")), "{xfcc}");
    assert_eq!(c["stream"], serde_json::json!(["a!", "b!", "c!"]), "{c}");
    assert_eq!(c["fail"]["code"], "NOT_FOUND", "{c}");
}
