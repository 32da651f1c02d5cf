//! A candidate client-auth policy, end to end: real `terminus run` children, real
//! curl and openssl s_client clients, certificates from the project's test PKI
//! (`terminus::tools::certs::TestCa`).
//!
//! Six clients: no certificate; a certificate from another CA; an expired one; one
//! revoked by the CRL; an allowed SPIFFE ID; a verified SPIFFE ID the allow-list does
//! not name. With the enforced mode `none`, then `optional`, and a candidate of
//! `require` + `allow` + `crl`: every client gets the enforced outcome it got without
//! the candidate; `/callers` and `terminus rollout` name exactly the callers the
//! candidate would refuse, with the reasons, and say NOT READY (exit 1). Then the
//! candidate is promoted (copied into `[listeners.client_auth]`, SIGHUP), the same
//! clients run again, and the callers refused and their reasons equal the prediction,
//! caller by caller. Two instances read with two `--admin` give the union, and a
//! next candidate that refuses nobody reads READY (exit 0).

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use terminus::tools::certs::{LeafSpec, TestCa, TestLeaf};

const BODY: &[u8] = b"hello from upstream\n";
const TD: &str = "spiffe://example.org/ns/prod/sa";
const WAIT: Duration = Duration::from_secs(15);

/// The clients, by name: (certificate file stem, or none).
const CLIENTS: [&str; 6] = ["none", "stranger", "expired", "revoked", "billing", "batch"];

/// What the candidate says of each client, and so what enforcing it does.
fn prediction() -> BTreeMap<&'static str, &'static str> {
    [
        ("none", "no_client_cert"),
        ("stranger", "unknown_ca"),
        ("expired", "cert_expired"),
        ("revoked", "cert_revoked"),
        ("billing", "allow"),
        ("batch", "policy_denied"),
    ]
    .into_iter()
    .collect()
}

struct Fixture {
    pki: Pki,
}

impl Fixture {
    /// The PKI (server cert), a client CA with its CRL, another CA, and the five
    /// client certificates, written next to the configs.
    fn new() -> Fixture {
        let pki = Pki::generate();
        let ca = TestCa::root("rollout client CA").expect("client CA");
        let other = TestCa::root("somebody else's CA").expect("other CA");
        let spec = |cn: &str| LeafSpec::client(cn, Some(&format!("{TD}/{cn}")));
        let revoked = ca.leaf(&spec("revoked")).unwrap();
        let expired = ca
            .leaf(&LeafSpec {
                not_before: time::OffsetDateTime::now_utc() - time::Duration::days(30),
                not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
                ..spec("expired")
            })
            .unwrap();
        let batch = ca
            .leaf(&LeafSpec::client(
                "batch",
                Some("spiffe://example.org/ns/dev/sa/batch"),
            ))
            .unwrap();
        let (crl, _) = ca.crl(&[&revoked.serial]).unwrap();
        let dir = pki.dir();
        std::fs::write(dir.join("client-ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.join("client-ca.crl"), crl).unwrap();
        let write = |name: &str, leaf: &TestLeaf| {
            std::fs::write(dir.join(format!("{name}.pem")), &leaf.chain_pem).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
        };
        write("stranger", &other.leaf(&spec("stranger")).unwrap());
        write("expired", &expired);
        write("revoked", &revoked);
        write("billing", &ca.leaf(&spec("billing")).unwrap());
        write("batch", &batch);
        Fixture { pki }
    }

    /// A config with one listener `edge` whose client-auth tables are `auth`, an
    /// admin endpoint, and the access log in `log` (relative to the PKI dir).
    fn config(&self, upstream: SocketAddr, auth: &str, log: &str) -> PathBuf {
        let l = ListenerConf::new("edge", &[upstream]).raw(auth);
        let config = write_config_with_log(&self.pki, Some(2), &[l], log);
        append_tables(&config, "[admin]\nlisten = \"127.0.0.1:0\"\n");
        // SIGHUP only: the reload counter is exact.
        edit_config(&config, |text| {
            text.replacen("[runtime]\n", "[runtime]\nreload_interval_ms = 600000\n", 1)
        });
        config
    }

    /// Run client `name` against `addr` with curl: Ok(()) when it got the upstream's
    /// body, Err(curl's stderr) when the handshake was refused.
    fn curl(&self, addr: SocketAddr, name: &str) -> Result<(), String> {
        let port = addr.port();
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "10", "--http1.1"])
            .arg("--cacert")
            .arg(self.pki.ca_pem())
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"));
        if name != "none" {
            let d = self.pki.dir();
            cmd.arg("--cert").arg(d.join(format!("{name}.pem")));
            cmd.arg("--key").arg(d.join(format!("{name}.key")));
        }
        cmd.arg(format!("https://localhost:{port}/{name}"));
        let mut c = Spawned::new(cmd);
        let status = c.wait(Duration::from_secs(20));
        // The output threads may still be copying what curl wrote before it exited.
        let body = std::str::from_utf8(BODY).unwrap();
        if status.success() && c.wait_stdout_contains(body, Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(format!("{status}: {}", c.stderr().trim()))
        }
    }

    /// Run client `name` with openssl s_client: whether the upstream's body came.
    fn s_client(&self, addr: SocketAddr, name: &str) -> bool {
        use std::io::Write;
        let mut cmd = Command::new("openssl");
        cmd.arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .arg("-CAfile")
            .arg(self.pki.ca_pem())
            .args(["-servername", "localhost", "-quiet"]);
        if name != "none" {
            let d = self.pki.dir();
            cmd.arg("-cert").arg(d.join(format!("{name}.pem")));
            cmd.arg("-key").arg(d.join(format!("{name}.key")));
        }
        let mut sc = Spawned::new(cmd);
        let stdin = sc.stdin.as_mut().unwrap();
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let _ = stdin.flush();
        let got =
            sc.wait_stdout_contains(std::str::from_utf8(BODY).unwrap(), Duration::from_secs(5));
        sc.stdin.take();
        sc.wait(Duration::from_secs(10));
        got
    }

    /// Every client once with curl: its outcome, `allow` or the refused handshake's
    /// curl error.
    fn run_clients(&self, addr: SocketAddr) -> BTreeMap<&'static str, bool> {
        CLIENTS
            .iter()
            .map(|c| {
                let r = self.curl(addr, c);
                if let Err(e) = &r {
                    eprintln!("client {c}: refused: {e}");
                }
                (*c, r.is_ok())
            })
            .collect()
    }
}

/// An upstream answering every connection with one HTTP response.
fn upstream() -> Backend {
    Backend::http(BODY)
}

/// The enforced table `[listeners.client_auth]` of mode `mode` (CA only), plus the
/// candidate `require` + `allow` + `crl`.
fn with_candidate(mode: &str) -> String {
    format!("{}{CANDIDATE}", enforced(mode))
}

fn enforced(mode: &str) -> String {
    match mode {
        "none" => "[listeners.client_auth]\nmode = \"none\"\n".into(),
        m => format!("[listeners.client_auth]\nmode = \"{m}\"\nca = [\"client-ca.pem\"]\n"),
    }
}

const CANDIDATE: &str = "[listeners.client_auth.candidate]\nmode = \"require\"\n\
     ca = [\"client-ca.pem\"]\ncrl = [\"client-ca.crl\"]\n\
     allow = [\"spiffe://example.org/ns/prod/sa/billing\", \"spiffe://example.org/ns/prod/sa/legacy\"]\n";

/// The candidate, promoted: the same keys as the enforced table.
const PROMOTED: &str = "[listeners.client_auth]\nmode = \"require\"\n\
     ca = [\"client-ca.pem\"]\ncrl = [\"client-ca.crl\"]\n\
     allow = [\"spiffe://example.org/ns/prod/sa/billing\", \"spiffe://example.org/ns/prod/sa/legacy\"]\n";

fn callers(t: &Terminus) -> Value {
    let (code, body) = http_get(t.admin(), "/callers?listener=edge");
    assert_eq!(code, 200, "/callers: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/callers JSON: {e}: {body}"))
}

/// Wait until the edge listener's inventory has counted `n` connections.
fn wait_connections(t: &Terminus, n: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = callers(t);
        if v["listeners"]["edge"]["connections"].as_u64() >= Some(n) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{n} connections never counted: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_reloads(t: &Terminus, n: u64) {
    let deadline = Instant::now() + WAIT;
    let series = "terminus_config_reloads_total{result=\"ok\"} ";
    loop {
        let (_, page) = http_get(t.admin(), "/metrics");
        let got = page
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.parse::<f64>().ok());
        if got >= Some(n as f64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload {n} never happened:\n{}",
            t.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The client a `/callers` entry is: by the verified identity or the presented
/// certificate's CN, else `none`.
fn client_of(c: &Value) -> String {
    let caller = c["caller"].as_str().unwrap();
    if let Some(id) = caller.strip_prefix("spiffe://") {
        return id.rsplit('/').next().unwrap().to_owned();
    }
    match c["subject"].as_str() {
        Some(s) => s.trim_start_matches("CN=").to_owned(),
        None => "none".to_owned(),
    }
}

/// Per client: its counts under `which` (`enforced` or `candidate`).
fn counts(v: &Value, which: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for c in v["listeners"]["edge"]["callers"].as_array().unwrap() {
        let e = out.entry(client_of(c)).or_default();
        for (k, n) in c[which].as_object().into_iter().flatten() {
            *e.entry(k.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    out
}

/// The candidate's one verdict per client (each must have exactly one).
fn verdicts(v: &Value) -> BTreeMap<String, String> {
    counts(v, "candidate")
        .into_iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(client, c)| {
            assert_eq!(c.len(), 1, "{client}: one verdict, got {c:?}");
            (client, c.into_keys().next().unwrap())
        })
        .collect()
}

fn rollout(args: &[String]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("rollout").args(args);
    run_command_to_exit(cmd, Duration::from_secs(20))
}

/// client -> reason, owned (what the JSON and the connection records read back as).
fn owned(m: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(c, r)| (c.to_string(), r.to_string()))
        .collect()
}

fn admin_args(ts: &[&Terminus]) -> Vec<String> {
    ts.iter()
        .flat_map(|t| ["--admin".to_owned(), t.admin().to_string()])
        .collect()
}

/// The NOT READY report of the candidate, with the enforced mode `mode`: exit 1,
/// every refused client named with its reason (table and JSON agree).
fn assert_not_ready(t: &Terminus, refused: &BTreeMap<&str, &str>) -> String {
    let (code, table, err) = rollout(&admin_args(&[t]));
    assert_eq!(code, Some(1), "rollout: {table}{err}");
    let n = refused.len();
    assert!(
        table.contains(&format!("NOT READY ({n} callers would be refused)")),
        "{table}"
    );
    let mut args = admin_args(&[t]);
    args.push("--json".into());
    let (code, json, err) = rollout(&args);
    assert_eq!(code, Some(1), "rollout --json: {json}{err}");
    let v: Value = serde_json::from_str(&json).unwrap();
    let listed: BTreeMap<String, String> = v["listeners"]["edge"]["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let reasons = c["reasons"].as_object().unwrap();
            assert_eq!(reasons.len(), 1, "{c}");
            (client_of(c), reasons.keys().next().unwrap().clone())
        })
        .collect();
    let want = owned(refused);
    assert_eq!(
        listed, want,
        "rollout --json names the refused callers\n{json}"
    );
    for (client, reason) in refused {
        assert!(table.contains(reason), "{client} {reason} in\n{table}");
    }
    table
}

/// One enforced mode: baseline without the candidate, then with it (SIGHUP): the
/// same outcome per client; the candidate's verdicts; the NOT READY report; then
/// promotion and the same clients again. Returns the reports printed.
fn enforced_then_candidate_then_promoted(f: &Fixture, mode: &str) -> String {
    let up = upstream();
    let config = f.config(up.addr(), &enforced(mode), "off");
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    let baseline = f.run_clients(addr);

    // The candidate joins (reloaded like the enforced policy).
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&enforced(mode), &with_candidate(mode)),
    )
    .unwrap();
    t.signal("HUP");
    wait_reloads(&t, 1);
    let with = f.run_clients(addr);
    assert_eq!(
        with, baseline,
        "enforced {mode}: a candidate changes no client's outcome"
    );
    // openssl s_client too: the allowed and the refused-by-candidate-only client.
    assert!(
        f.s_client(addr, "billing"),
        "s_client billing, enforced {mode}"
    );
    assert!(
        f.s_client(addr, "none"),
        "s_client without a certificate, enforced {mode}"
    );
    let v = wait_connections(&t, 14);

    let predicted = prediction();
    let got = verdicts(&v);
    let want = owned(&predicted);
    assert_eq!(
        got, want,
        "enforced {mode}: the candidate's verdicts\n{v:#}"
    );
    // The inventory: verified identities for the chains that verify, addresses for
    // the rest, with what they presented.
    let edge = &v["listeners"]["edge"];
    for c in edge["callers"].as_array().unwrap() {
        let client = client_of(c);
        // The enforced `optional` policy has no CRL: it verifies `revoked` too.
        let identity = matches!(client.as_str(), "billing" | "batch")
            || mode == "optional" && client == "revoked";
        assert_eq!(c["verified"], identity, "{c}");
        if !identity {
            assert_eq!(c["caller"], "addr:127.0.0.1", "{c}");
        }
    }
    let refused: BTreeMap<&str, &str> = predicted
        .iter()
        .filter(|(_, r)| **r != "allow")
        .map(|(c, r)| (*c, *r))
        .collect();
    let not_ready = assert_not_ready(&t, &refused);

    // Promote: the candidate becomes the enforced policy.
    let before = callers(&t);
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&with_candidate(mode), PROMOTED),
    )
    .unwrap();
    t.signal("HUP");
    wait_reloads(&t, 2);
    let promoted = f.run_clients(addr);
    let after = wait_connections(
        &t,
        before["listeners"]["edge"]["connections"].as_u64().unwrap() + 6,
    );
    // Caller by caller: what enforcement did now is what the candidate said.
    let (was, now) = (counts(&before, "enforced"), counts(&after, "enforced"));
    let enforced_now: BTreeMap<String, String> = now
        .iter()
        .map(|(client, c)| {
            let old = was.get(client).cloned().unwrap_or_default();
            let delta: Vec<&String> = c
                .iter()
                .filter(|(k, n)| **n > old.get(*k).copied().unwrap_or(0))
                .map(|(k, _)| k)
                .collect();
            assert_eq!(
                delta.len(),
                1,
                "{client}: one outcome after promotion: {c:?} was {old:?}"
            );
            (client.clone(), delta[0].clone())
        })
        .collect();
    assert_eq!(
        enforced_now, want,
        "enforced {mode} -> promoted: enforcement equals the prediction, caller by caller"
    );
    for (client, admitted) in &promoted {
        assert_eq!(
            *admitted,
            predicted[client] == "allow",
            "{client} after promotion"
        );
    }
    eprintln!("enforced {mode}: prediction = enforcement after promotion: {enforced_now:?}");
    not_ready
}

#[test]
fn candidate_predicts_enforcement_caller_by_caller() {
    require_tool("curl");
    require_tool("openssl");
    let f = Fixture::new();
    let report_none = enforced_then_candidate_then_promoted(&f, "none");
    eprintln!("--- terminus rollout, enforced none ---\n{report_none}");
    let report_optional = enforced_then_candidate_then_promoted(&f, "optional");
    eprintln!("--- terminus rollout, enforced optional ---\n{report_optional}");
}

/// Two instances behind one Service read as one listener: each saw a different
/// would-be-refused caller; two `--admin` name both. A next candidate that refuses
/// nobody seen reads READY, exit 0. The access log reads the same.
#[test]
fn a_fleet_reads_as_one_listener_and_ready_means_nobody_refused() {
    require_tool("curl");
    let f = Fixture::new();
    let up = upstream();
    let config = f.config(up.addr(), &with_candidate("none"), "off");
    let (a, b) = (Terminus::start(&config), Terminus::start(&config));
    f.curl(a.addr("edge"), "none").unwrap();
    f.curl(a.addr("edge"), "billing").unwrap();
    f.curl(b.addr("edge"), "stranger").unwrap();
    f.curl(b.addr("edge"), "billing").unwrap();
    wait_connections(&a, 2);
    wait_connections(&b, 2);
    let (code, one, _) = rollout(&admin_args(&[&a]));
    assert_eq!(code, Some(1));
    assert!(
        one.contains("NOT READY (1 caller would be refused)"),
        "{one}"
    );
    let (code, fleet, err) = rollout(&admin_args(&[&a, &b]));
    assert_eq!(code, Some(1), "{fleet}{err}");
    assert!(
        fleet.contains("NOT READY (2 callers would be refused)"),
        "{fleet}"
    );
    assert!(
        fleet.contains("no_client_cert") && fleet.contains("unknown_ca"),
        "{fleet}"
    );
    assert!(fleet.contains("4 connections"), "{fleet}");
    eprintln!("--- terminus rollout, two instances ---\n{fleet}");

    // Promoted, with the next step as the candidate: drop the allow entry nobody
    // uses. Only billing calls: READY.
    let next = PROMOTED.to_owned()
        + "[listeners.client_auth.candidate]\nmode = \"require\"\nca = [\"client-ca.pem\"]\n\
           crl = [\"client-ca.crl\"]\nallow = [\"spiffe://example.org/ns/prod/sa/billing\"]\n";
    let config = f.config(up.addr(), &next, "access.log");
    let c = Terminus::start(&config);
    for _ in 0..3 {
        f.curl(c.addr("edge"), "billing").unwrap();
    }
    wait_connections(&c, 3);
    let (code, ready, err) = rollout(&admin_args(&[&c]));
    assert_eq!(code, Some(0), "{ready}{err}");
    assert!(ready.contains("READY (no caller refused in"), "{ready}");
    assert!(ready.contains("3 connections"), "{ready}");
    // Its certificate expires within a day: listed.
    assert!(ready.contains("expiring within 14 days"), "{ready}");
    eprintln!("--- terminus rollout, next candidate ---\n{ready}");

    // The access log is a source too.
    let log = f.pki.dir().join("access.log");
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(Instant::now() < deadline, "access log lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, from_log, err) = rollout(&["--from".into(), log.display().to_string()]);
    assert_eq!(code, Some(0), "{from_log}{err}");
    assert!(
        from_log.contains("READY (no caller refused in"),
        "{from_log}"
    );
    // This candidate reads the same CA and CRL files as the enforced policy: its
    // verdict is the enforced chain verdict plus its own allow list (one chain
    // verification per handshake). The refusals keep their reasons.
    for client in ["batch", "revoked", "stranger", "none"] {
        assert!(f.curl(c.addr("edge"), client).is_err(), "{client} refused");
    }
    let v = wait_connections(&c, 7);
    let got = verdicts(&v);
    let want: BTreeMap<String, String> = [
        ("billing", "allow"),
        ("batch", "policy_denied"),
        ("revoked", "cert_revoked"),
        ("stranger", "unknown_ca"),
        ("none", "no_client_cert"),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(got, want, "{v:#}");
    // Unreachable admin: exit 2.
    let (code, _, err) = rollout(&["--admin".into(), refused_addr().to_string()]);
    assert_eq!(code, Some(2), "{err}");
}

/// An upstream that answers like [`upstream`] and keeps each request head (to see
/// which identity headers an `http` listener added).
fn heads_upstream() -> Backend {
    Backend::spawn(std::sync::Arc::new(
        |mut s: std::net::TcpStream, st: &BackendStats| {
            let mut head = Vec::new();
            if !read_head(&mut s, &mut head, usize::MAX) {
                return;
            }
            st.reports
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            http_ok_then_drain(&mut s, BODY);
        },
    ))
}

/// A rustls client presenting `name`'s certificate, resuming sessions.
fn rustls_client(f: &Fixture, name: &str) -> std::sync::Arc<rustls::ClientConfig> {
    let d = f.pki.dir();
    terminus::tools::client::ClientConfigBuilder::new(terminus::tools::client::Trust::Roots(
        f.pki.roots(),
    ))
    .client_cert_files(d.join(format!("{name}.pem")), d.join(format!("{name}.key")))
    .build()
    .unwrap()
}

/// One GET over `cfg`; whether the handshake resumed a session.
fn get(addr: SocketAddr, cfg: &std::sync::Arc<rustls::ClientConfig>) -> bool {
    use std::io::{Read, Write};
    let mut tls = tls_connect(addr, cfg);
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    assert!(resp.ends_with(BODY), "{}", String::from_utf8_lossy(&resp));
    resumed
}

/// A resumed session presents no certificate; both verdicts are derived again from
/// the chain rustls kept for the session: the candidate's is the full handshake's,
/// and a certificate verified only for the candidate is still no identity upstream.
#[test]
fn resumed_sessions_keep_both_verdicts() {
    let f = Fixture::new();
    let up = heads_upstream();
    let l = ListenerConf::new("edge", &[up.addr()])
        .opt("protocol", "\"http\"")
        .raw(&with_candidate("none"));
    let config = write_config_with_log(&f.pki, Some(1), &[l], "off");
    append_tables(&config, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    for name in ["billing", "batch"] {
        let cfg = rustls_client(&f, name);
        assert!(!get(addr, &cfg), "{name}: first handshake is full");
        assert!(get(addr, &cfg), "{name}: second handshake resumes");
    }
    let v = wait_connections(&t, 4);
    let got = counts(&v, "candidate");
    assert_eq!(got["billing"], [("allow".to_owned(), 2)].into(), "{v:#}");
    assert_eq!(
        got["batch"],
        [("policy_denied".to_owned(), 2)].into(),
        "{v:#}"
    );
    for head in up.stats.reports.lock().unwrap().iter() {
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("x-forwarded-client-cert"),
            "no identity upstream under the enforced `none`: {head}"
        );
    }
    wait_metric(
        &t,
        "terminus_handshakes_total{listener=\"edge\",result=\"ok\",resumed=\"true\",client_auth=\"none\"} 2",
    );
}

/// Wait until `/metrics` has the line `sample` (workers publish every
/// `snapshot_interval_ms`).
fn wait_metric(t: &Terminus, sample: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, page) = http_get(t.admin(), "/metrics");
        if page.lines().any(|l| l == sample) {
            return;
        }
        assert!(Instant::now() < deadline, "no {sample} in:\n{page}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `invalid_certificate = "anonymous"`: in `optional` mode a failing certificate is
/// no certificate: admitted, no identity upstream, the reason counted.
#[test]
fn anonymous_admits_a_failing_certificate_as_none() {
    require_tool("curl");
    let f = Fixture::new();
    let up = heads_upstream();
    let l = ListenerConf::new("edge", &[up.addr()])
        .opt("protocol", "\"http\"")
        .raw(
            "[listeners.client_auth]\nmode = \"optional\"\nca = [\"client-ca.pem\"]\n\
             crl = [\"client-ca.crl\"]\ninvalid_certificate = \"anonymous\"\n",
        );
    let config = write_config_with_log(&f.pki, Some(1), &[l], "off");
    append_tables(&config, "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let t = Terminus::start(&config);
    let addr = t.addr("edge");
    for client in ["expired", "stranger", "revoked", "billing", "none"] {
        f.curl(addr, client)
            .unwrap_or_else(|e| panic!("{client} admitted: {e}"));
    }
    let heads = up.stats.reports.lock().unwrap().clone();
    assert_eq!(heads.len(), 5);
    let with_identity: Vec<&String> = heads
        .iter()
        .filter(|h| h.to_ascii_lowercase().contains("x-forwarded-client-cert"))
        .collect();
    assert_eq!(
        with_identity.len(),
        1,
        "only billing is verified: {heads:#?}"
    );
    assert!(with_identity[0].starts_with("GET /billing"), "{heads:#?}");
    for reason in ["cert_expired", "unknown_ca", "cert_revoked"] {
        wait_metric(
            &t,
            &format!(
                "terminus_client_cert_anonymous_total{{listener=\"edge\",reason=\"{reason}\"}} 1"
            ),
        );
    }
}
