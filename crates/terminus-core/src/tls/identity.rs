//! Workload identity of a TLS peer, read from its (already verified) leaf certificate.
//!
//! Owns: [`PeerIdentity`] (SPIFFE ID, DNS SANs, subject CN, serial, SHA-256
//! fingerprint, subject), the SPIFFE ID syntax ([`SpiffeId`]) and the names of a
//! certificate's signature and key algorithms ([`CertAlgorithms`], for PROXY v2).
//!
//! I/O contract: pure functions of DER bytes; no files, no sockets, no clock.
//! Nothing here verifies anything: chain building, validity and revocation are the
//! verifier's job (`tls`), and this module only describes what was verified.
#![forbid(unsafe_code)]

use super::{IdentityError, PathSegmentError, SpiffeIdError, TrustDomainError};
use rustls_pki_types::CertificateDer;
use std::fmt;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;

/// Who the peer is, according to its leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The SPIFFE ID: the certificate's only URI SAN starting with `spiffe://`
    /// (exactly as written in the certificate; see [`SpiffeId::parse`] for its syntax).
    pub spiffe: Option<String>,
    /// Every DNS SAN, in certificate order.
    pub dns: Vec<String>,
    /// The first subject common name.
    pub cn: Option<String>,
    /// Serial number, lowercase hex without separators or DER sign padding.
    pub serial: String,
    /// SHA-256 of the certificate DER, lowercase hex without separators.
    pub sha256: String,
    /// Subject distinguished name, RFC 4514 style (e.g. `CN=client, O=Example`).
    pub subject: String,
}

impl PeerIdentity {
    /// Read the identity from a leaf certificate.
    ///
    /// Fails when the DER does not parse, when a name is not valid text, or when the
    /// certificate carries more than one SPIFFE ID (an X.509-SVID has exactly one
    /// URI SAN, and choosing one of several would let the order of SANs decide policy).
    pub fn from_der(der: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
        let cert = parse(der)?;
        let mut spiffe = None;
        let mut dns = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::SubjectAltName(e.to_string()))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) if has_spiffe_scheme(uri) => {
                    if let Some(first) = spiffe.replace(uri.to_string()) {
                        return Err(IdentityError::TwoSpiffeIds {
                            first,
                            second: uri.to_string(),
                        });
                    }
                }
                GeneralName::DNSName(name) => dns.push(name.to_string()),
                _ => {}
            }
        }
        let cn = match cert.subject().iter_common_name().next() {
            Some(attr) => Some(
                attr.as_str()
                    .map_err(|e| IdentityError::CnNotText(e.to_string()))?
                    .to_owned(),
            ),
            None => None,
        };
        Ok(PeerIdentity {
            spiffe,
            dns,
            cn,
            serial: serial_hex(cert.raw_serial()),
            sha256: hex(&sha256(der)),
            subject: cert.subject().to_string(),
        })
    }
}

/// `spiffe:` scheme, case-insensitively (URI schemes are case-insensitive); whether
/// the rest is a valid SPIFFE ID is [`SpiffeId::parse`]'s question.
fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, IdentityError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(IdentityError::NotX509(e.to_string())),
    }
}

/// A syntactically valid SPIFFE ID (SPIFFE-ID spec, section 2): `spiffe://` then a
/// trust domain of lowercase letters, digits, `.`, `-`, `_`, then an optional path of
/// non-empty segments of letters, digits, `.`, `-`, `_` that are not `.` or `..`;
/// no query, fragment, port, user info, percent-encoding or trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    id: String,
    /// Byte offset of the path (its leading `/`), or the length when there is none.
    path_at: usize,
}

impl SpiffeId {
    pub fn parse(id: &str) -> Result<SpiffeId, SpiffeIdError> {
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::NoScheme(id.to_owned()))?;
        let path_at = 9 + rest.find('/').unwrap_or(rest.len());
        let td = &id[9..path_at];
        check_trust_domain(td).map_err(|why| SpiffeIdError::TrustDomain {
            id: id.to_owned(),
            why,
        })?;
        let path = &id[path_at..];
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                check_path_segment(seg).map_err(|why| SpiffeIdError::Path {
                    id: id.to_owned(),
                    why,
                })?;
            }
        }
        Ok(SpiffeId {
            id: id.to_owned(),
            path_at,
        })
    }

    /// `example.org` in `spiffe://example.org/ns/prod`.
    pub fn trust_domain(&self) -> &str {
        &self.id[9..self.path_at]
    }

    /// `/ns/prod` in `spiffe://example.org/ns/prod`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Whether `td` is a valid SPIFFE trust domain (lowercase letters, digits, `.`, `-`,
/// `_`; not empty).
pub fn check_trust_domain(td: &str) -> Result<(), TrustDomainError> {
    if td.is_empty() {
        return Err(TrustDomainError::Empty);
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    match td.chars().find(|&c| !ok(c)) {
        None => Ok(()),
        Some(c) if c.is_ascii_uppercase() => Err(TrustDomainError::Uppercase(td.to_owned())),
        Some(c) => Err(TrustDomainError::BadChar {
            td: td.to_owned(),
            c,
        }),
    }
}

pub(crate) fn check_path_segment(seg: &str) -> Result<(), PathSegmentError> {
    if seg.is_empty() {
        return Err(PathSegmentError::Empty);
    }
    if seg == "." || seg == ".." {
        return Err(PathSegmentError::Dot(seg.to_owned()));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    match seg.chars().find(|&c| !ok(c)) {
        None => Ok(()),
        Some(c) => Err(PathSegmentError::BadChar {
            seg: seg.to_owned(),
            c,
        }),
    }
}

/// The signature and key algorithm names of a certificate, spelled as OpenSSL (and
/// HAProxy's PROXY v2 `SIG_ALG`/`KEY_ALG` sub-TLVs) spell them: `ecdsa-with-SHA256`,
/// `RSA-SHA256`, `ED25519`; `EC256`, `RSA2048`, `ED25519`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertAlgorithms {
    pub sig_alg: String,
    pub key_alg: String,
}

impl CertAlgorithms {
    pub fn from_der(der: &CertificateDer<'_>) -> Result<CertAlgorithms, IdentityError> {
        let cert = parse(der)?;
        let oid = cert.signature_algorithm.algorithm.to_id_string();
        let sig_alg = match oid.as_str() {
            "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
            "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
            "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
            "1.2.840.113549.1.1.5" => "RSA-SHA1",
            "1.2.840.113549.1.1.11" => "RSA-SHA256",
            "1.2.840.113549.1.1.12" => "RSA-SHA384",
            "1.2.840.113549.1.1.13" => "RSA-SHA512",
            "1.2.840.113549.1.1.10" => "RSASSA-PSS",
            "1.3.101.112" => "ED25519",
            "1.3.101.113" => "ED448",
            other => other,
        }
        .to_owned();
        let spki = cert.public_key();
        let key_alg = match spki.parsed() {
            Ok(PublicKey::EC(p)) => format!("EC{}", p.key_size()),
            Ok(PublicKey::RSA(k)) => format!("RSA{}", k.key_size()),
            Ok(PublicKey::DSA(_)) => "DSA".to_owned(),
            _ => match spki.algorithm.algorithm.to_id_string().as_str() {
                "1.3.101.112" => "ED25519".to_owned(),
                "1.3.101.113" => "ED448".to_owned(),
                other => other.to_owned(),
            },
        };
        Ok(CertAlgorithms { sig_alg, key_alg })
    }
}

/// SHA-256 through the aws-lc-rs provider's hash (the one the TLS 1.3
/// AES-128-GCM-SHA256 suite uses), so no second SHA-256 implementation is linked.
fn sha256(data: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = match suite {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.hash_provider,
        rustls::SupportedCipherSuite::Tls12(s) => s.common.hash_provider,
    };
    hash.hash(data).as_ref().to_vec()
}

fn serial_hex(raw: &[u8]) -> String {
    // DER integers carry a 0x00 in front of a positive value whose top bit is set.
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[start..])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType, SerialNumber};

    fn cert(sans: Vec<SanType>, cn: Option<&str>, serial: &[u8]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name
                .push(DnType::OrganizationName, "Example");
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.serial_number = Some(SerialNumber::from_slice(serial));
        p.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn reads_every_field() {
        let der = cert(
            vec![
                dns("billing.internal"),
                uri("https://example.org/x"),
                uri("spiffe://example.org/ns/prod/sa/billing"),
                dns("b.internal"),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
            ],
            Some("billing"),
            &[0x00, 0x8f, 0x01],
        );
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(
            id.spiffe.as_deref(),
            Some("spiffe://example.org/ns/prod/sa/billing")
        );
        assert_eq!(id.dns, ["billing.internal", "b.internal"]);
        assert_eq!(id.cn.as_deref(), Some("billing"));
        assert_eq!(id.serial, "8f01");
        assert_eq!(id.subject, "O=Example, CN=billing");
        use sha2::Digest;
        assert_eq!(id.sha256, hex(&sha2::Sha256::digest(der.as_ref())));
        assert_eq!(id.sha256.len(), 64);
    }

    #[test]
    fn no_names_at_all() {
        let der = cert(Vec::new(), None, &[1]);
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.spiffe, None);
        assert!(id.dns.is_empty());
        assert_eq!(id.cn, None);
        assert_eq!(id.serial, "01");
        assert_eq!(id.subject, "");
    }

    #[test]
    fn two_spiffe_ids_are_refused() {
        let der = cert(
            vec![
                uri("spiffe://example.org/a"),
                uri("SPIFFE://evil.org/admin"),
            ],
            None,
            &[1],
        );
        let e = PeerIdentity::from_der(&der).unwrap_err().to_string();
        assert!(e.contains("more than one SPIFFE ID"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let e =
            PeerIdentity::from_der(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).unwrap_err();
        assert!(matches!(e, IdentityError::NotX509(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("certificate is not valid X.509"), "{e}");
        assert!(CertAlgorithms::from_der(&CertificateDer::from(Vec::new())).is_err());
    }

    #[test]
    fn spiffe_id_syntax() {
        let id = SpiffeId::parse("spiffe://example.org/ns/prod").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod");
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!((td.trust_domain(), td.path()), ("example.org", ""));
        for bad in [
            "spiffe://",
            "spiffe:///x",
            "spiffe://Example.org/x",
            "spiffe://example.org:443/x",
            "spiffe://user@example.org/x",
            "spiffe://*.example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/x/",
            "spiffe://example.org/./x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a%2Fb",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a#b",
            "spiffe://example.org/a*",
            "https://example.org/x",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn algorithm_names() {
        let ec = cert(Vec::new(), None, &[1]);
        assert_eq!(
            CertAlgorithms::from_der(&ec).unwrap(),
            CertAlgorithms {
                sig_alg: "ecdsa-with-SHA256".into(),
                key_alg: "EC256".into()
            }
        );
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed = CertificateParams::default().self_signed(&key).unwrap();
        assert_eq!(
            CertAlgorithms::from_der(ed.der()).unwrap(),
            CertAlgorithms {
                sig_alg: "ED25519".into(),
                key_alg: "ED25519".into()
            }
        );
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384 = CertificateParams::default().self_signed(&key).unwrap();
        let algs = CertAlgorithms::from_der(p384.der()).unwrap();
        assert_eq!(
            (algs.sig_alg.as_str(), algs.key_alg.as_str()),
            ("ecdsa-with-SHA384", "EC384")
        );
    }
}
