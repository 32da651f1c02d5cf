//! sni: which certificate a client gets, by the server name it asks for.
//!
//! Owns [`SniResolver`] (exact names, then `*.parent` wildcards, else the listener's
//! own certificate) and [`ServedCert`] (a served certificate with what PROXY v2
//! reports about it).
//!
//! I/O contract: [`SniResolver::load`] reads the listener's certificate and key
//! files; choosing is pure.

use super::identity::CertAlgorithms;
use super::pem::certified_key;
use super::problems::server_auth_problem;
use super::settings::ListenerTls;
use super::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate served by a listener, with what PROXY v2 reports about it.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    /// The certificate file it came from.
    pub path: PathBuf,
    pub algorithms: CertAlgorithms,
    /// The stapled OCSP response's nextUpdate (Unix seconds), when one is stapled.
    pub ocsp_next_update: Option<i64>,
    /// Why the configured OCSP response is not stapled (one line naming the file).
    pub ocsp_problem: Option<String>,
}

impl ServedCert {
    fn load(
        cert: &Path,
        key: &Path,
        ocsp: Option<&Path>,
        provider: &CryptoProvider,
    ) -> Result<ServedCert, TlsError> {
        let ck = certified_key(cert, key, provider)?;
        Self::from_key(ck, cert, ocsp)
    }

    /// The listener's default certificate from the Workload API (`svid = "workload_api"`).
    fn from_workload(
        hint: Option<&str>,
        provider: &CryptoProvider,
    ) -> Result<ServedCert, TlsError> {
        let (svid, key) = super::workload::svid(hint)?;
        let label = super::workload::svid_label(&svid);
        let ck = super::pem::certified_key_from(&label, &label, svid.chain, key, provider)?;
        Self::from_key(ck, &label, None)
    }

    fn from_key(
        mut ck: rustls::sign::CertifiedKey,
        cert: &Path,
        ocsp: Option<&Path>,
    ) -> Result<ServedCert, TlsError> {
        if let Some(e) = server_auth_problem(cert, &ck.cert[0]) {
            return Err(e);
        }
        let algorithms =
            CertAlgorithms::from_der(&ck.cert[0]).map_err(|source| TlsError::Algorithms {
                path: cert.to_owned(),
                source,
            })?;
        let (mut ocsp_next_update, mut ocsp_problem) = (None, None);
        if let Some(path) = ocsp {
            let checked = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|der| {
                    let now = super::validity::unix_now();
                    let staple = super::ocsp::check_staple(&der, &ck.cert[0], now)
                        .map_err(|e| e.to_string())?;
                    Ok((der, staple))
                });
            match checked {
                Ok((der, staple)) => {
                    ck.ocsp = Some(der);
                    ocsp_next_update = staple.next_update.or(Some(0));
                }
                Err(why) => {
                    super::ocsp::count_refusal();
                    ocsp_problem = Some(format!(
                        "{}: OCSP response not stapled with {}: {why}",
                        path.display(),
                        cert.display()
                    ));
                }
            }
        }
        Ok(ServedCert {
            key: Arc::new(ck),
            path: cert.to_path_buf(),
            algorithms,
            ocsp_next_update,
            ocsp_problem,
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
    pub fn load(l: &ListenerTls, provider: &CryptoProvider) -> Result<SniResolver, TlsError> {
        let default = match &l.svid {
            Some(w) => ServedCert::from_workload(w.hint.as_deref(), provider)?,
            None => ServedCert::load(&l.cert, &l.key, l.ocsp.as_deref(), provider)?,
        };
        let mut r = SniResolver {
            default,
            certs: Vec::with_capacity(l.sni.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for sni in &l.sni {
            let idx = r.certs.len();
            r.certs.push(ServedCert::load(
                &sni.cert,
                &sni.key,
                sni.ocsp.as_deref(),
                provider,
            )?);
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
        if let Some(name) = hello.server_name() {
            SEEN_SERVER_NAME.with(|s| *s.borrow_mut() = Some(name.into()));
        }
        Some(self.choose(hello.server_name()).key.clone())
    }
}

thread_local! {
    /// The last server name a resolver saw on this thread (see
    /// [`take_seen_server_name`]).
    static SEEN_SERVER_NAME: std::cell::RefCell<Option<Box<str>>> =
        const { std::cell::RefCell::new(None) };
}

/// The server name (SNI) of the last ClientHello an [`SniResolver`] resolved on
/// this thread, taken. rustls' unbuffered server session has no `server_name()`
/// (0.23), and the resolver runs inside the session's processing, on the worker
/// thread, for every handshake (full or resumed): a connection clears this before
/// processing its first bytes and takes it after.
pub fn take_seen_server_name() -> Option<Box<str>> {
    SEEN_SERVER_NAME.with(|s| s.borrow_mut().take())
}
