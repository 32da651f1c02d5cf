//! TLS material: rustls configs (aws-lc-rs), certificate, key, CA and CRL loading with
//! file-naming errors, shared resumption state, the SNI certificate choice, the
//! client-certificate verifier with its allow-list policy, and the client config for
//! re-encryption to the upstream.
//!
//! I/O contract: reads the certificate, key, CA and CRL files named by a [`Listener`]
//! when asked to (startup, `check`, reload); never touches sockets. Every error names
//! the file and why, on one line, e.g. `/etc/t/server.key: private key does not match
//! the certificate in /etc/t/server.pem`.
//!
//! Client authentication ([`ClientAuthMode`]): `none` asks for no certificate;
//! `optional` asks, lets clients without one through, and refuses a certificate that
//! fails; `require` refuses clients without one. A presented chain is verified by
//! webpki against the `ca` bundles (intermediates the client sends are used to build
//! the chain) and the `crl` lists, then the leaf's [`PeerIdentity`] must pass the
//! listener's [`AllowList`]. A refusal is an error inside the handshake, so the client
//! gets an alert: `access_denied` for a policy refusal, `unknown_ca`,
//! `certificate_expired`, `certificate_revoked`... for the chain. The refused
//! client's identity is left in a [`RejectSink`] for the connection to log: each
//! worker has its own sink and its own copy of the server config whose verifier
//! writes to it ([`ServerTls::config_for`]); the connection is given the sink.
//!
//! Revocation: every certificate of the chain below the trust anchor is checked
//! against the CRLs whose issuer signed it; a certificate no configured CRL speaks for
//! is accepted (unknown status allowed), so a CRL for one CA does not lock out
//! clients of another. A CRL's nextUpdate is not enforced (an old CRL still revokes).
#![forbid(unsafe_code)]

mod error;
pub mod identity;
pub mod policy;
pub mod tickets;

pub use error::{TicketKeyError, TlsError, TrustDomainError, UpstreamTlsProblem};

use crate::config::{ClientAuthMode, Listener, UpstreamTls};
use crate::proxy::upstream::ResumeBackoff;
use crate::tls::identity::{CertAlgorithms, PeerIdentity};
use crate::tls::policy::AllowList;
use ::aws_lc_rs::digest as aws_lc_rs_digest;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
    WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Make aws-lc-rs the process-wide rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Build the listener's server config: default cert chain + key and the
/// `[[listeners.sni]]` certificates, client authentication, TLS 1.2 and 1.3, ALPN,
/// tickets and a server-side session cache shared by every worker (the Arc is shared).
pub fn server_config(l: &Listener) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_tls(l).map(|t| t.config)
}

/// A listener's server config plus the certificates it serves, for callers that need
/// to know which certificate a connection got (PROXY v2 `SIG_ALG`/`KEY_ALG`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certs: Arc<SniResolver>,
    /// What is wrong with the served certificates but does not stop serving them:
    /// expired, not yet valid, or expiring within [`EXPIRY_WARNING_DAYS`] (one line
    /// each, naming the file and the date). A reload that swaps them in should
    /// print these.
    pub warnings: Vec<String>,
    /// The allow-list verifier (client_auth other than `none`), kept to build the
    /// per-worker configs of [`ServerTls::config_for`].
    policy: Option<Arc<PolicyVerifier>>,
}

impl ServerTls {
    /// A copy of [`ServerTls::config`] whose verifier leaves each client certificate
    /// it refuses in `sink` (one sink per worker; see [`RejectSink`]). It shares the
    /// certificates, session cache and ticketer with `config`, so sessions resume
    /// across copies. Without client authentication there is nothing to record:
    /// `config` itself.
    pub fn config_for(&self, sink: &RejectSink) -> Arc<rustls::ServerConfig> {
        let Some(policy) = &self.policy else {
            return self.config.clone();
        };
        let verifier = Arc::new(policy.with_sink(sink.clone()));
        let base = &self.config;
        let built = rustls::ServerConfig::builder_with_provider(base.crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_cert_resolver(self.certs.clone())
            });
        // The versions were accepted for `config` already, with the same provider.
        let Ok(mut cfg) = built else {
            return self.config.clone();
        };
        copy_settings(base, &mut cfg);
        Arc::new(cfg)
    }
}

/// The settings [`build_server_config`] makes, from one config to another (the
/// shared state, session cache and ticketer, is shared, not copied).
fn copy_settings(from: &rustls::ServerConfig, to: &mut rustls::ServerConfig) {
    to.ignore_client_order = from.ignore_client_order;
    to.alpn_protocols.clone_from(&from.alpn_protocols);
    to.session_storage = from.session_storage.clone();
    to.ticketer = from.ticketer.clone();
    to.send_tls13_tickets = from.send_tls13_tickets;
    to.max_early_data_size = from.max_early_data_size;
}

/// [`server_config`], keeping the certificate resolver at hand.
pub fn server_tls(l: &Listener) -> Result<ServerTls, TlsError> {
    let provider = server_provider();
    let certs = Arc::new(SniResolver::load(l, &provider)?);
    let policy = policy_verifier(l, &provider)?.map(Arc::new);
    let verifier: Arc<dyn ClientCertVerifier> = match &policy {
        Some(p) => p.clone(),
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let config = build_server_config(l, provider, certs.clone(), verifier)?;
    let now = unix_now();
    let warnings = certs
        .served()
        .flat_map(|c| validity_findings(&c.path, &c.key.cert, Role::Server, now))
        .map(|f| f.message)
        .collect();
    Ok(ServerTls {
        config,
        certs,
        warnings,
        policy,
    })
}

/// Every problem with the listener's TLS material (not just the first): unreadable
/// or malformed cert and key files are both reported, then a key/cert mismatch; the
/// same for each `[[listeners.sni]]` entry; every unusable CA bundle and CRL of
/// `client_auth` (unless its mode is `none`); every problem of `upstream_tls`.
/// Empty means [`server_config`] and [`upstream_client_config`] will succeed.
pub fn listener_problems(l: &Listener) -> Vec<TlsError> {
    let mut out = listener_file_problems(l);
    if out.is_empty() {
        if let Err(e) = server_tls(l) {
            out.push(e);
        }
        if let Err(e) = upstream_client_config(l) {
            out.push(e);
        }
    }
    out
}

/// [`listener_problems`] file by file, without the final build of the whole
/// configuration: what `check` runs on a listener whose config has problems of its
/// own (the build would only repeat them).
pub fn listener_file_problems(l: &Listener) -> Vec<TlsError> {
    let provider = server_provider();
    let mut out = cert_and_key_problems(&l.cert, &l.key, Role::Server, &provider);
    for sni in &l.sni {
        out.extend(cert_and_key_problems(
            &sni.cert,
            &sni.key,
            Role::Server,
            &provider,
        ));
    }
    if let Some(ca) = l
        .client_auth
        .as_ref()
        .filter(|c| c.mode != ClientAuthMode::None)
    {
        let roots = collect_problems(&ca.ca, load_roots_file, &mut out);
        let mut store = rustls::RootCertStore::empty();
        roots
            .into_iter()
            .flatten()
            .for_each(|c| store.roots.push(c));
        let store = Arc::new(store);
        for path in &ca.crl {
            if let Err(e) = load_crl_file(path, &store, &provider) {
                out.push(e);
            }
        }
    }
    if let Some(up) = &l.upstream_tls {
        collect_problems(&up.ca, load_roots_file, &mut out);
        if let (Some(cert), Some(key)) = (&up.cert, &up.key) {
            out.extend(cert_and_key_problems(cert, key, Role::Client, &provider));
        }
    }
    if let Some(path) = &l.ticket_key_file {
        if let Err(e) = crate::tls::tickets::FileTicketer::load(path, b"", l.ticket_lifetime_s) {
            out.push(e.into());
        }
    }
    out
}

/// Which end of a TLS connection a certificate identifies terminus as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Served to clients (`cert`, `[[listeners.sni]]`).
    Server,
    /// Presented to the upstream (`upstream_tls.cert`).
    Client,
}

fn cert_and_key_problems(
    cert: &Path,
    key: &Path,
    role: Role,
    provider: &CryptoProvider,
) -> Vec<TlsError> {
    match (load_certs(cert), load_key(key)) {
        (Ok(c), Ok(k)) => {
            let eku = match role {
                Role::Server => server_auth_problem(cert, &c[0]),
                Role::Client => None,
            };
            certified_key_from(cert, key, c, k, provider)
                .err()
                .into_iter()
                .chain(eku)
                .collect()
        }
        (c, k) => c.err().into_iter().chain(k.err()).collect(),
    }
}

/// A served leaf whose extended key usage leaves out serverAuth: every client
/// (webpki, browsers, OpenSSL, Go) refuses it. No EKU extension means any usage.
fn server_auth_problem(path: &Path, leaf: &CertificateDer<'_>) -> Option<TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let eku = cert.extended_key_usage().ok().flatten()?.value;
    if eku.server_auth || eku.any {
        return None;
    }
    let mut has = Vec::new();
    for (set, name) in [
        (eku.client_auth, "clientAuth"),
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ] {
        if set {
            has.push(name.to_owned());
        }
    }
    has.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    Some(TlsError::NotServerCert {
        path: path.to_owned(),
        subject: describe(&cert),
        eku: if has.is_empty() {
            "empty".to_owned()
        } else {
            has.join(", ")
        },
    })
}

/// `"CN=localhost"`: how a certificate is named in messages.
fn describe(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    format!("\"{}\"", cert.subject())
}

fn collect_problems<T>(
    paths: &[PathBuf],
    load: impl Fn(&Path) -> Result<T, TlsError>,
    out: &mut Vec<TlsError>,
) -> Vec<T> {
    let mut ok = Vec::new();
    for p in paths {
        match load(p) {
            Ok(t) => ok.push(t),
            Err(e) => out.push(e),
        }
    }
    ok
}

/// A served certificate expiring sooner than this many days is worth a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the certificates' dates say, for `check`: `problems` are certificates that
/// peers refuse now (expired, not yet valid); `warnings` are certificates expiring
/// within [`EXPIRY_WARNING_DAYS`] and CRLs past their nextUpdate. Covers every
/// certificate of the served chains (`cert`, `[[listeners.sni]]`) and of
/// `upstream_tls.cert`. Unreadable files give nothing (they are errors, reported by
/// [`listener_problems`]).
#[derive(Debug, Default)]
pub struct DateFindings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn cert_dates(l: &Listener) -> DateFindings {
    let now = unix_now();
    let mut out = DateFindings::default();
    let mut chains: Vec<(&Path, Role)> = std::iter::once(&l.cert)
        .chain(l.sni.iter().map(|s| &s.cert))
        .map(|p| (p.as_path(), Role::Server))
        .collect();
    if let Some(cert) = l.upstream_tls.as_ref().and_then(|u| u.cert.as_ref()) {
        chains.push((cert, Role::Client));
    }
    for (path, role) in chains {
        if let Ok(certs) = load_certs(path) {
            for f in validity_findings(path, &certs, role, now) {
                if f.refused {
                    out.problems.push(f.message);
                } else {
                    out.warnings.push(f.message);
                }
            }
        }
    }
    if let Some(ca) = l
        .client_auth
        .as_ref()
        .filter(|c| c.mode != ClientAuthMode::None)
    {
        for path in &ca.crl {
            if let Ok(crls) = load_crls(path) {
                out.warnings
                    .extend(crls.iter().filter_map(|crl| crl_warning(path, crl, now)));
            }
        }
    }
    out
}

/// Warnings that do not stop the listener from starting (what `run` prints): every
/// finding of [`cert_dates`]. An expired or not yet valid certificate is served
/// anyway, so that a late renewal picked up by hot reload fixes a running instance.
pub fn cert_warnings(l: &Listener) -> Vec<String> {
    let d = cert_dates(l);
    d.problems.into_iter().chain(d.warnings).collect()
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A CRL past its nextUpdate is still used (what it revokes stays revoked), but the
/// operator should know revocations newer than it are not seen.
fn crl_warning(path: &Path, crl: &CertificateRevocationListDer<'_>, now: i64) -> Option<String> {
    let (_, crl) = x509_parser::parse_x509_crl(crl).ok()?;
    let next = crl.next_update()?;
    (next.timestamp() < now).then(|| {
        format!(
            "{}: CRL of \"{}\" is past its nextUpdate ({next}): still enforced, but newer \
             revocations are not seen; install a fresh CRL",
            path.display(),
            crl.issuer()
        )
    })
}

/// One date finding about a certificate file.
#[derive(Debug, Clone, PartialEq)]
struct DateFinding {
    /// Peers refuse the certificate now (expired or not yet valid).
    refused: bool,
    message: String,
}

/// Date findings for each certificate of a chain file (leaf first): expired, not
/// yet valid, expiring within [`EXPIRY_WARNING_DAYS`]. The leaf is "certificate",
/// the others "certificate #N (\"SUBJECT\")".
fn validity_findings(
    path: &Path,
    chain: &[CertificateDer<'_>],
    role: Role,
    now: i64,
) -> Vec<DateFinding> {
    let who = match role {
        Role::Server => "clients",
        Role::Client => "the upstream",
    };
    let mut out = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let what = if i == 0 {
            "certificate".to_owned()
        } else {
            format!("certificate #{} ({})", i + 1, describe(&cert))
        };
        let path = path.display();
        let validity = cert.validity();
        let (not_before, not_after) = (validity.not_before, validity.not_after);
        let left = not_after.timestamp() - now;
        if left < 0 {
            out.push(DateFinding {
                refused: true,
                message: format!(
                    "{path}: {what} expired: notAfter {not_after} ({who} will reject it)"
                ),
            });
        } else if not_before.timestamp() > now {
            out.push(DateFinding {
                refused: true,
                message: format!(
                    "{path}: {what} not yet valid: notBefore {not_before}, notAfter \
                     {not_after} ({who} will reject it)"
                ),
            });
        } else if left < EXPIRY_WARNING_DAYS * 86400 {
            let when = if left < 86400 {
                let hours = (left + 3599) / 3600;
                format!("{hours} hour{}", if hours == 1 { "" } else { "s" })
            } else {
                let days = (left + 43200) / 86400;
                format!("{days} day{}", if days == 1 { "" } else { "s" })
            };
            out.push(DateFinding {
                refused: false,
                message: format!(
                    "{path}: {what} expires in {when}: notAfter {not_after}; renew it"
                ),
            });
        }
    }
    out
}

/// The leaf certificate's notAfter as a Unix timestamp (for the expiry gauge).
pub fn leaf_not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Load a PEM certificate chain, leaf first. Non-certificate PEM sections are
/// skipped; at least one certificate is required and each must parse as X.509.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path, "certificate")?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::EmptyFile {
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    for (i, c) in certs.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(c) {
            return Err(TlsError::NotX509 {
                path: path.to_owned(),
                number: i + 1,
                why: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// Load the first private key in a PEM file: PKCS#8 (`PRIVATE KEY`), SEC1
/// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path, "private key")?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::EmptyFile {
            path: path.to_owned(),
            what: "PEM private key",
        });
    }
    // OpenSSL's traditional encryption keeps the RSA/EC label and adds headers.
    if contains(&bytes, b"Proc-Type: 4,ENCRYPTED") {
        return Err(encrypted_key(path, "OpenSSL \"Proc-Type: 4,ENCRYPTED\""));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        _ if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            encrypted_key(path, "PKCS#8 \"ENCRYPTED PRIVATE KEY\"")
        }
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            path: path.to_owned(),
            source,
        },
    })
}

fn encrypted_key(path: &Path, format: &'static str) -> TlsError {
    TlsError::EncryptedKey {
        path: path.to_owned(),
        format,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Load `cert` and `key`, check the key can sign with `provider` and matches the
/// leaf certificate.
pub fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert)?;
    let der = load_key(key)?;
    certified_key_from(cert, key, certs, der, provider)
}

fn certified_key_from(
    cert_path: &Path,
    key_path: &Path,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let format = match &key {
        PrivateKeyDer::Pkcs1(_) => "PKCS#1",
        PrivateKeyDer::Sec1(_) => "SEC1",
        _ => "PKCS#8",
    };
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.to_owned(),
            format,
            source,
        })?;
    if let Some(e) = chain_order_problem(cert_path, &certs) {
        return Err(e);
    }
    let public_key = signer.public_key().map(|k| k.as_ref().to_vec());
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The key may belong to a later certificate of the file: wrong order.
            let matching = public_key.and_then(|spki| {
                ck.cert.iter().enumerate().skip(1).find_map(|(i, der)| {
                    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
                    (c.public_key().raw == spki.as_slice()).then(|| (i, describe(&c)))
                })
            });
            Err(match matching {
                Some((i, subject)) => TlsError::KeyForLaterCert {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                    number: i + 1,
                    subject,
                },
                None => TlsError::KeyMismatch {
                    key: key_path.to_owned(),
                    cert: cert_path.to_owned(),
                },
            })
        }
        Err(source) => Err(TlsError::LeafUnusable {
            path: cert_path.to_owned(),
            source,
        }),
    }
}

/// A chain file that starts with a CA certificate and holds a non-CA (leaf)
/// certificate later: written root or intermediate first. Said as such rather than
/// as the key mismatch it also causes. (A lone CA-flagged certificate, as
/// `openssl req -x509` makes, is left alone.)
fn chain_order_problem(path: &Path, certs: &[CertificateDer<'_>]) -> Option<TlsError> {
    let parsed: Vec<_> = certs
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c)
        })
        .collect::<Option<_>>()?;
    let first = parsed.first()?;
    if !first.is_ca() {
        return None;
    }
    let (i, leaf) = parsed
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, c)| !c.is_ca())?;
    Some(TlsError::CaFirst {
        path: path.to_owned(),
        first: describe(first),
        number: i + 1,
        leaf: describe(leaf),
    })
}

/// aws-lc-rs with the AES-128-GCM/SHA-256 suites first. With the server's order
/// enforced (`ignore_client_order`), TLS 1.3 handshakes run their key schedule on
/// SHA-256, which is hardware-accelerated (SHA-NI) where SHA-384 is not: measured
/// ~25% less server CPU per full handshake against OpenSSL clients, which list
/// AES-256-GCM-SHA384 first. AES-128 matches the 128-bit strength of the P-256 and
/// X25519 key exchange; AES-256 and ChaCha20 remain available.
pub fn server_provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 1,
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 2,
    };
    // Stable sort: the provider's order holds within each rank.
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

fn build_server_config(
    l: &Listener,
    provider: Arc<CryptoProvider>,
    certs: Arc<SniResolver>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = l.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.session_storage = if l.session_cache == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        ServerSessionMemoryCache::new(l.session_cache)
    };
    cfg.ticketer = match &l.ticket_key_file {
        // Shared keys: every instance with this file (and policy) resumes the others'
        // tickets.
        Some(path) => Arc::new(
            crate::tls::tickets::FileTicketer::load(path, &policy_digest(l), l.ticket_lifetime_s)
                .map_err(TlsError::TicketKey)?,
        ),
        // Per-process keys, rotated by rustls.
        None => aws_lc_rs::Ticketer::new().map_err(TlsError::Ticketer)?,
    };
    cfg.send_tls13_tickets = l.tls13_tickets;
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}

/// What a resumed session must not outlive: the client-auth mode, the CA and CRL
/// contents and the allow-list (see `tickets`: rustls skips verification on
/// resumption, so a change here must make old tickets undecryptable).
fn policy_digest(l: &Listener) -> Vec<u8> {
    let mut ctx = aws_lc_rs_digest::Context::new(&aws_lc_rs_digest::SHA256);
    if let Some(ca) = &l.client_auth {
        ctx.update(ca.mode.as_str().as_bytes());
        for (tag, files) in [(&b"ca\0"[..], &ca.ca), (&b"crl\0"[..], &ca.crl)] {
            for f in files {
                ctx.update(tag);
                // Unreadable files already failed the verifier build above.
                ctx.update(&std::fs::read(f).unwrap_or_default());
            }
        }
        for a in &ca.allow {
            ctx.update(b"allow\0");
            ctx.update(a.as_bytes());
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// Every file whose content the listener's live TLS state is built from: what the
/// reloader polls.
pub fn listener_files(l: &Listener) -> Vec<PathBuf> {
    let mut v = vec![l.cert.clone(), l.key.clone()];
    for sni in &l.sni {
        v.push(sni.cert.clone());
        v.push(sni.key.clone());
    }
    if let Some(ca) = &l.client_auth {
        v.extend(ca.ca.iter().cloned());
        v.extend(ca.crl.iter().cloned());
    }
    if let Some(up) = &l.upstream_tls {
        v.extend(up.ca.iter().cloned());
        v.extend(up.cert.iter().cloned());
        v.extend(up.key.iter().cloned());
    }
    v.extend(l.ticket_key_file.iter().cloned());
    v
}

/// A certificate served by a listener, with what PROXY v2 reports about it.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    /// The certificate file it came from.
    pub path: PathBuf,
    pub algorithms: CertAlgorithms,
}

impl ServedCert {
    fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<ServedCert, TlsError> {
        let ck = certified_key(cert, key, provider)?;
        if let Some(e) = server_auth_problem(cert, &ck.cert[0]) {
            return Err(e);
        }
        let algorithms =
            CertAlgorithms::from_der(&ck.cert[0]).map_err(|why| TlsError::Algorithms {
                path: cert.to_owned(),
                why,
            })?;
        Ok(ServedCert {
            key: Arc::new(ck),
            path: cert.to_path_buf(),
            algorithms,
        })
    }
}

/// Chooses the certificate by the client's server name (SNI): an exact
/// `server_names` entry first, then a `*.parent` entry matching one label, else the
/// listener's own certificate (also for clients that send no SNI). Names compare
/// ASCII case-insensitively.
#[derive(Debug)]
pub struct SniResolver {
    default: ServedCert,
    certs: Vec<ServedCert>,
    /// Lowercase name → index into `certs`.
    exact: HashMap<String, usize>,
    /// Lowercase parent (`example.org` for `*.example.org`) → index into `certs`.
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// Load the listener's default certificate and every `[[listeners.sni]]` entry.
    pub fn load(l: &Listener, provider: &CryptoProvider) -> Result<SniResolver, TlsError> {
        let default = ServedCert::load(&l.cert, &l.key, provider)?;
        let mut r = SniResolver {
            default,
            certs: Vec::with_capacity(l.sni.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for sni in &l.sni {
            let idx = r.certs.len();
            r.certs
                .push(ServedCert::load(&sni.cert, &sni.key, provider)?);
            for name in &sni.server_names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => r.wildcard.entry(parent.to_owned()).or_insert(idx),
                    None => r.exact.entry(name).or_insert(idx),
                };
            }
        }
        Ok(r)
    }

    /// The certificate a client asking for `server_name` gets.
    pub fn choose(&self, server_name: Option<&str>) -> &ServedCert {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let idx = self.exact.get(&name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        });
        idx.map_or(&self.default, |&i| &self.certs[i])
    }
}

impl SniResolver {
    /// Every served certificate, default first.
    pub fn served(&self) -> impl Iterator<Item = &ServedCert> {
        std::iter::once(&self.default).chain(self.certs.iter())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).key.clone())
    }
}

/// The client verifier for the listener's `client_auth`: none, or webpki (CAs, CRLs,
/// optional/require) followed by the allow-list policy.
pub fn client_verifier(
    l: &Listener,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(match policy_verifier(l, provider)? {
        Some(p) => Arc::new(p),
        None => WebPkiClientVerifier::no_client_auth(),
    })
}

/// [`client_verifier`] when `client_auth` asks for certificates (`None`: mode `none`).
fn policy_verifier(
    l: &Listener,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<PolicyVerifier>, TlsError> {
    let Some(ca) = l
        .client_auth
        .as_ref()
        .filter(|c| c.mode != ClientAuthMode::None)
    else {
        return Ok(None);
    };
    let roots = Arc::new(load_roots(&ca.ca)?);
    let mut crls = Vec::new();
    for path in &ca.crl {
        crls.extend(load_crl_file(path, &roots, provider)?);
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        .allow_unknown_revocation_status();
    if ca.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|source| TlsError::ClientAuth {
        listener: l.name.clone(),
        source,
    })?;
    let allow = AllowList::parse(&ca.allow).map_err(|why| TlsError::AllowList {
        listener: l.name.clone(),
        why,
    })?;
    Ok(Some(PolicyVerifier::new(inner, allow)))
}

/// webpki chain verification, then the allow list on the leaf's identity; a refused
/// client is left in the sink, if it has one.
#[derive(Debug)]
pub struct PolicyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<AllowList>,
    sink: Option<RejectSink>,
}

impl PolicyVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allow: AllowList) -> PolicyVerifier {
        PolicyVerifier {
            inner,
            allow: Arc::new(allow),
            sink: None,
        }
    }

    /// The same verifier, leaving refused clients in `sink`.
    pub fn with_sink(&self, sink: RejectSink) -> PolicyVerifier {
        PolicyVerifier {
            inner: self.inner.clone(),
            allow: self.allow.clone(),
            sink: Some(sink),
        }
    }
}

impl ClientCertVerifier for PolicyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = PeerIdentity::from_der(end_entity);
        let verdict = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|ok| match &identity {
                Ok(id) if self.allow.allows(id) => Ok(ok),
                _ => Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                )),
            });
        if let (Err(error), Some(sink)) = (&verdict, &self.sink) {
            let (identity, identity_error) = match identity {
                Ok(id) => (Some(id), None),
                Err(e) => (None, Some(e)),
            };
            sink.put(RejectedClient {
                identity,
                identity_error,
                error: error.clone(),
            });
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client certificate the verifier refused, with who presented it.
#[derive(Debug, Clone)]
pub struct RejectedClient {
    /// Read from the presented leaf (unverified when `error` is a chain error).
    pub identity: Option<PeerIdentity>,
    /// Why no identity could be read, when `identity` is `None`.
    pub identity_error: Option<String>,
    /// What the handshake failed with (also returned by `process_new_packets`):
    /// `InvalidCertificate(ApplicationVerificationFailure)` for a policy refusal.
    pub error: rustls::Error,
}

/// Where a verifier leaves the client certificate it refused, for the connection
/// to log: one per worker, given to the worker's config ([`ServerTls::config_for`])
/// and to each of its connections.
///
/// Why it is per worker and taken at once: rustls keeps no refused certificate on
/// the connection, and the verifier, shared by every connection of the config, is
/// not told which connection it checks. It runs inside `process_new_packets`, on
/// the worker's thread, and a refusal always fails that call; so the connection
/// whose call failed takes the sink's content right then, and gets its own client
/// (a call that failed for another reason finds it empty). The identity cannot
/// ride in the rustls error instead: only
/// `CertificateError::ApplicationVerificationFailure` becomes `access_denied`, and
/// the `Other` variant that could carry it becomes `certificate_unknown`.
#[derive(Debug, Clone, Default)]
pub struct RejectSink(Arc<Mutex<Option<RejectedClient>>>);

impl RejectSink {
    fn put(&self, r: RejectedClient) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The client refused during the `process_new_packets` call that just failed.
    pub fn take(&self) -> Option<RejectedClient> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// TLS towards the upstream (`[listeners.upstream_tls]`): verified against its `ca`
/// bundles and `server_name` (sent as SNI when a DNS name), with the optional client
/// certificate for mTLS, aws-lc-rs, TLS 1.2 and 1.3, and in-memory session resumption
/// (shared by every connection using the returned Arc). `None` when the listener
/// forwards plaintext.
pub fn upstream_client_config(
    l: &Listener,
) -> Result<Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>, TlsError> {
    let Some(up) = &l.upstream_tls else {
        return Ok(None);
    };
    upstream_config(&l.name, up).map(Some)
}

fn upstream_config(
    listener: &str,
    up: &UpstreamTls,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), TlsError> {
    let at = |problem| TlsError::UpstreamTls {
        listener: listener.to_owned(),
        problem,
    };
    let name = ServerName::try_from(up.server_name.clone()).map_err(|e| {
        at(UpstreamTlsProblem::ServerName {
            name: up.server_name.clone(),
            why: e.to_string(),
        })
    })?;
    let provider = server_provider();
    let roots = load_roots(&up.ca)?;
    if roots.is_empty() {
        return Err(at(UpstreamTlsProblem::NoCa));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| at(UpstreamTlsProblem::Versions(e)))?
        .with_root_certificates(roots);
    let cfg = match (&up.cert, &up.key) {
        (Some(cert), Some(key)) => {
            let ck = certified_key(cert, key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ck)))
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(at(UpstreamTlsProblem::CertWithoutKey)),
    };
    // Resumption: rustls' default in-memory cache (tickets and TLS 1.2 session IDs).
    // `upstream_clients` gives each upstream address its own store instead.
    Ok((Arc::new(cfg), name))
}

/// TLS 1.3 tickets kept per upstream address (each connection uses one; each
/// handshake brings the upstream's new ones).
const TICKETS_PER_UPSTREAM: usize = 32;

/// The re-encryption clients of one listener (`[listeners.upstream_tls]`): one
/// ClientConfig per upstream address, each with its own [`UpstreamSessions`] store,
/// so that the sessions of one upstream are never offered to another (they all share
/// `server_name`, rustls' cache key) and an upstream that refuses resumption can have
/// its sessions dropped and resumption turned off alone. With `resume = false` every
/// handshake is a full one.
#[derive(Debug)]
pub struct UpstreamClients {
    name: ServerName<'static>,
    /// Resumption disabled: the retry after a refused session, and `resume = false`.
    full: Arc<rustls::ClientConfig>,
    /// Per upstream address (empty with `resume = false`); a short list.
    resuming: Vec<(SocketAddr, Arc<rustls::ClientConfig>, Arc<UpstreamSessions>)>,
}

/// [`UpstreamClients`] for the listener's upstreams, `None` when it forwards plaintext.
pub fn upstream_clients(l: &Listener) -> Result<Option<UpstreamClients>, TlsError> {
    let Some(up) = &l.upstream_tls else {
        return Ok(None);
    };
    let (base, name) = upstream_config(&l.name, up)?;
    let mut full = (*base).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let resuming = if up.resume {
        l.upstreams
            .iter()
            .map(|&addr| {
                let store = Arc::new(UpstreamSessions::default());
                let mut cfg = (*base).clone();
                cfg.resumption = rustls::client::Resumption::store(store.clone());
                (addr, Arc::new(cfg), store)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some(UpstreamClients {
        name,
        full: Arc::new(full),
        resuming,
    }))
}

impl UpstreamClients {
    /// The name the upstream's certificate is verified against.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }

    fn entry(
        &self,
        addr: SocketAddr,
    ) -> Option<&(SocketAddr, Arc<rustls::ClientConfig>, Arc<UpstreamSessions>)> {
        self.resuming.iter().find(|(a, _, _)| *a == addr)
    }

    /// The config a handshake with `addr` uses: its own session store, or none
    /// (`full`, or `resume = false`).
    pub fn config(&self, addr: SocketAddr, full: bool) -> &Arc<rustls::ClientConfig> {
        match self.entry(addr) {
            Some((_, cfg, _)) if !full => cfg,
            _ => &self.full,
        }
    }

    /// A client connection towards `addr` (its ClientHello is queued), and whether it
    /// offers a session to resume. `full`: offer none, whatever is stored.
    pub fn connect(
        &self,
        addr: SocketAddr,
        full: bool,
    ) -> Option<(rustls::ClientConnection, bool)> {
        OFFERED.with(|o| o.set(false));
        // The ClientHello is built inside `new`, on this thread: the store's lookups
        // for it are this connection's.
        let c = rustls::ClientConnection::new(self.config(addr, full).clone(), self.name.clone())
            .ok()?;
        Some((c, OFFERED.with(|o| o.replace(false))))
    }

    /// `addr` refused a session terminus offered (the handshake failed): drop every
    /// session kept for it and stop offering any for a while ([`ResumeBackoff`]).
    /// Returns how long when this refusal turned resumption off (once per off
    /// period, however many connections were refused).
    pub fn refused(&self, addr: SocketAddr) -> Option<Duration> {
        self.entry(addr)?.2.refused(Instant::now())
    }

    /// A handshake with `addr` resumed: its backoff starts over.
    pub fn resumed(&self, addr: SocketAddr) {
        if let Some((_, _, store)) = self.entry(addr) {
            store.lock().backoff.resumed();
        }
    }

    /// How many sessions are kept for `addr` now (TLS 1.3 tickets, plus a TLS 1.2
    /// session), for tests.
    pub fn sessions(&self, addr: SocketAddr) -> usize {
        self.entry(addr).map_or(0, |(_, _, s)| {
            let st = s.lock();
            st.tls13.len() + st.tls12.is_some() as usize
        })
    }
}

thread_local! {
    /// Set when a session store handed out a session on this thread (see
    /// [`UpstreamClients::connect`]).
    static OFFERED: Cell<bool> = const { Cell::new(false) };
}

/// The sessions terminus keeps for one upstream address, and whether it may offer
/// them ([`ResumeBackoff`]): while resumption is off, nothing is handed out and new
/// sessions are not kept. Every entry is for the listener's one `server_name`, so
/// the name rustls passes is not looked at.
#[derive(Debug, Default)]
pub struct UpstreamSessions {
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: VecDeque<rustls::client::Tls13ClientSessionValue>,
    backoff: ResumeBackoff,
}

impl UpstreamSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refused(&self, now: Instant) -> Option<Duration> {
        let mut st = self.lock();
        st.tls12 = None;
        st.tls13.clear();
        st.backoff.refused(now)
    }

    fn offering(st: &SessionState) -> bool {
        st.backoff.allows(Instant::now())
    }
}

fn offered<T>(v: Option<T>) -> Option<T> {
    if v.is_some() {
        OFFERED.with(|o| o.set(true));
    }
    v
}

impl rustls::client::ClientSessionStore for UpstreamSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        self.lock().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.lock().kx_hint
    }

    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        let mut st = self.lock();
        if Self::offering(&st) {
            st.tls12 = Some(value);
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        let st = self.lock();
        offered(st.tls12.clone().filter(|_| Self::offering(&st)))
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.lock().tls12 = None;
    }

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut st = self.lock();
        if Self::offering(&st) {
            if st.tls13.len() >= TICKETS_PER_UPSTREAM {
                st.tls13.pop_front();
            }
            st.tls13.push_back(value);
        }
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let mut st = self.lock();
        if !Self::offering(&st) {
            return None;
        }
        offered(st.tls13.pop_back())
    }
}

/// Trust anchors from PEM CA bundles; each file must hold at least one certificate
/// usable as a trust anchor.
pub fn load_roots(paths: &[PathBuf]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for path in paths {
        store.roots.extend(load_roots_file(path)?);
    }
    Ok(store)
}

fn load_roots_file(path: &Path) -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, TlsError> {
    let certs = load_certs(path)?;
    let mut out = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        let mut one = rustls::RootCertStore::empty();
        one.add(c.clone()).map_err(|source| TlsError::TrustAnchor {
            path: path.to_owned(),
            number: i + 1,
            source,
        })?;
        out.extend(one.roots);
    }
    Ok(out)
}

/// The CRLs in one file (PEM `X509 CRL` sections, or one DER CRL), each checked the
/// way the verifier will use it.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read_file(path, "CRL")?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TlsError::EmptyFile {
            path: path.to_owned(),
            what: "CRL",
        });
    }
    // DER starts with a SEQUENCE tag; PEM with text.
    let crls = if bytes.first() == Some(&0x30) {
        vec![CertificateRevocationListDer::from(bytes)]
    } else {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                path: path.to_owned(),
                source,
            })?;
        if crls.is_empty() {
            return Err(TlsError::NoCrl {
                path: path.to_owned(),
            });
        }
        crls
    };
    for (i, crl) in crls.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_crl(crl) {
            return Err(TlsError::NotX509Crl {
                path: path.to_owned(),
                number: i + 1,
                why: e.to_string(),
            });
        }
    }
    Ok(crls)
}

/// [`load_crls`], then have webpki parse each CRL as the verifier will (with the
/// roots only to satisfy the builder), so an unsupported CRL names its file.
fn load_crl_file(
    path: &Path,
    roots: &Arc<rustls::RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = load_crls(path)?;
    if !roots.is_empty() {
        for (i, crl) in crls.iter().enumerate() {
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls([crl.clone()])
                .build()
                .map_err(|e| match e {
                    rustls::server::VerifierBuilderError::InvalidCrl(why) => {
                        TlsError::CrlUnusable {
                            path: path.to_owned(),
                            number: i + 1,
                            why,
                        }
                    }
                    source => TlsError::CrlVerifier {
                        path: path.to_owned(),
                        source,
                    },
                })?;
        }
    }
    Ok(crls)
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        what,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tools::certs::test_pki;
    use std::path::PathBuf;

    /// A folder with a fresh test PKI and a listener pointing at its server files.
    struct Fixture {
        dir: PathBuf,
        listener: Listener,
    }

    impl Fixture {
        fn new(tag: &str) -> Fixture {
            let dir =
                std::env::temp_dir().join(format!("terminus-tls-{tag}-{}", std::process::id()));
            test_pki(30, "example.org").unwrap().write(&dir).unwrap();
            let text = r#"
[[listeners]]
name = "edge"
listen = "127.0.0.1:0"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:8080"]
alpn = ["h2", "http/1.1"]
tls13_tickets = 2
"#;
            let cfg = Config::parse(text, &dir.join("config.toml")).unwrap();
            let listener = cfg.listeners.into_iter().next().unwrap();
            Fixture { dir, listener }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn server_config_completes_a_handshake_with_alpn() {
        let fx = Fixture::new("hs");
        let server_cfg = server_config(&fx.listener).unwrap();
        assert_eq!(server_cfg.send_tls13_tickets, 2);
        assert_eq!(server_cfg.max_early_data_size, 0);
        assert!(listener_problems(&fx.listener).is_empty());
        assert!(cert_warnings(&fx.listener).is_empty());

        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs(&fx.dir.join("ca.pem")).unwrap() {
            roots.add(ca).unwrap();
        }
        let mut client_cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        client_cfg.alpn_protocols = vec![b"h2".to_vec()];
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_cfg), "localhost".try_into().unwrap())
                .unwrap();
        let mut server = rustls::ServerConnection::new(server_cfg).unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
    }

    /// Run an in-memory handshake to the end (tickets included).
    fn handshake(client: &mut rustls::ClientConnection, server_cfg: &Arc<rustls::ServerConfig>) {
        let mut server = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.wants_write() && !client.wants_write() {
                break;
            }
        }
        assert!(!client.is_handshaking());
    }

    #[test]
    fn upstream_sessions_are_per_address_and_dropped_when_refused() {
        let mut fx = Fixture::new("upsess");
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        fx.listener.upstreams = vec![a, b];
        fx.listener.upstream_tls = Some(UpstreamTls {
            ca: vec![fx.dir.join("ca.pem")],
            server_name: "localhost".into(),
            cert: None,
            key: None,
            resume: true,
        });
        let server = server_config(&fx.listener).unwrap();
        let up = upstream_clients(&fx.listener).unwrap().unwrap();
        let kind = |c: &rustls::ClientConnection| c.handshake_kind().unwrap();

        let (mut c, offered) = up.connect(a, false).unwrap();
        assert!(!offered, "nothing stored yet");
        handshake(&mut c, &server);
        assert_eq!(kind(&c), rustls::HandshakeKind::Full);
        assert_eq!(up.sessions(a), 2, "the server's two tickets");
        assert_eq!(up.sessions(b), 0, "another address has its own store");
        assert!(!up.connect(b, false).unwrap().1);
        assert!(!up.connect(a, true).unwrap().1, "full: nothing offered");
        let (mut c, offered) = up.connect(a, false).unwrap();
        assert!(offered);
        handshake(&mut c, &server);
        assert_eq!(kind(&c), rustls::HandshakeKind::Resumed);
        up.resumed(a);

        // Refused: every session of that address goes, and none is kept or offered
        // during the off period; one report per period.
        assert!(up.sessions(a) > 0);
        assert_eq!(
            up.refused(a),
            Some(crate::proxy::upstream::RESUME_OFF_FIRST)
        );
        assert_eq!(up.sessions(a), 0);
        assert_eq!(up.refused(a), None);
        let (mut c, offered) = up.connect(a, false).unwrap();
        assert!(!offered);
        handshake(&mut c, &server);
        assert_eq!(kind(&c), rustls::HandshakeKind::Full);
        assert_eq!(up.sessions(a), 0, "not kept while off");

        // resume = false: never offered, never kept.
        fx.listener.upstream_tls.as_mut().unwrap().resume = false;
        let up = upstream_clients(&fx.listener).unwrap().unwrap();
        for _ in 0..2 {
            let (mut c, offered) = up.connect(a, false).unwrap();
            assert!(!offered);
            handshake(&mut c, &server);
            assert_eq!(kind(&c), rustls::HandshakeKind::Full);
        }
        assert_eq!(up.refused(a), None);
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let mut fx = Fixture::new("mismatch");
        fx.listener.key = fx.dir.join("client.key");
        let e = server_config(&fx.listener).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: private key does not match the certificate in {} (its public key differs \
                 from the leaf's)",
                fx.dir.join("client.key").display(),
                fx.dir.join("server.pem").display()
            )
        );
    }

    #[test]
    fn problems_lists_cert_and_key_errors_together() {
        let mut fx = Fixture::new("both");
        fx.listener.cert = fx.dir.join("missing.pem");
        std::fs::write(fx.dir.join("empty.key"), "\n").unwrap();
        fx.listener.key = fx.dir.join("empty.key");
        let problems: Vec<String> = listener_problems(&fx.listener)
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("missing.pem: cannot read certificate file: No such file"));
        assert!(problems[1].ends_with("empty.key: no PEM private key found: the file is empty"));
    }

    #[test]
    fn pem_problems_name_the_file() {
        let dir = std::env::temp_dir().join(format!("terminus-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("empty.pem", "", "no PEM certificate found: the file is empty"),
            ("text.pem", "hello\n", "no PEM certificate found (expected"),
            (
                "b64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "unparsable PEM: bad base64",
            ),
            (
                "open.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "unparsable PEM: no \"-----END CERTIFICATE-----\" line after \"-----BEGIN CERTIFICATE-----\"",
            ),
            (
                "der.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "certificate #1 is not valid X.509",
            ),
        ];
        for (name, text, why) in cases {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            let e = load_certs(&path).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: {why}", path.display())), "{e}");
        }
        let path = dir.join("bad.key");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let der = load_key(&path).unwrap();
        let provider = aws_lc_rs::default_provider();
        let certs = load_certs(&dir.join("der.pem"));
        assert!(certs.is_err());
        let e = certified_key_from(&dir.join("x.pem"), &path, Vec::new(), der, &provider)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.key: unsupported or malformed PKCS#8 private key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encrypted_keys_and_misordered_chains_say_so() {
        let dir = std::env::temp_dir().join(format!("terminus-tls-enc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let legacy = dir.join("legacy.key");
        std::fs::write(
            &legacy,
            "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
             DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n\
             -----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_key(&legacy).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: the private key is encrypted (OpenSSL \"Proc-Type: 4,ENCRYPTED\")",
                legacy.display()
            )),
            "{e}"
        );
        // An encrypted key next to a plain one: the plain one is used.
        let pki = test_pki(30, "example.org").unwrap();
        let both = dir.join("both.key");
        std::fs::write(
            &both,
            format!(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n{}",
                pki.server_key_pem
            ),
        )
        .unwrap();
        assert!(load_key(&both).is_ok());

        // Two leaves, the key belonging to the second: named as an order problem.
        let other = test_pki(30, "example.org").unwrap();
        let chain = dir.join("chain.pem");
        std::fs::write(&chain, format!("{}{}", other.server_pem, pki.server_pem)).unwrap();
        let key = dir.join("server.key");
        std::fs::write(&key, &pki.server_key_pem).unwrap();
        let e = certified_key(&chain, &key, &aws_lc_rs::default_provider())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: certificate chain in the wrong order: the private key in {} belongs to \
                 certificate #2 (\"CN=localhost\"), which must come first (the server \
                 certificate, then its intermediates)",
                chain.display(),
                key.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_crl_is_a_warning() {
        let ca = crate::tools::certs::TestCa::root("crl CA").unwrap();
        let (_, der) = ca.crl(&[&[1]]).unwrap();
        let crl = CertificateRevocationListDer::from(der);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert_eq!(crl_warning(Path::new("c.crl"), &crl, now), None);
        let w = crl_warning(Path::new("c.crl"), &crl, now + 2 * 86400).unwrap();
        assert!(
            w.starts_with("c.crl: CRL of \"CN=crl CA\" is past its nextUpdate ("),
            "{w}"
        );
    }

    #[test]
    fn validity_findings_for_expired_future_and_expiring_certs() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let chain = [cert.der().clone()];
        let path = Path::new("old.pem");
        let messages = |now, role| -> Vec<(bool, String)> {
            validity_findings(path, &chain, role, now)
                .into_iter()
                .map(|f| (f.refused, f.message))
                .collect()
        };
        let in_2022 = 1_640_995_200;
        assert_eq!(
            messages(in_2022, Role::Server),
            [(true, "old.pem: certificate expired: notAfter Jan  1 00:00:00 2021 +00:00 (clients will reject it)".to_owned())]
        );
        assert_eq!(
            messages(in_2022, Role::Client)[0].1,
            "old.pem: certificate expired: notAfter Jan  1 00:00:00 2021 +00:00 (the upstream will reject it)"
        );
        let in_2019 = 1_546_300_800;
        let w = messages(in_2019, Role::Server);
        assert_eq!(w.len(), 1);
        assert!(w[0].0);
        assert!(w[0]
            .1
            .starts_with("old.pem: certificate not yet valid: notBefore Jan  1 00:00:00 2020"));
        assert!(messages(1_600_000_000, Role::Server).is_empty());
        let end = 1_609_459_200;
        assert_eq!(leaf_not_after(&chain), Some(end));
        let soon = |left: i64| messages(end - left, Role::Server);
        assert!(soon(14 * 86400).is_empty());
        assert_eq!(
            soon(5 * 86400 - 30),
            [(false, "old.pem: certificate expires in 5 days: notAfter Jan  1 00:00:00 2021 +00:00; renew it".to_owned())]
        );
        assert!(soon(86400)[0].1.contains("in 1 day:"));
        assert!(soon(3600)[0].1.contains("in 1 hour:"));
        assert!(soon(7000)[0].1.contains("in 2 hours:"));
    }

    #[test]
    fn chain_findings_name_the_certificate() {
        let ca = crate::tools::certs::TestCa::root("dates CA").unwrap();
        let leaf = ca
            .leaf(&crate::tools::certs::LeafSpec::server(&["a.internal"]))
            .unwrap();
        let chain = [leaf.der().clone(), ca.der.clone()];
        // Both are valid for a day (minus the seconds since): within the window.
        let f = validity_findings(Path::new("c.pem"), &chain, Role::Server, unix_now());
        assert_eq!(f.len(), 2, "{f:?}");
        // A day from now, give or take the second boundary: "24 hours" or "1 day".
        assert!(
            f[0].message.starts_with("c.pem: certificate expires in "),
            "{}",
            f[0].message
        );
        assert!(
            f[1].message
                .starts_with("c.pem: certificate #2 (\"CN=dates CA\") expires in "),
            "{}",
            f[1].message
        );
    }
}
