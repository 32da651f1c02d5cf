//! Per-request authorization on HTTP listeners: `[[listeners.http.rules]]`, evaluated
//! in order, first match wins, `default_action` for requests no rule matches.
//!
//! A rule matches a request when the caller is one of its `identities` (the allow-list
//! grammar of [`crate::tls::policy`], plus `anonymous`: no verified certificate, and
//! `any`: every caller, anonymous included), its method is one of `methods` (all when
//! absent) and its canonical path ([`path::normalize`]) matches one of `paths` (all when
//! absent): exact, or a prefix when the pattern ends in `*` (`/admin/*` matches
//! `/admin/` and everything under it, not `/admin`).
//!
//! The rules are parsed once, when the config is loaded; [`Rules::decide`] is pure and
//! allocation-free, so it can run on every request of every worker.
//!
//! I/O contract: pure.
#![forbid(unsafe_code)]

pub mod gate;
pub mod limits;
pub mod path;

use crate::tls::identity::PeerIdentity;
use crate::tls::policy::AllowRule;
use std::fmt;

/// What a rule (or the default) does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn parse(s: &str) -> Result<Action, RuleError> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(RuleError::Action(s.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Whether a decision is carried out (`enforce`) or only counted and logged (`report`).
/// Shared by rules and per-caller limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, RuleError> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "report" => Ok(Mode::Report),
            _ => Err(RuleError::Mode(s.to_owned())),
        }
    }
}

/// One entry of a rule's `identities`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerMatch {
    /// Every caller, verified or not.
    Any,
    /// A caller without a verified certificate.
    Anonymous,
    /// A verified caller the allow-list entry names.
    Identity(AllowRule),
}

impl CallerMatch {
    pub fn parse(s: &str) -> Result<CallerMatch, RuleError> {
        match s {
            "any" => Ok(CallerMatch::Any),
            "anonymous" => Ok(CallerMatch::Anonymous),
            _ => AllowRule::parse(s)
                .map(CallerMatch::Identity)
                .map_err(|e| RuleError::Identity(s.to_owned(), e.to_string())),
        }
    }

    fn matches(&self, caller: Option<&PeerIdentity>) -> bool {
        match (self, caller) {
            (CallerMatch::Any, _) => true,
            (CallerMatch::Anonymous, None) => true,
            (CallerMatch::Identity(rule), Some(peer)) => rule.matches(peer),
            _ => false,
        }
    }

    /// Every caller `other` matches, `self` matches too.
    fn covers(&self, other: &CallerMatch) -> bool {
        use AllowRule::*;
        match (self, other) {
            (CallerMatch::Any, _) => true,
            (CallerMatch::Anonymous, CallerMatch::Anonymous) => true,
            (CallerMatch::Identity(a), CallerMatch::Identity(b)) => match (a, b) {
                (SpiffeExact(x), SpiffeExact(y)) => x == y,
                (
                    SpiffePrefix {
                        trust_domain: td,
                        path_prefix: p,
                    },
                    SpiffeExact(id),
                ) => id
                    .strip_prefix("spiffe://")
                    .and_then(|r| r.strip_prefix(td.as_str()))
                    .is_some_and(|path| path.len() > p.len() && path.starts_with(p.as_str())),
                (
                    SpiffePrefix {
                        trust_domain: td1,
                        path_prefix: p1,
                    },
                    SpiffePrefix {
                        trust_domain: td2,
                        path_prefix: p2,
                    },
                ) => td1 == td2 && p2.starts_with(p1.as_str()),
                (Dns(x), Dns(y)) | (Cn(x), Cn(y)) => x == y,
                _ => false,
            },
            _ => false,
        }
    }
}

/// One entry of a rule's `paths`, on the canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// The pattern without its final `*`.
    Prefix(String),
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, RuleError> {
        let bad = |why: &'static str| RuleError::Path(s.to_owned(), why);
        if !s.starts_with('/') {
            return Err(bad("a path starts with '/'"));
        }
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(bad("'*' may only end a path, as a prefix"));
        }
        // Written as requests are matched: canonical, or it could never match.
        let canonical = path::normalize(body).map_err(|_| bad("not a valid path"))?;
        if canonical != body {
            let suggestion = if prefix { canonical + "*" } else { canonical };
            return Err(RuleError::PathNotCanonical(s.to_owned(), suggestion));
        }
        Ok(if prefix {
            PathPattern::Prefix(body.to_owned())
        } else {
            PathPattern::Exact(body.to_owned())
        })
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }

    fn covers(&self, other: &PathPattern) -> bool {
        match (self, other) {
            (PathPattern::Prefix(p), PathPattern::Exact(x) | PathPattern::Prefix(x)) => {
                x.starts_with(p.as_str())
            }
            (PathPattern::Exact(p), PathPattern::Exact(x)) => p == x,
            (PathPattern::Exact(_), PathPattern::Prefix(_)) => false,
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The methods a rule may name (RFC 9110 §9 and PATCH, RFC 5789).
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// One `[[listeners.http.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub identities: Vec<CallerMatch>,
    /// `None`: every method.
    pub methods: Option<Vec<&'static str>>,
    /// `None`: every path.
    pub paths: Option<Vec<PathPattern>>,
    pub action: Action,
}

/// A rule as written in the config, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct RuleSpec<'a> {
    pub name: &'a str,
    pub identities: &'a [String],
    pub methods: Option<&'a [String]>,
    pub paths: Option<&'a [String]>,
    pub action: &'a str,
}

impl Rule {
    pub fn parse(spec: &RuleSpec<'_>) -> Result<Rule, RuleError> {
        if spec.name.is_empty() {
            return Err(RuleError::NoName);
        }
        if spec.name == DEFAULT_RULE {
            return Err(RuleError::ReservedName);
        }
        if spec.identities.is_empty() {
            return Err(RuleError::NoIdentities);
        }
        let identities = spec
            .identities
            .iter()
            .map(|s| CallerMatch::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let methods = match spec.methods {
            None => None,
            Some([]) => return Err(RuleError::Empty("methods")),
            Some(ms) => Some(
                ms.iter()
                    .map(|m| {
                        METHODS
                            .iter()
                            .find(|k| **k == m.as_str())
                            .copied()
                            .ok_or_else(|| RuleError::Method(m.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let paths = match spec.paths {
            None => None,
            Some([]) => return Err(RuleError::Empty("paths")),
            Some(ps) => Some(
                ps.iter()
                    .map(|p| PathPattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Rule {
            name: spec.name.to_owned(),
            identities,
            methods,
            paths,
            action: Action::parse(spec.action)?,
        })
    }

    fn matches(&self, caller: Option<&PeerIdentity>, method: &str, path: &str) -> bool {
        self.identities.iter().any(|i| i.matches(caller))
            && self.methods.as_ref().is_none_or(|ms| ms.contains(&method))
            && self
                .paths
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p.matches(path)))
    }

    /// Every request `later` matches, `self` matches too: `later` can never be reached.
    fn covers(&self, later: &Rule) -> bool {
        let ids = later
            .identities
            .iter()
            .all(|l| self.identities.iter().any(|e| e.covers(l)));
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
        };
        let paths = match (&self.paths, &later.paths) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(l)) => l.iter().all(|lp| e.iter().any(|ep| ep.covers(lp))),
        };
        ids && methods && paths
    }
}

/// The `rule` label of a request no rule matched.
pub const DEFAULT_RULE: &str = "default";

/// Which rule decided a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// The index of the first matching rule.
    Rule(usize),
    /// No rule matched: `default_action`.
    Default,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub matched: Matched,
    pub action: Action,
}

/// A listener's rules, checked as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
    default_action: Action,
    mode: Mode,
}

impl Rules {
    /// Check names (present, unique) and reachability: a rule that an earlier one
    /// covers entirely is an error naming both.
    pub fn new(rules: Vec<Rule>, default_action: Action, mode: Mode) -> Result<Rules, RuleError> {
        for (i, r) in rules.iter().enumerate() {
            if let Some(e) = rules[..i].iter().find(|e| e.name == r.name) {
                return Err(RuleError::DuplicateName(e.name.clone()));
            }
            if let Some(e) = rules[..i].iter().find(|e| e.covers(r)) {
                return Err(RuleError::Unreachable {
                    rule: r.name.clone(),
                    by: e.name.clone(),
                });
            }
        }
        Ok(Rules {
            rules,
            default_action,
            mode,
        })
    }

    /// No rules and `allow` by default: nothing to evaluate per request.
    pub fn is_trivial(&self) -> bool {
        self.rules.is_empty() && self.default_action == Action::Allow
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule's name for labels and logs (`default` for the default action).
    pub fn name(&self, m: Matched) -> &str {
        match m {
            Matched::Rule(i) => &self.rules[i].name,
            Matched::Default => DEFAULT_RULE,
        }
    }

    /// First match wins; `path` is canonical ([`path::normalize`]).
    pub fn decide(&self, caller: Option<&PeerIdentity>, method: &str, path: &str) -> Decision {
        match self
            .rules
            .iter()
            .position(|r| r.matches(caller, method, path))
        {
            Some(i) => Decision {
                matched: Matched::Rule(i),
                action: self.rules[i].action,
            },
            None => Decision {
                matched: Matched::Default,
                action: self.default_action,
            },
        }
    }
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            rules: Vec::new(),
            default_action: Action::Allow,
            mode: Mode::Enforce,
        }
    }
}

/// What is wrong with a rule, for `check` (the config layer adds file, line and field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("a rule needs a `name` (unique per listener; it is the metrics label)")]
    NoName,
    #[error("\"default\" is the name of the default action; choose another rule name")]
    ReservedName,
    #[error("two rules are named \"{0}\"; names are unique per listener")]
    DuplicateName(String),
    #[error("a rule needs `identities` (allow-list entries, \"anonymous\" or \"any\")")]
    NoIdentities,
    #[error("`{0}` is empty: leave it out to match everything")]
    Empty(&'static str),
    #[error("\"{0}\": {1}; or \"anonymous\", \"any\"")]
    Identity(String, String),
    #[error("unknown method \"{0}\": expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH (upper case)")]
    Method(String),
    #[error("path \"{0}\": {1}")]
    Path(String, &'static str),
    #[error("path \"{0}\" is matched on canonical paths and would never match as written; write \"{1}\"")]
    PathNotCanonical(String, String),
    #[error("action \"{0}\": expected \"allow\" or \"deny\"")]
    Action(String),
    #[error("mode \"{0}\": expected \"enforce\" or \"report\"")]
    Mode(String),
    #[error(
        "rule \"{rule}\" can never match: rule \"{by}\" before it matches every request it would"
    )]
    Unreachable { rule: String, by: String },
}

/// [`Rule::parse`] of a spec written as string slices (the unit tests' rules).
#[cfg(test)]
pub(crate) fn parse_rule(
    name: &str,
    ids: &[&str],
    methods: Option<&[&str]>,
    paths: Option<&[&str]>,
    action: &str,
) -> Result<Rule, RuleError> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ids, methods, paths) = (s(ids), methods.map(s), paths.map(s));
    Rule::parse(&RuleSpec {
        name,
        identities: &ids,
        methods: methods.as_deref(),
        paths: paths.as_deref(),
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(spiffe: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe: Some(spiffe.into()),
            ..PeerIdentity::default()
        }
    }

    fn rule(
        name: &str,
        ids: &[&str],
        methods: Option<&[&str]>,
        paths: Option<&[&str]>,
        action: &str,
    ) -> Rule {
        parse_rule(name, ids, methods, paths, action).unwrap()
    }

    #[test]
    fn first_match_wins_then_the_default() {
        let rules = Rules::new(
            vec![
                rule(
                    "health",
                    &["any"],
                    Some(&["GET"]),
                    Some(&["/healthz"]),
                    "allow",
                ),
                rule(
                    "admin-ops",
                    &["spiffe://ex.org/ops"],
                    None,
                    Some(&["/admin/*"]),
                    "allow",
                ),
                rule("no-admin", &["any"], None, Some(&["/admin/*"]), "deny"),
                rule(
                    "workloads",
                    &["spiffe://ex.org/ns/prod/*"],
                    None,
                    None,
                    "allow",
                ),
            ],
            Action::Deny,
            Mode::Enforce,
        )
        .unwrap();
        let ops = peer("spiffe://ex.org/ops");
        let web = peer("spiffe://ex.org/ns/prod/web");
        let other = peer("spiffe://other.org/ns/prod/web");
        let case = |c: Option<&PeerIdentity>, m: &str, p: &str| {
            let d = rules.decide(c, m, p);
            (rules.name(d.matched).to_string(), d.action)
        };
        use Action::*;
        assert_eq!(case(None, "GET", "/healthz"), ("health".into(), Allow));
        assert_eq!(case(None, "POST", "/healthz"), ("default".into(), Deny));
        assert_eq!(
            case(Some(&ops), "POST", "/admin/x"),
            ("admin-ops".into(), Allow)
        );
        assert_eq!(
            case(Some(&web), "GET", "/admin/x"),
            ("no-admin".into(), Deny)
        );
        assert_eq!(
            case(Some(&web), "GET", "/admin"),
            ("workloads".into(), Allow)
        );
        assert_eq!(
            case(Some(&web), "DELETE", "/v1/x"),
            ("workloads".into(), Allow)
        );
        assert_eq!(case(Some(&other), "GET", "/v1/x"), ("default".into(), Deny));
        assert_eq!(case(None, "GET", "/v1/x"), ("default".into(), Deny));
    }

    #[test]
    fn unreachable_rules_are_named() {
        let err = |rules: Vec<Rule>| {
            Rules::new(rules, Action::Allow, Mode::Enforce)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(vec![
                rule("all-admin", &["any"], None, Some(&["/admin/*"]), "deny"),
                rule("ops-admin", &["spiffe://ex.org/ops"], Some(&["GET"]), Some(&["/admin/x"]), "allow"),
            ]),
            "rule \"ops-admin\" can never match: rule \"all-admin\" before it matches every request it would"
        );
        assert!(err(vec![
            rule("prod", &["spiffe://ex.org/ns/*"], None, None, "allow"),
            rule(
                "web",
                &["spiffe://ex.org/ns/prod/*"],
                Some(&["GET"]),
                None,
                "deny"
            ),
        ])
        .contains("\"web\" can never match"));
        assert!(err(vec![
            rule("a", &["anonymous"], None, None, "deny"),
            rule("a", &["any"], None, None, "deny"),
        ])
        .contains("two rules are named \"a\""));
        // Narrower first, then broader: both reachable.
        Rules::new(
            vec![
                rule(
                    "ops-admin",
                    &["spiffe://ex.org/ops"],
                    Some(&["GET"]),
                    Some(&["/admin/x"]),
                    "allow",
                ),
                rule("all-admin", &["any"], None, Some(&["/admin/*"]), "deny"),
                rule("other-td", &["spiffe://ex.com/ns/*"], None, None, "deny"),
                rule(
                    "dns",
                    &["dns:a.example", "anonymous"],
                    Some(&["GET", "HEAD"]),
                    None,
                    "allow",
                ),
            ],
            Action::Allow,
            Mode::Report,
        )
        .unwrap();
    }

    #[test]
    fn bad_rules_say_why() {
        let parse =
            |ids: &[&str], methods: Option<&[&str]>, paths: Option<&[&str]>, action: &str| {
                let e = parse_rule("r", ids, methods, paths, action).unwrap_err();
                e.to_string()
            };
        assert!(parse(&[], None, None, "allow").contains("needs `identities`"));
        assert!(
            parse(&["any"], Some(&["FETCH"]), None, "allow").contains("unknown method \"FETCH\"")
        );
        assert!(parse(&["any"], Some(&["get"]), None, "allow").contains("unknown method \"get\""));
        assert!(parse(&["any"], Some(&[]), None, "allow").contains("`methods` is empty"));
        assert!(parse(&["any"], None, Some(&["admin"]), "allow").contains("starts with '/'"));
        assert!(parse(&["any"], None, Some(&["/a*b"]), "allow").contains("may only end"));
        assert!(parse(&["any"], None, Some(&["/a/../b"]), "allow").contains("write \"/b\""));
        assert!(
            parse(&["any"], None, Some(&["/%61dmin/*"]), "allow").contains("write \"/admin/*\"")
        );
        assert!(parse(&["spiffe://*.org/x"], None, None, "allow").contains("wildcard"));
        assert!(parse(&["everyone"], None, None, "allow").contains("\"anonymous\", \"any\""));
        assert!(parse(&["any"], None, None, "permit").contains("expected \"allow\" or \"deny\""));
    }

    #[test]
    fn normalized_paths_cannot_slip_past_a_prefix_rule() {
        let rules = Rules::new(
            vec![rule(
                "no-admin",
                &["any"],
                None,
                Some(&["/admin/*"]),
                "deny",
            )],
            Action::Allow,
            Mode::Enforce,
        )
        .unwrap();
        for target in [
            "/admin/x",
            "/admin/../admin/x",
            "/%61dmin/x",
            "//admin/x",
            "/./admin/x",
            "/x/../admin/x",
            "/x/%2E%2E/admin/x",
            "http://h/admin/x",
            "/admin/x?a=b",
        ] {
            let p = path::normalize(target).unwrap();
            assert_eq!(
                rules.decide(None, "GET", &p).action,
                Action::Deny,
                "{target} -> {p}"
            );
        }
        for target in ["/admin", "/administrator", "/x/admin/y"] {
            let p = path::normalize(target).unwrap();
            assert_eq!(
                rules.decide(None, "GET", &p).action,
                Action::Allow,
                "{target}"
            );
        }
    }
}
