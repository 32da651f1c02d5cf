//! flags: the one-command mode's flags (`terminus run --listen … --upstream …`,
//! `config::flags::ListenerFlags`) parsed by clap from arbitrary arguments (the
//! input split at NUL bytes), then turned into config text.
//!
//! Checked: the text is TOML whatever the flags hold (no value escapes its string:
//! no injected keys or tables) and holds each flag's value as given; then it is
//! parsed and validated as a file would be (see [`super::config::check`]).

use clap::Parser;
use std::path::Path;
use terminus::config::flags::{ListenerFlags, SOURCE};

#[derive(Parser, Debug)]
#[command(name = "terminus-run")]
struct Run {
    #[command(flatten)]
    flags: ListenerFlags,
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args = std::iter::once("terminus-run").chain(text.split('\0'));
    let Ok(run) = Run::try_parse_from(args) else {
        return;
    };
    let f = run.flags;
    let _ = f.given();
    let Ok(toml_text) = f.to_toml() else {
        return;
    };
    let v: toml::Table = toml::from_str(&toml_text)
        .unwrap_or_else(|e| panic!("flags made invalid TOML ({e}):\n{toml_text}"));
    let keys: Vec<&str> = v.keys().map(String::as_str).collect();
    for k in &keys {
        assert!(
            ["runtime", "admin", "log", "listeners"].contains(k),
            "flags made a table {k:?}:\n{toml_text}"
        );
    }
    let l = v["listeners"].as_array().expect("listeners")[0]
        .as_table()
        .expect("a listener table");
    assert_eq!(
        l.len(),
        listener_keys(&f),
        "keys of the listener:\n{toml_text}"
    );
    assert_eq!(l["listen"].as_str(), f.listen.as_deref());
    let ups = strings(&l["upstreams"], "upstreams");
    assert_eq!(
        ups,
        f.upstream.iter().map(String::as_str).collect::<Vec<_>>()
    );
    if let Some(a) = v.get("admin") {
        assert_eq!(a["listen"].as_str(), f.admin.as_deref());
    }
    if let Some(ca) = l.get("client_auth") {
        let allow = strings(&ca["allow"], "allow");
        assert_eq!(
            allow,
            f.allow.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
    let _ = super::config::check(&toml_text, Path::new(SOURCE));
}

/// The keys `to_toml` writes into the listener for these flags.
fn listener_keys(f: &ListenerFlags) -> usize {
    let mut n = 5; // name, listen, cert, key, upstreams
    n += usize::from(f.proxy_protocol);
    n += usize::from(!f.client_ca.is_empty() || f.client_auth.is_some() || !f.allow.is_empty());
    n += usize::from(!f.upstream_ca.is_empty());
    n
}

/// The strings of an array value (`what` names it when it is not an array).
fn strings<'a>(v: &'a toml::Value, what: &str) -> Vec<&'a str> {
    let items = v
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not an array"));
    items.iter().filter_map(|u| u.as_str()).collect()
}
