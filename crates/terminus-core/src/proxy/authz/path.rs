//! The path a request rule is matched on: the request target reduced to one canonical
//! spelling, so that `/admin/../admin/x`, `/%61dmin/x` and `//admin/x` all read
//! `/admin/x` and cannot slip past an `/admin/*` rule.
//!
//! Steps, in order (RFC 3986 §6.2.2): take the path of an origin-form or absolute-form
//! target (no query, no fragment); percent-decode the unreserved characters (ALPHA,
//! DIGIT, `-`, `.`, `_`, `~`) and upper-case the hex of every other escape; collapse
//! runs of `/`; remove dot segments (§5.2.4), never climbing above the root.
//!
//! Spellings whose meaning differs between servers are refused rather than guessed:
//! an escaped `/` or `\` (`%2F`, `%5C`: one upstream decodes them into separators,
//! another does not), a raw `\`, an escaped or raw control byte or NUL, and a `%`
//! not followed by two hex digits. A listener with rules answers those with 400.
//!
//! I/O contract: pure.
#![forbid(unsafe_code)]

use std::fmt;

/// Why a request target has no canonical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not origin-form (`/…`), absolute-form (`http://host/…`) or `*`.
    NotAPath,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`: an encoded separator.
    EncodedSeparator,
    /// A raw `\`.
    Backslash,
    /// A control byte or NUL, raw or escaped.
    Control,
}

impl PathError {
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotAPath => "the request target is not a path",
            PathError::BadEscape => "a '%' is not followed by two hex digits",
            PathError::EncodedSeparator => "the path has an encoded '/' or '\\' (%2F, %5C)",
            PathError::Backslash => "the path has a '\\'",
            PathError::Control => "the path has a control character",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical path of a request target (see the module doc). `*` (OPTIONS) and an
/// authority-form target (CONNECT) have no path: they give `*` and `""`, which only a
/// rule without `paths` matches.
pub fn normalize(target: &str) -> Result<String, PathError> {
    if target == "*" {
        return Ok("*".into());
    }
    let path = match target.as_bytes().first() {
        Some(b'/') => target,
        _ => match absolute_form_path(target) {
            Some(p) => p,
            // CONNECT host:port.
            None if !target.contains('/') && target.contains(':') => return Ok(String::new()),
            None => return Err(PathError::NotAPath),
        },
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = decode_unreserved(path)?;
    Ok(remove_dot_segments(&decoded))
}

/// `http://host[:port]/path…` → `/path…` (`/` when the path is empty).
fn absolute_form_path(target: &str) -> Option<&str> {
    let rest = target
        .split_once("://")
        .filter(|(scheme, _)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        })?
        .1;
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(&rest[i..]),
        _ => Some("/"),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::Control),
                    _ if is_unreserved(byte) => out.push(byte as char),
                    _ => {
                        out.push('%');
                        out.push_str(&format!("{byte:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            _ => {
                // Copy the run up to the next byte that needs a look (keeps UTF-8 whole).
                let end = b[i..]
                    .iter()
                    .position(|&c| matches!(c, b'%' | b'\\' | 0..=0x1f | 0x7f))
                    .map_or(b.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Collapse `//` and resolve `.` and `..` segments; `..` at the root stays at the root.
/// A trailing `/`, `/.` or `/..` leaves the result ending in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_spellings() {
        for (target, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/admin/../admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/%61%64%6D%69%6E/x", "/admin/x"),
            ("//admin//x", "/admin/x"),
            ("/./admin/./x", "/admin/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../admin", "/admin"),
            ("/x/%2e%2e/admin", "/admin"),
            ("/x/.%2E/admin", "/admin"),
            ("/admin/x?y=/../z#f", "/admin/x"),
            ("/a%7eb", "/a~b"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("http://h.example:8080/admin/../x", "/x"),
            ("http://h.example", "/"),
            ("https://h.example?q", "/"),
            ("*", "*"),
            ("h.example:443", ""),
            ("/v1.Svc/Method", "/v1.Svc/Method"),
        ] {
            assert_eq!(normalize(target).as_deref(), Ok(want), "{target}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (target, why) in [
            ("/admin%2Fx", PathError::EncodedSeparator),
            ("/admin%2fx", PathError::EncodedSeparator),
            ("/admin%5cx", PathError::EncodedSeparator),
            ("/admin\\x", PathError::Backslash),
            ("/a%00b", PathError::Control),
            ("/a\u{1}b", PathError::Control),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("admin/x", PathError::NotAPath),
            ("", PathError::NotAPath),
        ] {
            assert_eq!(normalize(target), Err(why), "{target:?}");
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for t in ["/a/./b/../c//d/", "/%41%2e/x", "/a%20b/%7E", "/..", "/a/.."] {
            let once = normalize(t).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{t}");
        }
    }
}
