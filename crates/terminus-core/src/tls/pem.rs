//! pem: loading certificates, keys, CA bundles and CRLs, with errors naming the file.
//!
//! Owns [`load_certs`], [`load_key`], [`certified_key`] (key usable and matching the
//! leaf; a misordered chain said as such), [`load_roots`] and [`load_crls`]: every
//! malformed input becomes a [`TlsError`] that names the file and what to do.
//!
//! I/O contract: reads the files it is given; nothing else.

use super::TlsError;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

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

pub(super) fn certified_key_from(
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
    // Every served key signs through the handshake-rate gate (`sign_gate`).
    let signer = std::sync::Arc::new(super::sign_gate::GatedKey(signer));
    let ck = CertifiedKey::new(certs, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(key_mismatch(cert_path, key_path, &ck.cert, public_key))
        }
        Err(source) => Err(TlsError::LeafUnusable {
            path: cert_path.to_owned(),
            source,
        }),
    }
}

/// The key is not the leaf's: it may belong to a later certificate of the file,
/// which is a wrong order rather than a wrong key.
fn key_mismatch(
    cert_path: &Path,
    key_path: &Path,
    chain: &[CertificateDer<'_>],
    public_key: Option<Vec<u8>>,
) -> TlsError {
    let matching = public_key.and_then(|spki| {
        chain.iter().enumerate().skip(1).find_map(|(i, der)| {
            let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
            (c.public_key().raw == spki.as_slice()).then(|| (i, describe(&c)))
        })
    });
    match matching {
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

/// `"CN=localhost"`: how a certificate is named in messages.
pub(super) fn describe(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    format!("\"{}\"", cert.subject())
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

pub(super) fn load_roots_file(
    path: &Path,
) -> Result<Vec<rustls_pki_types::TrustAnchor<'static>>, TlsError> {
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

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        what,
        source,
    })
}
