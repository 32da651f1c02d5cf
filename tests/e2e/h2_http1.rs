//! HTTP/2 clients to an HTTP/1.1 upstream (`upstream_protocol = "http1"`, `alpn =
//! ["h2", "http/1.1"]`), and new upstream connections for an HTTP/2 client whose
//! upstream connection ended. Real clients (curl --http2, nghttp) over mTLS through
//! `terminus run` to real upstreams of the test kit
//! (`terminus_testkit::http_upstreams`): concurrent streams answered in full, a
//! POST body echoed byte for byte (with and without a length), chunked trailers
//! arriving as trailers, a close-delimited body, the caller's XFCC and no
//! connection-specific fields upstream, a rule by identity and path, an upstream
//! that closes after every response and one (h2) that sends GOAWAY after three
//! streams, both serving every request of one client connection; a gRPC call
//! refused with UNAVAILABLE and nothing sent upstream; and `check`'s warning.

use crate::common::*;
use std::path::PathBuf;
use std::process::{Command, Output};
use terminus_testkit::http_upstreams::{H2Upstream, Http1Upstream};

struct Fixture {
    pki: Pki,
    t: Terminus,
}

impl Fixture {
    /// An http listener "web" offering h2 and http/1.1 before `upstream`; callers'
    /// certificates (checkout, batch) from `client-ca.pem`; `keys` at listener level.
    fn start(upstream: std::net::SocketAddr, keys: &[(&str, &str)]) -> Fixture {
        let pki = Pki::generate();
        pki.write_callers("terminus h2 client CA");
        let mut l = ListenerConf::new("web", &[upstream]).opt("protocol", "\"http\"");
        if !keys.iter().any(|(k, _)| *k == "upstream_protocol") {
            l = l.opt("alpn", "[\"h2\", \"http/1.1\"]");
        }
        for (k, v) in keys {
            l = l.opt(k, v);
        }
        let l = l.http_callers(&checkout_only("/admin/*"));
        let config = write_config(&pki, Some(1), &[l]);
        let t = Terminus::start(&config);
        Fixture { pki, t }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.t.addr("web").port())
    }

    /// curl --http2 as `who` with `args`; its output (success asserted).
    fn curl(&self, who: &str, args: &[&str]) -> Output {
        require_tool("curl");
        let dir = self.pki.dir();
        let port = self.t.addr("web").port();
        let out = Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "20"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join(format!("{who}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{who}.key")))
            .args(args)
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn curl_text(&self, who: &str, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.curl(who, args).stdout).into_owned()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.pki.dir().join(name)
    }
}

/// Each line of `-w` output `tag`: the fields after it.
fn tagged<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(tag)).collect()
}

#[test]
fn concurrent_h2_streams_reach_an_http1_upstream_one_at_a_time_and_all_come_back() {
    let up = Http1Upstream::start(false);
    let fx = Fixture::start(up.addr, &[]);
    let urls: Vec<String> = (1..=12).map(|i| fx.url(&format!("/n/{i}"))).collect();
    // curl waits for the first connection and multiplexes the rest on it.
    let mut args = vec!["--parallel", "--parallel-max", "12"];
    args.extend(["-w", "\nW %{http_version} %{response_code}\n"]);
    args.extend(urls.iter().map(String::as_str));
    let out = fx.curl_text("checkout", &args);
    assert_eq!(tagged(&out, "W "), vec!["2 200"; 12], "{out}");
    for i in 1..=12 {
        assert!(
            out.matches(&format!("/n/{i} conn=1")).count() == 1,
            "stream {i} answered in full on the one upstream connection: {out}"
        );
    }
    assert_eq!(
        up.connections(),
        1,
        "the streams took turns on one connection"
    );
    let heads = up.heads();
    assert_eq!(heads.len(), 12);
    let port = fx.t.addr("web").port();
    for h in &heads {
        let lower = h.to_ascii_lowercase();
        assert!(lower.starts_with("get /n/"), "origin-form target: {h}");
        assert!(lower.contains(" http/1.1\r\n"), "{h}");
        assert!(
            lower.contains(&format!("\r\nhost: localhost:{port}\r\n")),
            "{h}"
        );
        assert!(
            lower.contains("x-forwarded-client-cert: hash="),
            "the caller's identity: {h}"
        );
        assert!(lower.contains(&format!("uri={CHECKOUT}")), "{h}");
        for f in [
            "\r\nte:",
            "\r\nconnection:",
            "\r\nkeep-alive:",
            "\r\nupgrade:",
        ] {
            assert!(!lower.contains(f), "no connection-specific {f}: {h}");
        }
    }
    // A client that chooses http/1.1 on the same listener is forwarded as it is.
    let h1 = fx.curl_text(
        "checkout",
        &["--http1.1", "-w", "\nV %{http_version}", &fx.url("/n/13")],
    );
    assert_eq!(h1, "/n/13 conn=2\nV 1.1");
}

#[test]
fn bodies_both_ways_trailers_and_close_delimited_responses_cross_intact() {
    let up = Http1Upstream::start(false);
    let fx = Fixture::start(up.addr, &[]);
    let body = Pattern::bytes(7, 300 * 1024 + 17);
    std::fs::write(fx.file("body.bin"), &body).unwrap();
    let (sized, chunked) = (fx.file("sized.out"), fx.file("chunked.out"));
    let data = format!("@{}", fx.file("body.bin").display());
    let echo = fx.url("/echo");
    let sized_out = ["--data-binary", &data, "-o", sized.to_str().unwrap(), &echo];
    fx.curl("checkout", &sized_out);
    // No length: the upstream gets it chunked.
    let chunked_out = ["-H", "Content-Length:", "--data-binary", &data, "-o"];
    fx.curl(
        "checkout",
        &[&chunked_out[..], &[chunked.to_str().unwrap(), &echo]].concat(),
    );
    assert!(
        std::fs::read(&sized).unwrap() == body,
        "sized body echoed byte for byte"
    );
    assert!(
        std::fs::read(&chunked).unwrap() == body,
        "unsized body echoed byte for byte"
    );
    let heads = up.heads();
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("content-length: 307217"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{}",
        heads[1]
    );

    // Chunked with trailers: nghttp shows every frame; the trailers come in a
    // HEADERS frame of their own after the DATA.
    require_tool("nghttp");
    let dir = fx.pki.dir();
    let out = Command::new("nghttp")
        .args(["-v", "--cert"])
        .arg(dir.join("checkout.pem"))
        .arg("--key")
        .arg(dir.join("checkout.key"))
        .arg(format!(
            "https://127.0.0.1:{}/chunked",
            fx.t.addr("web").port()
        ))
        .output()
        .expect("run nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    let data_at = text.find("recv DATA").expect("a DATA frame");
    let trailer_at = text.rfind("x-checksum: 42").expect("the trailer");
    assert!(
        trailer_at > data_at,
        "x-checksum came after the body: {text}"
    );
    for chunk in ["recv DATA frame <length=6,", "recv DATA frame <length=5,"] {
        assert!(text.contains(chunk), "each chunk a DATA frame: {text}");
    }
    assert!(!text[data_at..].contains("transfer-encoding"), "{text}");

    let out = fx.curl_text("checkout", &[&fx.url("/close-delimited")]);
    assert_eq!(out, "close-delimited body");
}

#[test]
fn a_rule_denies_one_path_to_one_identity_and_allows_it_to_another() {
    let up = Http1Upstream::start(false);
    let fx = Fixture::start(up.addr, &[]);
    let (admin, n1) = (fx.url("/admin/x"), fx.url("/n/1"));
    let (o, w) = (["-o", "/dev/null"], ["-w", "%{response_code}\n"]);
    let batch = fx.curl_text("batch", &[w[0], w[1], o[0], o[1], &admin, o[0], o[1], &n1]);
    assert_eq!(batch, "403\n200\n");
    let checkout = fx.curl_text("checkout", &[w[0], w[1], o[0], o[1], &admin]);
    assert_eq!(checkout, "200\n");
    let paths: Vec<String> = up
        .heads()
        .iter()
        .map(|h| h.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        ["/n/1", "/admin/x"],
        "the denied request never reached it"
    );
}

/// One client connection, `n` requests one after another: each answered 200, and
/// curl connected once.
fn sequential(fx: &Fixture, n: usize) -> String {
    let urls: Vec<String> = (1..=n).map(|i| fx.url(&format!("/s/{i}"))).collect();
    let mut args = vec!["-w", "\nW %{response_code} %{num_connects}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = fx.curl_text("checkout", &args);
    let codes = tagged(&out, "W ");
    assert_eq!(codes.len(), n, "{out}");
    assert_eq!(codes[0], "200 1", "{out}");
    assert!(
        codes[1..].iter().all(|c| *c == "200 0"),
        "one client connection: {out}"
    );
    out
}

#[test]
fn an_upstream_that_closes_after_every_response_is_dialled_again_for_each() {
    let up = Http1Upstream::start(true);
    let fx = Fixture::start(up.addr, &[]);
    let out = sequential(&fx, 20);
    for i in 1..=20 {
        assert!(out.contains(&format!("/s/{i} conn={i}\n")), "{out}");
    }
    assert_eq!(up.connections(), 20);
}

#[test]
fn redials_stop_at_max_upstream_redials() {
    let up = Http1Upstream::start(true);
    let pki = Pki::generate();
    let l = ListenerConf::new("web", &[up.addr])
        .opt("protocol", "\"http\"")
        .opt("alpn", "[\"h2\"]")
        .raw("[listeners.http.h2]\nmax_upstream_redials = 2\n");
    let t = Terminus::start(&write_config(&pki, Some(1), &[l]));
    let port = t.addr("web").port();
    let urls: Vec<String> = (1..=4)
        .map(|i| format!("https://localhost:{port}/r/{i}"))
        .collect();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(pki.dir().join("ca.pem"))
        .args(["-w", "%{response_code} %{num_connects}\n"])
        .args(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]))
        .output()
        .expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes: Vec<&str> = codes.lines().collect();
    // The first upstream connection and two redials serve three; then the client is
    // told to go away (GOAWAY): a fourth stream it sent before reading that is
    // answered 502, one sent after goes on a new client connection.
    assert_eq!(codes[..3], ["200 1", "200 0", "200 0"], "{codes:?}");
    match codes[3] {
        "502 0" => assert_eq!(up.connections(), 3),
        "200 1" => assert_eq!(up.connections(), 4),
        other => panic!("fourth request: {other}"),
    }
}

#[test]
fn an_h2_upstream_that_sends_goaway_after_three_streams_is_dialled_again() {
    let up = H2Upstream::start(3);
    let fx = Fixture::start(up.addr, &[("upstream_protocol", "\"h2\"")]);
    // curl checks the ALPN: an h2-upstream listener offers h2 only.
    let out = sequential(&fx, 10);
    let bodies: Vec<&str> = out.lines().filter(|l| l.starts_with("conn=")).collect();
    assert_eq!(bodies.len(), 10, "{out}");
    assert_eq!(bodies[0], "conn=1 stream=1");
    assert_eq!(bodies[3], "conn=2 stream=1", "{out}");
    assert_eq!(bodies[9], "conn=4 stream=1", "{out}");
    assert_eq!(up.connections(), 4);
    assert_eq!(up.streams(), 10);
}

#[test]
fn a_grpc_call_on_an_http1_upstream_is_answered_unavailable_and_not_sent() {
    let up = Http1Upstream::start(false);
    let fx = Fixture::start(up.addr, &[]);
    let out = fx.curl_text(
        "checkout",
        &[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            // No body: answered on its head, curl 7.88 would take the RST_STREAM
            // (NO_ERROR) that stops an unfinished upload for an error.
            "-X",
            "POST",
            &fx.url("/echo.Echo/Unary"),
        ],
    );
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/2 200"), "{out}");
    assert!(lower.contains("grpc-status: 14"), "{out}");
    assert!(
        lower.contains("grpc-message: the upstream speaks http/1.1"),
        "{out}"
    );
    // A request after it still reaches the upstream, which saw only that one.
    let after = fx.curl_text("checkout", &[&fx.url("/n/1")]);
    assert!(after.starts_with("/n/1 conn="), "{after}");
    assert_eq!(up.heads().len(), 1);
}

#[test]
fn check_accepts_h2_towards_an_http1_upstream_and_warns_about_grpc() {
    let pki = Pki::generate();
    let l = ListenerConf::new("web", &["127.0.0.1:9".parse().unwrap()])
        .opt("protocol", "\"http\"")
        .opt("alpn", "[\"h2\", \"http/1.1\"]");
    let config = write_config(&pki, Some(1), &[l]);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK: 1 listener(s)"));
    let line = err
        .lines()
        .find(|l| l.contains("warning:"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(line.contains("listeners[0].alpn"), "{line}");
    assert!(
        line.contains(
            "gRPC requests on it will be refused (UNAVAILABLE), gRPC needs HTTP/2 end to end"
        ),
        "{line}"
    );
}
