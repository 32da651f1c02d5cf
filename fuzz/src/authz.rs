//! authz: the allow-rule and path-rule parsers of http listeners
//! (`proxy::authz`: `CallerMatch::parse`, `PathPattern::parse`, `Rule::parse`,
//! `Rules::new`) and the request-path canonicalisation they match against
//! (`path::normalize`). Input: a selector byte, then NUL-separated strings.
//!
//! Checked: normalizing is idempotent (a canonical path normalizes to itself); a
//! path pattern that parses prints back as written; a pattern matches the paths it
//! names; rules that parse decide any request without panicking.

use terminus::proxy::authz::path::normalize;
use terminus::proxy::authz::{Action, CallerMatch, Mode, PathPattern, Rule, RuleSpec, Rules};

pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let parts: Vec<&str> = text.split('\0').collect();
    match sel % 4 {
        0 => {
            for p in &parts {
                if let Ok(n) = normalize(p) {
                    if n != "*" && !n.is_empty() {
                        assert_eq!(
                            normalize(&n).as_deref(),
                            Ok(n.as_str()),
                            "normalize({p:?}) = {n:?} is not canonical"
                        );
                    }
                }
            }
        }
        1 => {
            for p in &parts {
                if let Ok(pat) = PathPattern::parse(p) {
                    assert_eq!(pat.to_string(), *p, "pattern does not print back");
                    let body = p.strip_suffix('*').unwrap_or(p);
                    // The path the pattern names is decided by a rule with it.
                    let rule = Rule::parse(&RuleSpec {
                        name: "r",
                        identities: &["any".to_owned()],
                        methods: None,
                        paths: Some(&[p.to_string()]),
                        action: "deny",
                    })
                    .expect("a rule with a valid path");
                    let rules =
                        Rules::new(vec![rule], Action::Allow, Mode::Enforce).expect("rules");
                    let d = rules.decide(None, "GET", body);
                    assert_eq!(
                        d.action,
                        Action::Deny,
                        "pattern {p:?} does not match {body:?}"
                    );
                }
            }
        }
        2 => {
            for p in &parts {
                let _ = CallerMatch::parse(p).map(|c| format!("{c:?}"));
            }
        }
        _ => rules(&parts),
    }
}

/// Rules from the strings: each rule takes five (name, identities, methods,
/// paths, action; lists comma-separated), the rest are requests `METHOD PATH`.
fn rules(parts: &[&str]) {
    let list = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<String>>();
    let mut rules = Vec::new();
    let mut i = 0;
    while i + 5 <= parts.len() && rules.len() < 8 {
        let (ids, methods, paths) = (list(parts[i + 1]), list(parts[i + 2]), list(parts[i + 3]));
        let spec = RuleSpec {
            name: parts[i],
            identities: &ids,
            methods: (!parts[i + 2].is_empty()).then_some(&methods[..]),
            paths: (!parts[i + 3].is_empty()).then_some(&paths[..]),
            action: parts[i + 4],
        };
        match Rule::parse(&spec) {
            Ok(r) => rules.push(r),
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
        i += 5;
    }
    let Ok(rules) = Rules::new(rules, Action::Allow, Mode::Enforce) else {
        return;
    };
    for req in &parts[i..] {
        let (m, t) = req.split_once(' ').unwrap_or(("GET", req));
        if let Ok(p) = normalize(t) {
            let d = rules.decide(None, m, &p);
            let _ = rules.name(d.matched);
        }
    }
}
