//! authz: a listener's `[listeners.http]` rules and per-caller limit keys, turned
//! into the checked [`crate::proxy::authz`] values the workers use; `validate`
//! reports the same problems with the field that caused them.
#![forbid(unsafe_code)]

use super::schema::Listener;
use crate::proxy::authz::limits::LimitSettings;
use crate::proxy::authz::{Action, Mode, Rule, RuleError, Rules};

/// What is wrong with a listener's rules, and where: `rule` is the index in
/// `[[listeners.http.rules]]` (None: a key of `[listeners.http]`), `field` its key.
#[derive(Debug)]
pub struct RulesProblem {
    pub rule: Option<usize>,
    pub field: &'static str,
    pub error: RuleError,
}

impl Listener {
    /// The listener's rules (none for a tcp listener), or the first problem.
    pub fn http_rules(&self) -> Result<Rules, RulesProblem> {
        let Some(t) = self.http.as_ref() else {
            return Ok(Rules::default());
        };
        let at = |rule, field| move |error| RulesProblem { rule, field, error };
        let mode = Mode::parse(&t.rules_mode).map_err(at(None, "rules_mode"))?;
        let default = Action::parse(&t.default_action).map_err(at(None, "default_action"))?;
        let mut rules = Vec::with_capacity(t.rules.len());
        for (j, r) in t.rules.iter().enumerate() {
            rules.push(Rule::parse(&r.spec()).map_err(|e| {
                let field = match &e {
                    RuleError::NoName | RuleError::ReservedName => "name",
                    RuleError::NoIdentities | RuleError::Identity(..) => "identities",
                    RuleError::Empty(f) => *f,
                    RuleError::Method(_) => "methods",
                    RuleError::Path(..) | RuleError::PathNotCanonical(..) => "paths",
                    _ => "action",
                };
                at(Some(j), field)(e)
            })?);
        }
        Rules::new(rules, default, mode).map_err(|e| {
            // Name the later rule: the duplicate, or the one that cannot match.
            let name = match &e {
                RuleError::DuplicateName(n) => n.as_str(),
                RuleError::Unreachable { rule, .. } => rule.as_str(),
                _ => "",
            };
            let j = t.rules.iter().rposition(|r| r.name == name);
            at(j, "name")(e)
        })
    }

    /// The listener's per-caller limit settings (`limits_mode` unknown: enforce;
    /// `validate` refuses it).
    pub fn limit_settings(&self) -> LimitSettings {
        LimitSettings {
            max_connections_per_caller: self.max_connections_per_caller,
            requests_per_second_per_caller: self.requests_per_second_per_caller,
            burst: self.burst,
            handshakes_per_second_per_source: self.handshakes_per_second_per_source,
            mode: Mode::parse(&self.limits_mode).unwrap_or_default(),
            max_callers: self.limits_max_callers,
        }
    }
}
