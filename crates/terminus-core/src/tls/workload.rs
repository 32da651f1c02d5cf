//! workload: the certificates, keys and trust bundles the SPIFFE Workload API last
//! pushed (`svid = "workload_api"`, `trust = "workload_api"`), held for the config
//! builders the way files are held on disk.
//!
//! One snapshot per process (a process has one `[spiffe]` endpoint): `ops::spiffe`
//! publishes each update here and then has the reloader rebuild the listeners that
//! use it, so the builders read it like they read a file, off the data path. No I/O.
#![forbid(unsafe_code)]

use super::signatures::{delegated_signatures, SignatureCheck};
use super::TlsError;
use arc_swap::ArcSwapOption;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, TrustAnchor};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One X.509-SVID: the leaf first, then intermediates, and its PKCS#8 key.
#[derive(Clone)]
pub struct Svid {
    pub spiffe_id: String,
    /// The operator's hint (empty: none).
    pub hint: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

/// The authorities of one trust domain (`example.org`, no scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub trust_domain: String,
    pub authorities: Vec<CertificateDer<'static>>,
}

/// What one Workload API update carried: the SVIDs (the first is the default) and
/// every bundle (the own trust domain's and the federated ones).
#[derive(Debug, Clone, Default)]
pub struct Material {
    pub svids: Vec<Svid>,
    pub bundles: Vec<Bundle>,
}

static CURRENT: ArcSwapOption<Material> = ArcSwapOption::const_empty();
/// Updates since start, `terminus_spiffe_updates_total{kind="svid"|"bundle"}`.
pub static UPDATES_SVID: AtomicU64 = AtomicU64::new(0);
pub static UPDATES_BUNDLE: AtomicU64 = AtomicU64::new(0);
/// `terminus_spiffe_stream_up`: the update stream is connected.
pub static STREAM_UP: AtomicBool = AtomicBool::new(false);
/// `terminus_spiffe_svid_expired`: the served SVID is past its notAfter.
pub static SVID_EXPIRED: AtomicBool = AtomicBool::new(false);
/// `[spiffe]` is in use (the families are printed only then).
pub static IN_USE: AtomicBool = AtomicBool::new(false);
/// Bumped on each publish: what the reloader's fingerprint reads.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Make `m` the material new configs are built from; counts what changed.
pub fn publish(m: Material) {
    let old = CURRENT.load_full();
    let svids_changed = old.as_ref().is_none_or(|o| {
        o.svids.len() != m.svids.len()
            || o.svids
                .iter()
                .zip(&m.svids)
                .any(|(a, b)| a.chain != b.chain)
    });
    let bundles_changed = old.as_ref().is_none_or(|o| o.bundles != m.bundles);
    if svids_changed {
        UPDATES_SVID.fetch_add(1, Ordering::Relaxed);
    }
    if bundles_changed {
        UPDATES_BUNDLE.fetch_add(1, Ordering::Relaxed);
    }
    SEEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(m.bundles.iter().map(|b| b.trust_domain.clone()));
    CURRENT.store(Some(Arc::new(m)));
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Every trust domain a bundle was ever pushed for, since start.
static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether a bundle `trust_domains` allows (any, when empty) was pushed before: the
/// difference between trust withdrawn (refuse every client) and trust not yet
/// received (an error that names the missing bundles).
pub fn trusted_before(trust_domains: &[String]) -> bool {
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    match trust_domains.is_empty() {
        true => !seen.is_empty(),
        false => trust_domains
            .iter()
            .any(|t| seen.contains(t.trim_start_matches("spiffe://"))),
    }
}

/// The last material published (None before the first update).
pub fn current() -> Option<Arc<Material>> {
    CURRENT.load_full()
}

/// Changes with every publish.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The name a Workload API certificate goes by where a file's path would be (errors,
/// `terminus_cert_expiry_timestamp_seconds{cert}`): `workload_api:<SPIFFE ID>`.
pub fn svid_label(s: &Svid) -> PathBuf {
    PathBuf::from(format!("workload_api:{}", s.spiffe_id))
}

/// The SVID to serve: the one with `hint`, else the default (the first).
pub fn svid(hint: Option<&str>) -> Result<(Svid, PrivateKeyDer<'static>), TlsError> {
    let m = current().ok_or_else(|| TlsError::Workload("no X.509-SVID received yet".into()))?;
    let s = match hint {
        Some(h) => m.svids.iter().find(|s| s.hint == h).ok_or_else(|| {
            TlsError::Workload(format!("no X.509-SVID with hint {h:?} in the last update"))
        })?,
        None => m
            .svids
            .first()
            .ok_or_else(|| TlsError::Workload("the last update holds no X.509-SVID".into()))?,
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(s.key.clone()));
    Ok((s.clone(), key))
}

/// The bundles `trust_domains` allows (empty: every bundle pushed).
pub fn bundles(trust_domains: &[String]) -> Vec<Bundle> {
    let Some(m) = current() else {
        return Vec::new();
    };
    m.bundles
        .iter()
        .filter(|b| {
            trust_domains.is_empty()
                || trust_domains
                    .iter()
                    .any(|t| t.trim_start_matches("spiffe://") == b.trust_domain)
        })
        .cloned()
        .collect()
}

/// Trust anchors of [`bundles`]; an error when none is left (nothing to verify with).
pub fn trust_anchors(trust_domains: &[String]) -> Result<Vec<TrustAnchor<'static>>, TlsError> {
    let mut out = Vec::new();
    for b in bundles(trust_domains) {
        for (i, c) in b.authorities.iter().enumerate() {
            let mut one = rustls::RootCertStore::empty();
            one.add(c.clone()).map_err(|e| {
                TlsError::Workload(format!(
                    "bundle of {}: authority {} is not a usable trust anchor: {e}",
                    b.trust_domain,
                    i + 1
                ))
            })?;
            out.extend(one.roots);
        }
    }
    if out.is_empty() {
        return Err(TlsError::Workload(if trust_domains.is_empty() {
            "no trust bundle received yet".into()
        } else {
            format!("no trust bundle for {} received", trust_domains.join(", "))
        }));
    }
    Ok(out)
}

/// Client verification with Workload API bundles, as SPIFFE verifies an X.509-SVID:
/// a leaf with a SPIFFE ID must chain to the bundle of *its* trust domain (a
/// federated CA vouches for its own domain's IDs only). A leaf whose domain has no
/// bundle here, or without a SPIFFE ID, can still chain to the `ca` files, if any.
#[derive(Debug)]
pub(super) struct DomainVerifier {
    /// Every anchor (bundles and files): what is offered and hinted.
    all: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    by_domain: Vec<(String, Arc<dyn rustls::server::danger::ClientCertVerifier>)>,
    files: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

impl DomainVerifier {
    /// `build` makes a webpki verifier from a root store (the caller's CRLs and mode).
    pub(super) fn new(
        all: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        file_roots: rustls::RootCertStore,
        trust_domains: &[String],
        build: impl Fn(
            rustls::RootCertStore,
        ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError>,
    ) -> Result<DomainVerifier, TlsError> {
        let mut by_domain = Vec::new();
        for b in bundles(trust_domains) {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(b.authorities.iter().cloned());
            if !roots.is_empty() {
                by_domain.push((b.trust_domain.clone(), build(roots)?));
            }
        }
        let files = match file_roots.is_empty() {
            true => None,
            false => Some(build(file_roots)?),
        };
        Ok(DomainVerifier {
            all,
            by_domain,
            files,
        })
    }
}

/// The trust domain of a `spiffe://domain/path` URI SAN.
fn leaf_domain(end_entity: &CertificateDer<'_>) -> Option<String> {
    let id = super::identity::PeerIdentity::from_der(end_entity)
        .ok()?
        .spiffe?;
    let rest = id.get("spiffe://".len()..)?;
    Some(rest.split('/').next()?.to_ascii_lowercase())
}

impl rustls::server::danger::ClientCertVerifier for DomainVerifier {
    fn offer_client_auth(&self) -> bool {
        self.all.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.all.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.all.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let domain = leaf_domain(end_entity);
        let bundle = self
            .by_domain
            .iter()
            .find(|(td, _)| Some(td) == domain.as_ref())
            .map(|(_, v)| v);
        let refused = || {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        };
        match (bundle, &self.files) {
            (Some(v), None) => v.verify_client_cert(end_entity, intermediates, now),
            (Some(v), Some(f)) => v
                .verify_client_cert(end_entity, intermediates, now)
                .or_else(|_| f.verify_client_cert(end_entity, intermediates, now)),
            (None, Some(f)) => f.verify_client_cert(end_entity, intermediates, now),
            (None, None) => refused(),
        }
    }

    delegated_signatures!(v => SignatureCheck::Verifier(v.all.as_ref()));
}

/// The verifier of a listener whose Workload API trust has no bundle left: it asks
/// for a certificate as its mode says and refuses every one (unknown issuer), so
/// withdrawing the last trusted bundle locks its callers out at once.
#[derive(Debug)]
pub(super) struct RefuseAll {
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl RefuseAll {
    pub(super) fn new(
        mode: super::settings::ClientAuthMode,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> RefuseAll {
        RefuseAll {
            mandatory: mode == super::settings::ClientAuthMode::Require,
            provider,
        }
    }
}

impl rustls::server::danger::ClientCertVerifier for RefuseAll {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    delegated_signatures!(v => SignatureCheck::Algorithms(&v.provider.signature_verification_algorithms));
}
