//! The handshake-signature half of a rustls client-certificate verifier. Every
//! verifier terminus writes decides about the chain itself and hands signatures on
//! (to the verifier it wraps, or to the provider's algorithms); the three trait
//! methods that do so are written once, here, as [`delegated_signatures!`].
//!
//! I/O contract: none (pure computation).
#![forbid(unsafe_code)]

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::CertificateDer;

/// Who checks a handshake signature for a verifier.
pub(super) enum SignatureCheck<'a> {
    /// The verifier this one wraps.
    Verifier(&'a dyn ClientCertVerifier),
    /// The crypto provider's algorithms, as webpki's verifiers use them.
    Algorithms(&'a WebPkiSupportedAlgorithms),
    /// No certificate was asked for, so no signature can be checked.
    NotOffered,
}

type Verdict = Result<HandshakeSignatureValid, rustls::Error>;

impl SignatureCheck<'_> {
    /// Check a handshake signature: TLS 1.3's (`tls13`) or TLS 1.2's.
    pub(super) fn verify(
        &self,
        tls13: bool,
        msg: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Verdict {
        use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
        match (self, tls13) {
            (Self::Verifier(v), false) => v.verify_tls12_signature(msg, cert, dss),
            (Self::Verifier(v), true) => v.verify_tls13_signature(msg, cert, dss),
            (Self::Algorithms(a), false) => verify_tls12_signature(msg, cert, dss, a),
            (Self::Algorithms(a), true) => verify_tls13_signature(msg, cert, dss, a),
            (Self::NotOffered, _) => Err(not_offered()),
        }
    }

    pub(super) fn schemes(&self) -> Vec<SignatureScheme> {
        match self {
            Self::Verifier(v) => v.supported_verify_schemes(),
            Self::Algorithms(a) => a.supported_schemes(),
            Self::NotOffered => Vec::new(),
        }
    }
}

fn not_offered() -> rustls::Error {
    rustls::Error::General("no client certificate was asked for".into())
}

/// The three signature methods of a `ClientCertVerifier` impl, handed to the
/// [`SignatureCheck`] that `$check` builds from `$this` (the verifier).
macro_rules! delegated_signatures {
    ($this:ident => $check:expr) => {
        delegated_signatures!(@each $this => $check;
            verify_tls12_signature false, verify_tls13_signature true);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            let $this = self;
            $check.schemes()
        }
    };
    (@each $this:ident => $check:expr; $($method:ident $tls13:literal),+) => {$(
        fn $method(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            let $this = self;
            $check.verify($tls13, message, cert, dss)
        }
    )+};
}
pub(super) use delegated_signatures;
