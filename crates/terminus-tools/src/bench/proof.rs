//! When the server has *accepted* a bench connection, not just let the client finish
//! its side of the handshake.
//!
//! A TLS 1.3 client is done with its handshake once it has sent its Certificate (maybe
//! empty) and Finished: the server judges that certificate only afterwards, and
//! refuses with an alert (certificate_required, bad_certificate, unknown_ca,
//! access_denied, ...) that reaches the client after its handshake "succeeded". The
//! rule the bench uses:
//!
//! * Plaintext, TLS 1.2 (the server's Finished follows its check of the client's
//!   flight), and TLS 1.3 handshakes in which the server asked for no client
//!   certificate (it has nothing left to judge): the completed handshake is the proof.
//! * TLS 1.3 where the server sent a CertificateRequest: the connection is accepted
//!   once the server sends a session ticket (servers, rustls and terminus included,
//!   issue them after verifying the client's certificate and Finished) or any
//!   application byte (an echoed request, a `source` stream). A fatal alert or a close
//!   before that is a refusal. A server that sends neither (no tickets, nothing to
//!   echo) cannot prove acceptance: those operations end in `timeout`.
//! * Independently of the above, a fatal alert from the server that judges the client's
//!   certificate (see [`is_refusal`]) is a refusal (TLS 1.2 sends it mid-handshake).
//!
//! rustls reports neither event per connection, so the bench client's config is
//! wrapped ([`instrument`]): its session store counts received TLS 1.3 tickets and its
//! certificate resolver counts CertificateRequests, both in thread-local counters.
//! Each bench worker drives one connection at a time on its own thread, so
//! [`super::stream::Stream`] attributes the change of the counters across one
//! `process_new_packets` call to its connection.
#![forbid(unsafe_code)]

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls12Resumption, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, NamedGroup, SignatureScheme};
use std::cell::Cell;
use std::sync::Arc;

/// Events seen by this thread's bench clients so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// TLS 1.3 NewSessionTicket messages received.
    pub tickets: u64,
    /// CertificateRequest messages received (the client's resolver was asked).
    pub cert_requests: u64,
}

thread_local! {
    static SEEN: Cell<Seen> = const { Cell::new(Seen { tickets: 0, cert_requests: 0 }) };
}

/// This thread's counters.
pub fn seen() -> Seen {
    SEEN.with(Cell::get)
}

fn bump(f: impl FnOnce(&mut Seen)) {
    SEEN.with(|c| {
        let mut s = c.get();
        f(&mut s);
        c.set(s);
    });
}

/// A fatal alert by which a server rejects the client's certificate (or the client).
pub fn is_refusal(a: AlertDescription) -> bool {
    use AlertDescription as A;
    matches!(
        a,
        A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
    )
}

/// Wrap `cfg`'s certificate resolver and set its resumption: a per-worker in-memory
/// store of `sessions` entries, or none (tickets are then counted and dropped).
pub fn instrument(cfg: &mut rustls::ClientConfig, sessions: Option<usize>) {
    cfg.client_auth_cert_resolver = Arc::new(NotingResolver(cfg.client_auth_cert_resolver.clone()));
    cfg.resumption = match sessions {
        Some(n) => Resumption::store(Arc::new(CountingStore(Some(Arc::new(
            ClientSessionMemoryCache::new(n),
        ))))),
        None => Resumption::store(Arc::new(CountingStore(None)))
            .tls12_resumption(Tls12Resumption::Disabled),
    };
}

/// Counts CertificateRequests; resolves with the wrapped resolver.
#[derive(Debug)]
struct NotingResolver(Arc<dyn ResolvesClientCert>);

impl ResolvesClientCert for NotingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        bump(|s| s.cert_requests += 1);
        self.0.resolve(root_hint_subjects, sigschemes)
    }
    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
    fn has_certs(&self) -> bool {
        self.0.has_certs()
    }
}

/// Counts TLS 1.3 tickets; stores sessions in the wrapped store (`None`: nowhere).
#[derive(Debug)]
struct CountingStore(Option<Arc<dyn ClientSessionStore>>);

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        if let Some(s) = &self.0 {
            s.set_kx_hint(server_name, group);
        }
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.as_ref().and_then(|s| s.kx_hint(server_name))
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if let Some(s) = &self.0 {
            s.set_tls12_session(server_name, value);
        }
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.as_ref().and_then(|s| s.tls12_session(server_name))
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        if let Some(s) = &self.0 {
            s.remove_tls12_session(server_name);
        }
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        bump(|s| s.tickets += 1);
        if let Some(s) = &self.0 {
            s.insert_tls13_ticket(server_name, value);
        }
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0
            .as_ref()
            .and_then(|s| s.take_tls13_ticket(server_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_alerts_are_the_certificate_verdicts() {
        assert!(is_refusal(AlertDescription::CertificateRequired));
        assert!(is_refusal(AlertDescription::AccessDenied));
        assert!(is_refusal(AlertDescription::UnknownCA));
        assert!(!is_refusal(AlertDescription::HandshakeFailure));
        assert!(!is_refusal(AlertDescription::ProtocolVersion));
        assert!(!is_refusal(AlertDescription::CloseNotify));
    }
}
