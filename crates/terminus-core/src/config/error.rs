//! error: [`ConfigError`], one problem of one config file.
//!
//! Owns the error type and its one-line text `FILE[:LINE][: FIELD]: why`; where the
//! line and field come from is `location`'s business. No I/O.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;

/// A config problem, displayed as one line naming file, line and field, e.g.
/// `config.toml:7: listeners[0].handshake_timeout_ms: must be greater than 0`.
/// The `:LINE` and `FIELD: ` parts are left out when unknown.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line of the field (or of the text serde stopped at), when found.
    pub line: Option<usize>,
    /// Field path as printed, e.g. `listeners[1].sni[0].cert`.
    pub field: Option<String>,
    pub kind: ConfigErrorKind,
    /// How many further problems [`Config::load`](super::Config::load) left out
    /// (it reports the first one only).
    pub more: usize,
}

/// What is wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The config file cannot be read.
    Read(std::io::Error),
    /// A file the config names cannot be opened (`log.access`).
    Open(std::io::Error),
    /// The text is not TOML.
    Syntax(String),
    /// TOML that does not fit the schema: unknown key, wrong type, missing field.
    Schema(String),
    /// A value the schema takes but terminus cannot use (validation, or a later
    /// check such as an address that cannot be bound).
    Invalid(String),
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        field: Option<String>,
        kind: ConfigErrorKind,
    ) -> ConfigError {
        ConfigError {
            file: file.into(),
            line,
            field,
            kind,
            more: 0,
        }
    }
}

impl fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigErrorKind::Read(e) => write!(f, "cannot read config file: {e}"),
            ConfigErrorKind::Open(e) => write!(f, "cannot open: {e}"),
            ConfigErrorKind::Syntax(m) => write!(f, "invalid TOML: {m}"),
            ConfigErrorKind::Schema(m) | ConfigErrorKind::Invalid(m) => f.write_str(m),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.kind)?;
        if self.more > 0 {
            let s = if self.more == 1 { "" } else { "s" };
            write!(
                f,
                " (and {} more problem{s}; `terminus check` lists them all)",
                self.more
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ConfigErrorKind::Read(e) | ConfigErrorKind::Open(e) => Some(e),
            _ => None,
        }
    }
}

/// The first problem, counting the others (what `load` and `parse` return).
pub(super) fn first_with_count(all: Vec<ConfigError>, file: PathBuf) -> ConfigError {
    let more = all.len().saturating_sub(1);
    let mut first = all.into_iter().next().unwrap_or_else(|| {
        ConfigError::new(
            file,
            None,
            None,
            ConfigErrorKind::Invalid("invalid config".into()),
        )
    });
    first.more = more;
    first
}
