//! problems: every problem with a listener's TLS material, for `terminus check`.
//!
//! Owns [`listener_problems`] and [`listener_file_problems`]: each file checked on
//! its own (unreadable or malformed cert and key both reported, then a mismatch), so
//! the operator sees everything at once rather than the first error; and the served
//! certificate's extended key usage check.
//!
//! I/O contract: reads the listener's certificate, key, CA, CRL and ticket key files.

use super::client::upstream_client_config;
use super::pem::{certified_key_from, describe, load_certs, load_key, load_roots_file};
use super::server::{server_provider, server_tls};
use super::settings::{ClientAuth, ClientAuthMode, ListenerTls};
use super::validity::Role;
use super::verifier::load_crl_file;
use super::TlsError;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every problem with the listener's TLS material (not just the first): unreadable
/// or malformed cert and key files are both reported, then a key/cert mismatch; the
/// same for each `[[listeners.sni]]` entry; every unusable CA bundle and CRL of
/// `client_auth` (unless its mode is `none`); every problem of `upstream_tls`.
/// Empty means [`super::server_config`] and [`super::upstream_client_config`] will succeed.
pub fn listener_problems(l: &ListenerTls) -> Vec<TlsError> {
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
pub fn listener_file_problems(l: &ListenerTls) -> Vec<TlsError> {
    let provider = server_provider();
    // `svid = "workload_api"`: no files (`check` fetches the SVID and builds the listener).
    let mut out = match l.svid {
        Some(_) => Vec::new(),
        None => cert_and_key_problems(&l.cert, &l.key, Role::Server, &provider),
    };
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
        client_auth_problems(ca, &provider, &mut out);
    }
    if let Some(c) = l
        .client_auth
        .as_ref()
        .and_then(|ca| ca.candidate.as_deref())
        .filter(|c| c.mode != ClientAuthMode::None)
    {
        client_auth_problems(c, &provider, &mut out);
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

/// Every unusable CA bundle and CRL of `client_auth`.
fn client_auth_problems(ca: &ClientAuth, provider: &Arc<CryptoProvider>, out: &mut Vec<TlsError>) {
    let roots = collect_problems(&ca.ca, load_roots_file, out);
    let mut store = rustls::RootCertStore::empty();
    roots
        .into_iter()
        .flatten()
        .for_each(|c| store.roots.push(c));
    let store = Arc::new(store);
    for path in &ca.crl {
        if let Err(e) = load_crl_file(path, &store, provider) {
            out.push(e);
        }
    }
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
pub(super) fn server_auth_problem(path: &Path, leaf: &CertificateDer<'_>) -> Option<TlsError> {
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
