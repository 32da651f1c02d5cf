//! `terminus certs`: an ECDSA P-256 test PKI generated with rcgen.
//!
//! Owns: making a CA, a server certificate (SAN `localhost`, `127.0.0.1`, `::1`) and a
//! client certificate (URI SAN `spiffe://<trust-domain>/client`), in memory
//! ([`test_pki`]) or written to a folder ([`generate`], [`TestPki::write`]).
//! Keys are PKCS#8 PEM; key files are created with mode 0600.
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

/// `terminus certs --out DIR --days N --trust-domain TD`.
pub fn generate(out: &Path, days: u32, trust_domain: &str) -> anyhow::Result<()> {
    test_pki(days, trust_domain)?.write(out)
}

/// Make a fresh test PKI valid from a few minutes ago (clock skew) for `days` days.
pub fn test_pki(days: u32, trust_domain: &str) -> anyhow::Result<TestPki> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    check_trust_domain(trust_domain)?;
    let not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    let not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("terminus test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;

    let leaf = |cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before;
        p.not_after = not_after;
        p
    };

    let server_key = KeyPair::generate().context("generating the server key")?;
    let server = leaf(
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
    .signed_by(&server_key, &ca_cert, &ca_key)
    .context("signing the server certificate")?;

    let client_key = KeyPair::generate().context("generating the client key")?;
    let spiffe = format!("spiffe://{trust_domain}/client");
    let client = leaf(
        "client",
        vec![SanType::URI(spiffe.as_str().try_into()?)],
        ExtendedKeyUsagePurpose::ClientAuth,
    )
    .signed_by(&client_key, &ca_cert, &ca_key)
    .context("signing the client certificate")?;

    Ok(TestPki {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        server_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
        ca_der: ca_cert.der().clone(),
        server_der: server.der().clone(),
        client_der: client.der().clone(),
        server_key_der: server_key.serialize_der(),
        client_key_der: client_key.serialize_der(),
    })
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// SPIFFE trust domain names: lowercase letters, digits, `.`, `-` and `_`.
fn check_trust_domain(td: &str) -> anyhow::Result<()> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_');
    if td.is_empty() || !td.chars().all(ok) {
        bail!(
            "invalid trust domain {td:?}: use lowercase letters, digits, '.', '-' and '_' \
             (e.g. example.org)"
        );
    }
    Ok(())
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
    fn rejects_bad_trust_domain_and_zero_days() {
        let e = test_pki(1, "Example.org/x").unwrap_err().to_string();
        assert!(e.contains("invalid trust domain"), "{e}");
        assert!(test_pki(0, "example.org").is_err());
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
