//! schema: the config file's types (serde), their defaults, and the enums that
//! string settings become.
//!
//! Owns what a config *is*; whether its values are usable is `validate`'s business.
//! No I/O. Relative paths are made absolute against the config file's folder here
//! ([`Config::finish`]), after validation.
#![forbid(unsafe_code)]

use crate::host::endpoint::Endpoint;
pub use crate::tls::{ClientAuth, ClientAuthMode, InvalidCertificate, Sni, UpstreamTls};
use serde::Deserialize;
use std::net::SocketAddr;
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
    /// `[resolver]`: how `listen` and `upstreams` host names are looked up.
    #[serde(default)]
    pub resolver: Resolver,
    pub listeners: Vec<Listener>,
    /// `[spiffe]`: the Workload API that `svid`/`trust = "workload_api"` read.
    #[serde(default)]
    pub spiffe: Spiffe,
    /// The file this config was read from (not a TOML key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[spiffe]`: where the SPIFFE Workload API listens and how long `run` waits for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spiffe {
    /// `unix:///path` (or `unix:/path`); default: `$SPIFFE_ENDPOINT_SOCKET`.
    pub endpoint: Option<String>,
    /// How long `run` and `check` wait for a first X.509-SVID and bundle.
    #[serde(default = "default_spiffe_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
}

impl Default for Spiffe {
    fn default() -> Self {
        Spiffe {
            endpoint: None,
            startup_timeout_ms: default_spiffe_startup_timeout_ms(),
        }
    }
}

fn default_spiffe_startup_timeout_ms() -> u64 {
    30_000
}

impl Spiffe {
    /// The endpoint to dial: `endpoint`, else `$SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("SPIFFE_ENDPOINT_SOCKET").ok())
            .filter(|e| !e.is_empty())
    }
}

impl Config {
    /// Whether any listener takes a certificate or trust from the Workload API.
    pub fn uses_workload_api(&self) -> bool {
        self.listeners.iter().any(|l| l.tls().uses_workload_api())
    }
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
    /// SIGTERM: `/readyz` turns 503 at once, but listeners keep accepting this long
    /// (load balancers and Kubernetes endpoints stop sending) before the drain.
    #[serde(default)]
    pub drain_delay_ms: u64,
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
    /// A worker with no I/O for this long gives the memory it freed back to the OS
    /// (once per idle spell); 0: never.
    #[serde(default = "default_idle_memory_trim_ms")]
    pub idle_memory_trim_ms: u64,
    /// The I/O backend (`TERMINUS_IO` in the environment overrides it).
    #[serde(default)]
    pub io: IoSetting,
    /// Start even when another process already listens on a listen or admin
    /// address, joining it through SO_REUSEPORT: the handover of a zero-downtime
    /// restart. Off, such a start is refused, so two configs never split traffic
    /// by accident.
    #[serde(default)]
    pub reuse_port_with_other_instances: bool,
    /// Started as root: once every socket is bound, switch to this user (and to
    /// `group`, else the user's primary group) and keep no capabilities.
    pub user: Option<String>,
    /// The group to switch to; only with `user` (alone it would keep root).
    pub group: Option<String>,
    /// `[runtime] seccomp`: whether terminus installs its own syscall filter.
    #[serde(default)]
    pub seccomp: SeccompSetting,
    /// `user`/`group` looked up when the config was loaded (not a TOML key).
    #[serde(skip)]
    pub run_as: Option<RunAs>,
}

/// `[runtime] user`/`group` as looked up: the ids the process switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
}

/// `[runtime] seccomp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompSetting {
    /// No filter of terminus's own (a container runtime's may still apply).
    #[default]
    Off,
    /// terminus's own allow-list, installed after start-up (runtime::confine).
    Builtin,
}

impl SeccompSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompSetting::Off => "off",
            SeccompSetting::Builtin => "builtin",
        }
    }
}

impl<'de> Deserialize<'de> for SeccompSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "off" => Ok(SeccompSetting::Off),
            "builtin" => Ok(SeccompSetting::Builtin),
            s => Err(serde::de::Error::custom(format!(
                "must be \"off\" or \"builtin\", got {s:?}"
            ))),
        }
    }
}

/// `[runtime] io`: which I/O backend drives the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoSetting {
    /// io_uring when a ring can be built and has every opcode the data path
    /// uses; else epoll, with one line saying why.
    #[default]
    Auto,
    /// io_uring or exit 1 naming the cause and the fix.
    IoUring,
    Epoll,
}

impl IoSetting {
    pub fn parse(s: &str) -> Result<IoSetting, String> {
        match s {
            "auto" => Ok(IoSetting::Auto),
            "io_uring" => Ok(IoSetting::IoUring),
            "epoll" => Ok(IoSetting::Epoll),
            _ => Err(format!(
                "must be one of \"auto\", \"io_uring\", \"epoll\", got {s:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IoSetting::Auto => "auto",
            IoSetting::IoUring => "io_uring",
            IoSetting::Epoll => "epoll",
        }
    }
}

impl<'de> Deserialize<'de> for IoSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IoSetting::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
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
            drain_delay_ms: 0,
            reload_interval_ms: default_reload_interval_ms(),
            recv_buffers: default_recv_buffers(),
            recv_buffer_size: default_recv_buffer_size(),
            max_buffered_bytes_per_worker: default_max_buffered_bytes_per_worker(),
            idle_memory_trim_ms: default_idle_memory_trim_ms(),
            io: IoSetting::Auto,
            reuse_port_with_other_instances: false,
            user: None,
            group: None,
            seccomp: SeccompSetting::Off,
            run_as: None,
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
    /// Callers remembered per listener for `GET /callers` (least recently seen evicted).
    #[serde(default = "default_callers_max")]
    pub callers_max: usize,
}

fn default_callers_max() -> usize {
    4096
}

/// `[resolver]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolver {
    /// An /etc/hosts-style file consulted before the system resolver, read again at
    /// every resolution (pins names, like Kubernetes `hostAliases`); relative to the
    /// config file's folder.
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `access = "stderr" | "off" | "FILE"`.
    #[serde(default)]
    pub access: AccessLog,
    /// `format = "text" | "json"`: the operational lines on stderr (the access log
    /// is JSON either way).
    #[serde(default)]
    pub format: LogFormat,
}

/// `[log] format`: how operational stderr lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `TS LEVEL terminus: message`, for people and journald.
    #[default]
    Text,
    /// One JSON object per line (`ts`, `level`, `msg`, fields), for log pipelines.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            s => Err(serde::de::Error::custom(format!(
                "must be one of \"text\", \"json\", got {s:?}"
            ))),
        }
    }
}

/// Where access lines go (`log.access`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// `"off"`: no log thread, no line formatted.
    Off,
    /// `"stderr"` (the default).
    #[default]
    Stderr,
    /// Any other string: a file, appended to (relative to the config file's folder).
    /// An empty path is a validation problem.
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "off" => AccessLog::Off,
            "stderr" => AccessLog::Stderr,
            path => AccessLog::File(PathBuf::from(path)),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// `listen` as written: `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`.
    #[serde(rename = "listen")]
    pub listen_setting: Endpoint,
    /// The address bound: `listen_setting` itself, or the first address its name
    /// resolves to (set when the config is loaded).
    #[serde(skip, default = "unspecified_addr")]
    pub listen: SocketAddr,
    /// Required unless `svid = "workload_api"` (validated, not by serde).
    #[serde(default)]
    pub cert: PathBuf,
    #[serde(default)]
    pub key: PathBuf,
    /// `"workload_api"`: serve the SPIFFE Workload API's X.509-SVID instead of `cert`/`key`.
    pub svid: Option<String>,
    /// With `svid`: the SVID whose hint this is (none: the default SVID).
    pub svid_hint: Option<String>,
    /// A DER OCSP response for `cert`, stapled while it is valid and for `cert`
    /// (re-read with the certificate on reload).
    pub ocsp: Option<PathBuf>,
    /// `upstreams` as written: literal socket addresses and `NAME:PORT` entries.
    #[serde(rename = "upstreams")]
    pub upstream_entries: Vec<Endpoint>,
    /// What each entry resolved to when the config was loaded (same order).
    #[serde(skip)]
    pub upstream_addrs: Vec<Vec<SocketAddr>>,
    /// Every entry's addresses at load time, deduplicated in entry order.
    #[serde(skip)]
    pub upstreams: Vec<SocketAddr>,
    /// How often the names in `upstreams` are resolved again (off the data path).
    #[serde(default = "default_resolve_interval_ms")]
    pub resolve_interval_ms: u64,
    /// Passive health: an upstream address whose connect was refused or timed out is
    /// skipped this long, doubling per further failure in a row up to
    /// `upstream_backoff_max_ms` (0: never skipped).
    #[serde(default = "default_upstream_backoff_ms")]
    pub upstream_backoff_ms: u64,
    #[serde(default = "default_upstream_backoff_max_ms")]
    pub upstream_backoff_max_ms: u64,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// `"1.2"` (default: TLS 1.2 and 1.3) or `"1.3"`; text, validated (see
    /// [`crate::tls::suites`]).
    pub min_version: Option<String>,
    /// Suites in server preference order (empty: the built-in order).
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Key exchange groups in preference order (empty: the provider's defaults).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections per caller (verified identity, else source /32 or /64) over
    /// all workers; over it, refused after the handshake (0: off).
    #[serde(default)]
    pub max_connections_per_caller: u32,
    /// Full handshakes per second per source address (a token bucket of one
    /// second's worth); the excess is closed before the private-key signature (0: off).
    #[serde(default)]
    pub handshakes_per_second_per_source: u32,
    /// Callers (and, apart, source addresses) the limits track per listener; the
    /// least recently seen idle one makes room. Read at start (a reload keeps the
    /// table and its counts).
    #[serde(default = "default_limits_max_callers")]
    pub limits_max_callers: usize,
    /// PROXY v2: the verified client's leaf certificate (DER) in
    /// `PP2_SUBTYPE_SSL_CLIENT_CERT` (0x28).
    #[serde(default)]
    pub proxy_protocol_client_cert: bool,
    /// HTTP listeners: `"http1"` (default) or `"h2"`, what the upstream speaks. With
    /// `"h2"` every client connection is HTTP/2 (`alpn` defaults to `["h2"]`) and
    /// goes to the upstream as HTTP/2 (cleartext prior knowledge, or ALPN `h2` over
    /// `upstream_tls`).
    #[serde(default)]
    pub upstream_protocol: Option<String>,
    /// HTTP listeners: requests per second per caller (a token bucket; 0: off).
    #[serde(default)]
    pub requests_per_second_per_caller: u32,
    /// The bucket size of `requests_per_second_per_caller` (0: one second's worth).
    #[serde(default)]
    pub burst: u32,
    /// `"enforce"` (default) or `"report"`: per-caller limits refuse, or only count
    /// and log.
    #[serde(default = "default_mode")]
    pub limits_mode: String,
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
    /// `proxy_protocol` as written; validation refuses anything but `"v2"`, then
    /// [`Config::finish`] sets [`Listener::proxy_protocol`] from it. (Kept as
    /// text so that a bad value is one validation problem among all the others,
    /// rather than a serde error that stops the parse.)
    #[serde(rename = "proxy_protocol", default)]
    pub(super) proxy_protocol_setting: Option<String>,
    /// Header sent to the upstream ahead of the client's bytes.
    #[serde(skip)]
    pub proxy_protocol: ProxyProtocol,
    pub ticket_key_file: Option<PathBuf>,
    /// Lifetime hint of session tickets, in seconds (RFC 8446 caps it at 7 days).
    #[serde(default = "default_ticket_lifetime_s")]
    pub ticket_lifetime_s: u32,
    /// Extra certificates chosen by SNI (`[[listeners.sni]]`); `cert`/`key` above
    /// remain the default for unknown or absent server names.
    #[serde(default)]
    pub sni: Vec<Sni>,
    /// `"tcp"` (default: bytes pass as they are) or `"http"` (HTTP/1.1 request heads
    /// rewritten with identity headers; `[listeners.http]`).
    pub protocol: Option<String>,
    /// `[listeners.http]`: settings of an `http` listener.
    pub http: Option<HttpTable>,
    /// Client certificate authentication (`[listeners.client_auth]`); absent = none.
    pub client_auth: Option<ClientAuth>,
    /// Re-encryption to the upstream (`[listeners.upstream_tls]`); absent = plaintext.
    pub upstream_tls: Option<UpstreamTls>,
}

impl Listener {
    /// What the TLS layer needs of this listener.
    pub fn tls(&self) -> crate::tls::ListenerTls {
        crate::tls::ListenerTls {
            name: self.name.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            svid: self.svid.as_ref().map(|_| crate::tls::WorkloadSvid {
                hint: self.svid_hint.clone(),
            }),
            ocsp: self.ocsp.clone(),
            sni: self.sni.clone(),
            alpn: if self.alpn.is_empty() && self.upstream_h2() {
                vec!["h2".into()]
            } else {
                self.alpn.clone()
            },
            http: self.protocol.as_deref() == Some("http"),
            min_version: self.min_version.clone(),
            cipher_suites: self.cipher_suites.clone(),
            groups: self.groups.clone(),
            session_cache: self.session_cache,
            tls13_tickets: self.tls13_tickets,
            ticket_key_file: self.ticket_key_file.clone(),
            ticket_lifetime_s: self.ticket_lifetime_s,
            client_auth: self.client_auth.clone(),
            upstream_tls: self.upstream_tls.clone().map(|mut u| {
                if self.upstream_h2() {
                    u.alpn = vec!["h2".into()];
                }
                u
            }),
            upstreams: self.upstreams.clone(),
        }
    }

    /// An http listener that speaks HTTP/2 to its upstream (and so to its clients).
    pub fn upstream_h2(&self) -> bool {
        self.protocol.as_deref() == Some("http") && self.upstream_protocol.as_deref() == Some("h2")
    }

    /// An http listener that terminates HTTP/2 (`h2` in its ALPN, or an h2 upstream).
    pub fn offers_h2(&self) -> bool {
        self.upstream_h2()
            || (self.protocol.as_deref() == Some("http") && self.alpn.iter().any(|p| p == "h2"))
    }

    /// `upstreams` from `upstream_addrs`: every entry's addresses, deduplicated.
    pub(super) fn set_upstreams_from_entries(&mut self) {
        self.upstreams.clear();
        for a in self.upstream_addrs.iter().flatten() {
            if !self.upstreams.contains(a) {
                self.upstreams.push(*a);
            }
        }
    }
}

/// `proxy_protocol`: what precedes the client's bytes towards the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Key absent: the upstream gets the client's bytes only.
    #[default]
    Off,
    /// `"v2"`: a PROXY protocol v2 header with identity TLVs.
    V2,
}

impl ProxyProtocol {
    /// The setting as written (`None`: key absent).
    pub(super) fn from_setting(s: Option<&str>) -> Result<ProxyProtocol, UnsupportedProxyProtocol> {
        match s {
            None => Ok(ProxyProtocol::Off),
            Some("v2") => Ok(ProxyProtocol::V2),
            Some(p) => Err(UnsupportedProxyProtocol(p.to_owned())),
        }
    }
}

/// A `proxy_protocol` value other than `"v2"`.
#[derive(Debug, thiserror::Error)]
#[error("must be \"v2\" (the only supported version), got {0:?}")]
pub struct UnsupportedProxyProtocol(pub String);

/// `[listeners.http]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTable {
    /// `"xfcc"` (default), `"rfc9440"` or `"both"`.
    #[serde(default = "default_identity_headers")]
    pub identity_headers: String,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A request head must arrive whole within this long (slowloris: 408).
    #[serde(default = "default_head_timeout_ms")]
    pub head_timeout_ms: u64,
    /// Accept request heads whose lines end in a bare LF (refused by default).
    #[serde(default)]
    pub allow_bare_lf: bool,
    /// `"enforce"` (default) or `"report"`: rules decide, or only count and log.
    #[serde(default = "default_mode")]
    pub rules_mode: String,
    /// `"allow"` (default) or `"deny"`: requests no rule matches.
    #[serde(default = "default_action")]
    pub default_action: String,
    /// `[[listeners.http.rules]]`, in order; first match wins.
    #[serde(default)]
    pub rules: Vec<HttpRule>,
    /// `[listeners.http.h2]`: HTTP/2 limits (clients that chose `h2`).
    #[serde(default)]
    pub h2: crate::proxy::h2::H2Settings,
}

/// `[[listeners.http.rules]]` as written (checked by [`crate::proxy::authz::Rule::parse`]).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub identities: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub action: String,
}

impl HttpRule {
    pub fn spec(&self) -> crate::proxy::authz::RuleSpec<'_> {
        crate::proxy::authz::RuleSpec {
            name: &self.name,
            identities: &self.identities,
            methods: self.methods.as_deref(),
            paths: self.paths.as_deref(),
            action: &self.action,
        }
    }
}

fn default_mode() -> String {
    "enforce".into()
}

fn default_limits_max_callers() -> usize {
    crate::proxy::authz::limits::DEFAULT_MAX_CALLERS
}

fn default_action() -> String {
    "allow".into()
}

impl Default for HttpTable {
    fn default() -> Self {
        HttpTable {
            identity_headers: default_identity_headers(),
            max_header_bytes: default_max_header_bytes(),
            head_timeout_ms: default_head_timeout_ms(),
            allow_bare_lf: false,
            rules_mode: default_mode(),
            default_action: default_action(),
            rules: Vec::new(),
            h2: crate::proxy::h2::H2Settings::default(),
        }
    }
}

fn default_identity_headers() -> String {
    "xfcc".into()
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

fn default_head_timeout_ms() -> u64 {
    10_000
}

fn yes() -> bool {
    true
}
fn unspecified_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}
fn default_resolve_interval_ms() -> u64 {
    5_000
}
fn default_upstream_backoff_ms() -> u64 {
    1_000
}
fn default_upstream_backoff_max_ms() -> u64 {
    30_000
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
fn default_idle_memory_trim_ms() -> u64 {
    1_000
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
    /// After validation: remember `source`, turn settings kept as text into their
    /// enums, and resolve relative paths.
    pub(super) fn finish(&mut self, source: &Path) {
        self.source = source.to_path_buf();
        for l in &mut self.listeners {
            // A bad value was reported by validation; such a config only serves `check`.
            l.proxy_protocol = ProxyProtocol::from_setting(l.proxy_protocol_setting.as_deref())
                .unwrap_or_default();
            // Names are filled in by `resolve_names`; literal addresses are final.
            if let Some(a) = l.listen_setting.addr() {
                l.listen = a;
            }
            l.upstream_addrs = l
                .upstream_entries
                .iter()
                .map(|e| e.addr().into_iter().collect())
                .collect();
            l.set_upstreams_from_entries();
        }
        self.resolve_paths(source);
    }

    /// Make `cert`, `key`, `ticket_key_file`, the `sni`, `client_auth` and
    /// `upstream_tls` files and a file `log.access` relative to the config file's
    /// folder (made absolute, so the result does not depend on the current directory
    /// later).
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
            if l.svid.is_none() {
                resolve(&mut l.cert);
                resolve(&mut l.key);
            }
            l.ocsp.iter_mut().for_each(resolve);
            if let Some(t) = &mut l.ticket_key_file {
                resolve(t);
            }
            for sni in &mut l.sni {
                resolve(&mut sni.cert);
                resolve(&mut sni.key);
                sni.ocsp.iter_mut().for_each(resolve);
            }
            if let Some(ca) = &mut l.client_auth {
                ca.ca.iter_mut().chain(ca.crl.iter_mut()).for_each(resolve);
                if let Some(c) = &mut ca.candidate {
                    c.ca.iter_mut().chain(c.crl.iter_mut()).for_each(resolve);
                }
            }
            if let Some(up) = &mut l.upstream_tls {
                up.ca.iter_mut().for_each(resolve);
                up.cert
                    .iter_mut()
                    .chain(up.key.iter_mut())
                    .for_each(resolve);
            }
        }
        if let AccessLog::File(path) = &mut self.log.access {
            resolve(path);
        }
        if let Some(path) = &mut self.resolver.hosts_file {
            resolve(path);
        }
    }
}
