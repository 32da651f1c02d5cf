//! The README's commands, run as a newcomer would type them, so the README cannot drift
//! from the binary again.
//!
//! - Every line of a `sh` block that starts with `./target/release/terminus` is run in
//!   order, in a temporary folder, with the README's example `terminus.toml` written
//!   there. The fixed addresses the README uses are mapped to free ones (tests never
//!   take fixed ports): `127.0.0.1:8080` to a real `terminus backend`, `8081` to an
//!   address that refuses, `8443` and `9901` to what terminus picks for port 0. A line
//!   ending in `&` is started in the background and waited for (`listening addr=` of a
//!   backend, `ready` of `run`); every other line must exit 0.
//! - Every synopsis line (`terminus SUB ...`, `cargo run --release -- SUB ...`) of the
//!   README and BENCHMARKING.md names only subcommands and flags that `terminus SUB
//!   --help` lists.
//!
//! `.ci/run` runs the README's first command itself (`cargo run --release -- demo`,
//! shortened by `--seconds` and `--rounds`).

use crate::common::{bin, refused_addr, Spawned, TempDir, READY_TIMEOUT};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

const README: &str = include_str!("../../README.md");
const BENCHMARKING: &str = include_str!("../../BENCHMARKING.md");
const RELEASE_BIN: &str = "./target/release/terminus";

/// The fenced code blocks of a Markdown text: (info string, lines).
fn code_blocks(md: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in md.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(info), None) => open = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some((info, mut lines))) => {
                lines.push(line.to_string());
                open = Some((info, lines));
            }
            (None, None) => {}
        }
    }
    blocks
}

/// A command line without its trailing `# comment`.
fn strip_comment(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim()
}

/// The runnable lines: `./target/release/terminus ...` in `sh` blocks, in order.
fn runnable(md: &str) -> Vec<String> {
    code_blocks(md)
        .into_iter()
        .filter(|(info, _)| info == "sh")
        .flat_map(|(_, lines)| lines)
        .map(|l| strip_comment(&l).to_string())
        .filter(|l| l.starts_with(RELEASE_BIN))
        .collect()
}

/// The README's example config: the `toml` block right after "`terminus.toml`".
fn example_config(md: &str) -> String {
    let at = md
        .find("`terminus.toml` (paths are relative")
        .expect("README introduces its example terminus.toml");
    let (_, lines) = code_blocks(&md[at..])
        .into_iter()
        .next()
        .expect("a code block after the introduction");
    lines.join("\n") + "\n"
}

/// The README's fixed addresses and what they stand for in this run.
struct AddrMap(Vec<(String, String)>);

impl AddrMap {
    fn apply(&self, text: &str) -> String {
        self.0
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    }
}

fn run_line(args: &[String], dir: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("spawn terminus {args:?}: {e}"));
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn spawn_line(args: &[String], dir: &Path) -> Spawned {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir);
    Spawned::new(cmd)
}

/// `listening addr=IP:PORT` (backend) or `listening name=… addr=IP:PORT` (run).
fn listening_addr(stdout: &str, name: Option<&str>) -> SocketAddr {
    stdout
        .lines()
        .filter(|l| l.starts_with("listening "))
        .filter(|l| name.is_none_or(|n| l.contains(&format!("name={n} "))))
        .find_map(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listening line for {name:?} in {stdout}"))
}

fn admin_addr(stdout: &str) -> SocketAddr {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("admin addr="))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin line in {stdout}"))
}

#[test]
fn readme_commands_run_as_written() {
    let lines = runnable(README);
    let subcommands: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for sub in ["certs", "check", "run", "backend", "bench"] {
        assert!(
            subcommands.contains(sub),
            "the README shows no runnable `{RELEASE_BIN} {sub}` line: {lines:#?}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("check --host")),
        "{lines:#?}"
    );

    let tmp = TempDir::new("readme");
    let dir = tmp.path();
    // The README's config, with its addresses mapped to this run's; everything else
    // (every key and comment) exactly as written, so check and run validate the README.
    let config_text = example_config(README);
    let mut map = AddrMap(vec![
        ("127.0.0.1:8081".into(), refused_addr().to_string()),
        ("127.0.0.1:8443".into(), "127.0.0.1:0".into()),
        ("127.0.0.1:9901".into(), "127.0.0.1:0".into()),
    ]);
    let mut background: Vec<Spawned> = Vec::new();
    let mut ran = Vec::new();
    for line in &lines {
        let (line, is_background) = match line.strip_suffix('&') {
            Some(l) => (l.trim(), true),
            None => (line.as_str(), false),
        };
        assert!(
            !line.contains(['"', '\'', '$', '[', '|', '…']),
            "a runnable README line must be a plain command: {line}"
        );
        let words: Vec<String> = map
            .apply(line)
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect();
        let sub = words[0].clone();
        if words.iter().any(|w| w == "terminus.toml") {
            std::fs::write(dir.join("terminus.toml"), map.apply(&config_text)).unwrap();
        }
        if is_background {
            let child = spawn_line(&words, dir);
            match sub.as_str() {
                "backend" => {
                    assert!(
                        child.wait_stdout_contains("listening addr=", READY_TIMEOUT),
                        "{line}: {}",
                        child.stderr()
                    );
                    // Later lines (and the config) name the backend by the README's address.
                    let from =
                        words[words.iter().position(|w| w == "--listen").unwrap() + 1].clone();
                    let real = listening_addr(&child.stdout(), None);
                    map.0.insert(0, (from, real.to_string()));
                }
                "run" => {
                    assert!(
                        child.wait_stdout_contains("\nready", READY_TIMEOUT),
                        "{line}: stdout {} stderr {}",
                        child.stdout(),
                        child.stderr()
                    );
                    let out = child.stdout();
                    let edge = listening_addr(&out, Some("edge"));
                    let admin = admin_addr(&out);
                    map.0
                        .retain(|(from, _)| from != "127.0.0.1:8443" && from != "127.0.0.1:9901");
                    map.0.push(("127.0.0.1:8443".into(), edge.to_string()));
                    map.0.push(("127.0.0.1:9901".into(), admin.to_string()));
                }
                other => panic!("no readiness rule for a background `{other}`: {line}"),
            }
            background.push(child);
        } else {
            let (ok, out) = run_line(&words, dir);
            assert!(ok, "README line failed: {line}\n{out}");
            if sub == "bench" {
                // The load went through the README's listener and its backend.
                let field = |name: &str| {
                    out.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("no `{name}` line: {out}"))
                };
                assert!(field("ops ") > 0, "{line}\n{out}");
                assert_eq!(field("errors "), 0, "{line}\n{out}");
            }
        }
        ran.push(line.to_string());
    }
    // The PKI the README's config points at is the one `certs` wrote.
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.join("pki").join(f).is_file(), "certs wrote no pki/{f}");
    }
    eprintln!("ran, in order:\n  {}", ran.join("\n  "));
}

/// Lines that show how to call a subcommand: `terminus SUB …` or `cargo run --release
/// -- SUB …` (and their continuation lines, which start with `[`).
fn synopses(md: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (info, lines) in code_blocks(md) {
        if info != "sh" && !info.is_empty() {
            continue;
        }
        // Join `\` continuations: a command's flags may span lines.
        let mut joined: Vec<String> = Vec::new();
        let mut continues = false;
        for line in lines {
            let l = strip_comment(&line).to_string();
            match (continues, joined.last_mut()) {
                (true, Some(last)) => *last = format!("{} {}", last.trim_end_matches('\\'), l),
                _ => joined.push(l.clone()),
            }
            continues = l.ends_with('\\');
        }
        for line in joined {
            let l = line.trim_start_matches("taskset -c 0 ");
            let rest = l
                .strip_prefix("cargo run --release -- ")
                .or_else(|| l.strip_prefix(&format!("{RELEASE_BIN} ")))
                .or_else(|| l.strip_prefix("/usr/local/bin/terminus "))
                .or_else(|| l.strip_prefix("terminus "));
            let flags = |s: &str| {
                s.split(|c: char| c.is_whitespace() || "[]|=".contains(c))
                    .filter(|w| w.starts_with("--") && w.len() > 2)
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            if let Some(rest) = rest {
                let sub = rest.split_whitespace().next().unwrap_or("").to_string();
                out.push((sub, flags(rest)));
            } else if l.starts_with('[') {
                if let Some(last) = out.last_mut() {
                    last.1.extend(flags(l));
                }
            }
        }
    }
    out
}

#[test]
fn every_shown_subcommand_and_flag_exists() {
    let mut checked = 0;
    let mut help_of = std::collections::HashMap::new();
    for (doc, md) in [("README.md", README), ("BENCHMARKING.md", BENCHMARKING)] {
        for (sub, flags) in synopses(md) {
            let help = help_of.entry(sub.clone()).or_insert_with(|| {
                let out = Command::new(bin()).args([&sub, "--help"]).output().unwrap();
                assert!(
                    out.status.success(),
                    "{doc} shows `terminus {sub}`, which is not a subcommand: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            });
            for flag in flags {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{doc} shows `terminus {sub} {flag}`, which `terminus {sub} --help` does \
                     not list:\n{help}"
                );
                checked += 1;
            }
        }
    }
    // Guard against a parser that finds nothing and passes.
    assert!(checked > 40, "only {checked} flags found in the docs");
    assert!(help_of.contains_key("demo") && help_of.contains_key("bench"));
}

#[test]
fn readme_opens_with_the_demo_and_the_tests() {
    let (_, first) = code_blocks(README).into_iter().next().unwrap();
    let commands: Vec<&str> = first.iter().map(|l| strip_comment(l)).collect();
    assert_eq!(commands, ["cargo run --release -- demo", "bash .ci/run"]);
    // `cargo run` needs to know which of the package's binaries is meant.
    let manifest = include_str!("../../Cargo.toml");
    assert!(
        manifest.contains("default-run = \"terminus\""),
        "Cargo.toml lost default-run: `cargo run -- demo` would fail"
    );
    // And .ci/run runs that first command (shortened by documented flags).
    let ci = include_str!("../../.ci/run");
    assert!(ci.contains("$first --seconds 8 --rounds 1"), "{ci}");
}
