//! rollout: `terminus rollout`, the readiness report of each listener's candidate
//! client-auth policy: every caller it would refuse, with the reason, the count and
//! when it was last seen, the callers whose certificates expire soon, and a verdict
//! line, `READY (...)` or `NOT READY (N callers would be refused)`.
//!
//! Owns the merge of its sources: `GET /callers` of one or more instances
//! (`--admin`), or their access logs (`--from`). Several sources read as one fleet:
//! a listener name is one listener, a caller seen by two instances is one caller
//! with both counts.
//!
//! I/O contract: one HTTP GET per `--admin` address (2 s timeouts), reads each
//! `--from` file; prints to stdout; exit 0 every listener READY, 1 one is not, 2 bad
//! usage or an unreachable source.
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `terminus rollout` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    /// An instance's admin address (`GET /callers`); repeat for a fleet.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "from")]
    pub admin: Vec<String>,
    /// An access log (one JSON object per line); repeat for several instances/files.
    #[arg(long, value_name = "FILE", conflicts_with = "admin")]
    pub from: Vec<PathBuf>,
    /// Only this listener.
    #[arg(long)]
    pub listener: Option<String>,
    /// Also list callers whose certificate expires within this many days.
    #[arg(long, default_value_t = 14)]
    pub expiring: u64,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One caller, merged over the sources.
#[derive(Debug, Default, Clone)]
struct Caller {
    caller: String,
    subject: Option<String>,
    issuer: Option<String>,
    verified: bool,
    connections: u64,
    first_seen: i64,
    last_seen: i64,
    enforced: BTreeMap<String, u64>,
    candidate: BTreeMap<String, u64>,
    not_after: Option<i64>,
}

/// One listener, merged over the sources.
#[derive(Debug, Default)]
struct Listener {
    since: Option<i64>,
    until: i64,
    connections: u64,
    evicted: u64,
    has_candidate: bool,
    callers: BTreeMap<(String, Option<String>), Caller>,
}

impl Listener {
    fn add(&mut self, c: Caller) {
        let key = (c.caller.clone(), c.subject.clone().filter(|_| !c.verified));
        let e = self.callers.entry(key).or_insert_with(|| Caller {
            first_seen: c.first_seen,
            ..Caller::default()
        });
        e.caller = c.caller;
        e.subject = e.subject.take().or(c.subject);
        e.issuer = e.issuer.take().or(c.issuer);
        e.verified |= c.verified;
        e.connections += c.connections;
        e.first_seen = e.first_seen.min(c.first_seen);
        e.last_seen = e.last_seen.max(c.last_seen);
        for (k, n) in c.enforced {
            *e.enforced.entry(k).or_default() += n;
        }
        for (k, n) in c.candidate {
            *e.candidate.entry(k).or_default() += n;
        }
        e.not_after = match (e.not_after, c.not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn see(&mut self, since: i64, until: i64) {
        self.since = Some(self.since.map_or(since, |s| s.min(since)));
        self.until = self.until.max(until);
    }
}

/// Why the report could not be made (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("--admin {addr}: {why}")]
    Admin { addr: String, why: String },
    #[error("--from {}: {why}", path.display())]
    Log { path: PathBuf, why: String },
    #[error("{0}")]
    Usage(String),
}

pub fn run_cli(args: &RolloutArgs) -> ExitCode {
    match report(args) {
        Ok((text, ready)) => {
            print!("{text}");
            let _ = std::io::stdout().flush();
            if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("terminus: rollout: {e}");
            ExitCode::from(2)
        }
    }
}

/// The report's text (table or JSON) and whether every listener is ready.
pub fn report(args: &RolloutArgs) -> Result<(String, bool), RolloutError> {
    let mut fleet: BTreeMap<String, Listener> = BTreeMap::new();
    let now = unix_now();
    for addr in &args.admin {
        let body = fetch_callers(addr, args.listener.as_deref())?;
        merge_callers(&mut fleet, &body, now).map_err(|why| RolloutError::Admin {
            addr: addr.clone(),
            why,
        })?;
    }
    for path in &args.from {
        merge_log(&mut fleet, path)?;
    }
    if let Some(name) = &args.listener {
        fleet.retain(|n, _| n == name);
        if fleet.is_empty() {
            return Err(RolloutError::Usage(format!(
                "no listener named {name:?} in the sources"
            )));
        }
    }
    fleet.retain(|_, l| l.has_candidate);
    if fleet.is_empty() {
        return Err(RolloutError::Usage(
            "no listener with a candidate policy ([listeners.client_auth.candidate]) in the \
             sources"
                .into(),
        ));
    }
    let horizon = now + args.expiring as i64 * 86_400;
    let verdicts: Vec<(String, Value)> = fleet
        .iter()
        .map(|(name, l)| (name.clone(), listener_report(l, horizon)))
        .collect();
    let ready = verdicts.iter().all(|(_, v)| v["ready"] == true);
    let text = if args.json {
        let listeners: Map<String, Value> = verdicts.into_iter().collect();
        let mut s = json!({ "ready": ready, "listeners": listeners }).to_string();
        s.push('\n');
        s
    } else {
        verdicts
            .iter()
            .map(|(name, v)| table(name, v, args.expiring))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok((text, ready))
}

/// A listener's part of the report, as JSON (the table is printed from it).
fn listener_report(l: &Listener, horizon: i64) -> Value {
    let since = l.since.unwrap_or(l.until);
    let window = (l.until - since).max(0);
    let mut refused: Vec<&Caller> = l
        .callers
        .values()
        .filter(|c| c.candidate.keys().any(|k| k != "allow"))
        .collect();
    refused.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.caller.cmp(&b.caller)));
    let refused: Vec<Value> = refused
        .into_iter()
        .map(|c| {
            let reasons: Map<String, Value> = c
                .candidate
                .iter()
                .filter(|(k, _)| *k != "allow")
                .map(|(k, n)| (k.clone(), json!(n)))
                .collect();
            json!({
                "caller": c.caller,
                "subject": c.subject,
                "issuer": c.issuer,
                "verified": c.verified,
                "reasons": reasons,
                "count": reasons.values().filter_map(Value::as_u64).sum::<u64>(),
                "connections": c.connections,
                "last_seen": terminus_core::telemetry::callers::unix_rfc3339(c.last_seen),
                "enforced": c.enforced,
            })
        })
        .collect();
    let mut expiring: Vec<&Caller> = l
        .callers
        .values()
        .filter(|c| c.not_after.is_some_and(|t| t <= horizon))
        .collect();
    expiring.sort_by_key(|c| c.not_after);
    let expiring: Vec<Value> = expiring
        .into_iter()
        .map(|c| {
            json!({
                "caller": c.caller,
                "subject": c.subject,
                "not_after": c.not_after.map(terminus_core::telemetry::callers::unix_rfc3339),
                "last_seen": terminus_core::telemetry::callers::unix_rfc3339(c.last_seen),
            })
        })
        .collect();
    let ready = refused.is_empty();
    let verdict = if ready {
        format!(
            "READY (no caller refused in {}, {} connections)",
            duration(window),
            l.connections
        )
    } else {
        let n = refused.len();
        format!(
            "NOT READY ({n} caller{} would be refused)",
            if n == 1 { "" } else { "s" }
        )
    };
    json!({
        "ready": ready,
        "verdict": verdict,
        "since": terminus_core::telemetry::callers::unix_rfc3339(since),
        "until": terminus_core::telemetry::callers::unix_rfc3339(l.until),
        "window_s": window,
        "connections": l.connections,
        "callers": l.callers.len(),
        "evicted": l.evicted,
        "refused": refused,
        "expiring": expiring,
    })
}

/// The table a person reads.
fn table(name: &str, v: &Value, days: u64) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut o = String::new();
    o.push_str(&format!(
        "listener {name}: evidence {} .. {} ({}), {} connections, {} caller{}{}\n",
        s(&v["since"]),
        s(&v["until"]),
        duration(v["window_s"].as_i64().unwrap_or(0)),
        v["connections"],
        v["callers"],
        if v["callers"] == 1 { "" } else { "s" },
        match v["evicted"].as_u64() {
            Some(n) if n > 0 => format!(" ({n} evicted: raise [admin] callers_max)"),
            _ => String::new(),
        }
    ));
    let refused = v["refused"].as_array().cloned().unwrap_or_default();
    if !refused.is_empty() {
        o.push_str("  would be refused:\n");
        let rows: Vec<[String; 6]> = refused
            .iter()
            .flat_map(|c| {
                let reasons = c["reasons"].as_object().cloned().unwrap_or_default();
                let now = match c["enforced"].as_object() {
                    Some(e) if e.keys().all(|k| k == "allow") => "admitted".to_owned(),
                    Some(e) if !e.contains_key("allow") => "refused".to_owned(),
                    _ => "partly refused".to_owned(),
                };
                reasons
                    .into_iter()
                    .map(|(r, n)| {
                        [
                            s(&c["caller"]),
                            s(&c["subject"]),
                            r,
                            n.to_string(),
                            s(&c["last_seen"]),
                            now.clone(),
                        ]
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        o.push_str(&columns(
            &["CALLER", "PRESENTED", "REASON", "COUNT", "LAST SEEN", "NOW"],
            &rows,
        ));
    }
    let expiring = v["expiring"].as_array().cloned().unwrap_or_default();
    if !expiring.is_empty() {
        o.push_str(&format!("  certificates expiring within {days} days:\n"));
        let rows: Vec<[String; 4]> = expiring
            .iter()
            .map(|c| {
                [
                    s(&c["caller"]),
                    s(&c["subject"]),
                    s(&c["not_after"]),
                    s(&c["last_seen"]),
                ]
            })
            .collect();
        o.push_str(&columns(
            &["CALLER", "SUBJECT", "NOT AFTER", "LAST SEEN"],
            &rows,
        ));
    }
    o.push_str(&format!("  {}\n", s(&v["verdict"])));
    o
}

/// Left-aligned columns, indented by four spaces.
fn columns<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::from("    ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        l.push('\n');
        l
    };
    let mut o = line(head.to_vec());
    for r in rows {
        o.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    o
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn duration(s: i64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `GET /callers` of one instance: the response body.
fn fetch_callers(addr: &str, listener: Option<&str>) -> Result<String, RolloutError> {
    let err = |why: String| RolloutError::Admin {
        addr: addr.to_owned(),
        why,
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| err(format!("not an address: {e}")))?
        .next()
        .ok_or_else(|| err("not an address".into()))?;
    let t = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&target, t)
        .map_err(|e| err(format!("cannot connect: {e}")))?;
    s.set_read_timeout(Some(t)).ok();
    s.set_write_timeout(Some(t)).ok();
    let path = match listener {
        Some(l) => format!("/callers?listener={l}"),
        None => "/callers".into(),
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| err(format!("cannot send: {e}")))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("not an HTTP response".into()))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(err(format!("{status}: {}", body.trim())));
    }
    Ok(body.to_owned())
}

/// Fold one `/callers` body into the fleet; `now`: the end of its window.
fn merge_callers(
    fleet: &mut BTreeMap<String, Listener>,
    body: &str,
    now: i64,
) -> Result<(), String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not /callers JSON: {e}"))?;
    let listeners = v["listeners"]
        .as_object()
        .ok_or("not /callers JSON: no \"listeners\"")?;
    for (name, l) in listeners {
        let out = fleet.entry(name.clone()).or_default();
        let since = l["since"].as_str().and_then(parse_rfc3339).unwrap_or(now);
        out.see(since, now);
        out.connections += l["connections"].as_u64().unwrap_or(0);
        out.evicted += l["evicted"].as_u64().unwrap_or(0);
        for c in l["callers"].as_array().into_iter().flatten() {
            out.has_candidate |= c.get("candidate").is_some();
            let counts = |v: &Value| -> BTreeMap<String, u64> {
                v.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            };
            let time = |k: &str| c[k].as_str().and_then(parse_rfc3339).unwrap_or(now);
            out.add(Caller {
                caller: c["caller"].as_str().unwrap_or("?").to_owned(),
                subject: c["subject"].as_str().map(str::to_owned),
                issuer: c["issuer"].as_str().map(str::to_owned),
                verified: c["verified"].as_bool().unwrap_or(false),
                connections: c["connections"].as_u64().unwrap_or(0),
                first_seen: time("first_seen"),
                last_seen: time("last_seen"),
                enforced: counts(&c["enforced"]),
                candidate: counts(&c["candidate"]),
                not_after: c["not_after"].as_str().and_then(parse_rfc3339),
            });
        }
    }
    Ok(())
}

/// Fold an access log into the fleet: every connection line of a listener with a
/// candidate is one sighting (the caller as `/callers` would key it).
fn merge_log(fleet: &mut BTreeMap<String, Listener>, path: &PathBuf) -> Result<(), RolloutError> {
    let err = |why: String| RolloutError::Log {
        path: path.clone(),
        why,
    };
    let f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| err(format!("cannot read: {e}")))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            // Operational lines may share the file (log.access = "stderr").
            continue;
        };
        let (Some(name), Some(ts)) = (
            v["listener"].as_str(),
            v["ts"].as_str().and_then(parse_rfc3339),
        ) else {
            continue;
        };
        if v.get("event").is_some_and(|e| e == "http_denied") {
            continue;
        }
        let l = fleet.entry(name.to_owned()).or_default();
        l.see(ts, ts);
        l.connections += 1;
        let candidate = match (v["candidate"].as_str(), v["candidate_reason"].as_str()) {
            (Some("allow"), _) => Some("allow".to_owned()),
            (Some(_), Some(r)) => Some(r.to_owned()),
            (Some(_), None) => Some("refuse".to_owned()),
            _ => None,
        };
        l.has_candidate |= candidate.is_some();
        let enforced = match v["event"].as_str() {
            Some("handshake_error") => v["reason"].as_str().unwrap_or("other").to_owned(),
            _ => "allow".to_owned(),
        };
        let identity = v["peer_spiffe"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| v["peer_dns"][0].as_str().map(|d| format!("dns:{d}")))
            .or_else(|| v["peer_cn"].as_str().map(|c| format!("cn:{c}")));
        // Verified: by the enforced policy, or the candidate's chain checks passed.
        let verified = identity.is_some()
            && (v["client_auth"] == "verified"
                || matches!(candidate.as_deref(), Some("allow" | "policy_denied"))
                || enforced == "policy_denied");
        let ip = v["client"]
            .as_str()
            .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
        let caller = match (&identity, ip) {
            (Some(id), _) if verified => id.clone(),
            (_, Some(std::net::IpAddr::V6(v6))) => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("addr:{net}/64")
            }
            (_, Some(ip)) => format!("addr:{ip}"),
            _ => "addr:unknown".into(),
        };
        let subject = v["peer_subject"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| identity.clone().filter(|_| !verified));
        l.add(Caller {
            caller,
            subject,
            issuer: None,
            verified,
            connections: 1,
            first_seen: ts,
            last_seen: ts,
            enforced: [(enforced, 1)].into_iter().collect(),
            candidate: candidate.into_iter().map(|c| (c, 1)).collect(),
            not_after: None,
        });
    }
    Ok(())
}

/// `2026-12-07T14:00:00Z` or with a fraction: Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !s.ends_with('Z') {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_the_callers_format() {
        for t in [0, 1_764_000_000, 2_000_000_000, 951_782_400] {
            let s = terminus_core::telemetry::callers::unix_rfc3339(t);
            assert_eq!(parse_rfc3339(&s), Some(t), "{s}");
        }
        assert_eq!(
            parse_rfc3339("2026-12-07T14:00:00.123456Z"),
            parse_rfc3339("2026-12-07T14:00:00Z")
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    fn body(callers: Value) -> String {
        json!({"listeners": {"edge": {"since": "2026-12-07T10:00:00Z", "connections": 3,
            "evicted": 0, "callers": callers}}})
        .to_string()
    }

    #[test]
    fn two_instances_merge_into_one_listener() {
        let now = parse_rfc3339("2026-12-07T12:00:00Z").unwrap();
        let mut fleet = BTreeMap::new();
        let a = body(json!([
            {"caller": "spiffe://example.org/a", "verified": true, "connections": 2,
             "first_seen": "2026-12-07T10:00:00Z", "last_seen": "2026-12-07T11:00:00Z",
             "enforced": {"allow": 2}, "candidate": {"allow": 2},
             "not_after": "2026-12-10T00:00:00Z", "issuer": "CN=ca", "subject": "CN=a"},
            {"caller": "addr:10.0.0.1", "verified": false, "connections": 1,
             "first_seen": "2026-12-07T10:00:00Z", "last_seen": "2026-12-07T10:30:00Z",
             "enforced": {"allow": 1}, "candidate": {"no_client_cert": 1},
             "not_after": null, "issuer": null, "subject": null}
        ]));
        let b = body(json!([
            {"caller": "addr:10.0.0.1", "verified": false, "connections": 4,
             "first_seen": "2026-12-07T09:00:00Z", "last_seen": "2026-12-07T11:30:00Z",
             "enforced": {"allow": 4}, "candidate": {"no_client_cert": 4},
             "not_after": null, "issuer": null, "subject": null},
            {"caller": "addr:10.0.0.2", "verified": false, "connections": 1,
             "first_seen": "2026-12-07T09:00:00Z", "last_seen": "2026-12-07T11:40:00Z",
             "enforced": {"cert_expired": 1}, "candidate": {"cert_expired": 1},
             "not_after": "2026-01-01T00:00:00Z", "issuer": "CN=ca", "subject": "CN=old"}
        ]));
        merge_callers(&mut fleet, &a, now).unwrap();
        merge_callers(&mut fleet, &b, now).unwrap();
        let l = &fleet["edge"];
        assert_eq!(l.connections, 6);
        assert_eq!(l.callers.len(), 3);
        let v = listener_report(l, now + 14 * 86_400);
        assert_eq!(v["ready"], false);
        assert_eq!(v["verdict"], "NOT READY (2 callers would be refused)");
        let r = v["refused"].as_array().unwrap();
        assert_eq!(r[0]["caller"], "addr:10.0.0.2");
        assert_eq!(r[1]["caller"], "addr:10.0.0.1");
        assert_eq!(r[1]["count"], 5);
        assert_eq!(r[1]["last_seen"], "2026-12-07T11:30:00Z");
        let exp = v["expiring"].as_array().unwrap();
        assert_eq!(exp.len(), 2, "{v:#}");
        let t = table("edge", &v, 14);
        assert!(t.contains("NOT READY (2 callers would be refused)"), "{t}");
        assert!(t.contains("addr:10.0.0.1"), "{t}");
    }

    #[test]
    fn no_refusal_is_ready_with_the_window() {
        let now = parse_rfc3339("2026-12-07T12:00:00Z").unwrap();
        let mut fleet = BTreeMap::new();
        let a = body(json!([
            {"caller": "spiffe://example.org/a", "verified": true, "connections": 3,
             "first_seen": "2026-12-07T10:00:00Z", "last_seen": "2026-12-07T11:00:00Z",
             "enforced": {"allow": 3}, "candidate": {"allow": 3},
             "not_after": "2027-12-10T00:00:00Z", "issuer": "CN=ca", "subject": "CN=a"}
        ]));
        merge_callers(&mut fleet, &a, now).unwrap();
        let v = listener_report(&fleet["edge"], now);
        assert_eq!(
            v["verdict"],
            "READY (no caller refused in 2h 0m, 3 connections)"
        );
    }
}
