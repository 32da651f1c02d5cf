//! server: the listener's rustls server config.
//!
//! Owns [`server_tls`] / [`server_config`] (certificates through the SNI resolver,
//! client authentication, TLS 1.2 and 1.3, ALPN, resumption state shared by every
//! worker), [`ServerTls::config_for`] (a worker's copy whose verifier records refused
//! clients), the cipher preference ([`server_provider`]), the policy digest tickets
//! are bound to, and [`listener_files`] (what the reloader polls).
//!
//! I/O contract: reads the listener's certificate, key, CA, CRL and ticket key files
//! (through [`super::pem`], [`super::verifier`], [`super::tickets`]) when a config is
//! built; `policy_digest` reads the CA and CRL files again.

use super::candidate::{AuthOutcome, AuthRecord, Candidate, DualPolicy, DualVerifier};
use super::settings::ListenerTls;
use super::sni::SniResolver;
use super::validity::{unix_now, validity_findings, Role};
use super::verifier::{policy_verifier, table_verifier, PolicyVerifier, RejectSink};
use super::TlsError;
use ::aws_lc_rs::digest as aws_lc_rs_digest;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use std::path::PathBuf;
use std::sync::Arc;

/// Build the listener's server config: default cert chain + key and the
/// `[[listeners.sni]]` certificates, client authentication, TLS 1.2 and 1.3, ALPN,
/// tickets and a server-side session cache shared by every worker (the Arc is shared).
pub fn server_config(l: &ListenerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_tls(l).map(|t| t.config)
}

/// A listener's server config plus the certificates it serves, for callers that need
/// to know which certificate a connection got (PROXY v2 `SIG_ALG`/`KEY_ALG`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub certs: Arc<SniResolver>,
    /// What is wrong with the served certificates but does not stop serving them:
    /// expired, not yet valid, or expiring within [`super::EXPIRY_WARNING_DAYS`] (one line
    /// each, naming the file and the date). A reload that swaps them in should
    /// print these.
    pub warnings: Vec<String>,
    /// The allow-list verifier (client_auth other than `none`), kept to build the
    /// per-worker configs of [`ServerTls::config_for`].
    policy: Option<Arc<PolicyVerifier>>,
    /// A candidate policy or `invalid_certificate = "anonymous"` (see `candidate`).
    dual: Option<Arc<DualPolicy>>,
    /// The protocol versions offered (`min_version`), for those copies too.
    versions: &'static [&'static rustls::SupportedProtocolVersion],
}

impl ServerTls {
    /// (hits, misses) of the client chain cache; None without client authentication
    /// or with `verify_cache_size = 0`.
    pub fn chain_cache_counts(&self) -> Option<(u64, u64)> {
        let cache = self.policy.as_ref()?.cache();
        cache.enabled().then(|| cache.counts())
    }

    /// After a reload: keep counting from where `old` (the material replaced) was.
    pub fn adopt_chain_cache_counts(&self, old: &ServerTls) {
        if let (Some(new), Some(old)) = (&self.policy, &old.policy) {
            new.cache().adopt_counts(old.cache());
        }
    }

    /// A copy of [`ServerTls::config`] whose verifier leaves each client certificate
    /// it refuses in `sink` (one sink per worker; see [`RejectSink`]). It shares the
    /// certificates, session cache and ticketer with `config`, so sessions resume
    /// across copies. Without client authentication there is nothing to record:
    /// `config` itself.
    pub fn config_for(&self, sink: &RejectSink) -> Arc<rustls::ServerConfig> {
        let verifier: Arc<dyn ClientCertVerifier> = match (&self.dual, &self.policy) {
            (Some(dual), policy) => Arc::new(DualVerifier::new(
                policy.as_ref().map(|p| p.with_sink(sink.clone())),
                dual.clone(),
            )),
            (None, Some(policy)) => Arc::new(policy.with_sink(sink.clone())),
            (None, None) => return self.config.clone(),
        };
        let base = &self.config;
        let built = rustls::ServerConfig::builder_with_provider(base.crypto_provider().clone())
            .with_protocol_versions(self.versions)
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

impl ServerTls {
    /// Whether handshakes of this listener have an [`AuthOutcome`] (a candidate
    /// policy or `invalid_certificate = "anonymous"`); without, a presented
    /// certificate is always a verified one.
    pub fn has_dual_policy(&self) -> bool {
        self.dual.is_some()
    }

    /// Whether the listener has a candidate policy.
    pub fn has_candidate(&self) -> bool {
        self.dual.as_ref().is_some_and(|d| d.candidate.is_some())
    }

    /// Both verdicts of a completed handshake (see [`DualPolicy::completed`]); None
    /// without a dual policy.
    pub fn completed_outcome(
        &self,
        chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
        record: Option<AuthRecord>,
    ) -> Option<AuthOutcome> {
        let now = rustls_pki_types::UnixTime::now();
        let d = self.dual.as_ref()?;
        Some(d.completed(self.policy.as_deref(), chain, record, now))
    }

    /// Both verdicts of a failed handshake (see [`DualPolicy::failed`]).
    pub fn failed_outcome(
        &self,
        record: Option<AuthRecord>,
        no_client_cert: bool,
    ) -> Option<AuthOutcome> {
        Some(self.dual.as_ref()?.failed(record, no_client_cert))
    }
}

/// The candidate policy and the anonymous setting of `l`, when it has either.
fn dual_policy(
    l: &ListenerTls,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<DualPolicy>, TlsError> {
    use super::settings::{ClientAuthMode, InvalidCertificate};
    let Some(ca) = &l.client_auth else {
        return Ok(None);
    };
    let anonymous = ca.mode == ClientAuthMode::Optional
        && ca.invalid_certificate == InvalidCertificate::Anonymous;
    // File contents, as the verifiers read them (unreadable ones failed above).
    let contents = |files: &[PathBuf]| -> Vec<Vec<u8>> {
        files
            .iter()
            .map(|f| std::fs::read(f).unwrap_or_default())
            .collect()
    };
    let candidate = match ca.candidate.as_deref() {
        Some(c) => Some(Candidate {
            mode: c.mode,
            anonymous: c.mode == ClientAuthMode::Optional
                && c.invalid_certificate == InvalidCertificate::Anonymous,
            verifier: table_verifier(l, Some(c), provider)?.map(Arc::new),
            shares_chain: ca.mode != ClientAuthMode::None
                && c.mode != ClientAuthMode::None
                && contents(&ca.ca) == contents(&c.ca)
                && contents(&ca.crl) == contents(&c.crl),
        }),
        None => None,
    };
    Ok((anonymous || candidate.is_some()).then_some(DualPolicy {
        anonymous,
        candidate,
    }))
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
pub fn server_tls(l: &ListenerTls) -> Result<ServerTls, TlsError> {
    let provider = listener_provider(l);
    let versions = super::suites::MinVersion::parse(l.min_version.as_deref().unwrap_or("1.2"))
        .unwrap_or_default()
        .versions();
    let certs = Arc::new(SniResolver::load(l, &provider)?);
    let policy = policy_verifier(l, &provider)?.map(Arc::new);
    let dual = dual_policy(l, &provider)?.map(Arc::new);
    let verifier: Arc<dyn ClientCertVerifier> = match (&dual, &policy) {
        (Some(d), p) => Arc::new(DualVerifier::new(
            p.as_ref().map(|p| p.without_sink()),
            d.clone(),
        )),
        (None, Some(p)) => p.clone(),
        (None, None) => WebPkiClientVerifier::no_client_auth(),
    };
    let config = build_server_config(l, provider, versions, certs.clone(), verifier)?;
    let now = unix_now();
    let warnings = certs
        .served()
        .flat_map(|c| validity_findings(&c.path, &c.key.cert, Role::Server, now))
        .map(|f| f.message)
        .chain(certs.served().filter_map(|c| c.ocsp_problem.clone()))
        .collect();
    Ok(ServerTls {
        config,
        certs,
        warnings,
        policy,
        dual,
        versions,
    })
}

/// [`server_provider`] narrowed to the listener's `cipher_suites` and `groups`, in
/// the order written (the server's order decides: `ignore_client_order`). Names
/// were validated with the config; an empty list keeps the default.
fn listener_provider(l: &ListenerTls) -> Arc<CryptoProvider> {
    use super::suites::{group, suite};
    if l.cipher_suites.is_empty() && l.groups.is_empty() {
        return server_provider();
    }
    let mut p = (*server_provider()).clone();
    if !l.cipher_suites.is_empty() {
        p.cipher_suites = l.cipher_suites.iter().filter_map(|n| suite(n)).collect();
    }
    if !l.groups.is_empty() {
        p.kx_groups = l.groups.iter().filter_map(|n| group(n)).collect();
    }
    Arc::new(p)
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
    l: &ListenerTls,
    provider: Arc<CryptoProvider>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    certs: Arc<SniResolver>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = l.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // An http listener speaks HTTP/1.1 only, and says so (h2 clients then use it).
    if l.http && cfg.alpn_protocols.is_empty() {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    cfg.session_storage = if l.session_cache == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        super::session_cache::SessionCache::new(l.session_cache)
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
/// resumption, so a change here must make old tickets undecryptable); and so the
/// anonymous setting and the candidate policy (a session resumed under a candidate
/// was established under it, with its CertificateRequest). Without those two the
/// digest is what it was before they existed (fleets mixing versions still resume).
fn policy_digest(l: &ListenerTls) -> Vec<u8> {
    let mut ctx = aws_lc_rs_digest::Context::new(&aws_lc_rs_digest::SHA256);
    if let Some(ca) = &l.client_auth {
        digest_client_auth(&mut ctx, ca);
    }
    ctx.finish().as_ref().to_vec()
}

fn digest_client_auth(ctx: &mut aws_lc_rs_digest::Context, ca: &super::settings::ClientAuth) {
    ctx.update(ca.mode.as_str().as_bytes());
    for (tag, files) in [(&b"ca\0"[..], &ca.ca), (&b"crl\0"[..], &ca.crl)] {
        for f in files {
            ctx.update(tag);
            // Unreadable files already failed the verifier build above.
            ctx.update(&std::fs::read(f).unwrap_or_default());
        }
    }
    // Workload API bundles: a ticket must not outlive the bundle that verified its
    // client (a dropped federated bundle), as it must not outlive a CA file.
    if ca.workload_trust() {
        for b in super::workload::bundles(&ca.trust_domains) {
            ctx.update(b"bundle\0");
            ctx.update(b.trust_domain.as_bytes());
            for a in &b.authorities {
                ctx.update(a.as_ref());
            }
        }
    }
    for a in &ca.allow {
        ctx.update(b"allow\0");
        ctx.update(a.as_bytes());
    }
    if ca.invalid_certificate != super::settings::InvalidCertificate::Refuse {
        ctx.update(b"invalid_certificate\0");
        ctx.update(ca.invalid_certificate.as_str().as_bytes());
    }
    if let Some(c) = &ca.candidate {
        ctx.update(b"candidate\0");
        digest_client_auth(ctx, c);
    }
}

/// Every file whose content the listener's live TLS state is built from: what the
/// reloader polls.
pub fn listener_files(l: &ListenerTls) -> Vec<PathBuf> {
    // `svid = "workload_api"`: no files; the reloader watches the material instead.
    let mut v = match l.svid {
        Some(_) => Vec::new(),
        None => vec![l.cert.clone(), l.key.clone()],
    };
    v.extend(l.ocsp.iter().cloned());
    for sni in &l.sni {
        v.push(sni.cert.clone());
        v.push(sni.key.clone());
        v.extend(sni.ocsp.iter().cloned());
    }
    if let Some(ca) = &l.client_auth {
        v.extend(ca.ca.iter().cloned());
        v.extend(ca.crl.iter().cloned());
        if let Some(c) = &ca.candidate {
            v.extend(c.ca.iter().cloned());
            v.extend(c.crl.iter().cloned());
        }
    }
    if let Some(up) = &l.upstream_tls {
        v.extend(up.ca.iter().cloned());
        v.extend(up.cert.iter().cloned());
        v.extend(up.key.iter().cloned());
    }
    v.extend(l.ticket_key_file.iter().cloned());
    v
}
