//! TLS material: rustls configs (aws-lc-rs), certificate, key, CA and CRL loading with
//! file-naming errors, shared resumption state, the SNI certificate choice, the
//! client-certificate verifier with its allow-list policy, and the client config for
//! re-encryption to the upstream.
//!
//! I/O contract: reads the certificate, key, CA and CRL files named by a [`ListenerTls`]
//! when asked to (startup, `check`, reload); never touches sockets. Every error names
//! the file and why, on one line, e.g. `/etc/t/server.key: private key does not match
//! the certificate in /etc/t/server.pem`.
//!
//! Client authentication ([`ClientAuthMode`]): `none` asks for no certificate;
//! `optional` asks, lets clients without one through, and refuses a certificate that
//! fails; `require` refuses clients without one. A presented chain is verified by
//! webpki against the `ca` bundles (intermediates the client sends are used to build
//! the chain) and the `crl` lists, then the leaf's [`identity::PeerIdentity`] must pass the
//! listener's [`policy::AllowList`]. A refusal is an error inside the handshake, so the client
//! gets an alert: `access_denied` for a policy refusal, `unknown_ca`,
//! `certificate_expired`, `certificate_revoked`... for the chain. The refused
//! client's identity is left in a [`RejectSink`] for the connection to log: each
//! worker has its own sink and its own copy of the server config whose verifier
//! writes to it ([`ServerTls::config_for`]); the connection is given the sink.
//!
//! A listener may also carry a report-only candidate policy, and `optional` mode may
//! admit a failing certificate as anonymous: [`candidate`] gives each handshake both
//! verdicts; the enforced one is unchanged.
//!
//! Files by concern: `server` (the server config), `sni` (certificate choice),
//! `verifier` (client authentication), [`candidate`] (the candidate policy), `client` (re-encryption to the upstream),
//! `pem` (loading files), `validity` (dates), `problems` (`check`), `error`
//! (what can be wrong), [`identity`], [`policy`], [`tickets`].
//!
//! Revocation: every certificate of the chain below the trust anchor is checked
//! against the CRLs whose issuer signed it; a certificate no configured CRL speaks for
//! is accepted (unknown status allowed), so a CRL for one CA does not lock out
//! clients of another. A CRL's nextUpdate is not enforced (an old CRL still revokes).
#![forbid(unsafe_code)]

pub mod candidate;
mod chain_cache;
mod client;
mod error;
pub mod identity;
pub mod ocsp;
mod pem;
pub mod policy;
mod problems;
mod server;
mod session_cache;
mod settings;
pub mod sign_gate;
mod signatures;
mod sni;
pub mod suites;
#[cfg(test)]
mod tests;
pub mod tickets;
mod validity;
mod verifier;
pub mod workload;

pub use client::{upstream_client_config, upstream_clients, UpstreamClients, UpstreamSessions};
pub use error::{
    AllowListError, AllowRuleError, IdentityError, PathSegmentError, SpiffeIdError, TicketKeyError,
    TlsError, TrustDomainError, UpstreamTlsProblem,
};
pub use pem::{certified_key, load_certs, load_crls, load_key, load_roots};
pub use problems::{listener_file_problems, listener_problems};
pub use server::{listener_files, server_config, server_provider, server_tls, ServerTls};
pub use settings::{
    ClientAuth, ClientAuthMode, InvalidCertificate, ListenerTls, Sni, UpstreamTls, WorkloadSvid,
    WORKLOAD_API,
};
pub use sni::{take_seen_server_name, ServedCert, SniResolver};
pub use validity::{cert_dates, cert_warnings, leaf_not_after, DateFindings, EXPIRY_WARNING_DAYS};
pub use verifier::{client_verifier, PolicyVerifier, RejectSink, RejectedClient};

/// Make aws-lc-rs the process-wide rustls provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
