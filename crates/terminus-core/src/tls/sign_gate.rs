//! sign_gate: a last word before each private-key signature of a handshake.
//!
//! `handshakes_per_second_per_source` must count full handshakes only and stop the
//! excess before any private-key operation. rustls calls the certificate resolver
//! for every ClientHello, resumed or not, but signs (CertificateVerify in TLS 1.3,
//! ServerKeyExchange in TLS 1.2) only in a full handshake: so every served key is
//! wrapped in a [`GatedKey`] whose signer first asks the gate the driver installed
//! on this thread for the bytes it is feeding ([`with_gate`]). With no gate installed
//! (the usual case) the signer signs: the cost is one thread-local read per full
//! handshake.
//!
//! A refused signature fails the handshake with [`HandshakeRefused`] (no alert is
//! sent: the connection is closed), which the connection classifies as
//! `rate_limited`.
//!
//! I/O contract: none.
#![forbid(unsafe_code)]

use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use std::cell::RefCell;
use std::sync::Arc;

/// Asked once per signature: may this handshake sign?
pub type Gate = Box<dyn FnMut() -> bool>;

thread_local! {
    static GATE: RefCell<Option<Gate>> = const { RefCell::new(None) };
}

/// Run `f` (the processing of one connection's client bytes) with `gate` deciding
/// any signature made meanwhile on this thread; the gate is removed afterwards.
pub fn with_gate<R>(gate: Gate, f: impl FnOnce() -> R) -> R {
    GATE.with(|g| *g.borrow_mut() = Some(gate));
    let r = f();
    GATE.with(|g| g.borrow_mut().take());
    r
}

fn allowed() -> bool {
    GATE.with(|g| g.borrow_mut().as_mut().is_none_or(|gate| gate()))
}

/// The error a refused signature fails the handshake with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRefused;

impl std::fmt::Display for HandshakeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("full handshake refused: handshakes_per_second_per_source")
    }
}

impl std::error::Error for HandshakeRefused {}

impl HandshakeRefused {
    /// Whether a rustls error is this refusal.
    pub fn is(e: &rustls::Error) -> bool {
        matches!(e, rustls::Error::Other(o) if o.0.downcast_ref::<HandshakeRefused>().is_some())
    }
}

/// A signing key whose signatures pass the thread's gate first.
#[derive(Debug)]
pub struct GatedKey(pub Arc<dyn SigningKey>);

impl SigningKey for GatedKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let inner = self.0.choose_scheme(offered)?;
        Some(Box::new(GatedSigner(inner)))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.0.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

#[derive(Debug)]
struct GatedSigner(Box<dyn Signer>);

impl Signer for GatedSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        if !allowed() {
            return Err(rustls::Error::Other(rustls::OtherError(Arc::new(
                HandshakeRefused,
            ))));
        }
        self.0.sign(message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.0.scheme()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<dyn SigningKey> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
        rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der)
            .unwrap()
    }

    #[test]
    fn the_gate_decides_each_signature_and_is_removed_after() {
        let k = GatedKey(key());
        let s = k
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        assert!(s.sign(b"m").is_ok(), "no gate: signs");
        let mut asked = 0;
        let r = with_gate(Box::new(|| false), || s.sign(b"m"));
        assert!(HandshakeRefused::is(&r.unwrap_err()));
        assert!(with_gate(Box::new(|| true), || s.sign(b"m")).is_ok());
        assert!(s.sign(b"m").is_ok(), "the gate is gone after with_gate");
        let counter = std::rc::Rc::new(std::cell::Cell::new(0));
        let c = counter.clone();
        with_gate(
            Box::new(move || {
                c.set(c.get() + 1);
                true
            }),
            || {
                s.sign(b"a").unwrap();
                s.sign(b"b").unwrap();
            },
        );
        asked += counter.get();
        assert_eq!(asked, 2);
        assert!(k.public_key().is_some());
    }
}
