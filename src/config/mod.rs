//! Config schema (TOML, serde) with defaults and validation.
//!
//! Owns: parsing a config file into [`Config`], resolving relative paths against the
//! file's folder, and validation errors that name the file, line and field.
//! Opens no sockets; reads only the config file itself (certificate files are the
//! `tls` module's business).
//!
//! Error format (one line each): `FILE:LINE: FIELD.PATH: cause`, e.g.
//! `config.toml:7: listeners[0].handshake_timeout_ms: invalid type: string "x", expected u64`.
//! When no line can be found the `:LINE` part is left out.
#![forbid(unsafe_code)]

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub log: Log,
    pub listeners: Vec<Listener>,
    /// The file this config was read from (not a TOML key).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Default: one per CPU in the process's affinity mask.
    pub workers: Option<usize>,
    #[serde(default = "yes")]
    pub pin_cpus: bool,
    /// Explicit CPU list; worker i is pinned to cpus[i % len].
    pub cpus: Option<Vec<usize>>,
    #[serde(default = "default_ring_entries")]
    pub ring_entries: u32,
    #[serde(default)]
    pub sqpoll: bool,
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// Provided-buffer ring: number of receive buffers per worker (power of two).
    #[serde(default = "default_recv_buffers")]
    pub recv_buffers: u16,
    /// Size of each receive buffer in bytes.
    #[serde(default = "default_recv_buffer_size")]
    pub recv_buffer_size: u32,
    /// Bytes all of one worker's connections may buffer together; past it, a
    /// direction that already holds bytes stops receiving until they drain.
    #[serde(default = "default_max_buffered_bytes_per_worker")]
    pub max_buffered_bytes_per_worker: usize,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            workers: None,
            pin_cpus: true,
            cpus: None,
            ring_entries: default_ring_entries(),
            sqpoll: false,
            drain_timeout_ms: default_drain_timeout_ms(),
            reload_interval_ms: default_reload_interval_ms(),
            recv_buffers: default_recv_buffers(),
            recv_buffer_size: default_recv_buffer_size(),
            max_buffered_bytes_per_worker: default_max_buffered_bytes_per_worker(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Admin connections served at once; more are closed at accept (a scrape storm
    /// cannot pile up threads).
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: usize,
    /// Read/write timeout of one admin request (slow or silent scrapers).
    #[serde(default = "default_admin_timeout_ms")]
    pub timeout_ms: u64,
    /// How often workers publish their counters and histograms (only when changed):
    /// the staleness bound of a scrape.
    #[serde(default = "default_snapshot_interval_ms")]
    pub snapshot_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// "stderr" | "off" | a file path.
    #[serde(default = "default_access")]
    pub access: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            access: default_access(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub upstreams: Vec<SocketAddr>,
    #[serde(default)]
    pub alpn: Vec<String>,
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// listen(2) backlog of each worker's socket (the kernel caps it at somaxconn).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Per direction: stop reading from one side once this many bytes wait for the other.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Server-side resumption cache entries (shared by all workers).
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
    /// TLS 1.3 tickets sent after a full handshake (0 disables tickets).
    #[serde(default = "default_tls13_tickets")]
    pub tls13_tickets: usize,
    /// `"v2"`: send a PROXY protocol v2 header (with identity TLVs) to the upstream.
    pub proxy_protocol: Option<String>,
    pub ticket_key_file: Option<PathBuf>,
    /// Lifetime hint of session tickets, in seconds (RFC 8446 caps it at 7 days).
    #[serde(default = "default_ticket_lifetime_s")]
    pub ticket_lifetime_s: u32,
    /// Extra certificates chosen by SNI (`[[listeners.sni]]`); `cert`/`key` above
    /// remain the default for unknown or absent server names.
    #[serde(default)]
    pub sni: Vec<Sni>,
    /// Client certificate authentication (`[listeners.client_auth]`); absent = none.
    pub client_auth: Option<ClientAuth>,
    /// Re-encryption to the upstream (`[listeners.upstream_tls]`); absent = plaintext.
    pub upstream_tls: Option<UpstreamTls>,
}

/// `[[listeners.sni]]`: a certificate served to clients asking for one of
/// `server_names` (ASCII case-insensitive; `*.example.org` matches one label).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sni {
    pub server_names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[listeners.client_auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM CA bundles whose certificates are trust anchors for client chains.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// CRLs (PEM `X509 CRL` or DER); a revoked certificate anywhere in a client's
    /// chain is refused.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Allowed identities (see `policy`); empty = any verified client.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// Whether clients are asked for a certificate, and whether they must send one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// No certificate requested.
    #[default]
    None,
    /// Requested; clients without one are let through (`client_auth=none`), a
    /// certificate that fails verification or policy is refused.
    Optional,
    /// Required and verified.
    Require,
}

impl ClientAuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMode::None => "none",
            ClientAuthMode::Optional => "optional",
            ClientAuthMode::Require => "require",
        }
    }
}

impl<'de> Deserialize<'de> for ClientAuthMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(ClientAuthMode::None),
            "optional" => Ok(ClientAuthMode::Optional),
            "require" => Ok(ClientAuthMode::Require),
            _ => Err(serde::de::Error::custom(format!(
                "must be one of \"none\", \"optional\", \"require\", got {s:?}"
            ))),
        }
    }
}

/// `[listeners.upstream_tls]`: TLS towards the upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA bundles the upstream's certificate must chain to.
    pub ca: Vec<PathBuf>,
    /// Name (DNS name or IP address) the upstream's certificate must be valid for;
    /// also sent as SNI when it is a DNS name.
    pub server_name: String,
    /// Client certificate chain for mTLS towards the upstream (with `key`).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Offer the upstream TLS sessions to resume (default). An upstream that refuses
    /// them (its handshake fails) is retried with a full handshake and left alone for
    /// a while anyway; `false` never offers any.
    #[serde(default = "yes")]
    pub resume: bool,
}

fn yes() -> bool {
    true
}
fn default_admin_max_connections() -> usize {
    64
}
fn default_admin_timeout_ms() -> u64 {
    5000
}
fn default_snapshot_interval_ms() -> u64 {
    250
}
fn default_ticket_lifetime_s() -> u32 {
    6 * 3600
}
fn default_ring_entries() -> u32 {
    4096
}
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_reload_interval_ms() -> u64 {
    5_000
}
fn default_recv_buffers() -> u16 {
    1024
}
fn default_recv_buffer_size() -> u32 {
    16 * 1024
}
fn default_max_buffered_bytes_per_worker() -> usize {
    512 * 1024 * 1024
}
fn default_access() -> String {
    "stderr".into()
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_backlog() -> u32 {
    4096
}
fn default_max_connections() -> usize {
    100_000
}
fn default_max_buffered_bytes() -> usize {
    256 * 1024
}
fn default_session_cache() -> usize {
    16 * 1024
}
fn default_tls13_tickets() -> usize {
    1
}

impl Config {
    /// Read, parse and validate a config file. Relative paths become relative to
    /// the file's folder. On failure the error is the first problem found (with a
    /// count of the others); [`Config::load_all`] returns every problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_all(path).map_err(first_with_count)
    }

    /// Like [`Config::load`], but reports every validation problem, one error each.
    /// (A file that does not read or parse yields exactly one error.)
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError(format!(
                "{}: cannot read config file: {e}",
                path.display()
            ))]
        })?;
        Config::parse_all(&text, path)
    }

    /// Parse and validate config text as if it had been read from `source` (used
    /// for error messages and for resolving relative paths). First problem only.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        Config::parse_all(text, source).map_err(first_with_count)
    }

    /// Parse and validate config text; every problem, one error each.
    pub fn parse_all(text: &str, source: &Path) -> Result<Config, Vec<ConfigError>> {
        let checked = Config::parse_checked(text, source);
        match checked.config {
            Some(cfg) if checked.problems.is_empty() => Ok(cfg),
            _ => Err(checked.problems),
        }
    }

    /// For `check`: read, parse and validate, but keep the config even when
    /// validation finds problems, so that the files and addresses it names can be
    /// checked in the same pass. Never fails: an unreadable or unparsable file gives
    /// `config: None` and its one problem.
    pub fn load_checked(path: &Path) -> Checked {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse_checked(&text, path),
            Err(e) => Checked {
                config: None,
                problems: vec![ConfigError(format!(
                    "{}: cannot read config file: {e}",
                    path.display()
                ))],
                listeners_with_problems: Vec::new(),
                file: path.to_path_buf(),
                text: String::new(),
            },
        }
    }

    /// [`Config::load_checked`] on text read from `source`.
    pub fn parse_checked(text: &str, source: &Path) -> Checked {
        let doc = toml_edit::ImDocument::parse(text).ok();
        let locator = Locator {
            file: source,
            text,
            doc: doc.as_ref(),
        };
        let mut checked = Checked {
            config: None,
            problems: Vec::new(),
            listeners_with_problems: Vec::new(),
            file: source.to_path_buf(),
            text: text.to_owned(),
        };
        let mut cfg: Config = match toml::from_str(text) {
            Ok(cfg) => cfg,
            Err(e) => {
                checked.problems.push(locator.serde_error(&e));
                return checked;
            }
        };
        let mut listeners = Vec::new();
        checked.problems = cfg.validate(&locator, &mut listeners);
        listeners.sort_unstable();
        listeners.dedup();
        checked.listeners_with_problems = listeners;
        cfg.source = source.to_path_buf();
        cfg.resolve_paths(source);
        checked.config = Some(cfg);
        checked
    }

    /// Every validation problem; `listeners` gets the index of each listener that
    /// has one.
    fn validate(&self, at: &Locator<'_>, listeners: &mut Vec<usize>) -> Vec<ConfigError> {
        use Seg::{Index as I, Key as K};
        let mut out = Vec::new();
        let mut bad = |path: &[Seg<'_>], msg: String| {
            if let [K("listeners"), I(i), ..] = path {
                listeners.push(*i);
            }
            out.push(at.error(path, &msg))
        };

        let rt = &self.runtime;
        if rt.workers == Some(0) {
            bad(&[K("runtime"), K("workers")], "must be at least 1".into());
        }
        if rt.cpus.as_ref().is_some_and(|c| c.is_empty()) {
            bad(
                &[K("runtime"), K("cpus")],
                "must list at least one CPU (or be left out)".into(),
            );
        }
        if !(rt.ring_entries.is_power_of_two() && (2..=32768).contains(&rt.ring_entries)) {
            bad(
                &[K("runtime"), K("ring_entries")],
                format!(
                    "must be a power of two between 2 and 32768, got {}",
                    rt.ring_entries
                ),
            );
        }
        if !(rt.recv_buffers.is_power_of_two() && rt.recv_buffers <= 32768) {
            bad(
                &[K("runtime"), K("recv_buffers")],
                format!(
                    "must be a power of two between 1 and 32768, got {}",
                    rt.recv_buffers
                ),
            );
        }
        if rt.recv_buffer_size < 4096 {
            bad(
                &[K("runtime"), K("recv_buffer_size")],
                format!("must be at least 4096 bytes, got {}", rt.recv_buffer_size),
            );
        }
        if rt.max_buffered_bytes_per_worker < 1 << 20 {
            bad(
                &[K("runtime"), K("max_buffered_bytes_per_worker")],
                format!(
                    "must be at least 1048576 bytes (1 MiB), got {}",
                    rt.max_buffered_bytes_per_worker
                ),
            );
        }
        for (key, v) in [
            ("drain_timeout_ms", rt.drain_timeout_ms),
            ("reload_interval_ms", rt.reload_interval_ms),
        ] {
            if v == 0 {
                bad(&[K("runtime"), K(key)], "must be greater than 0".into());
            }
        }
        if let Some(a) = &self.admin {
            for (key, v) in [
                ("max_connections", a.max_connections as u64),
                ("timeout_ms", a.timeout_ms),
                ("snapshot_interval_ms", a.snapshot_interval_ms),
            ] {
                if v == 0 {
                    bad(&[K("admin"), K(key)], "must be greater than 0".into());
                }
            }
        }
        if self.log.access.is_empty() {
            bad(
                &[K("log"), K("access")],
                "must be \"stderr\", \"off\" or a file path, got an empty string".into(),
            );
        }

        if self.listeners.is_empty() {
            bad(
                &[K("listeners")],
                "at least one [[listeners]] entry is required".into(),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let field = |key: &'static str| [K("listeners"), I(i), K(key)];
            if l.name.is_empty() {
                bad(&field("name"), "must not be empty".into());
            } else if let Some(first) = names.insert(&l.name, i) {
                names.insert(&l.name, first);
                bad(
                    &field("name"),
                    format!(
                        "duplicate listener name {:?} (already used by listeners[{first}])",
                        l.name
                    ),
                );
            }
            if l.listen.port() != 0 {
                if let Some(first) = addrs.insert(l.listen, i) {
                    addrs.insert(l.listen, first);
                    bad(
                        &field("listen"),
                        format!("address {} is already used by listeners[{first}]", l.listen),
                    );
                }
                if self.admin.as_ref().is_some_and(|a| a.listen == l.listen) {
                    bad(
                        &field("listen"),
                        format!("address {} is also the admin address", l.listen),
                    );
                }
            }
            if l.upstreams.is_empty() {
                bad(
                    &field("upstreams"),
                    "at least one upstream is required".into(),
                );
            }
            for (key, v) in [
                ("handshake_timeout_ms", l.handshake_timeout_ms),
                ("idle_timeout_ms", l.idle_timeout_ms),
                ("connect_timeout_ms", l.connect_timeout_ms),
            ] {
                if v == 0 {
                    bad(&field(key), "must be greater than 0".into());
                }
            }
            if !(1..=604_800).contains(&l.ticket_lifetime_s) {
                bad(
                    &field("ticket_lifetime_s"),
                    format!(
                        "must be between 1 and 604800 seconds (7 days, RFC 8446), got {}",
                        l.ticket_lifetime_s
                    ),
                );
            }
            if l.max_connections == 0 {
                bad(&field("max_connections"), "must be at least 1".into());
            }
            if l.max_buffered_bytes < 16384 {
                bad(
                    &field("max_buffered_bytes"),
                    format!(
                        "must be at least 16384 bytes (one TLS record), got {}",
                        l.max_buffered_bytes
                    ),
                );
            }
            if let Some(p) = &l.proxy_protocol {
                if p != "v2" {
                    bad(
                        &field("proxy_protocol"),
                        format!("must be \"v2\" (the only supported version), got {p:?}"),
                    );
                }
            }
            for (j, proto) in l.alpn.iter().enumerate() {
                if proto.is_empty() || proto.len() > 255 {
                    bad(
                        &[K("listeners"), I(i), K("alpn"), I(j)],
                        format!(
                            "an ALPN protocol name must be 1 to 255 bytes, got {}",
                            proto.len()
                        ),
                    );
                }
            }
            validate_sni(&l.sni, i, &mut bad);
            if let Some(ca) = &l.client_auth {
                validate_client_auth(ca, i, &mut bad);
            }
            if let Some(up) = &l.upstream_tls {
                validate_upstream_tls(up, i, &mut bad);
            }
        }
        out
    }

    /// Make `cert`, `key`, `ticket_key_file`, the `sni`, `client_auth` and
    /// `upstream_tls` files and a file `log.access` relative to the config file's folder (made absolute, so the result does not depend on the
    /// current directory later).
    fn resolve_paths(&mut self, source: &Path) {
        let base = std::path::absolute(source)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.listeners {
            resolve(&mut l.cert);
            resolve(&mut l.key);
            if let Some(t) = &mut l.ticket_key_file {
                resolve(t);
            }
            for sni in &mut l.sni {
                resolve(&mut sni.cert);
                resolve(&mut sni.key);
            }
            if let Some(ca) = &mut l.client_auth {
                ca.ca.iter_mut().chain(ca.crl.iter_mut()).for_each(resolve);
            }
            if let Some(up) = &mut l.upstream_tls {
                up.ca.iter_mut().for_each(resolve);
                up.cert
                    .iter_mut()
                    .chain(up.key.iter_mut())
                    .for_each(resolve);
            }
        }
        let access = &mut self.log.access;
        if access != "stderr" && access != "off" && Path::new(access.as_str()).is_relative() {
            if let Some(s) = base.join(access.as_str()).to_str() {
                *access = s.to_owned();
            }
        }
    }
}

type Bad<'b> = dyn FnMut(&[Seg<'_>], String) + 'b;

/// `[[listeners.sni]]`: names present and well-formed, each claimed by one entry.
fn validate_sni(entries: &[Sni], i: usize, bad: &mut Bad<'_>) {
    use Seg::{Index as I, Key as K};
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (j, sni) in entries.iter().enumerate() {
        let at = |key| [K("listeners"), I(i), K("sni"), I(j), K(key)];
        if sni.server_names.is_empty() {
            bad(
                &at("server_names"),
                "must list at least one server name".into(),
            );
        }
        for (n, name) in sni.server_names.iter().enumerate() {
            let path = [
                K("listeners"),
                I(i),
                K("sni"),
                I(j),
                K("server_names"),
                I(n),
            ];
            if let Err(why) = check_sni_name(name) {
                bad(&path, why);
                continue;
            }
            if let Some(first) = seen.insert(name.to_ascii_lowercase(), j) {
                bad(
                    &path,
                    format!("{name:?} is already listed by listeners[{i}].sni[{first}]"),
                );
            }
        }
    }
}

/// A server name for `[[listeners.sni]]`: a DNS name, optionally `*.` + a DNS name.
fn check_sni_name(name: &str) -> Result<(), String> {
    let base = name.strip_prefix("*.").unwrap_or(name);
    let dns_ok = !base.contains('*')
        && base.contains(|c: char| c.is_ascii_alphabetic())
        && rustls_pki_types::DnsName::try_from(base).is_ok();
    if dns_ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS name or a \"*.\" wildcard of one (clients send SNI only \
             for DNS names, e.g. \"api.internal\" or \"*.example.org\")"
        ))
    }
}

fn validate_client_auth(ca: &ClientAuth, i: usize, bad: &mut Bad<'_>) {
    use Seg::{Index as I, Key as K};
    let at = |key| [K("listeners"), I(i), K("client_auth"), K(key)];
    if ca.mode != ClientAuthMode::None && ca.ca.is_empty() {
        bad(
            &at("ca"),
            format!(
                "mode \"{}\" needs at least one CA bundle to verify client certificates \
                 against (ca = [\"clients-ca.pem\"])",
                ca.mode.as_str()
            ),
        );
    }
    if ca.mode == ClientAuthMode::None && !ca.allow.is_empty() {
        bad(
            &at("allow"),
            "mode is \"none\" (also the default when `mode` is left out): no client \
             certificate is asked for, so this allow-list would be silently ignored; set \
             mode = \"require\" (or \"optional\") to enforce it, or remove `allow`"
                .into(),
        );
    }
    for (k, entry) in ca.allow.iter().enumerate() {
        if let Err(why) = crate::tls::policy::AllowRule::parse(entry) {
            bad(
                &[K("listeners"), I(i), K("client_auth"), K("allow"), I(k)],
                why,
            );
        }
    }
}

fn validate_upstream_tls(up: &UpstreamTls, i: usize, bad: &mut Bad<'_>) {
    use Seg::{Index as I, Key as K};
    let at = |key| [K("listeners"), I(i), K("upstream_tls"), K(key)];
    if up.ca.is_empty() {
        bad(
            &at("ca"),
            "must list at least one CA bundle to verify the upstream's certificate against".into(),
        );
    }
    if rustls_pki_types::ServerName::try_from(up.server_name.as_str()).is_err() {
        bad(
            &at("server_name"),
            format!("{:?} is not a DNS name or an IP address", up.server_name),
        );
    }
    match (&up.cert, &up.key) {
        (Some(_), None) => bad(
            &at("cert"),
            "a client certificate needs its private key: set `key` too (or neither)".into(),
        ),
        (None, Some(_)) => bad(
            &at("key"),
            "a private key needs its client certificate: set `cert` too (or neither)".into(),
        ),
        _ => {}
    }
}

/// What [`Config::load_checked`] found: the config when it parsed (even if
/// validation found problems), every problem, and the text, to place problems that
/// are found later (an address that cannot be bound, a CPU outside the affinity mask).
#[derive(Debug)]
pub struct Checked {
    /// `None` when the file did not read or parse; paths are resolved as by
    /// [`Config::load`].
    pub config: Option<Config>,
    /// Every read, parse or validation problem.
    pub problems: Vec<ConfigError>,
    /// Indexes of the listeners that have a validation problem.
    pub listeners_with_problems: Vec<usize>,
    file: PathBuf,
    text: String,
}

impl Checked {
    /// `FILE:LINE: FIELD: msg` for a problem found outside validation. `field` is a
    /// field path as printed in errors, e.g. `listeners[1].listen` or `runtime.cpus[0]`;
    /// the line is the deepest part of it present in the file.
    pub fn error(&self, field: &str, msg: &str) -> ConfigError {
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok();
        let locator = Locator {
            file: &self.file,
            text: &self.text,
            doc: doc.as_ref(),
        };
        locator.error(&parse_field_path(field), msg)
    }
}

/// `listeners[1].sni[0].cert` -> [listeners, 1, sni, 0, cert].
fn parse_field_path(field: &str) -> Vec<Seg<'_>> {
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

/// A config problem, displayed as one line naming file, line and field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn first_with_count(mut all: Vec<ConfigError>) -> ConfigError {
    let more = all.len().saturating_sub(1);
    let mut first = if all.is_empty() {
        ConfigError("invalid config".into())
    } else {
        all.swap_remove(0)
    };
    if more > 0 {
        let s = if more == 1 { "" } else { "s" };
        first.0 = format!(
            "{} (and {more} more problem{s}; `terminus check` lists them all)",
            first.0
        );
    }
    first
}

/// One step of a field path: `listeners` `[0]` `cert`.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct FieldPath<'p, 'a>(&'p [Seg<'a>]);

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
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    /// The span-preserving parse; `None` when the text is not valid TOML.
    doc: Option<&'a toml_edit::ImDocument<&'a str>>,
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

    /// `FILE:LINE: PATH: msg`, with the line of the deepest part of `path` present
    /// in the file.
    fn error(&self, path: &[Seg<'_>], msg: &str) -> ConfigError {
        let line = (1..=path.len())
            .rev()
            .find_map(|n| self.span_of(&path[..n]))
            .map(|span| self.line_of(span.start));
        let file = self.file.display();
        let field = FieldPath(path);
        ConfigError(match line {
            Some(line) => format!("{file}:{line}: {field}: {msg}"),
            None => format!("{file}: {field}: {msg}"),
        })
    }

    /// Turn a serde/TOML error into one line: the span gives the line, and the
    /// node under the span gives the field path.
    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let msg = one_line(e.message());
        let file = self.file.display();
        // The span-preserving parse fails exactly when the text is not valid TOML.
        let msg = if self.doc.is_none() {
            format!("invalid TOML: {msg}")
        } else {
            msg
        };
        let Some(span) = e.span() else {
            return ConfigError(format!("{file}: {msg}"));
        };
        let line = self.line_of(span.start);
        let mut path = Vec::new();
        if let Some(doc) = self.doc {
            find_path(Node::Item(doc.as_item()), span.start, &mut path);
        }
        // "unknown field `x`" already names the key: report where it was found.
        if msg.starts_with("unknown field") && matches!(path.last(), Some(Seg::Key(_))) {
            path.pop();
        }
        ConfigError(if path.is_empty() {
            format!("{file}:{line}: {msg}")
        } else {
            format!("{file}:{line}: {}: {msg}", FieldPath(&path))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = r#"
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
cert = "server.pem"
key = "keys/server.key"
upstreams = ["127.0.0.1:8080"]
"#;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse_all(text, Path::new("/etc/terminus/config.toml"))
            .map_err(|es| es.into_iter().map(|e| e.0).collect())
    }

    fn one_error(text: &str) -> String {
        let errors = parse(text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let cfg = parse(LISTENER).unwrap();
        assert_eq!(cfg.source, Path::new("/etc/terminus/config.toml"));
        let l = &cfg.listeners[0];
        assert_eq!(l.listen.port(), 0);
        assert_eq!(l.cert, Path::new("/etc/terminus/server.pem"));
        assert_eq!(l.key, Path::new("/etc/terminus/keys/server.key"));
        assert_eq!(l.handshake_timeout_ms, 10_000);
        assert_eq!(cfg.runtime.ring_entries, 4096);
        assert_eq!(cfg.log.access, "stderr");
    }

    #[test]
    fn absolute_paths_and_access_log_file() {
        let text = format!(
            "[log]\naccess = \"access.log\"\n{}ticket_key_file = \"/var/lib/t.key\"\n",
            LISTENER.replace("server.pem", "/certs/server.pem")
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.listeners[0].cert, Path::new("/certs/server.pem"));
        assert_eq!(
            cfg.listeners[0].ticket_key_file.as_deref(),
            Some(Path::new("/var/lib/t.key"))
        );
        assert_eq!(cfg.log.access, "/etc/terminus/access.log");
    }

    #[test]
    fn unknown_key_names_file_line_and_table() {
        let e = one_error(&format!("{LISTENER}listn = 1\n"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:8: listeners[0]: unknown field `listn`"),
            "{e}"
        );
        let e = one_error(&format!("listn = 1\n{LISTENER}"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:1: unknown field `listn`, expected one of"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_field_path() {
        let e = one_error(&format!("{LISTENER}handshake_timeout_ms = \"x\"\n"));
        assert_eq!(
            e,
            "/etc/terminus/config.toml:8: listeners[0].handshake_timeout_ms: \
             invalid type: string \"x\", expected u64"
        );
        let e = one_error(&format!(
            "{LISTENER}{}",
            LISTENER.replace("[\"127.0.0.1:8080\"]", "[\"127.0.0.1:1\", \"nope\"]")
        ));
        assert!(
            e.starts_with(
                "/etc/terminus/config.toml:14: listeners[1].upstreams[1]: invalid socket address"
            ),
            "{e}"
        );
        let e = one_error(&format!("[runtime]\nworkers = -1\n{LISTENER}"));
        assert!(
            e.starts_with("/etc/terminus/config.toml:2: runtime.workers: invalid value"),
            "{e}"
        );
    }

    #[test]
    fn inline_tables_and_missing_fields() {
        let e = one_error("listeners = [{ name = \"a\", listen = \"127.0.0.1:0\", cert = \"c\", key = \"k\", upstreams = [], alpn = [1] }]");
        assert!(
            e.contains(":1: listeners[0].alpn[0]: invalid type: integer"),
            "{e}"
        );
        let e = one_error(&LISTENER.replace("cert = \"server.pem\"\n", ""));
        assert_eq!(
            e,
            "/etc/terminus/config.toml:2: listeners[0]: missing field `cert`"
        );
        let e = one_error("");
        assert!(e.contains("missing field `listeners`"), "{e}");
    }

    #[test]
    fn syntax_error_is_one_line() {
        let e = one_error("[runtime]\nworkers = = 2\n");
        assert!(
            e.starts_with("/etc/terminus/config.toml:2: invalid TOML: "),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn validation_reports_every_problem_with_lines() {
        let text = format!(
            "[runtime]\nworkers = 0\nring_entries = 1000\nrecv_buffers = 3\nrecv_buffer_size = 100\n\
             {LISTENER}upstreams = []\nproxy_protocol = \"v1\"\nmax_buffered_bytes = 10\nidle_timeout_ms = 0\n\
             [listeners.client_auth]\nmode = \"require\"\nallow = [\"spiffe://*\"]\n{LISTENER}"
        )
        .replace("upstreams = [\"127.0.0.1:8080\"]\nupstreams = []", "upstreams = []");
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        let expect = [
            format!("{f}:2: runtime.workers: must be at least 1"),
            format!("{f}:3: runtime.ring_entries: must be a power of two between 2 and 32768, got 1000"),
            format!("{f}:4: runtime.recv_buffers: must be a power of two between 1 and 32768, got 3"),
            format!("{f}:5: runtime.recv_buffer_size: must be at least 4096 bytes, got 100"),
            format!("{f}:12: listeners[0].upstreams: at least one upstream is required"),
            format!("{f}:15: listeners[0].idle_timeout_ms: must be greater than 0"),
            format!("{f}:14: listeners[0].max_buffered_bytes: must be at least 16384 bytes (one TLS record), got 10"),
            format!("{f}:13: listeners[0].proxy_protocol: must be \"v2\" (the only supported version), got \"v1\""),
            format!("{f}:16: listeners[0].client_auth.ca: mode \"require\" needs at least one CA bundle to verify client certificates against (ca = [\"clients-ca.pem\"])"),
            format!("{f}:18: listeners[0].client_auth.allow[0]: \"spiffe://*\": a wildcard cannot stand for a trust domain or part of one; name the trust domain exactly (e.g. \"spiffe://example.org/ns/*\")"),
            format!("{f}:21: listeners[1].name: duplicate listener name \"edge\" (already used by listeners[0])"),
        ];
        assert_eq!(errors, expect);
    }

    #[test]
    fn trust_sections_are_typed_and_resolved() {
        let text = format!(
            "{LISTENER}proxy_protocol = \"v2\"\n\
             [[listeners.sni]]\nserver_names = [\"api.internal\", \"*.Example.org\"]\ncert = \"api.pem\"\nkey = \"/k/api.key\"\n\
             [[listeners.sni]]\nserver_names = [\"b.internal\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n\
             [listeners.client_auth]\nmode = \"require\"\nca = [\"ca.pem\", \"/pki/ca2.pem\"]\ncrl = [\"ca.crl\"]\n\
             allow = [\"spiffe://example.org/ns/prod/*\", \"dns:billing.internal\", \"cn:billing\"]\n\
             [listeners.upstream_tls]\nca = [\"up-ca.pem\"]\nserver_name = \"backend.internal\"\ncert = \"client.pem\"\nkey = \"client.key\"\n"
        );
        let cfg = parse(&text).unwrap();
        let l = &cfg.listeners[0];
        let e = Path::new("/etc/terminus");
        assert_eq!(l.proxy_protocol.as_deref(), Some("v2"));
        assert_eq!(l.sni.len(), 2);
        assert_eq!(l.sni[0].server_names, ["api.internal", "*.Example.org"]);
        assert_eq!(l.sni[0].cert, e.join("api.pem"));
        assert_eq!(l.sni[0].key, Path::new("/k/api.key"));
        assert_eq!(l.sni[1].key, e.join("b.key"));
        let ca = l.client_auth.as_ref().unwrap();
        assert_eq!(ca.mode, ClientAuthMode::Require);
        assert_eq!(ca.ca, [e.join("ca.pem"), PathBuf::from("/pki/ca2.pem")]);
        assert_eq!(ca.crl, [e.join("ca.crl")]);
        assert_eq!(ca.allow.len(), 3);
        let up = l.upstream_tls.as_ref().unwrap();
        assert_eq!(up.ca, [e.join("up-ca.pem")]);
        assert_eq!(up.server_name, "backend.internal");
        assert_eq!(up.cert.as_deref(), Some(e.join("client.pem").as_path()));
        assert_eq!(up.key.as_deref(), Some(e.join("client.key").as_path()));
        assert!(
            up.resume,
            "resumption towards the upstream is on by default"
        );
        let cfg = parse(&format!(
            "{LISTENER}[listeners.upstream_tls]\nca = [\"up-ca.pem\"]\nserver_name = \"b\"\nresume = false\n"
        ))
        .unwrap();
        assert!(!cfg.listeners[0].upstream_tls.as_ref().unwrap().resume);
    }

    #[test]
    fn client_auth_defaults_to_none_and_none_needs_no_ca() {
        let cfg = parse(&format!("{LISTENER}[listeners.client_auth]\n")).unwrap();
        let ca = cfg.listeners[0].client_auth.as_ref().unwrap();
        assert_eq!(ca.mode, ClientAuthMode::None);
        assert!(ca.ca.is_empty() && ca.crl.is_empty() && ca.allow.is_empty());
        // Rolling back to "none" may keep the CA bundles in place...
        let text =
            format!("{LISTENER}[listeners.client_auth]\nmode = \"none\"\nca = [\"ca.pem\"]\n");
        assert!(parse(&text).is_ok());
        assert!(parse(LISTENER).unwrap().listeners[0].client_auth.is_none());
    }

    #[test]
    fn allow_list_without_client_auth_is_an_error() {
        // ...but not an allow-list: it would look enforced and be ignored.
        let want = "/etc/terminus/config.toml:10: listeners[0].client_auth.allow: mode is \
                    \"none\" (also the default when `mode` is left out): no client \
                    certificate is asked for, so this allow-list would be silently ignored; \
                    set mode = \"require\" (or \"optional\") to enforce it, or remove `allow`";
        let text =
            format!("{LISTENER}[listeners.client_auth]\nmode = \"none\"\nallow = [\"cn:x\"]\n");
        assert_eq!(one_error(&text), want);
        let text = format!("{LISTENER}[listeners.client_auth]\n\nallow = [\"cn:x\"]\n");
        assert_eq!(one_error(&text), want);
    }

    #[test]
    fn checked_keeps_the_config_and_places_later_problems() {
        let text = format!(
            "[runtime]\ncpus = [0, 9999]\n{LISTENER}{}[listeners.client_auth]\nallow = [\"x\"]\n",
            LISTENER.replace("edge", "b")
        );
        let c = Config::parse_checked(&text, Path::new("c.toml"));
        let cfg = c.config.as_ref().unwrap();
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(
            cfg.listeners[1].cert,
            std::path::absolute("server.pem").unwrap()
        );
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert_eq!(c.listeners_with_problems, [1]);
        assert_eq!(
            c.error("runtime.cpus[1]", "why").0,
            "c.toml:2: runtime.cpus[1]: why"
        );
        assert_eq!(
            c.error("listeners[1].listen", "why").0,
            "c.toml:13: listeners[1].listen: why"
        );
        assert_eq!(
            c.error("admin.listen", "why").0,
            "c.toml: admin.listen: why"
        );
        let c = Config::parse_checked("listeners = 1\n", Path::new("c.toml"));
        assert!(c.config.is_none());
        assert_eq!(c.problems.len(), 1);
    }

    #[test]
    fn trust_section_type_errors_name_line_and_field() {
        let f = "/etc/terminus/config.toml";
        let e = one_error(&format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"maybe\"\n"
        ));
        assert_eq!(
            e,
            format!(
                "{f}:9: listeners[0].client_auth.mode: must be one of \"none\", \"optional\", \
                 \"require\", got \"maybe\""
            )
        );
        let e = one_error(&format!(
            "{LISTENER}[listeners.client_auth]\nmode = \"require\"\ncas = [\"x\"]\n"
        ));
        assert!(
            e.starts_with(&format!(
                "{f}:10: listeners[0].client_auth: unknown field `cas`"
            )),
            "{e}"
        );
        let e = one_error(&format!(
            "{LISTENER}[[listeners.sni]]\nserver_names = [\"a.b\"]\ncert = \"a.pem\"\n"
        ));
        assert_eq!(
            e,
            format!("{f}:8: listeners[0].sni[0]: missing field `key`")
        );
        let e = one_error(&format!(
            "{LISTENER}[listeners.upstream_tls]\nca = \"ca.pem\"\nserver_name = \"x\"\n"
        ));
        assert!(
            e.starts_with(&format!(
                "{f}:9: listeners[0].upstream_tls.ca: invalid type: string"
            )),
            "{e}"
        );
        let e = one_error(&format!("{LISTENER}client_auth = 3\n"));
        assert!(
            e.starts_with(&format!("{f}:8: listeners[0].client_auth: invalid type")),
            "{e}"
        );
    }

    #[test]
    fn trust_section_validation_reports_every_problem() {
        let text = format!(
            "{LISTENER}\
             [[listeners.sni]]\nserver_names = []\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[listeners.sni]]\nserver_names = [\"API.internal\", \"10.0.0.1\", \"a.*.org\", \"\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n\
             [[listeners.sni]]\nserver_names = [\"api.INTERNAL\"]\ncert = \"c.pem\"\nkey = \"c.key\"\n\
             [listeners.client_auth]\nmode = \"optional\"\nallow = [\"cn:ok\", \"spiffe://example.org/a*\", \"billing\"]\n\
             [listeners.upstream_tls]\nca = []\nserver_name = \"not a name\"\nkey = \"k.pem\"\n"
        );
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        let expect = [
            format!("{f}:9: listeners[0].sni[0].server_names: must list at least one server name"),
            format!("{f}:13: listeners[0].sni[1].server_names[1]: \"10.0.0.1\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:13: listeners[0].sni[1].server_names[2]: \"a.*.org\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:13: listeners[0].sni[1].server_names[3]: \"\" is not a DNS name or a \"*.\" wildcard of one (clients send SNI only for DNS names, e.g. \"api.internal\" or \"*.example.org\")"),
            format!("{f}:17: listeners[0].sni[2].server_names[0]: \"api.INTERNAL\" is already listed by listeners[0].sni[1]"),
            format!("{f}:20: listeners[0].client_auth.ca: mode \"optional\" needs at least one CA bundle to verify client certificates against (ca = [\"clients-ca.pem\"])"),
            format!("{f}:22: listeners[0].client_auth.allow[1]: \"spiffe://example.org/a*\": '*' is only allowed as the whole last path segment (\"spiffe://TRUST.DOMAIN/PREFIX/*\")"),
            format!("{f}:22: listeners[0].client_auth.allow[2]: \"billing\" is not an allow entry: expected \"spiffe://TRUST.DOMAIN/PATH\", \"spiffe://TRUST.DOMAIN/PREFIX/*\", \"dns:NAME\" or \"cn:NAME\""),
            format!("{f}:24: listeners[0].upstream_tls.ca: must list at least one CA bundle to verify the upstream's certificate against"),
            format!("{f}:25: listeners[0].upstream_tls.server_name: \"not a name\" is not a DNS name or an IP address"),
            format!("{f}:26: listeners[0].upstream_tls.key: a private key needs its client certificate: set `cert` too (or neither)"),
        ];
        assert_eq!(errors, expect);
    }

    #[test]
    fn load_reports_first_problem_with_count() {
        let text = format!("[runtime]\nworkers = 0\nring_entries = 3\n{LISTENER}");
        let e = Config::parse(&text, Path::new("c.toml")).unwrap_err().0;
        assert_eq!(
            e,
            "c.toml:2: runtime.workers: must be at least 1 (and 1 more problem; `terminus check` lists them all)"
        );
    }

    #[test]
    fn empty_listener_list_and_duplicate_addresses() {
        let e = one_error("listeners = []\n");
        assert_eq!(
            e,
            "/etc/terminus/config.toml:1: listeners: at least one [[listeners]] entry is required"
        );
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:9000\"\n{LISTENER}{}",
            LISTENER.replace("edge", "b")
        )
        .replace("127.0.0.1:0", "127.0.0.1:9000");
        let errors = parse(&text).unwrap_err();
        let f = "/etc/terminus/config.toml";
        assert_eq!(
            errors,
            [
                format!("{f}:6: listeners[0].listen: address 127.0.0.1:9000 is also the admin address"),
                format!("{f}:13: listeners[1].listen: address 127.0.0.1:9000 is already used by listeners[0]"),
                format!("{f}:13: listeners[1].listen: address 127.0.0.1:9000 is also the admin address"),
            ]
        );
    }

    #[test]
    fn load_names_unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/terminus.toml"))
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("/nonexistent/terminus.toml: cannot read config file: "),
            "{e}"
        );
        assert!(e.contains("No such file or directory"), "{e}");
    }
}
