//! `terminus certs`: an ECDSA P-256 test PKI generated with rcgen.
//!
//! Owns: making a CA, a server certificate (SAN `localhost`, `127.0.0.1`, `::1`) and a
//! client certificate (URI SAN `spiffe://<trust-domain>/client`), in memory
//! ([`test_pki`]) or written to a folder ([`generate`], [`TestPki::write`]).
//! Keys are PKCS#8 PEM; key files are created with mode 0600.
//!
//! [`TestCa`] builds the other PKIs tests need (intermediates, clients with chosen
//! names and validity, CRLs) without files; tests write what they need.
#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A CA plus server and client certificates signed by it, as PEM text and DER.
#[derive(Clone, Debug)]
pub struct TestPki {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
    pub client_pem: String,
    pub client_key_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_der: CertificateDer<'static>,
    pub client_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
    client_key_der: Vec<u8>,
}

/// The files [`TestPki::write`] creates, in order: (name, is a private key).
pub const FILES: [(&str, bool); 6] = [
    ("ca.pem", false),
    ("ca.key", true),
    ("server.pem", false),
    ("server.key", true),
    ("client.pem", false),
    ("client.key", true),
];

impl TestPki {
    /// The server's private key (PKCS#8).
    pub fn server_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.server_key_der.clone()).into()
    }

    /// The client's private key (PKCS#8).
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.client_key_der.clone()).into()
    }

    /// The CA as an issuer, to sign more leaves for this PKI (its key and name are
    /// this PKI's; leaves it signs chain to [`TestPki::ca_der`]).
    pub fn ca(&self) -> anyhow::Result<TestCa> {
        let key = KeyPair::from_pem(&self.ca_key_pem).context("the CA key")?;
        let cert = CertificateParams::from_ca_cert_pem(&self.ca_pem)
            .context("the CA certificate")?
            .self_signed(&key)
            .context("the CA as issuer")?;
        Ok(TestCa {
            cert,
            key,
            pem: self.ca_pem.clone(),
            der: self.ca_der.clone(),
            chain_pem: String::new(),
            chain: Vec::new(),
        })
    }

    /// Write the six files into `dir` (created if missing); key files get mode 0600.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let contents = [
            &self.ca_pem,
            &self.ca_key_pem,
            &self.server_pem,
            &self.server_key_pem,
            &self.client_pem,
            &self.client_key_pem,
        ];
        for ((name, secret), text) in FILES.iter().zip(contents) {
            let path = dir.join(name);
            let mode = if *secret { 0o600 } else { 0o644 };
            write_file(&path, text.as_bytes(), mode)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // `mode` only applies when the file is created; fix up an existing file too.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Write a fresh test PKI to `out` (`terminus certs`, which checks the trust
/// domain first; here it is used as given).
pub fn generate(out: &Path, days: u32, trust_domain: &str) -> anyhow::Result<()> {
    test_pki(days, trust_domain)?.write(out)
}

/// The end of a validity of `days` days from now, or why `--days` cannot be used: at
/// least 1, and no later than 9999-12-31, the last date an X.509 certificate can hold
/// (GeneralizedTime has four year digits); larger values would overflow the date type.
pub fn not_after_in(days: u32) -> anyhow::Result<OffsetDateTime> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let now = OffsetDateTime::now_utc();
    let last = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    match now.checked_add(Duration::days(i64::from(days))) {
        Some(t) if t <= last => Ok(t),
        _ => bail!(
            "--days {days} ends after 9999-12-31, the last date a certificate can hold; \
             use at most {}",
            (last - now).whole_days()
        ),
    }
}

/// Make a fresh test PKI valid from a few minutes ago (clock skew) for `days` days.
pub fn test_pki(days: u32, trust_domain: &str) -> anyhow::Result<TestPki> {
    let not_after = not_after_in(days)?;
    let not_before = OffsetDateTime::now_utc() - Duration::minutes(5);

    let ca =
        TestCa::root_valid("terminus test CA", not_before, not_after).context("signing the CA")?;
    let server = ca
        .leaf(&LeafSpec {
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            not_before,
            not_after,
            ..LeafSpec::server(&["localhost"])
        })
        .context("signing the server certificate")?;
    let client = ca
        .leaf(&LeafSpec {
            not_before,
            not_after,
            ..LeafSpec::client("client", Some(&format!("spiffe://{trust_domain}/client")))
        })
        .context("signing the client certificate")?;

    Ok(TestPki {
        ca_pem: ca.pem.clone(),
        ca_key_pem: ca.key.serialize_pem(),
        server_pem: server.chain_pem.clone(),
        server_key_pem: server.key_pem.clone(),
        client_pem: client.chain_pem.clone(),
        client_key_pem: client.key_pem.clone(),
        ca_der: ca.der.clone(),
        server_der: server.der().clone(),
        client_der: client.der().clone(),
        server_key_der: server.key_der,
        client_key_der: client.key_der,
    })
}

/// A CA for tests: signs leaves, intermediates and CRLs.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
    pub der: CertificateDer<'static>,
    /// PEM of the CA followed by its issuers up to (not including) the root; what a
    /// leaf it signs should send after itself.
    pub chain_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
}

/// What a test leaf certificate says.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub cn: Option<String>,
    pub spiffe: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Extended key usage: server auth (true) or client auth (false).
    pub server: bool,
    /// Both usages, whatever `server` says (an X.509-SVID, as SPIRE issues them).
    pub both_usages: bool,
    pub key: LeafKey,
}

/// The key type of a test leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKey {
    /// ECDSA P-256 (what `terminus certs` writes).
    EcdsaP256,
    /// RSA-2048 (the benches' RSA handshake).
    Rsa2048,
}

impl LeafSpec {
    /// A client certificate valid from 5 minutes ago for a day.
    pub fn client(cn: &str, spiffe: Option<&str>) -> LeafSpec {
        LeafSpec {
            cn: Some(cn.to_owned()),
            spiffe: spiffe.map(str::to_owned),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: OffsetDateTime::now_utc() - Duration::minutes(5),
            not_after: OffsetDateTime::now_utc() + Duration::days(1),
            server: false,
            both_usages: false,
            key: LeafKey::EcdsaP256,
        }
    }

    /// A server certificate for `dns` names, valid from 5 minutes ago for a day.
    pub fn server(dns: &[&str]) -> LeafSpec {
        LeafSpec {
            cn: dns.first().map(|s| s.to_string()),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            server: true,
            ..LeafSpec::client("", None)
        }
    }

    /// A server certificate for `dns` names that expired long ago: valid from
    /// 2020-01-01 to 2021-06-30 (00:00:00 UTC), the dates `check` tests quote.
    pub fn expired_server(dns: &[&str]) -> LeafSpec {
        let day = |y, m, d| {
            time::Date::from_calendar_date(y, m, d)
                .expect("a valid date")
                .midnight()
                .assume_utc()
        };
        LeafSpec {
            not_before: day(2020, time::Month::January, 1),
            not_after: day(2021, time::Month::June, 30),
            ..LeafSpec::server(dns)
        }
    }
}

/// A leaf certificate and its key.
pub struct TestLeaf {
    /// Leaf PEM followed by the issuing CA's chain (intermediates), as served.
    pub chain_pem: String,
    pub key_pem: String,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    /// The serial number's DER content bytes (for CRLs).
    pub serial: Vec<u8>,
}

impl TestLeaf {
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }

    /// The key's PKCS#8 DER (what the Workload API sends).
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_der
    }
}

impl TestCa {
    /// A self-signed root CA valid from 5 minutes ago for a day.
    pub fn root(cn: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let cert = ca_params(cn).self_signed(&key)?;
        Ok(TestCa::from_parts(cert, key, Vec::new(), String::new()))
    }

    /// A self-signed root CA valid from `not_before` to `not_after`.
    pub fn root_valid(
        cn: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = ca_params(cn);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key)?;
        Ok(TestCa::from_parts(cert, key, Vec::new(), String::new()))
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(cn);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let chain_pem = format!("{}{}", cert.pem(), self.chain_pem);
        Ok(TestCa::from_parts(cert, key, chain, chain_pem))
    }

    fn from_parts(
        cert: rcgen::Certificate,
        key: KeyPair,
        chain: Vec<CertificateDer<'static>>,
        chain_pem: String,
    ) -> TestCa {
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            cert,
            key,
            chain_pem,
            chain,
        }
    }

    /// A leaf signed by this CA.
    pub fn leaf(&self, spec: &LeafSpec) -> anyhow::Result<TestLeaf> {
        let key = match spec.key {
            LeafKey::EcdsaP256 => KeyPair::generate(),
            // rcgen generates RSA keys only with its aws-lc-rs backend (enabled).
            LeafKey::Rsa2048 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        }
        .context("generating the leaf key")?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        if let Some(cn) = &spec.cn {
            p.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        for name in &spec.dns {
            p.subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        for ip in &spec.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if let Some(id) = &spec.spiffe {
            p.subject_alt_names
                .push(SanType::URI(id.as_str().try_into()?));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if spec.both_usages {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![if spec.server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }]
        };
        p.use_authority_key_identifier_extension = true;
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        let cert = p.signed_by(&key, &self.cert, &self.key)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|e| anyhow::anyhow!("rcgen made an unparsable certificate: {e}"))?;
        let serial = parsed.raw_serial().to_vec();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(TestLeaf {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            chain,
            key_der: key.serialize_der(),
            serial,
        })
    }

    /// A CRL from this CA revoking `serials`, valid from an hour ago for a day:
    /// (PEM, DER).
    pub fn crl(&self, serials: &[&[u8]]) -> anyhow::Result<(String, Vec<u8>)> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(30),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key)?;
        Ok((crl.pem()?, crl.der().to_vec()))
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn(cn);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    ca.not_after = OffsetDateTime::now_utc() + Duration::days(1);
    ca
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn server_and_client_names_and_usages() {
        let pki = test_pki(3, "example.org").unwrap();
        let (_, server) = x509_parser::parse_x509_certificate(&pki.server_der).unwrap();
        let san = server.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            server
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );

        let (_, client) = x509_parser::parse_x509_certificate(&pki.client_der).unwrap();
        let san = client.subject_alternative_name().unwrap().unwrap();
        assert!(matches!(
            san.value.general_names[..],
            [GeneralName::URI("spiffe://example.org/client")]
        ));
        assert!(
            client
                .extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .client_auth
        );

        let (_, ca) = x509_parser::parse_x509_certificate(&pki.ca_der).unwrap();
        assert!(ca.is_ca());
        assert_eq!(server.issuer(), ca.subject());
        let lifetime =
            server.validity().not_after.timestamp() - server.validity().not_before.timestamp();
        assert!(
            (3 * 86400..3 * 86400 + 600).contains(&lifetime),
            "{lifetime}"
        );
    }

    #[test]
    fn more_leaves_chain_to_the_pki_ca() {
        use rustls::client::danger::ServerCertVerifier;
        let pki = test_pki(1, "example.org").unwrap();
        let rsa = pki
            .ca()
            .unwrap()
            .leaf(&LeafSpec {
                key: LeafKey::Rsa2048,
                ..LeafSpec::server(&["localhost"])
            })
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(rsa.der()).unwrap();
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.1"
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        for der in [rsa.der(), &pki.server_der] {
            verifier
                .verify_server_cert(der, &[], &name, &[], rustls_pki_types::UnixTime::now())
                .unwrap();
        }
    }

    #[test]
    fn expired_server_has_the_quoted_dates() {
        let leaf = TestCa::root("x")
            .unwrap()
            .leaf(&LeafSpec::expired_server(&["localhost"]))
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.der()).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), 1_577_836_800); // 2020-01-01
        assert_eq!(cert.validity().not_after.timestamp(), 1_625_011_200); // 2021-06-30
    }

    #[test]
    fn rejects_zero_days() {
        assert!(test_pki(0, "example.org").is_err());
    }

    #[test]
    fn days_past_year_9999_are_an_error_not_a_panic() {
        for days in [u32::MAX, 3_000_000] {
            let e = test_pki(days, "example.org").unwrap_err().to_string();
            assert!(e.contains("ends after 9999-12-31"), "{e}");
        }
        // The largest value the message suggests is accepted.
        let max = (time::macros::datetime!(9999-12-31 00:00 UTC) - OffsetDateTime::now_utc())
            .whole_days() as u32;
        assert!(not_after_in(max).is_ok());
    }

    #[test]
    fn write_sets_key_modes() {
        let dir = std::env::temp_dir().join(format!("terminus-certs-unit-{}", std::process::id()));
        test_pki(1, "example.org").unwrap().write(&dir).unwrap();
        for (name, secret) in FILES {
            let mode = std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
