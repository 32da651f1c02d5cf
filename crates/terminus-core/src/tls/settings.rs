//! settings: what the TLS layer is told about a listener. The config file's
//! `[[listeners.sni]]`, `[listeners.client_auth]` and `[listeners.upstream_tls]`
//! tables deserialize straight into the types here; `config::Listener::tls` makes
//! the rest into one [`ListenerTls`] for the builders.
#![forbid(unsafe_code)]

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One listener's TLS settings, converted from the config (`config::Listener::tls`).
/// Field meanings are the config's (see ARCHITECTURE.md and the README).
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    /// The listener's name, for error messages.
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `svid = "workload_api"`: serve the Workload API's X.509-SVID, not `cert`/`key`.
    pub svid: Option<WorkloadSvid>,
    pub ocsp: Option<PathBuf>,
    pub sni: Vec<Sni>,
    pub alpn: Vec<String>,
    /// The listener speaks HTTP/1.1 (`protocol = "http"`): `http/1.1` is its ALPN
    /// when `alpn` is empty.
    pub http: bool,
    /// `"1.2"` (also when unset) or `"1.3"`.
    pub min_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub groups: Vec<String>,
    pub session_cache: usize,
    pub tls13_tickets: usize,
    pub ticket_key_file: Option<PathBuf>,
    pub ticket_lifetime_s: u32,
    pub client_auth: Option<ClientAuth>,
    pub upstream_tls: Option<UpstreamTls>,
    /// The upstream addresses at load time (one client config each).
    pub upstreams: Vec<SocketAddr>,
}

/// The value of `svid` and `trust` that names the SPIFFE Workload API as the source.
pub const WORKLOAD_API: &str = "workload_api";

/// `svid = "workload_api"`, with `svid_hint` (none: the default SVID, the first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSvid {
    pub hint: Option<String>,
}

/// `[[listeners.sni]]`: a certificate served to clients asking for one of
/// `server_names` (ASCII case-insensitive; `*.example.org` matches one label).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sni {
    pub server_names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A DER OCSP response to staple with `cert`.
    pub ocsp: Option<PathBuf>,
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
    /// `"workload_api"`: the Workload API's bundles are trust anchors too (beside `ca`).
    #[serde(default)]
    pub trust: Option<String>,
    /// With `trust = "workload_api"`: the trust domains whose bundles count (empty: all
    /// pushed, the own trust domain's and the federated ones).
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// CRLs (PEM `X509 CRL` or DER); a revoked certificate anywhere in a client's
    /// chain is refused.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Allowed identities (see `policy`); empty = any verified client.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Client chains remembered as verified and allowed (0: off), so a returning
    /// client skips chain and CRL work; its CertificateVerify is still checked.
    #[serde(default = "default_verify_cache_size")]
    pub verify_cache_size: usize,
    /// `optional` mode: what a presented certificate that fails verification gets.
    #[serde(default)]
    pub invalid_certificate: InvalidCertificate,
    /// `[listeners.client_auth.candidate]`: a report-only policy, evaluated on every
    /// handshake and enforced on none (see `tls::candidate`).
    #[serde(default)]
    pub candidate: Option<Box<ClientAuth>>,
}

/// `invalid_certificate`: in `optional` mode, refuse a certificate that fails
/// verification (`refuse`, the default) or treat it as no certificate (`anonymous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvalidCertificate {
    #[default]
    Refuse,
    Anonymous,
}

impl InvalidCertificate {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidCertificate::Refuse => "refuse",
            InvalidCertificate::Anonymous => "anonymous",
        }
    }
}

impl<'de> Deserialize<'de> for InvalidCertificate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "refuse" => Ok(InvalidCertificate::Refuse),
            "anonymous" => Ok(InvalidCertificate::Anonymous),
            _ => Err(serde::de::Error::custom(format!(
                "must be one of \"refuse\", \"anonymous\", got {s:?}"
            ))),
        }
    }
}

impl ClientAuth {
    /// `trust = "workload_api"`.
    pub fn workload_trust(&self) -> bool {
        self.trust.as_deref() == Some(WORKLOAD_API)
    }
}

impl UpstreamTls {
    pub fn workload_trust(&self) -> bool {
        self.trust.as_deref() == Some(WORKLOAD_API)
    }
    pub fn workload_svid(&self) -> bool {
        self.svid.as_deref() == Some(WORKLOAD_API)
    }
}

impl ListenerTls {
    /// Whether anything of this listener comes from the Workload API.
    pub fn uses_workload_api(&self) -> bool {
        let table = |c: &ClientAuth| c.workload_trust();
        self.svid.is_some()
            || self
                .client_auth
                .as_ref()
                .is_some_and(|c| table(c) || c.candidate.as_deref().is_some_and(table))
            || self
                .upstream_tls
                .as_ref()
                .is_some_and(|u| u.workload_trust() || u.workload_svid())
    }
}

fn default_verify_cache_size() -> usize {
    4096
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
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// `"workload_api"`: the Workload API's bundles are trust anchors too (beside `ca`).
    #[serde(default)]
    pub trust: Option<String>,
    /// `"workload_api"`: present the Workload API's default X.509-SVID (not `cert`/`key`).
    #[serde(default)]
    pub svid: Option<String>,
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
    /// ALPN offered to the upstream (`h2` when `upstream_protocol = "h2"`); not a
    /// key of its own.
    #[serde(skip)]
    pub alpn: Vec<String>,
}

fn yes() -> bool {
    true
}
