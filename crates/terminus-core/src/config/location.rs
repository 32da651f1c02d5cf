//! location: where in the config text a field or a serde error is.
//!
//! Owns field paths ([`Seg`], printed as `listeners[0].sni[1].cert`) and the
//! [`Locator`] that maps a path or a byte offset to a line through the
//! span-preserving `toml_edit` parse. No I/O: it works on text already read.
#![forbid(unsafe_code)]

use super::error::{ConfigError, ConfigErrorKind};
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// `listeners[1].sni[0].cert` -> [listeners, 1, sni, 0, cert].
pub(super) fn parse_field_path(field: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        let key_end = rest.find('[').unwrap_or(rest.len());
        if key_end > 0 {
            out.push(Seg::Key(&rest[..key_end]));
        }
        rest = &rest[key_end..];
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(close) = inner.find(']') else {
                break;
            };
            match inner[..close].parse() {
                Ok(i) => out.push(Seg::Index(i)),
                Err(_) => break,
            }
            rest = &inner[close + 1..];
        }
    }
    out
}

/// One step of a field path: `listeners` `[0]` `cert`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

pub(super) struct FieldPath<'p, 'a>(&'p [Seg<'a>]);

impl fmt::Display for FieldPath<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if n == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// Maps byte offsets and field paths of one config text to line numbers.
pub(super) struct Locator<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    /// The span-preserving parse; `None` when the text is not valid TOML.
    pub(super) doc: Option<&'a toml_edit::ImDocument<&'a str>>,
}

/// A node of the span-preserving parse tree.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
    /// An element of an array of tables (it has no `Item` of its own).
    Table(&'a toml_edit::Table),
}

impl<'a> Locator<'a> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// An error at `path`, on the line of the deepest part of `path` present in
    /// the file.
    pub(super) fn error(&self, path: &[Seg<'_>], kind: ConfigErrorKind) -> ConfigError {
        let line = (1..=path.len())
            .rev()
            .find_map(|n| self.span_of(&path[..n]))
            .map(|span| self.line_of(span.start));
        let field = FieldPath(path).to_string();
        ConfigError::new(self.file, line, Some(field), kind)
    }

    /// Turn a serde/TOML error into one line: the span gives the line, and the
    /// node under the span gives the field path.
    pub(super) fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let msg = one_line(e.message());
        // The span-preserving parse fails exactly when the text is not valid TOML.
        let kind = |msg| match self.doc {
            None => ConfigErrorKind::Syntax(msg),
            Some(_) => ConfigErrorKind::Schema(msg),
        };
        let Some(span) = e.span() else {
            return ConfigError::new(self.file, None, None, kind(msg));
        };
        let line = Some(self.line_of(span.start));
        let mut path = Vec::new();
        if let Some(doc) = self.doc {
            find_path(Node::Item(doc.as_item()), span.start, &mut path);
        }
        // "unknown field `x`" already names the key: report where it was found.
        if msg.starts_with("unknown field") && matches!(path.last(), Some(Seg::Key(_))) {
            path.pop();
        }
        let field = (!path.is_empty()).then(|| FieldPath(&path).to_string());
        ConfigError::new(self.file, line, field, kind(msg))
    }

    /// Span of the key (or, failing that, the value) at `path`.
    fn span_of(&self, path: &[Seg<'_>]) -> Option<Range<usize>> {
        let mut node = Node::Item(self.doc?.as_item());
        let mut key_span = None;
        for seg in path {
            key_span = None;
            node = match (*seg, node) {
                (Seg::Key(k), n) => {
                    let (key, item) = table_like(n)?.get_key_value(k)?;
                    key_span = key.span();
                    Node::Item(item)
                }
                (Seg::Index(i), Node::Item(toml_edit::Item::ArrayOfTables(a))) => {
                    let t = a.get(i)?;
                    key_span = t.span();
                    Node::Table(t)
                }
                (Seg::Index(i), n) => Node::Value(as_array(n)?.get(i)?),
            };
        }
        key_span.or_else(|| node_span(node))
    }
}

fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn table_like(n: Node<'_>) -> Option<&dyn toml_edit::TableLike> {
    match n {
        Node::Item(item) => item.as_table_like(),
        Node::Value(v) => v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike),
        Node::Table(t) => Some(t),
    }
}

fn as_array(n: Node<'_>) -> Option<&toml_edit::Array> {
    match n {
        Node::Item(item) => item.as_array(),
        Node::Value(v) => v.as_array(),
        Node::Table(_) => None,
    }
}

fn node_span(n: Node<'_>) -> Option<Range<usize>> {
    match n {
        Node::Item(item) => item.span(),
        Node::Value(v) => v.span(),
        Node::Table(t) => t.span(),
    }
}

fn contains(span: Option<Range<usize>>, pos: usize) -> bool {
    span.is_some_and(|s| s.contains(&pos) || s.start == pos)
}

/// Push onto `path` the field path of the deepest node whose key or value span
/// holds byte offset `pos`. Returns whether anything (including `n` itself) matched.
fn find_path<'a>(n: Node<'a>, pos: usize, path: &mut Vec<Seg<'a>>) -> bool {
    if let Node::Item(toml_edit::Item::ArrayOfTables(a)) = n {
        for (i, t) in a.iter().enumerate() {
            path.push(Seg::Index(i));
            if find_path(Node::Table(t), pos, path) {
                return true;
            }
            path.pop();
        }
    } else if let Some(t) = table_like(n) {
        for (k, _) in t.iter() {
            let Some((key, item)) = t.get_key_value(k) else {
                continue;
            };
            path.push(Seg::Key(key.get()));
            if find_path(Node::Item(item), pos, path) || contains(key.span(), pos) {
                return true;
            }
            path.pop();
        }
    } else if let Some(a) = as_array(n) {
        for (i, v) in a.iter().enumerate() {
            path.push(Seg::Index(i));
            if find_path(Node::Value(v), pos, path) {
                return true;
            }
            path.pop();
        }
    }
    contains(node_span(n), pos)
}
