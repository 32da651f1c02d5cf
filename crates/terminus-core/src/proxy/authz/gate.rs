//! gate: one connection's per-request decisions on an HTTP listener with rules or
//! limits, and where terminus's own answers go among the upstream's responses.
//!
//! Owns [`RequestGate`]: the caller (verified identity or anonymous, and its limit
//! key), the listener's [`Policy`] and shared [`CallerLimits`], a
//! [`ResponseSequencer`] over the upstream's responses, the bytes for the client
//! (upstream bytes with 403/429 placed in their requests' order), and the events the
//! worker counts and logs ([`GateEvent`]).
//!
//! I/O contract: none; time comes in as `now`.
#![forbid(unsafe_code)]

use super::limits::{CallerKey, CallerLimits, Limit, LimitSettings, Verdict};
use super::path::{self, PathError};
use super::{Action, Matched, Mode, Rules};
use crate::proxy::response::{BadResponse, ResponseSequencer};
use crate::tls::identity::PeerIdentity;
use std::sync::Arc;
use std::time::Instant;

/// A listener's per-request policy (swapped whole on reload).
#[derive(Debug, Default)]
pub struct Policy {
    pub rules: Rules,
    pub limits: LimitSettings,
}

impl Policy {
    /// Whether requests need a look at all (else the listener pays nothing).
    pub fn active(&self) -> bool {
        !self.rules.is_trivial() || self.limits.requests_per_second_per_caller > 0
    }
}

/// What the worker counts and logs, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// A request the rules decided (`action`: the decision, carried out or not).
    Decided { matched: Matched, action: Action },
    /// A denied (enforce) or would-be denied (report) request.
    Denied(Box<Denied>),
    /// Over a limit: refused (`enforced`) or only reported; `caller` as
    /// `GET /callers` names it.
    Limited {
        limit: Limit,
        enforced: bool,
        caller: Box<str>,
    },
}

/// The access-log fields of a denied request (never the certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rule: String,
    pub method: String,
    pub path: String,
    /// `spiffe://…`, `dns:…`, `cn:…`, or `anonymous`.
    pub identity: String,
    pub enforced: bool,
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Its head and body go to the upstream.
    Forward,
    /// Terminus answered it with `status`: its head is not written, its body is
    /// dropped.
    Answered(u16),
}

/// What the rules and limits decided for a request (enforced; report mode forwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward,
    /// Denied by the rule named.
    Deny {
        rule: String,
    },
    /// Over `limit`; retry after this many seconds (at least 1).
    Limit {
        limit: Limit,
        retry_after_s: u64,
    },
}

/// The `rule` of an `http_denied` line for a path with no canonical form (`%2F`,
/// `%5C`, a bad escape...): enforce answers it with 400, report lets it through.
pub const INVALID_PATH: &str = "invalid_path";

/// Largest upstream response head the sequencer follows.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One connection's gate (see the module doc).
pub struct RequestGate {
    policy: Arc<Policy>,
    limits: Arc<CallerLimits>,
    caller: Option<PeerIdentity>,
    key: CallerKey,
    /// The caller as rules and logs name it.
    identity: String,
    seq: ResponseSequencer,
    /// Bytes for the client: the upstream's, with local answers in place.
    pub to_client: Vec<u8>,
    events: Vec<GateEvent>,
    now: Instant,
}

impl std::fmt::Debug for RequestGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestGate")
            .field("identity", &self.identity)
            .field("outstanding", &self.seq.outstanding())
            .finish_non_exhaustive()
    }
}

impl RequestGate {
    /// `caller`: the verified leaf's identity, None for an anonymous caller;
    /// `addr`: its address (the limit key of an anonymous caller).
    pub fn new(
        policy: Arc<Policy>,
        limits: Arc<CallerLimits>,
        caller: Option<PeerIdentity>,
        addr: Option<std::net::IpAddr>,
        now: Instant,
    ) -> RequestGate {
        let named = caller.as_ref().and_then(identity_of);
        let key = match (&named, addr) {
            (Some(id), _) => CallerKey::Identity(id.as_str().into()),
            (None, Some(ip)) => CallerKey::addr(ip),
            (None, None) => CallerKey::addr(std::net::Ipv4Addr::UNSPECIFIED.into()),
        };
        RequestGate {
            policy,
            limits,
            caller,
            key,
            identity: named.unwrap_or_else(|| "anonymous".into()),
            seq: ResponseSequencer::new(MAX_RESPONSE_HEAD),
            to_client: Vec::new(),
            events: Vec::new(),
            now,
        }
    }

    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Decide one HTTP/1.1 request whose head passed the filter's checks; a refused
    /// one is answered in its place among the upstream's responses.
    pub fn check(&mut self, method: &str, target: &str) -> Result<Admit, PathError> {
        match self.decide(method, target)? {
            Decision::Forward => {
                self.seq.forwarded(method == "HEAD");
                Ok(Admit::Forward)
            }
            Decision::Deny { rule } => {
                let body = format!("denied by rule \"{rule}\"\n");
                self.answer(403, "Forbidden", "", &body);
                Ok(Admit::Answered(403))
            }
            Decision::Limit {
                limit,
                retry_after_s,
            } => {
                let extra = format!("Retry-After: {retry_after_s}\r\n");
                let body = format!("rate limited: {}\n", limit.as_str());
                self.answer(429, "Too Many Requests", &extra, &body);
                Ok(Admit::Answered(429))
            }
        }
    }

    /// Decide one request by the rules, then the limits (events recorded, the
    /// caller's limit counted), whatever its protocol: HTTP/1.1 ([`Self::check`])
    /// and HTTP/2 (`proxy::h2`) answer the refusals each in their own way.
    pub fn decide(&mut self, method: &str, target: &str) -> Result<Decision, PathError> {
        let p = &*self.policy;
        let report = p.rules.mode() == Mode::Report;
        let path = match path::normalize(target) {
            Ok(path) => path,
            Err(e) if !report => return Err(e),
            Err(_) => {
                // Report mode refuses nothing: logged as what enforce would refuse.
                self.events.push(GateEvent::Denied(Box::new(Denied {
                    rule: INVALID_PATH.into(),
                    method: method.to_owned(),
                    path: target.to_owned(),
                    identity: self.identity.clone(),
                    enforced: false,
                })));
                return Ok(Decision::Forward);
            }
        };
        let d = p.rules.decide(self.caller.as_ref(), method, &path);
        self.events.push(GateEvent::Decided {
            matched: d.matched,
            action: d.action,
        });
        if d.action == Action::Deny {
            let rule = p.rules.name(d.matched).to_owned();
            self.events.push(GateEvent::Denied(Box::new(Denied {
                rule: rule.clone(),
                method: method.to_owned(),
                path,
                identity: self.identity.clone(),
                enforced: !report,
            })));
            if !report {
                return Ok(Decision::Deny { rule });
            }
        }
        match self.limits.request(&p.limits, &self.key, self.now) {
            Verdict::Pass => {}
            Verdict::WouldLimit { limit } => self.events.push(GateEvent::Limited {
                limit,
                enforced: false,
                caller: self.key.to_string().into(),
            }),
            Verdict::Limited { limit, retry_after } => {
                self.events.push(GateEvent::Limited {
                    limit,
                    enforced: true,
                    caller: self.key.to_string().into(),
                });
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                return Ok(Decision::Limit {
                    limit,
                    retry_after_s: secs.max(1),
                });
            }
        }
        Ok(Decision::Forward)
    }

    fn answer(&mut self, status: u16, reason: &str, extra: &str, body: &str) {
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.seq.local(resp.into_bytes(), &mut self.to_client);
    }

    /// The upstream's plaintext: moved to [`RequestGate::to_client`] with local
    /// answers placed. Err: its responses cannot be followed (close).
    pub fn upstream(&mut self, data: &mut Vec<u8>) -> Result<(), BadResponse> {
        let r = self.seq.upstream(data, &mut self.to_client);
        // Idle = no memory, as with the plain path (which hands the buffer over).
        *data = Vec::new();
        r
    }

    /// The upstream finished: local answers owed after a body delimited by its
    /// close go out now.
    pub fn upstream_closed(&mut self) {
        self.seq.upstream_closed(&mut self.to_client);
    }

    /// Bytes held here (for the buffer bound towards the client).
    pub fn held(&self) -> usize {
        self.to_client.len() + self.seq.held()
    }

    /// The events since the last call, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, GateEvent> {
        self.events.drain(..)
    }

    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}

/// A verified caller's name: its SPIFFE ID, else `dns:` its first DNS name, else
/// `cn:` its common name.
pub fn identity_of(p: &PeerIdentity) -> Option<String> {
    if let Some(s) = &p.spiffe {
        return Some(s.clone());
    }
    if let Some(d) = p.dns.first() {
        return Some(format!("dns:{d}"));
    }
    p.cn.as_ref().map(|c| format!("cn:{c}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::authz::parse_rule;

    fn gate(mode: Mode, rate: u32) -> RequestGate {
        let rule = parse_rule("no-admin", &["any"], None, Some(&["/admin/*"]), "deny").unwrap();
        let policy = Policy {
            rules: Rules::new(vec![rule], Action::Allow, mode).unwrap(),
            limits: LimitSettings {
                requests_per_second_per_caller: rate,
                burst: 1,
                mode,
                ..LimitSettings::default()
            },
        };
        RequestGate::new(
            Arc::new(policy),
            Arc::new(CallerLimits::new(64)),
            None,
            Some("10.0.0.1".parse().unwrap()),
            Instant::now(),
        )
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn a_denied_request_is_answered_in_its_place() {
        let mut g = gate(Mode::Enforce, 0);
        assert_eq!(g.check("GET", "/a"), Ok(Admit::Forward));
        assert_eq!(g.check("GET", "/%61dmin/x"), Ok(Admit::Answered(403)));
        assert_eq!(g.check("GET", "/b"), Ok(Admit::Forward));
        assert!(
            g.to_client.is_empty(),
            "the 403 waits for the first response"
        );
        g.upstream(&mut OK.to_vec()).unwrap();
        g.upstream(&mut OK.to_vec()).unwrap();
        let text = String::from_utf8(std::mem::take(&mut g.to_client)).unwrap();
        let want = "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\ndenied by rule \"no-admin\"\n";
        assert_eq!(
            text,
            format!(
                "{}{want}{}",
                std::str::from_utf8(OK).unwrap(),
                std::str::from_utf8(OK).unwrap()
            )
        );
        let ev: Vec<_> = g.drain_events().collect();
        assert_eq!(ev.len(), 4);
        assert!(
            matches!(&ev[2], GateEvent::Denied(d) if d.path == "/admin/x" && d.identity == "anonymous" && d.enforced)
        );
        assert_eq!(g.check("GET", "/a%2Fb"), Err(PathError::EncodedSeparator));
    }

    #[test]
    fn report_mode_forwards_and_records() {
        let mut g = gate(Mode::Report, 1);
        assert_eq!(g.check("GET", "/admin/x"), Ok(Admit::Forward));
        assert_eq!(g.check("GET", "/a"), Ok(Admit::Forward));
        let ev: Vec<_> = g.drain_events().collect();
        assert!(matches!(&ev[1], GateEvent::Denied(d) if !d.enforced));
        assert!(ev.contains(&GateEvent::Limited {
            limit: Limit::Requests,
            enforced: false,
            caller: "addr:10.0.0.1".into(),
        }));
    }

    #[test]
    fn over_the_rate_is_429_with_retry_after() {
        let mut g = gate(Mode::Enforce, 1);
        assert_eq!(g.check("GET", "/a"), Ok(Admit::Forward));
        assert_eq!(g.check("GET", "/a"), Ok(Admit::Answered(429)));
        g.upstream(&mut OK.to_vec()).unwrap();
        let text = String::from_utf8(g.to_client.clone()).unwrap();
        assert!(text.ends_with("HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 45\r\n\r\nrate limited: requests_per_second_per_caller\n"), "{text}");
    }
}
