//! `[[listeners.http.rules]]` and `requests_per_second_per_caller` on http listeners,
//! through a real `terminus run`: identity x method x path decided per request on the
//! canonical path, 403 naming the rule in the request's place among pipelined
//! responses (nothing of a denied request reaches the backend, the connection stays
//! open), report mode passing everything and logging what it would deny, and 429
//! with `Retry-After` over the rate. Clients: rustls sockets with SPIFFE client
//! certificates, and curl.

use crate::common::*;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use terminus::tools::certs::LeafSpec;
use terminus::tools::client::{ClientConfigBuilder, Trust};

/// An HTTP/1.1 backend answering each request with its head and body (as received)
/// as the body, keeping connections alive; every request it saw is recorded.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                let seen = s2.clone();
                thread::spawn(move || serve(s, seen));
            }
        });
        Backend { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(s: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    while let Some((head, body)) = read_http_request(&mut r) {
        let req = head + &body;
        seen.lock().unwrap().push(req.clone());
        // A response to HEAD has the length of the GET one, and no body.
        let body = if req.starts_with("HEAD ") {
            ""
        } else {
            req.as_str()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            req.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// One response read off `r`: status, head, body (Content-Length framing).
fn read_response(r: &mut impl Read) -> Option<(u16, String, String)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match r.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((status, head, String::from_utf8(body).unwrap()))
}

/// Payments for checkout only (GET and POST), no admin, no anonymous writes.
fn rules() -> String {
    [
        http_rule(
            "checkout-payments",
            "allow",
            CHECKOUT,
            "GET POST",
            "/v1/payments/*",
        ),
        http_rule("no-payments", "deny", "any", "", "/v1/payments/*"),
        http_rule("no-admin", "deny", "any", "", "/admin/*"),
        http_rule(
            "no-anonymous-writes",
            "deny",
            "anonymous",
            "POST PUT DELETE PATCH",
            "",
        ),
    ]
    .join("\n")
}

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Checkout,
    Batch,
    Anonymous,
}

/// (caller, method, target, the rule that denies it or None: allowed). Targets
/// include the spellings normalization must see through.
const CASES: &[(Caller, &str, &str, Option<&str>)] = {
    use Caller::*;
    &[
        (Checkout, "GET", "/v1/payments/1", None),
        (Checkout, "POST", "/v1/payments/1", None),
        (Checkout, "DELETE", "/v1/payments/1", Some("no-payments")),
        (Checkout, "GET", "/v1/%70ayments/1", None),
        (Checkout, "GET", "/admin/x", Some("no-admin")),
        (Checkout, "GET", "/v1/orders", None),
        (Batch, "GET", "/v1/payments/1", Some("no-payments")),
        (
            Batch,
            "POST",
            "/v1/payments/../payments/2",
            Some("no-payments"),
        ),
        (Batch, "GET", "/admin/../admin/x", Some("no-admin")),
        (Batch, "GET", "//admin/x", Some("no-admin")),
        (Batch, "POST", "/v1/orders", None),
        (Batch, "GET", "/admin", None),
        (Anonymous, "GET", "/v1/payments/1", Some("no-payments")),
        (Anonymous, "GET", "/%61dmin/x", Some("no-admin")),
        (Anonymous, "GET", "/./admin/x", Some("no-admin")),
        (Anonymous, "POST", "/v1/orders", Some("no-anonymous-writes")),
        (Anonymous, "GET", "/v1/orders", None),
        (Anonymous, "HEAD", "/v1/orders", None),
    ]
};

struct Fixture {
    pki: Pki,
    checkout: Arc<rustls::ClientConfig>,
    batch: Arc<rustls::ClientConfig>,
    anonymous: Arc<rustls::ClientConfig>,
}

impl Fixture {
    fn new() -> Fixture {
        let pki = Pki::generate();
        let ca = pki.client_ca("terminus http-rules client CA");
        let cfg = |id: Option<&str>| {
            let b = ClientConfigBuilder::new(Trust::Roots(pki.roots()));
            let b = match id {
                Some(id) => {
                    let leaf = ca.leaf(&LeafSpec::client("w", Some(id))).unwrap();
                    b.client_cert(leaf.chain.clone(), leaf.key())
                }
                None => b,
            };
            b.build().unwrap()
        };
        Fixture {
            checkout: cfg(Some(CHECKOUT)),
            batch: cfg(Some(BATCH)),
            anonymous: cfg(None),
            pki,
        }
    }

    fn client(&self, c: Caller) -> &Arc<rustls::ClientConfig> {
        match c {
            Caller::Checkout => &self.checkout,
            Caller::Batch => &self.batch,
            Caller::Anonymous => &self.anonymous,
        }
    }

    /// An http listener "web" (optional client auth) with `http` under
    /// `[listeners.http]` and `keys` at listener level, logging to `access.log`.
    fn start(&self, be: &Backend, keys: &str, http: &str) -> Terminus {
        let l = ListenerConf::new("web", &[be.addr])
            .opt("protocol", "\"http\"")
            .opts(keys)
            .http_callers(http);
        let config = write_config_with_log(&self.pki, Some(2), &[l], "access.log");
        append_tables(&config, "[admin]\nlisten = \"127.0.0.1:0\"\n");
        Terminus::start(&config)
    }

    /// The config file the last [`Fixture::start`] wrote.
    fn last_config(&self) -> std::path::PathBuf {
        let mut configs: Vec<_> = std::fs::read_dir(self.pki.dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        configs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
        configs.pop().unwrap()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.pki.dir().join("access.log")).unwrap_or_default()
    }

    /// The `http_denied` lines, once `n` of them are there (bounded wait).
    fn denied_lines(&self, n: usize) -> Vec<serde_json::Value> {
        log_events(&self.pki.dir().join("access.log"), "http_denied", n)
    }
}

/// The rule that allows an allowed case.
fn matched_allow(c: &(Caller, &str, &str, Option<&str>)) -> &'static str {
    let payments = c.2.contains("payments") || c.2.contains("%70ayments");
    if c.0 == Caller::Checkout && payments {
        "checkout-payments"
    } else {
        "default"
    }
}

fn request(method: &str, target: &str) -> String {
    let body = if method == "POST" {
        "Content-Length: 6\r\n\r\nSECRET"
    } else {
        "\r\n"
    };
    format!("{method} {target} HTTP/1.1\r\nHost: web.internal\r\n{body}")
}

/// Run every case, one kept connection per caller; (status, body) per case.
fn run_cases(f: &Fixture, addr: SocketAddr) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for caller in [Caller::Checkout, Caller::Batch, Caller::Anonymous] {
        let mut tls = tls_connect(addr, f.client(caller));
        for &(c, method, target, _) in CASES.iter().filter(|c| c.0 == caller) {
            tls.write_all(request(method, target).as_bytes()).unwrap();
            tls.flush().unwrap();
            let (status, head, body) = if method == "HEAD" {
                // A response to HEAD has no body, whatever its Content-Length says.
                let mut h = Vec::new();
                let mut b = [0u8; 1];
                while !h.ends_with(b"\r\n\r\n") {
                    assert_eq!(tls.read(&mut b).unwrap(), 1);
                    h.push(b[0]);
                }
                let h = String::from_utf8(h).unwrap();
                (h[9..12].parse().unwrap(), h, String::new())
            } else {
                read_response(&mut tls)
                    .unwrap_or_else(|| panic!("{c:?} {method} {target}: no response"))
            };
            assert!(!head.contains("Connection: close"), "{head}");
            out.push((status, body));
        }
    }
    // Reorder to CASES order.
    let mut by_case = Vec::new();
    let mut i = 0;
    for caller in [Caller::Checkout, Caller::Batch, Caller::Anonymous] {
        for (k, case) in CASES.iter().enumerate() {
            if case.0 == caller {
                by_case.push((k, out[i].clone()));
                i += 1;
            }
        }
    }
    by_case.sort_by_key(|(k, _)| *k);
    by_case.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn enforce_denies_exactly_the_table_and_report_passes_everything_logging_the_same_set() {
    let f = Fixture::new();
    let denied: Vec<_> = CASES.iter().filter(|c| c.3.is_some()).collect();
    for mode in ["enforce", "report"] {
        let be = Backend::start();
        let _ = std::fs::remove_file(f.pki.dir().join("access.log"));
        let t = f.start(&be, "", &format!("rules_mode = \"{mode}\"\n{}", rules()));
        let addr = t.addr("web");
        let results = run_cases(&f, addr);
        let mut table = String::new();
        for (&(caller, method, target, rule), (status, body)) in CASES.iter().zip(&results) {
            table.push_str(&format!(
                "{mode:8} {caller:10?} {method:7} {target:30} -> {status} {}\n",
                rule.unwrap_or("-")
            ));
            match (mode, rule) {
                ("enforce", Some(rule)) => {
                    assert_eq!(*status, 403, "{caller:?} {method} {target}");
                    assert_eq!(body, &format!("denied by rule \"{rule}\"\n"));
                }
                _ => assert_eq!(*status, 200, "{mode} {caller:?} {method} {target}: {body}"),
            }
        }
        eprint!("{table}");
        // What the backend saw: exactly the allowed requests (all of them in report
        // mode), and never the body of a denied one.
        let seen = be.seen();
        let want = if mode == "enforce" {
            CASES.len() - denied.len()
        } else {
            CASES.len()
        };
        assert_eq!(seen.len(), want, "{seen:#?}");
        if mode == "enforce" {
            for s in &seen {
                assert!(
                    !s.contains("/admin/") && !s.contains("/v1/payments/.."),
                    "{s}"
                );
            }
            let secrets = seen.iter().filter(|s| s.contains("SECRET")).count();
            let allowed_posts = CASES
                .iter()
                .filter(|c| c.1 == "POST" && c.3.is_none())
                .count();
            assert_eq!(secrets, allowed_posts);
        }
        // One http_denied line per denied (or would-be denied) request.
        let lines = f.denied_lines(denied.len());
        assert_eq!(lines.len(), denied.len(), "{}", f.access_log());
        for &&(caller, method, _, rule) in &denied {
            let identity = match caller {
                Caller::Checkout => CHECKOUT,
                Caller::Batch => BATCH,
                Caller::Anonymous => "anonymous",
            };
            assert!(
                lines.iter().any(|l| l["rule"] == rule.unwrap()
                    && l["method"] == method
                    && l["identity"] == identity
                    && l["listener"] == "web"
                    && l["enforced"] == (mode == "enforce")),
                "{caller:?} {method} {rule:?}: {lines:#?}"
            );
        }
        // Counted per rule and decision (in report mode: the decision not taken).
        let mut want: Vec<String> = Vec::new();
        for rule in [
            "checkout-payments",
            "no-payments",
            "no-admin",
            "no-anonymous-writes",
            "default",
        ] {
            let n = CASES
                .iter()
                .filter(|c| match c.3 {
                    Some(r) => r == rule,
                    None => rule == matched_allow(c),
                })
                .count();
            let decision = if rule == "checkout-payments" || rule == "default" {
                "allow"
            } else {
                "deny"
            };
            want.push(format!(
                "terminus_http_requests_total{{listener=\"web\",rule=\"{rule}\",decision=\"{decision}\"}} {n}"
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, page) = http_get(t.admin(), "/metrics");
            if want.iter().all(|w| page.lines().any(|l| l == w)) {
                break;
            }
            assert!(Instant::now() < deadline, "{want:#?}\n{page}");
            thread::sleep(Duration::from_millis(50));
        }
        // Logged on the canonical path, never with the certificate.
        assert!(lines
            .iter()
            .all(|l| l["path"].as_str().unwrap().starts_with("/admin/x")
                || l["path"].as_str().unwrap().starts_with("/v1/")));
        assert!(!f.access_log().contains("BEGIN CERTIFICATE"));
    }
}

#[test]
fn an_encoded_slash_is_refused_with_400_and_the_connection_closed() {
    let f = Fixture::new();
    let be = Backend::start();
    let t = f.start(&be, "", &rules());
    for target in ["/a%2Fadmin/x", "/admin%5Cx", "/%zz"] {
        let mut tls = tls_connect(t.addr("web"), &f.checkout);
        tls.write_all(request("GET", target).as_bytes()).unwrap();
        let (status, head, _) = read_response(&mut tls).unwrap();
        assert_eq!(status, 400, "{target}");
        assert!(head.contains("Connection: close"), "{head}");
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    assert!(be.seen().is_empty());
    // Report mode refuses nothing: it passes, and logs what enforce would refuse.
    drop(t);
    let _ = std::fs::remove_file(f.pki.dir().join("access.log"));
    let t = f.start(&be, "", &format!("rules_mode = \"report\"\n{}", rules()));
    let mut tls = tls_connect(t.addr("web"), &f.checkout);
    tls.write_all(request("GET", "/a%2Fadmin/x").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut tls).unwrap().0, 200);
    let lines = f.denied_lines(1);
    assert_eq!(lines[0]["rule"], "invalid_path", "{lines:#?}");
    assert_eq!(lines[0]["path"], "/a%2Fadmin/x");
    assert_eq!(lines[0]["enforced"], false);
}

#[test]
fn pipelined_a_denied_request_is_answered_in_its_place_and_the_connection_stays_open() {
    let f = Fixture::new();
    let be = Backend::start();
    let t = f.start(&be, "", &rules());
    let mut tls = tls_connect(t.addr("web"), &f.batch);
    // Allowed, denied (with a chunked body that must not reach the backend),
    // allowed: one write.
    let three = "GET /v1/orders/1 HTTP/1.1\r\nHost: h\r\n\r\n\
                 POST /admin/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
                 6\r\nSECRET\r\n0\r\n\r\n\
                 GET /v1/orders/2 HTTP/1.1\r\nHost: h\r\n\r\n";
    tls.write_all(three.as_bytes()).unwrap();
    tls.flush().unwrap();
    let r1 = read_response(&mut tls).unwrap();
    let r2 = read_response(&mut tls).unwrap();
    let r3 = read_response(&mut tls).unwrap();
    assert_eq!((r1.0, r2.0, r3.0), (200, 403, 200));
    assert!(r1.2.starts_with("GET /v1/orders/1 "), "{}", r1.2);
    assert_eq!(r2.2, "denied by rule \"no-admin\"\n");
    assert!(r3.2.starts_with("GET /v1/orders/2 "), "{}", r3.2);
    // The connection is still usable.
    tls.write_all(b"GET /v1/orders/3 HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let r4 = read_response(&mut tls).unwrap();
    assert_eq!(r4.0, 200);
    let seen = be.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(
        seen.iter()
            .all(|s| !s.contains("SECRET") && !s.contains("admin")),
        "{seen:#?}"
    );
    // A denied request waiting for 100 Continue: whether its body follows is
    // unknowable, so the 403 closes the connection instead of guessing.
    let mut tls = tls_connect(t.addr("web"), &f.batch);
    tls.write_all(
        b"POST /admin/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n",
    )
    .unwrap();
    let (status, head, _) = read_response(&mut tls).unwrap();
    assert_eq!(status, 403);
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(be.seen().len(), 3);
}

#[test]
fn curl_gets_403_naming_the_rule_then_200_on_the_same_connection() {
    require_tool("curl");
    let f = Fixture::new();
    let be = Backend::start();
    let t = f.start(&be, "", &rules());
    let port = t.addr("web").port();
    let dir = f.pki.dir();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .args(["-w", "%{http_code}\n"])
        .arg(format!("https://localhost:{port}/%61dmin/x"))
        .arg(format!("https://localhost:{port}/v1/orders"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("denied by rule \"no-admin\"\n403\nGET /v1/orders HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(text.ends_with("200\n"), "{text}");
    assert_eq!(be.seen().len(), 1);
}

#[test]
fn over_the_request_rate_is_429_with_retry_after_and_other_callers_pass() {
    let f = Fixture::new();
    let be = Backend::start();
    let t = f.start(&be, "requests_per_second_per_caller = 1\nburst = 2\n", "");
    let addr = t.addr("web");
    let mut tls = tls_connect(addr, &f.checkout);
    let mut statuses = Vec::new();
    for i in 0..4 {
        tls.write_all(request("GET", &format!("/r{i}")).as_bytes())
            .unwrap();
        let (status, head, body) = read_response(&mut tls).unwrap();
        if status == 429 {
            assert!(head.contains("\r\nRetry-After: 1\r\n"), "{head}");
            assert_eq!(body, "rate limited: requests_per_second_per_caller\n");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // Another caller (its own bucket), on a new connection: served.
    let mut other = tls_connect(addr, &f.batch);
    other.write_all(request("GET", "/o").as_bytes()).unwrap();
    assert_eq!(read_response(&mut other).unwrap().0, 200);
    // Report mode: nobody is refused.
    drop(t);
    let be = Backend::start();
    let t = f.start(
        &be,
        "requests_per_second_per_caller = 1\nburst = 1\nlimits_mode = \"report\"\n",
        "",
    );
    let mut tls = tls_connect(t.addr("web"), &f.checkout);
    for i in 0..4 {
        tls.write_all(request("GET", &format!("/r{i}")).as_bytes())
            .unwrap();
        assert_eq!(read_response(&mut tls).unwrap().0, 200);
    }
}

#[test]
fn sighup_takes_rules_from_report_to_enforce_for_new_connections() {
    let f = Fixture::new();
    let be = Backend::start();
    let t = f.start(&be, "", &format!("rules_mode = \"report\"\n{}", rules()));
    let addr = t.addr("web");
    let mut before = tls_connect(addr, &f.batch);
    before
        .write_all(request("GET", "/admin/x").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut before).unwrap().0, 200);
    let config = f.last_config();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("rules_mode = \"report\""));
    std::fs::write(
        &config,
        text.replace("rules_mode = \"report\"", "rules_mode = \"enforce\""),
    )
    .unwrap();
    t.signal("HUP");
    t.wait_stderr("reload: configuration", Duration::from_secs(10));
    // A new connection gets the new rules; one open before keeps the rules it
    // started with.
    let mut after = tls_connect(addr, &f.batch);
    after
        .write_all(request("GET", "/admin/x").as_bytes())
        .unwrap();
    let (status, _, body) = read_response(&mut after).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (403, "denied by rule \"no-admin\"\n")
    );
    before
        .write_all(request("GET", "/admin/x").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut before).unwrap().0, 200);
}
