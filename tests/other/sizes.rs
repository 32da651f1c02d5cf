//! The house limits on size (ARCHITECTURE.md, "Testing"): no source file of the crates
//! over 900 lines, and no function anywhere (sources, tests, benches) over 120
//! lines. A function's length runs from its `fn` line to its closing brace; the scan
//! blanks strings, characters and comments first, so braces inside them do not count.

use crate::tree::{crate_sources, rust_files};
use std::path::PathBuf;

const MAX_FILE_LINES: usize = 900;
const MAX_FN_LINES: usize = 120;

/// The crates' source folders (the file limit) and, with tests and benches, every
/// folder of Rust code (the function limit).
fn folders() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let sources = crate_sources();
    let mut all = sources.clone();
    all.extend([
        crate::tree::root().join("tests"),
        crate::tree::root().join("benches"),
    ]);
    (sources, all)
}

/// `text` with the contents of comments, string and character literals replaced by
/// spaces (newlines kept, so line numbers hold).
fn blank_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let ident_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r' && !ident_before && matches!(c.get(i + 1), Some('"' | '#')) {
            // A raw string r"..." or r#"..."#: ends at a quote and as many hashes.
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            out.extend(&c[i..=j]);
            i = j + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    out.extend(&c[i..=i + hashes]);
                    i += hashes + 1;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                let step = if c[i] == '\\' { 2 } else { 1 };
                for &ch in &c[i..(i + step).min(c.len())] {
                    blank(&mut out, ch);
                }
                i += step;
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if c[i] == '\'' && !ident_before {
            // A character literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 2..c.len()).find(|&k| c[k] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(e) => {
                    out.push('\'');
                    for _ in i + 1..e {
                        out.push(' ');
                    }
                    out.push('\'');
                    i = e + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Whether a (blanked) line starts a function: `fn` after its qualifiers.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    loop {
        let before = rest;
        for q in ["pub ", "const ", "async ", "unsafe ", "extern \" \" "] {
            rest = rest.strip_prefix(q).unwrap_or(rest).trim_start();
        }
        if rest.starts_with("pub(") {
            rest = rest[rest.find(')')? + 1..].trim_start();
        }
        if rest == before {
            break;
        }
    }
    let name = rest.strip_prefix("fn ")?;
    let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&name[..end])
}

/// Every function of `text` with a body: (name, first line, number of lines).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let blanked = blank_literals(text);
    let lines: Vec<&str> = blanked.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let mut depth = 0usize;
        let mut opened = false;
        'scan: for (n, l) in lines.iter().enumerate().skip(start) {
            for ch in l.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            out.push((name.to_string(), start + 1, n - start + 1));
                            break 'scan;
                        }
                    }
                    // A declaration without a body (trait item, extern).
                    ';' if !opened => break 'scan,
                    _ => {}
                }
            }
        }
    }
    out
}

#[test]
fn no_file_over_900_lines_and_no_function_over_120() {
    let (sources, all) = folders();
    let mut files = Vec::new();
    for d in &all {
        rust_files(d, &mut files);
    }
    assert!(files.len() > 100, "found only {} .rs files", files.len());
    let mut found = Vec::new();
    let mut fns = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines = text.lines().count();
        if sources.iter().any(|s| f.starts_with(s)) && lines > MAX_FILE_LINES {
            found.push(format!("{}: {lines} lines", f.display()));
        }
        for (name, at, len) in functions(&text) {
            fns += 1;
            if len > MAX_FN_LINES {
                found.push(format!("{}:{at}: fn {name} is {len} lines", f.display()));
            }
        }
    }
    // The scan must have seen the functions, or it proves nothing.
    assert!(fns > 1000, "found only {fns} functions");
    assert!(
        found.is_empty(),
        "over {MAX_FILE_LINES} lines per file or {MAX_FN_LINES} per function:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_measures_bodies_not_literals() {
    let text = "pub(crate) fn a() {\n    let s = \"}\";\n    let c = '{';\n    // }\n}\n\
                fn b<'x>(v: &'x str) -> &'x str {\n    let r = r#\"}\"#;\n    v\n}\n\
                trait T {\n    fn decl(&self);\n}\n";
    assert_eq!(
        functions(text),
        [("a".to_string(), 1, 5), ("b".to_string(), 6, 4)]
    );
}
