//! The layers depend one way (ARCHITECTURE.md, "Layers"): a module may name
//! `crate::<layer>` only for layers below its own. This scans every source file
//! of the library for `crate::<layer>` paths (in `use` lines, paths and doc links
//! alike) and fails on each one that runs upwards, naming file and line.

use crate::tree::{crate_sources, rust_files};
use std::path::Path;

/// Bottom to top. A layer is a folder (or file) directly under the crate's src/.
const ORDER: &[&str] = &[
    "host",      // machine facts and names: /proc, cgroups, CPUs, endpoints, lookup
    "tls",       // rustls configs from tls-owned settings
    "proxy",     // sans-IO connection state machine, upstream choice, PROXY v2
    "config",    // the config file: schema, validation, conversion to layer settings
    "telemetry", // metrics, logs, the access line: written by workers
    "runtime",   // drivers, workers, listeners, resolver thread, sockets
    "ops",       // admin endpoint, reload, check, host checks, systemd notify
    "app",       // `terminus run`: the composition root
];
// Above them all, in crates of their own: terminus-tools (bench, backend, demo,
// report, certs) and the binary. terminus-testkit depends on none of them.

/// Known exceptions, each with the reason it is allowed; empty is the goal.
const ALLOWED: &[(&str, &str)] = &[];

fn rank(layer: &str) -> Option<usize> {
    ORDER.iter().position(|l| *l == layer)
}

/// Every layer a line names through `crate::`, including `crate::{a::.., b::..}`.
fn named_layers(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        // `$crate::` in macros and `terminus_core::crate` do not occur; skip `$crate`.
        if line[..i].ends_with('$') {
            continue;
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// Upward imports under `src` (a crate's source folder): "file:line: a -> b".
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let layer = top.trim_end_matches(".rs");
        let Some(own) = rank(layer) else { continue };
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for named in named_layers(line) {
                let Some(r) = rank(&named) else { continue };
                if r > own && !ALLOWED.contains(&(layer, named.as_str())) {
                    out.push(format!("{}:{}: {layer} -> {named}", f.display(), n + 1));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn layers_import_only_downwards() {
    let mut found = Vec::new();
    let mut layers_seen = 0;
    for src in crate_sources() {
        for l in ORDER {
            if src.join(l).is_dir() || src.join(format!("{l}.rs")).is_file() {
                layers_seen += 1;
            }
        }
        found.extend(violations(&src));
    }
    // The scan must have found the layers, or it proves nothing.
    assert!(layers_seen >= 6, "found only {layers_seen} layer folders");
    assert!(
        found.is_empty(),
        "imports against the layer order {ORDER:?}:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_and_plain_paths() {
    assert_eq!(named_layers("use crate::ops::log::emit;"), ["ops"]);
    assert_eq!(
        named_layers("use crate::{config::Config, tls::ServerTls};"),
        ["config", "tls"]
    );
    assert_eq!(named_layers("/// see [`crate::runtime`]"), ["runtime"]);
    assert!(named_layers("$crate::telemetry::log::emit(").is_empty());
}

/// The core crate ships: the tools and the test kit are never among its
/// dependencies (the test kit may be a dev-dependency, for unit tests).
#[test]
fn the_core_crate_depends_on_no_tool_or_test_crate() {
    let manifest =
        std::fs::read_to_string(crate::tree::root().join("crates/terminus-core/Cargo.toml"))
            .unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table")
        .split("\n[")
        .next()
        .unwrap();
    for name in [
        "terminus-tools",
        "terminus-testkit",
        "criterion",
        "proptest",
    ] {
        assert!(!deps.contains(name), "terminus-core depends on {name}");
    }
    let testkit =
        std::fs::read_to_string(crate::tree::root().join("crates/terminus-testkit/Cargo.toml"))
            .unwrap();
    assert!(
        !testkit.lines().any(|l| l.starts_with("terminus-")),
        "the test kit must depend on no terminus crate"
    );
}
