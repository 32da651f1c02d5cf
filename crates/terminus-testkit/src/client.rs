//! The one TLS client config of the tools and the tests: `terminus bench`, the demo,
//! the integration tests (`tests/common`, `tests/other/trust_tls.rs`) and the criterion
//! benches (`benches/common`) all build theirs with [`ClientConfigBuilder`].
//!
//! Owns: rustls (aws-lc-rs) client configs with chosen protocol versions, key
//! exchange groups, cipher suites, ALPN, client certificate and resumption, verifying
//! the server against roots or, for load generation only,
//! [`Trust::DangerousSkipVerify`].
//!
//! I/O contract: reads the client certificate and key files when given as paths.
#![forbid(unsafe_code)]

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use std::path::PathBuf;
use std::sync::Arc;

/// How the client checks the server's certificate.
pub enum Trust {
    Roots(RootCertStore),
    /// Accept any certificate (signatures are still checked, so the client does the
    /// same work as a verifying one minus the chain). For load generation only.
    DangerousSkipVerify,
    /// As `DangerousSkipVerify`, and keep the last leaf the server presented (tests
    /// that look at which certificate a server chose for a name not on it).
    DangerousRecordServerCert(Arc<SeenServerCert>),
}

/// The last leaf certificate a server presented to a
/// [`Trust::DangerousRecordServerCert`] client.
pub type SeenServerCert = std::sync::Mutex<Option<CertificateDer<'static>>>;

enum ClientCert {
    Files { cert: PathBuf, key: PathBuf },
    Der(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
}

/// A rustls client config: TLS 1.3 and 1.2, aws-lc-rs's default groups and suites,
/// no ALPN, no client certificate, rustls' default resumption (an in-memory cache
/// shared by every connection made with the built config) unless told otherwise.
pub struct ClientConfigBuilder {
    trust: Trust,
    versions: Vec<&'static SupportedProtocolVersion>,
    kx_groups: Option<Vec<&'static dyn SupportedKxGroup>>,
    cipher_suites: Option<Vec<SupportedCipherSuite>>,
    alpn: Vec<Vec<u8>>,
    cert: Option<ClientCert>,
    resumption: bool,
}

impl ClientConfigBuilder {
    pub fn new(trust: Trust) -> ClientConfigBuilder {
        ClientConfigBuilder {
            trust,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            kx_groups: None,
            cipher_suites: None,
            alpn: Vec::new(),
            cert: None,
            resumption: true,
        }
    }

    /// Offer only these protocol versions.
    pub fn versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// Offer only these key exchange groups.
    pub fn kx_groups(mut self, groups: &[&'static dyn SupportedKxGroup]) -> Self {
        self.kx_groups = Some(groups.to_vec());
        self
    }

    /// Offer only these cipher suites.
    pub fn cipher_suites(mut self, suites: &[SupportedCipherSuite]) -> Self {
        self.cipher_suites = Some(suites.to_vec());
        self
    }

    /// The ALPN protocols to offer, in order.
    pub fn alpn<P: AsRef<[u8]>>(mut self, protocols: &[P]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// Present this certificate chain (leaf first) and key when asked.
    pub fn client_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.cert = Some(ClientCert::Der(chain, key));
        self
    }

    /// Present the certificate chain and key read (at [`build`](Self::build)) from
    /// these PEM files, with terminus's own loader and its file-naming errors.
    pub fn client_cert_files(mut self, cert: PathBuf, key: PathBuf) -> Self {
        self.cert = Some(ClientCert::Files { cert, key });
        self
    }

    /// Keep no tickets or session IDs: every handshake is a full one.
    pub fn no_resumption(mut self) -> Self {
        self.resumption = false;
        self
    }

    /// The config; errors name what was refused (versions, client cert files).
    pub fn build(self) -> Result<Arc<ClientConfig>, String> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(groups) = self.kx_groups {
            provider.kx_groups = groups;
        }
        if let Some(suites) = self.cipher_suites {
            provider.cipher_suites = suites;
        }
        let provider = Arc::new(provider);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match self.trust {
            Trust::Roots(r) => builder.with_root_certificates(r),
            Trust::DangerousSkipVerify => {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(DangerousNoVerify(
                        provider.clone(),
                        None,
                    )))
            }
            Trust::DangerousRecordServerCert(seen) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerousNoVerify(
                    provider.clone(),
                    Some(seen),
                ))),
        };
        let mut cfg = match self.cert {
            Some(ClientCert::Files { cert, key }) => {
                let ck = certified_key(&cert, &key, &provider)?;
                builder
                    .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
            }
            Some(ClientCert::Der(chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn;
        if !self.resumption {
            cfg.resumption = Resumption::disabled();
        }
        Ok(Arc::new(cfg))
    }
}

/// The verifier behind [`Trust::DangerousSkipVerify`]: any chain, any name, but the
/// handshake signatures are checked; records the leaf when given somewhere to.
#[derive(Debug)]
struct DangerousNoVerify(Arc<CryptoProvider>, Option<Arc<SeenServerCert>>);

impl ServerCertVerifier for DangerousNoVerify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.1 {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate chain and key from PEM files, for the client's own certificate.
fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    provider: &CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::sign::CertifiedKey::from_der(chain, key, provider).map_err(|e| e.to_string())
}
