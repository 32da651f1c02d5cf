//! candidate: a listener's second, report-only client-auth policy
//! (`[listeners.client_auth.candidate]`) and `invalid_certificate = "anonymous"`.
//!
//! Owns [`DualPolicy`] (what a listener with either needs: the candidate's verifier
//! and mode, and whether the enforced `optional` policy admits a failing certificate
//! as anonymous), the rustls verifier built from it per worker ([`DualVerifier`]),
//! the [`AuthRecord`] that verifier leaves for the connection, and [`AuthOutcome`]:
//! both verdicts of one handshake.
//!
//! The enforced verdict is what it is without a candidate. Where the candidate wants
//! a certificate and the enforced mode does not, the server asks for one
//! (CertificateRequest) but admits the client on the enforced terms: the verifier
//! returns success to rustls, which then checks CertificateVerify (the proof of the
//! key) as for any accepted certificate, and the connection is told the enforced
//! policy did not verify it ([`AuthOutcome::verified`] false), so no identity from it
//! goes upstream.
//!
//! Resumption: a resumed handshake presents no chain; rustls restores the one of the
//! full handshake. Both verdicts are then derived again from that chain with the same
//! verifiers (a chain-cache hit for a returning caller). Tickets are bound to a digest
//! that includes the candidate (`server::policy_digest`), so a resumed session was
//! always established under the candidate now in force.
//!
//! I/O contract: none; the verifier runs inside rustls' `process_tls_records` on a
//! worker and leaves its record in a thread-local the connection takes right after
//! the call (as `sni` does for the server name).
#![forbid(unsafe_code)]

use super::settings::ClientAuthMode;
use super::signatures::{delegated_signatures, SignatureCheck};
use super::verifier::PolicyVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::cell::RefCell;
use std::sync::Arc;

/// What a listener with a candidate policy or `invalid_certificate = "anonymous"`
/// evaluates besides its enforced verifier.
#[derive(Debug)]
pub struct DualPolicy {
    /// The enforced mode is `optional` with `invalid_certificate = "anonymous"`.
    pub anonymous: bool,
    pub candidate: Option<Candidate>,
}

/// The candidate policy.
#[derive(Debug)]
pub struct Candidate {
    pub mode: ClientAuthMode,
    /// `optional` + `invalid_certificate = "anonymous"`: a failing certificate is allowed.
    pub anonymous: bool,
    /// None for mode `none`.
    pub verifier: Option<Arc<PolicyVerifier>>,
    /// Its `ca` and `crl` files hold what the enforced policy's hold (and both ask
    /// for certificates): the enforced chain verdict is the candidate's too, and only
    /// its allow list and mode are applied on top (one webpki verification per
    /// handshake, not two).
    pub shares_chain: bool,
}

impl Candidate {
    /// The verdict on a handshake without a client certificate.
    fn without_cert(&self) -> Result<(), rustls::Error> {
        match self.mode {
            ClientAuthMode::Require => Err(rustls::Error::NoCertificatesPresented),
            _ => Ok(()),
        }
    }

    /// The verdict on a presented chain.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let Some(v) = &self.verifier else {
            return Ok(());
        };
        match v.verify_client_cert(end_entity, intermediates, now) {
            Ok(_) => Ok(()),
            Err(_) if self.anonymous => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Candidate {
    /// The verdict on a presented chain the enforced verifier judged `enforced`
    /// (see [`Candidate::shares_chain`]): a chain error is the candidate's too; a
    /// chain the enforced policy verified (allowed, or refused by its allow list
    /// only) goes through the candidate's allow list.
    fn check_after(
        &self,
        enforced: &Result<(), rustls::Error>,
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        use rustls::CertificateError::ApplicationVerificationFailure as PolicyDenied;
        let Some(v) = &self.verifier else {
            return Ok(());
        };
        let chain = match enforced {
            Ok(()) | Err(rustls::Error::InvalidCertificate(PolicyDenied)) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        let verdict = chain.and_then(|()| match v.allows_leaf(end_entity) {
            true => Ok(()),
            false => Err(rustls::Error::InvalidCertificate(PolicyDenied)),
        });
        match verdict {
            Err(_) if self.anonymous => Ok(()),
            v => v,
        }
    }
}

/// What the verifier saw during one `process_tls_records` call of a connection.
#[derive(Debug, Clone)]
pub struct AuthRecord {
    /// The enforced verifier's result (None: the enforced mode is `none`).
    pub enforced: Option<Result<(), rustls::Error>>,
    /// The candidate's verdict (None: no candidate).
    pub candidate: Option<Result<(), rustls::Error>>,
    /// The presented leaf, kept only when a verdict refused it (rustls keeps no
    /// refused chain; the callers inventory wants its subject and issuer).
    pub refused_leaf: Option<CertificateDer<'static>>,
}

thread_local! {
    static LAST: RefCell<Option<AuthRecord>> = const { RefCell::new(None) };
}

/// The record the verifier left on this thread since the last take (see the module
/// doc: the connection takes it after each of its handshake calls).
pub fn take_auth_record() -> Option<AuthRecord> {
    LAST.with(|l| l.borrow_mut().take())
}

/// Both verdicts of one handshake.
#[derive(Debug, Clone, Default)]
pub struct AuthOutcome {
    /// The enforced policy verified the client certificate: its identity may be
    /// forwarded (headers, PROXY v2) and the handshake counts as `verified`.
    pub verified: bool,
    /// The enforced `optional` policy admitted a failing certificate as anonymous;
    /// why it failed.
    pub anonymous: Option<rustls::Error>,
    /// The candidate's verdict: Ok = allow, Err = refuse and why
    /// (`NoCertificatesPresented` for no certificate). None: no candidate, or the
    /// handshake ended before client authentication.
    pub candidate: Option<Result<(), rustls::Error>>,
    /// The certificate a verdict refused, when rustls keeps none (see [`AuthRecord`]).
    pub refused_leaf: Option<CertificateDer<'static>>,
}

impl DualPolicy {
    /// The outcome of a completed handshake that presented `chain` (None: no
    /// certificate). `record`: what the verifier left during a full handshake; a
    /// resumed one has none, and both verdicts are derived again from the chain
    /// rustls restored (`enforced`: the listener's enforced verifier).
    pub fn completed(
        &self,
        enforced: Option<&PolicyVerifier>,
        chain: Option<&[CertificateDer<'_>]>,
        record: Option<AuthRecord>,
        now: UnixTime,
    ) -> AuthOutcome {
        let Some((leaf, rest)) = chain.and_then(|c| c.split_first()) else {
            return AuthOutcome {
                candidate: self.candidate.as_ref().map(Candidate::without_cert),
                ..AuthOutcome::default()
            };
        };
        let record = record.unwrap_or_else(|| AuthRecord {
            enforced: enforced.map(|v| v.verify_client_cert(leaf, rest, now).map(|_| ())),
            candidate: self.candidate.as_ref().map(|c| c.check(leaf, rest, now)),
            refused_leaf: None,
        });
        let (verified, anonymous) = match record.enforced {
            Some(Ok(())) => (true, None),
            Some(Err(e)) => (false, Some(e)),
            None => (false, None),
        };
        AuthOutcome {
            verified,
            anonymous,
            candidate: record.candidate,
            refused_leaf: record.refused_leaf,
        }
    }

    /// The outcome of a handshake that failed (`no_client_cert`: for want of a
    /// certificate the enforced policy requires): the candidate's verdict when client
    /// authentication was reached (the verifier ran, or no certificate came).
    pub fn failed(&self, record: Option<AuthRecord>, no_client_cert: bool) -> AuthOutcome {
        let candidate = match (&record, &self.candidate) {
            (Some(r), _) => r.candidate.clone(),
            (None, Some(c)) if no_client_cert => Some(c.without_cert()),
            _ => None,
        };
        AuthOutcome {
            candidate,
            refused_leaf: record.and_then(|r| r.refused_leaf),
            ..AuthOutcome::default()
        }
    }

    /// Whether the candidate asks for client certificates.
    fn candidate_offers(&self) -> bool {
        self.candidate
            .as_ref()
            .is_some_and(|c| c.verifier.is_some())
    }
}

/// The rustls verifier of a listener with a [`DualPolicy`]: the enforced verifier
/// (a worker's copy, with its reject sink) decides; the candidate is asked too and
/// only recorded.
#[derive(Debug)]
pub struct DualVerifier {
    enforced: Option<PolicyVerifier>,
    policy: Arc<DualPolicy>,
    hints: Vec<DistinguishedName>,
}

impl DualVerifier {
    pub fn new(enforced: Option<PolicyVerifier>, policy: Arc<DualPolicy>) -> DualVerifier {
        // The enforced policy's CA names, then the candidate's: a client choosing its
        // certificate by them finds the one either policy would take.
        let mut hints: Vec<DistinguishedName> = enforced
            .as_ref()
            .map(|e| e.root_hint_subjects().to_vec())
            .unwrap_or_default();
        let cand = policy.candidate.as_ref().and_then(|c| c.verifier.as_ref());
        for h in cand.map(|c| c.root_hint_subjects()).unwrap_or_default() {
            if !hints.iter().any(|x| x.as_ref() == h.as_ref()) {
                hints.push(h.clone());
            }
        }
        DualVerifier {
            enforced,
            policy,
            hints,
        }
    }

    /// Who checks the CertificateVerify signature: the enforced verifier, else the
    /// candidate's (both are webpki underneath; the signature check does not depend
    /// on the trust anchors). None only when neither asks for a certificate, so
    /// rustls never asks.
    fn signatures(&self) -> Option<&dyn ClientCertVerifier> {
        if let Some(e) = &self.enforced {
            return Some(e);
        }
        let c = self.policy.candidate.as_ref()?.verifier.as_ref()?;
        Some(c.as_ref())
    }
}

impl ClientCertVerifier for DualVerifier {
    fn offer_client_auth(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.offer_client_auth())
            || self.policy.candidate_offers()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.enforced
            .as_ref()
            .is_some_and(|e| e.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let enforced = self.enforced.as_ref().map(|e| {
            e.verify_client_cert(end_entity, intermediates, now)
                .map(|_| ())
        });
        if self.policy.anonymous && matches!(enforced, Some(Err(_))) {
            // Admitted as anonymous: the refusal the verifier left for the
            // connection's error path is not one.
            if let Some(s) = self.enforced.as_ref().and_then(|e| e.sink()) {
                s.take();
            }
        }
        let candidate = self.policy.candidate.as_ref().map(|c| match &enforced {
            Some(e) if c.shares_chain => c.check_after(e, end_entity),
            _ => c.check(end_entity, intermediates, now),
        });
        let refused = matches!(enforced, Some(Err(_))) || matches!(candidate, Some(Err(_)));
        let result = match &enforced {
            Some(Err(e)) if !self.policy.anonymous => Err(e.clone()),
            _ => Ok(ClientCertVerified::assertion()),
        };
        let record = AuthRecord {
            enforced,
            candidate,
            refused_leaf: refused.then(|| end_entity.clone().into_owned()),
        };
        LAST.with(|l| *l.borrow_mut() = Some(record));
        result
    }

    delegated_signatures!(v => v.signatures().map_or(SignatureCheck::NotOffered, SignatureCheck::Verifier));
}
