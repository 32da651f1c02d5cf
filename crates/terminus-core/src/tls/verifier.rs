//! verifier: client-certificate authentication of a listener.
//!
//! Owns [`client_verifier`] (none, or webpki over the `ca` bundles and `crl` lists,
//! optional or required), [`PolicyVerifier`] (then the allow list on the leaf's
//! [`PeerIdentity`]), and [`RejectSink`] / [`RejectedClient`]: who a refused client
//! was, handed to the connection explicitly (see [`RejectSink`] for why per worker).
//!
//! I/O contract: building reads the CA and CRL files; verifying is pure (the verifier
//! runs inside rustls' `process_tls_records`).

use super::chain_cache::{chain_not_after, ChainCache};
use super::identity::PeerIdentity;
use super::pem::{load_crls, load_roots};
use super::policy::AllowList;
use super::settings::{ClientAuth, ClientAuthMode, ListenerTls};
use super::signatures::{delegated_signatures, SignatureCheck};
use super::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DistinguishedName};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The client verifier for the listener's `client_auth`: none, or webpki (CAs, CRLs,
/// optional/require) followed by the allow-list policy.
pub fn client_verifier(
    l: &ListenerTls,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(match policy_verifier(l, provider)? {
        Some(p) => Arc::new(p),
        None => WebPkiClientVerifier::no_client_auth(),
    })
}

/// [`client_verifier`] when `client_auth` asks for certificates (`None`: mode `none`).
pub(super) fn policy_verifier(
    l: &ListenerTls,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<PolicyVerifier>, TlsError> {
    table_verifier(l, l.client_auth.as_ref(), provider)
}

/// [`policy_verifier`] for one client-auth table of `l` (its `client_auth`, or the
/// candidate in it).
pub(super) fn table_verifier(
    l: &ListenerTls,
    table: Option<&ClientAuth>,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<PolicyVerifier>, TlsError> {
    let Some(ca) = table.filter(|c| c.mode != ClientAuthMode::None) else {
        return Ok(None);
    };
    let file_roots = load_roots(&ca.ca)?;
    let mut roots = file_roots.clone();
    if ca.workload_trust() {
        match super::workload::trust_anchors(&ca.trust_domains) {
            Ok(anchors) => roots.roots.extend(anchors),
            // `ca` files still verify when no bundle is left.
            Err(_) if !file_roots.is_empty() => {}
            // Every bundle this listener trusted was dropped: refuse every client
            // certificate (fail closed) rather than keep serving with the trust
            // that was withdrawn.
            Err(_) if super::workload::trusted_before(&ca.trust_domains) => {
                let refuse = super::workload::RefuseAll::new(ca.mode, provider.clone());
                return Ok(Some(PolicyVerifier::new(
                    Arc::new(refuse),
                    AllowList::parse(&ca.allow).map_err(|source| TlsError::AllowList {
                        listener: l.name.clone(),
                        source,
                    })?,
                )));
            }
            Err(e) => return Err(e),
        }
    }
    let roots = Arc::new(roots);
    let mut crls = Vec::new();
    for path in &ca.crl {
        crls.extend(load_crl_file(path, &roots, provider)?);
    }
    let build = |roots: rustls::RootCertStore| {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls.clone())
                .allow_unknown_revocation_status();
        if ca.mode == ClientAuthMode::Optional {
            builder = builder.allow_unauthenticated();
        }
        let v: Arc<dyn ClientCertVerifier> =
            builder.build().map_err(|source| TlsError::ClientAuth {
                listener: l.name.clone(),
                source,
            })?;
        Ok(v)
    };
    let mut inner = build((*roots).clone())?;
    // Workload API bundles: each SPIFFE ID is verified against its own domain's bundle.
    if ca.workload_trust() {
        inner = Arc::new(super::workload::DomainVerifier::new(
            inner,
            file_roots,
            &ca.trust_domains,
            build,
        )?);
    }
    let allow = AllowList::parse(&ca.allow).map_err(|source| TlsError::AllowList {
        listener: l.name.clone(),
        source,
    })?;
    Ok(Some(
        PolicyVerifier::new(inner, allow).with_cache(ChainCache::new(ca.verify_cache_size)),
    ))
}

/// webpki chain verification, then the allow list on the leaf's identity; a refused
/// client is left in the sink, if it has one.
#[derive(Debug)]
pub struct PolicyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Arc<AllowList>,
    sink: Option<RejectSink>,
    /// Chains verified and allowed under this policy (shared by the worker copies).
    cache: Arc<ChainCache>,
}

impl PolicyVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, allow: AllowList) -> PolicyVerifier {
        PolicyVerifier {
            inner,
            allow: Arc::new(allow),
            sink: None,
            cache: Arc::new(ChainCache::new(0)),
        }
    }

    /// The same verifier remembering the chains it accepts in `cache`.
    pub fn with_cache(self, cache: ChainCache) -> PolicyVerifier {
        PolicyVerifier {
            cache: Arc::new(cache),
            ..self
        }
    }

    /// Its chain cache (hit/miss counts for the metrics, adopted across reloads).
    pub fn cache(&self) -> &ChainCache {
        &self.cache
    }

    /// The same verifier, leaving refused clients nowhere.
    pub(super) fn without_sink(&self) -> PolicyVerifier {
        PolicyVerifier {
            inner: self.inner.clone(),
            allow: self.allow.clone(),
            sink: None,
            cache: self.cache.clone(),
        }
    }

    /// Whether the allow list admits `end_entity` (whose chain is already verified):
    /// the second half of [`ClientCertVerifier::verify_client_cert`].
    pub(super) fn allows_leaf(&self, end_entity: &CertificateDer<'_>) -> bool {
        PeerIdentity::from_der(end_entity).is_ok_and(|id| self.allow.allows(&id))
    }

    /// Where this copy leaves refused clients, if anywhere.
    pub(super) fn sink(&self) -> Option<&RejectSink> {
        self.sink.as_ref()
    }

    /// The same verifier, leaving refused clients in `sink`.
    pub fn with_sink(&self, sink: RejectSink) -> PolicyVerifier {
        PolicyVerifier {
            inner: self.inner.clone(),
            allow: self.allow.clone(),
            sink: Some(sink),
            cache: self.cache.clone(),
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
        let key = self
            .cache
            .enabled()
            .then(|| ChainCache::key(end_entity, intermediates));
        if let Some(k) = &key {
            if self.cache.check(k, now.as_secs()) {
                return Ok(ClientCertVerified::assertion());
            }
        }
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
        if let (Ok(_), Some(k)) = (&verdict, key) {
            if let Some(until) = chain_not_after(end_entity, intermediates) {
                self.cache.insert(k, now.as_secs(), until);
            }
        }
        if let (Err(error), Some(sink)) = (&verdict, &self.sink) {
            let (identity, identity_error) = match identity {
                Ok(id) => (Some(id), None),
                Err(e) => (None, Some(e)),
            };
            sink.put(RejectedClient {
                identity,
                identity_error,
                error: error.clone(),
                leaf: end_entity.clone().into_owned(),
            });
        }
        verdict
    }

    delegated_signatures!(v => SignatureCheck::Verifier(v.inner.as_ref()));
}

/// A client certificate the verifier refused, with who presented it.
#[derive(Debug, Clone)]
pub struct RejectedClient {
    /// Read from the presented leaf (unverified when `error` is a chain error).
    pub identity: Option<PeerIdentity>,
    /// Why no identity could be read, when `identity` is `None`.
    pub identity_error: Option<super::IdentityError>,
    /// What the handshake failed with (also returned by `process_tls_records`):
    /// `InvalidCertificate(ApplicationVerificationFailure)` for a policy refusal.
    pub error: rustls::Error,
    /// The presented leaf (for the callers inventory: its subject, issuer, notAfter).
    pub leaf: CertificateDer<'static>,
}

/// Where a verifier leaves the client certificate it refused, for the connection
/// to log: one per worker, given to the worker's config ([`super::ServerTls::config_for`])
/// and to each of its connections.
///
/// Why it is per worker and taken at once: rustls keeps no refused certificate on
/// the connection, and the verifier, shared by every connection of the config, is
/// not told which connection it checks. It runs inside `process_tls_records`, on
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

    /// The client refused during the `process_tls_records` call that just failed.
    pub fn take(&self) -> Option<RejectedClient> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// [`load_crls`], then have webpki parse each CRL as the verifier will (with the
/// roots only to satisfy the builder), so an unsupported CRL names its file.
pub(super) fn load_crl_file(
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
