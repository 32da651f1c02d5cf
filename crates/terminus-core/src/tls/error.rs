//! error: what can be wrong with a listener's TLS material, one variant per problem.
//!
//! Owns [`TlsError`] (and [`UpstreamTlsProblem`], [`TicketKeyError`],
//! [`TrustDomainError`], [`PathSegmentError`], [`SpiffeIdError`], [`IdentityError`],
//! [`AllowRuleError`], [`AllowListError`]): typed values whose `Display` is the one-line message the
//! operator reads, naming the file (or listener) and why, e.g. `/etc/t/server.key:
//! private key does not match the certificate in /etc/t/server.pem`.
//!
//! I/O contract: none.

use std::fmt;
use std::path::{Path, PathBuf};

/// A certificate, key, CA, CRL or ticket key problem, naming the file and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{}: cannot read {what} file: {source}", path.display())]
    Read {
        path: PathBuf,
        /// `certificate`, `private key`, `CRL`.
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{}: no {what} found: the file is empty", path.display())]
    EmptyFile {
        path: PathBuf,
        /// `PEM certificate`, `PEM private key`, `CRL`.
        what: &'static str,
    },
    #[error("{}: unparsable PEM: {}", path.display(), pem_why(source))]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "{}: no PEM certificate found (expected a \"-----BEGIN CERTIFICATE-----\" section)",
        path.display()
    )]
    NoCertificates { path: PathBuf },
    #[error("{}: certificate #{number} is not valid X.509: {why}", path.display())]
    NotX509 {
        path: PathBuf,
        /// 1-based position in the file.
        number: usize,
        why: String,
    },
    #[error(
        "{}: no PEM private key found (expected a PKCS#8 \"PRIVATE KEY\", SEC1 \"EC PRIVATE \
         KEY\" or PKCS#1 \"RSA PRIVATE KEY\" section)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error(
        "{0}: the private key is encrypted ({format}); encrypted keys are not supported \
         (terminus cannot ask for a passphrase): decrypt it, e.g. `openssl pkey -in {0} \
         -out {0}.plain`, keep the result readable only by terminus (mode 0600) and point \
         `key` at it",
        path.display()
    )]
    EncryptedKey {
        path: PathBuf,
        /// Which encryption: OpenSSL `Proc-Type` or PKCS#8 `ENCRYPTED PRIVATE KEY`.
        format: &'static str,
    },
    #[error(
        "{}: unsupported or malformed {format} private key (supported: RSA, ECDSA \
         P-256/P-384/P-521, Ed25519): {source}",
        path.display()
    )]
    UnsupportedKey {
        path: PathBuf,
        /// `PKCS#8`, `SEC1`, `PKCS#1`.
        format: &'static str,
        source: rustls::Error,
    },
    /// The key belongs to a later certificate of the chain file.
    #[error(
        "{}: certificate chain in the wrong order: the private key in {} belongs to \
         certificate #{number} ({subject}), which must come first (the server certificate, \
         then its intermediates)",
        cert.display(),
        key.display()
    )]
    KeyForLaterCert {
        cert: PathBuf,
        key: PathBuf,
        number: usize,
        subject: String,
    },
    #[error(
        "{}: private key does not match the certificate in {} (its public key differs from \
         the leaf's)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: leaf certificate is not usable: {source}", path.display())]
    LeafUnusable {
        path: PathBuf,
        source: rustls::Error,
    },
    /// A chain file written root or intermediate first.
    #[error(
        "{}: certificate chain in the wrong order: certificate #1 ({first}) is a CA \
         certificate and certificate #{number} ({leaf}) is not; the server certificate must \
         come first, then its intermediates (the root last, or left out)",
        path.display()
    )]
    CaFirst {
        path: PathBuf,
        first: String,
        number: usize,
        leaf: String,
    },
    #[error(
        "{}: certificate {subject} is not a server certificate: its extended key usage is \
         {eku} without serverAuth, so clients will refuse it; use a certificate issued for \
         TLS servers (EKU serverAuth)",
        path.display()
    )]
    NotServerCert {
        path: PathBuf,
        subject: String,
        /// The usages it has, or `empty`.
        eku: String,
    },
    /// What PROXY v2 reports about the certificate cannot be read from it.
    #[error("{}: {source}", path.display())]
    Algorithms {
        path: PathBuf,
        source: IdentityError,
    },
    #[error(
        "{}: CA bundle: certificate #{number} is not usable as a trust anchor: {source}",
        path.display()
    )]
    TrustAnchor {
        path: PathBuf,
        number: usize,
        source: rustls::Error,
    },
    #[error(
        "{}: no CRL found (expected a \"-----BEGIN X509 CRL-----\" section or a DER CRL)",
        path.display()
    )]
    NoCrl { path: PathBuf },
    #[error("{}: CRL #{number} is not a valid X.509 CRL: {why}", path.display())]
    NotX509Crl {
        path: PathBuf,
        number: usize,
        why: String,
    },
    #[error("{}: CRL #{number} is not usable: {why:?}", path.display())]
    CrlUnusable {
        path: PathBuf,
        number: usize,
        why: rustls::CertRevocationListError,
    },
    #[error("{}: {source}", path.display())]
    CrlVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("TLS versions: {0}")]
    Versions(rustls::Error),
    #[error("cannot create a session ticketer: {0}")]
    Ticketer(rustls::Error),
    #[error(transparent)]
    TicketKey(#[from] TicketKeyError),
    /// `svid`/`trust = "workload_api"`: what the last Workload API update lacks.
    #[error("workload_api: {0}")]
    Workload(String),
    #[error("listener \"{listener}\": client_auth: {source}")]
    ClientAuth {
        listener: String,
        source: rustls::server::VerifierBuilderError,
    },
    /// An `allow` entry does not parse.
    #[error("listener \"{listener}\": client_auth.{source}")]
    AllowList {
        listener: String,
        source: AllowListError,
    },
    #[error("listener \"{listener}\": upstream_tls: {problem}")]
    UpstreamTls {
        listener: String,
        problem: UpstreamTlsProblem,
    },
}

/// What is wrong with `[listeners.upstream_tls]` itself (its files have their own
/// [`TlsError`]s).
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamTlsProblem {
    ServerName { name: String, why: String },
    NoCa,
    Versions(rustls::Error),
    CertWithoutKey,
}

impl fmt::Display for UpstreamTlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerName { name, why } => write!(f, "server_name \"{name}\": {why}"),
            Self::NoCa => f.write_str("no CA bundle given (ca = [...])"),
            Self::Versions(e) => write!(f, "TLS versions: {e}"),
            Self::CertWithoutKey => {
                f.write_str("`cert` and `key` go together: set both or neither")
            }
        }
    }
}

/// A `ticket_key_file` problem, naming the file (and line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketKeyError {
    #[error("{}: cannot read ticket key file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}:{line}: ticket key must be 64 hex digits (32 random bytes, e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    BadKey { path: PathBuf, line: usize },
    #[error("{}: cannot build an AES-256-GCM key", path.display())]
    Aes { path: PathBuf },
    #[error(
        "{}: no ticket key in the file (want lines of 64 hex digits, e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    NoKey { path: PathBuf },
}

/// Why a SPIFFE trust domain is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustDomainError {
    #[error("the trust domain is empty")]
    Empty,
    #[error("trust domain \"{0}\" must be lowercase (SPIFFE IDs are compared byte for byte)")]
    Uppercase(String),
    #[error(
        "trust domain \"{td}\" contains {c:?}: only lowercase letters, digits, '.', '-' and \
         '_' are allowed (no port, user info or wildcard)"
    )]
    BadChar { td: String, c: char },
}

/// Why a SPIFFE ID path segment is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathSegmentError {
    #[error("the path has an empty segment (\"//\" or a trailing \"/\")")]
    Empty,
    /// `.` or `..`.
    #[error("the path has a \"{0}\" segment")]
    Dot(String),
    #[error(
        "path segment \"{seg}\" contains {c:?}: only letters, digits, '.', '-' and '_' \
         are allowed"
    )]
    BadChar { seg: String, c: char },
}

/// Why a string is not a SPIFFE ID, naming the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("\"{0}\" does not start with \"spiffe://\"")]
    NoScheme(String),
    #[error("\"{id}\": {why}")]
    TrustDomain { id: String, why: TrustDomainError },
    #[error("\"{id}\": {why}")]
    Path { id: String, why: PathSegmentError },
}

/// Why a peer's identity (or algorithm names) cannot be read from its leaf
/// certificate. The parser's own errors are kept as their text: the x509-parser
/// error types borrow nothing but are neither `Clone` nor `PartialEq`, and a
/// [`super::RejectedClient`] must stay `Clone`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("certificate is not valid X.509: {0}")]
    NotX509(String),
    #[error("bad subjectAltName extension: {0}")]
    SubjectAltName(String),
    #[error(
        "certificate has more than one SPIFFE ID ({first}, {second}); an X.509-SVID has \
         exactly one"
    )]
    TwoSpiffeIds { first: String, second: String },
    #[error("subject CN is not a text string: {0}")]
    CnNotText(String),
}

/// Why one `allow` entry does not parse: what is wrong and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllowRuleError {
    #[error(
        "\"{entry}\" is not an allow entry: expected \"spiffe://TRUST.DOMAIN/PATH\", \
         \"spiffe://TRUST.DOMAIN/PREFIX/*\", \"dns:NAME\" or \"cn:NAME\""
    )]
    Unknown { entry: String },
    #[error("\"cn:\" needs a common name after the colon")]
    EmptyCn,
    #[error(
        "\"{entry}\": a wildcard cannot stand for a trust domain or part of one; name \
         the trust domain exactly (e.g. \"spiffe://example.org/ns/*\")"
    )]
    TrustDomainWildcard { entry: String },
    #[error("\"{entry}\": {why}")]
    TrustDomain {
        entry: String,
        why: TrustDomainError,
    },
    #[error(
        "\"{entry}\" names a trust domain, not a workload: use \"spiffe://{td}/*\" for any \
         workload of that trust domain"
    )]
    TrustDomainOnly { entry: String, td: String },
    #[error(
        "\"{entry}\": '*' is only allowed as the whole last path segment \
         (\"spiffe://TRUST.DOMAIN/PREFIX/*\")"
    )]
    PathWildcard { entry: String },
    #[error("\"{entry}\": {why}")]
    PathSegment {
        entry: String,
        why: PathSegmentError,
    },
    /// `name` is what follows `dns:`.
    #[error("\"dns:{name}\": wildcards are not supported in dns: entries; list each name")]
    DnsWildcard { name: String },
    #[error(
        "\"dns:{name}\": \"{name}\" is not a DNS name (letters, digits, '-', '_' in \
         dot-separated labels, e.g. \"dns:billing.internal\")"
    )]
    NotDnsName { name: String },
}

/// The first bad entry of an `allow` list, with its index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allow[{index}]: {why}")]
#[non_exhaustive]
pub struct AllowListError {
    pub index: usize,
    pub why: AllowRuleError,
}

impl TlsError {
    /// The file the problem is in, when it is about one file.
    pub fn path(&self) -> Option<&Path> {
        use TlsError::*;
        match self {
            Read { path, .. }
            | EmptyFile { path, .. }
            | Pem { path, .. }
            | NoCertificates { path }
            | NotX509 { path, .. }
            | NoPrivateKey { path }
            | EncryptedKey { path, .. }
            | UnsupportedKey { path, .. }
            | LeafUnusable { path, .. }
            | CaFirst { path, .. }
            | NotServerCert { path, .. }
            | Algorithms { path, .. }
            | TrustAnchor { path, .. }
            | NoCrl { path }
            | NotX509Crl { path, .. }
            | CrlUnusable { path, .. }
            | CrlVerifier { path, .. } => Some(path),
            KeyForLaterCert { cert, .. } => Some(cert),
            KeyMismatch { key, .. } => Some(key),
            TicketKey(_)
            | Workload(_)
            | Versions(_)
            | Ticketer(_)
            | ClientAuth { .. }
            | AllowList { .. }
            | UpstreamTls { .. } => None,
        }
    }
}

/// A PEM error said for an operator.
fn pem_why(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!("no \"-----END {label}-----\" line after \"-----BEGIN {label}-----\"")
        }
        E::IllegalSectionStart { line } => {
            format!("malformed BEGIN line \"{}\"", String::from_utf8_lossy(line))
        }
        E::Base64Decode(why) => format!("bad base64 in a PEM section ({why})"),
        other => other.to_string(),
    }
}
