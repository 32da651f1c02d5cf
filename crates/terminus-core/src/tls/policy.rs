//! Client allow-list policy (`[listeners.client_auth] allow = [...]`), applied to the
//! identity of a client whose certificate chain has already been verified.
//!
//! Entries:
//! * `spiffe://TD/PATH` — exactly this SPIFFE ID;
//! * `spiffe://TD/PREFIX/*` — any SPIFFE ID in trust domain `TD` whose path has
//!   `/PREFIX/` as a leading run of whole segments (`spiffe://TD/*`: any workload of
//!   `TD`). The trust domain is always compared exactly: a wildcard never matches
//!   another trust domain, and `*` anywhere but a final `/*` segment is refused;
//! * `dns:NAME` — a DNS SAN equal to `NAME` (ASCII case-insensitive; no wildcards);
//! * `cn:NAME` — a subject common name equal to `NAME` (exact).
//!
//! An empty list allows any verified client. A peer SPIFFE ID that is not a valid
//! SPIFFE ID (see [`SpiffeId`]) matches no `spiffe:` entry.
//!
//! I/O contract: pure; no files, sockets or clock.
#![forbid(unsafe_code)]

use crate::tls::identity::{check_path_segment, check_trust_domain, PeerIdentity, SpiffeId};
use crate::tls::{AllowListError, AllowRuleError};
use std::fmt;

/// One parsed allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// `spiffe://td/path`, compared byte for byte.
    SpiffeExact(String),
    /// `spiffe://td/prefix/*`: `trust_domain` exactly and a path starting with
    /// `path_prefix`, which ends in `/` (so `/ns/*` is stored as `/ns/`, `/*` as `/`).
    SpiffePrefix {
        trust_domain: String,
        path_prefix: String,
    },
    /// `dns:NAME`, stored lowercase.
    Dns(String),
    /// `cn:NAME`.
    Cn(String),
}

impl AllowRule {
    /// Parse one entry; the error says what is wrong and what would be accepted.
    pub fn parse(entry: &str) -> Result<AllowRule, AllowRuleError> {
        if let Some(rest) = entry.strip_prefix("spiffe://") {
            return parse_spiffe(entry, rest);
        }
        if let Some(name) = entry.strip_prefix("dns:") {
            return parse_dns(name).map(AllowRule::Dns);
        }
        if let Some(name) = entry.strip_prefix("cn:") {
            if name.is_empty() {
                return Err(AllowRuleError::EmptyCn);
            }
            return Ok(AllowRule::Cn(name.to_owned()));
        }
        Err(AllowRuleError::Unknown {
            entry: entry.to_owned(),
        })
    }

    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            AllowRule::SpiffeExact(id) => peer
                .spiffe
                .as_deref()
                .is_some_and(|p| p == id && SpiffeId::parse(p).is_ok()),
            AllowRule::SpiffePrefix {
                trust_domain,
                path_prefix,
            } => peer
                .spiffe
                .as_deref()
                .and_then(|p| SpiffeId::parse(p).ok())
                .is_some_and(|p| {
                    p.trust_domain() == trust_domain
                        && p.path().len() > path_prefix.len()
                        && p.path().starts_with(path_prefix.as_str())
                }),
            AllowRule::Dns(name) => peer.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
            AllowRule::Cn(name) => peer.cn.as_deref() == Some(name.as_str()),
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowRule::SpiffeExact(id) => f.write_str(id),
            AllowRule::SpiffePrefix {
                trust_domain,
                path_prefix,
            } => write!(f, "spiffe://{trust_domain}{path_prefix}*"),
            AllowRule::Dns(name) => write!(f, "dns:{name}"),
            AllowRule::Cn(name) => write!(f, "cn:{name}"),
        }
    }
}

fn parse_spiffe(entry: &str, rest: &str) -> Result<AllowRule, AllowRuleError> {
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if td.contains('*') {
        return Err(AllowRuleError::TrustDomainWildcard {
            entry: entry.to_owned(),
        });
    }
    check_trust_domain(td).map_err(|why| AllowRuleError::TrustDomain {
        entry: entry.to_owned(),
        why,
    })?;
    if path.is_empty() {
        return Err(AllowRuleError::TrustDomainOnly {
            entry: entry.to_owned(),
            td: td.to_owned(),
        });
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let (last, parents) = segments.split_last().unwrap_or((&"", &[]));
    for seg in parents {
        check_segment(entry, seg)?;
    }
    if *last == "*" {
        let mut prefix = String::from("/");
        for seg in parents {
            prefix.push_str(seg);
            prefix.push('/');
        }
        return Ok(AllowRule::SpiffePrefix {
            trust_domain: td.to_owned(),
            path_prefix: prefix,
        });
    }
    check_segment(entry, last)?;
    Ok(AllowRule::SpiffeExact(entry.to_owned()))
}

fn check_segment(entry: &str, seg: &str) -> Result<(), AllowRuleError> {
    if seg.contains('*') {
        return Err(AllowRuleError::PathWildcard {
            entry: entry.to_owned(),
        });
    }
    check_path_segment(seg).map_err(|why| AllowRuleError::PathSegment {
        entry: entry.to_owned(),
        why,
    })
}

fn parse_dns(name: &str) -> Result<String, AllowRuleError> {
    if name.contains('*') {
        return Err(AllowRuleError::DnsWildcard {
            name: name.to_owned(),
        });
    }
    let bytes_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let labels_ok = name
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'));
    if name.is_empty() || name.len() > 253 || !bytes_ok || !labels_ok {
        return Err(AllowRuleError::NotDnsName {
            name: name.to_owned(),
        });
    }
    Ok(name.to_ascii_lowercase())
}

/// The parsed `allow` list of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    rules: Vec<AllowRule>,
}

impl AllowList {
    /// Parse every entry; the first bad one is reported with its index.
    pub fn parse(entries: &[String]) -> Result<AllowList, AllowListError> {
        let rules = entries
            .iter()
            .enumerate()
            .map(|(index, e)| AllowRule::parse(e).map_err(|why| AllowListError { index, why }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { rules })
    }

    /// Empty: every verified client is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    pub fn allows(&self, peer: &PeerIdentity) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.matches(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn spiffe(id: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe: Some(id.into()),
            ..PeerIdentity::default()
        }
    }

    fn parse_err(entry: &str) -> String {
        AllowRule::parse(entry).unwrap_err().to_string()
    }

    #[test]
    fn empty_list_allows_any_verified_client() {
        let l = list(&[]);
        assert!(l.is_empty());
        assert!(l.allows(&PeerIdentity::default()));
        assert!(l.allows(&spiffe("spiffe://anything.org/x")));
    }

    #[test]
    fn exact_spiffe_id() {
        let l = list(&["spiffe://example.org/ns/prod/sa/billing"]);
        assert!(l.allows(&spiffe("spiffe://example.org/ns/prod/sa/billing")));
        for other in [
            "spiffe://example.org/ns/prod/sa/billing/x",
            "spiffe://example.org/ns/prod/sa/billin",
            "spiffe://example.org/ns/prod/sa/Billing",
            "spiffe://example.org.evil/ns/prod/sa/billing",
            "spiffe://evil.example.org/ns/prod/sa/billing",
            "SPIFFE://example.org/ns/prod/sa/billing",
            "spiffe://example.org/ns/prod/sa/billing/",
            "spiffe://example.org/ns/prod/sa/billing?x",
        ] {
            assert!(!l.allows(&spiffe(other)), "{other}");
        }
        assert!(!l.allows(&PeerIdentity::default()));
    }

    #[test]
    fn prefix_stays_inside_its_trust_domain_and_segments() {
        let l = list(&["spiffe://example.org/ns/*"]);
        assert!(l.allows(&spiffe("spiffe://example.org/ns/x")));
        assert!(l.allows(&spiffe("spiffe://example.org/ns/prod/sa/billing")));
        for other in [
            // trust-domain crossing attempts
            "spiffe://example.org.evil/ns/x",
            "spiffe://evil.example.org/ns/x",
            "spiffe://example.orgx/ns/x",
            "spiffe://example.or/ns/x",
            "spiffe://example.org@evil.org/ns/x",
            "spiffe://example.org:443/ns/x",
            "spiffe://EXAMPLE.org/ns/x",
            // segment boundary
            "spiffe://example.org/nsfoo",
            "spiffe://example.org/nsfoo/x",
            "spiffe://example.org/ns",
            "spiffe://example.org/ns/",
            "spiffe://example.org",
            "spiffe://example.org/other/ns/x",
            // path tricks that are not valid SPIFFE IDs
            "spiffe://example.org/ns/../admin",
            "spiffe://example.org/ns//x",
            "spiffe://example.org/ns/%2e%2e/admin",
            "spiffe://example.org/ns/x?y",
            "spiffe://example.org/ns/x#y",
        ] {
            assert!(!l.allows(&spiffe(other)), "{other}");
        }
    }

    #[test]
    fn whole_trust_domain_wildcard() {
        let l = list(&["spiffe://example.org/*"]);
        assert!(l.allows(&spiffe("spiffe://example.org/a")));
        assert!(l.allows(&spiffe("spiffe://example.org/a/b")));
        assert!(!l.allows(&spiffe("spiffe://example.org")));
        assert!(!l.allows(&spiffe("spiffe://example.org.evil/a")));
        assert!(!l.allows(&spiffe("spiffe://other.org/a")));
        assert_eq!(l.rules()[0].to_string(), "spiffe://example.org/*");
    }

    #[test]
    fn wildcards_outside_the_last_segment_are_refused() {
        for bad in [
            "spiffe://*",
            "spiffe://*/",
            "spiffe://*/x",
            "spiffe://*.example.org/x",
            "spiffe://example.*/x",
            "spiffe://ex*ample.org/*",
        ] {
            let e = parse_err(bad);
            assert!(e.contains("cannot stand for a trust domain"), "{bad}: {e}");
        }
        for bad in [
            "spiffe://example.org/ns*",
            "spiffe://example.org/*/x",
            "spiffe://example.org/ns/x*",
            "spiffe://example.org/ns/**",
        ] {
            let e = parse_err(bad);
            assert!(e.contains("only allowed as the whole last"), "{bad}: {e}");
        }
    }

    #[test]
    fn malformed_spiffe_entries_are_refused() {
        for (bad, why) in [
            ("spiffe://", "the trust domain is empty"),
            ("spiffe:///x", "the trust domain is empty"),
            (
                "spiffe://example.org",
                "names a trust domain, not a workload",
            ),
            ("spiffe://Example.org/x", "must be lowercase"),
            ("spiffe://example.org:8443/x", "contains ':'"),
            ("spiffe://example.org/", "empty segment"),
            ("spiffe://example.org/a//b", "empty segment"),
            ("spiffe://example.org/a/../b", "\"..\" segment"),
            ("spiffe://example.org/a b", "contains ' '"),
            ("spiffe://example.org//*", "empty segment"),
        ] {
            let e = parse_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn dns_and_cn_entries() {
        let l = list(&["dns:Billing.Internal", "cn:billing"]);
        let by_dns = PeerIdentity {
            dns: vec!["other.internal".into(), "billing.internal".into()],
            ..PeerIdentity::default()
        };
        assert!(l.allows(&by_dns));
        let upper = PeerIdentity {
            dns: vec!["BILLING.internal".into()],
            ..PeerIdentity::default()
        };
        assert!(l.allows(&upper));
        let suffix = PeerIdentity {
            dns: vec!["x.billing.internal".into(), "billing.internal.evil".into()],
            ..PeerIdentity::default()
        };
        assert!(!l.allows(&suffix));
        let by_cn = PeerIdentity {
            cn: Some("billing".into()),
            ..PeerIdentity::default()
        };
        assert!(l.allows(&by_cn));
        let cn_case = PeerIdentity {
            cn: Some("Billing".into()),
            ..PeerIdentity::default()
        };
        assert!(!l.allows(&cn_case));
        // A CN that looks like a DNS name is not a DNS SAN, and vice versa.
        let cn_as_dns = PeerIdentity {
            cn: Some("billing.internal".into()),
            dns: vec!["billing".into()],
            ..PeerIdentity::default()
        };
        assert!(!l.allows(&cn_as_dns));
        // A SPIFFE ID is not matched by dns: or cn: entries.
        assert!(!l.allows(&spiffe("spiffe://billing.internal/billing")));
    }

    #[test]
    fn bad_dns_cn_and_unknown_entries() {
        assert!(parse_err("dns:*.internal").contains("wildcards are not supported"));
        assert!(parse_err("dns:").contains("is not a DNS name"));
        assert!(parse_err("dns:a..b").contains("is not a DNS name"));
        assert!(parse_err("dns:a b").contains("is not a DNS name"));
        assert!(parse_err("cn:").contains("needs a common name"));
        for bad in [
            "billing",
            "DNS:x",
            "uri:spiffe://x/y",
            "",
            "https://example.org/x",
        ] {
            assert!(parse_err(bad).contains("is not an allow entry"), "{bad}");
        }
    }

    #[test]
    fn messages_are_the_old_texts() {
        for (entry, want) in [
            (
                "spiffe://example.org",
                "\"spiffe://example.org\" names a trust domain, not a workload: use \
                 \"spiffe://example.org/*\" for any workload of that trust domain",
            ),
            (
                "spiffe://example.org/a/./b",
                "\"spiffe://example.org/a/./b\": the path has a \".\" segment",
            ),
            (
                "spiffe://Example.org/x",
                "\"spiffe://Example.org/x\": trust domain \"Example.org\" must be lowercase \
                 (SPIFFE IDs are compared byte for byte)",
            ),
            (
                "dns:a b",
                "\"dns:a b\": \"a b\" is not a DNS name (letters, digits, '-', '_' in \
                 dot-separated labels, e.g. \"dns:billing.internal\")",
            ),
            ("cn:", "\"cn:\" needs a common name after the colon"),
        ] {
            assert_eq!(parse_err(entry), want, "{entry}");
        }
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/a b")
                .unwrap_err()
                .to_string(),
            "\"spiffe://example.org/a b\": path segment \"a b\" contains ' ': only letters, \
             digits, '.', '-' and '_' are allowed"
        );
    }

    #[test]
    fn list_error_names_the_entry_index() {
        let e = AllowList::parse(&["cn:a".into(), "spiffe://*".into()]).unwrap_err();
        assert_eq!(e.index, 1);
        let e = e.to_string();
        assert!(e.starts_with("allow[1]: \"spiffe://*\""), "{e}");
    }

    #[test]
    fn any_rule_may_match() {
        let l = list(&[
            "spiffe://example.org/ns/prod/*",
            "spiffe://other.org/ci",
            "dns:billing.internal",
        ]);
        assert!(l.allows(&spiffe("spiffe://other.org/ci")));
        assert!(l.allows(&spiffe("spiffe://example.org/ns/prod/x")));
        assert!(!l.allows(&spiffe("spiffe://example.org/ns/dev/x")));
        assert!(!l.allows(&spiffe("spiffe://other.org/ci/x")));
    }
}
