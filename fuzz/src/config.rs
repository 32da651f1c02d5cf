//! config: the config parser and validator (`Config::parse_checked`, what `run`,
//! `check` and a reload call) on arbitrary text. Seeds: README's and the tests'
//! configs (fuzz/seeds/config/).
//!
//! Names in `listen`/`upstreams` would be resolved (getaddrinfo, the network): a
//! config holding one is checked up to deserialization only.
//!
//! Checked: no panic; every problem renders (file, line, field); a config without
//! problems parses the same through `Config::parse`.

use std::path::Path;
use terminus::config::{Config, Endpoint};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, Path::new("/nonexistent/terminus.toml"));
}

/// Parse and validate `text` unless it names a host; returns whether it was valid.
pub fn check(text: &str, source: &Path) -> Option<bool> {
    if let Ok(cfg) = toml::from_str::<Config>(text) {
        let named = |e: &Endpoint| matches!(e, Endpoint::Name { .. });
        if cfg
            .listeners
            .iter()
            .any(|l| named(&l.listen_setting) || l.upstream_entries.iter().any(named))
        {
            return None;
        }
    }
    let checked = Config::parse_checked(text, source);
    for p in &checked.problems {
        let _ = p.to_string();
    }
    let ok = checked.config.is_some() && checked.problems.is_empty();
    if ok {
        Config::parse(text, source).expect("parse_checked found no problem, parse must agree");
    }
    Some(ok)
}
