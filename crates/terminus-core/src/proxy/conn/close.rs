//! close: why a connection ended, in the one vocabulary metrics and logs share.
//!
//! Owns [`HandshakeFailure`] (the `reason` label: whose fault, and what), its
//! classification of rustls errors, [`CloseReason`] (the access log's
//! `close_reason`) and [`Expired`] (what a fired timer means).
//!
//! I/O contract: none.

/// Why a handshake failed; the `reason` label values of interface.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownCa,
    CertExpired,
    CertNotYetValid,
    CertRevoked,
    BadCertificate,
    PolicyDenied,
    ProtocolVersion,
    NoSharedCipher,
    Malformed,
    Timeout,
    PeerClosed,
    PeerAlert,
    /// `handshakes_per_second_per_source` refused a full handshake.
    RateLimited,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 15] = [
        Self::NoClientCert,
        Self::UnknownCa,
        Self::CertExpired,
        Self::CertNotYetValid,
        Self::CertRevoked,
        Self::BadCertificate,
        Self::PolicyDenied,
        Self::ProtocolVersion,
        Self::NoSharedCipher,
        Self::Malformed,
        Self::Timeout,
        Self::PeerClosed,
        Self::PeerAlert,
        Self::RateLimited,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoClientCert => "no_client_cert",
            Self::UnknownCa => "unknown_ca",
            Self::CertExpired => "cert_expired",
            Self::CertNotYetValid => "cert_not_yet_valid",
            Self::CertRevoked => "cert_revoked",
            Self::BadCertificate => "bad_certificate",
            Self::PolicyDenied => "policy_denied",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedCipher => "no_shared_cipher",
            Self::Malformed => "malformed",
            Self::Timeout => "timeout",
            Self::PeerClosed => "peer_closed",
            Self::PeerAlert => "peer_alert",
            Self::RateLimited => "rate_limited",
            Self::Other => "other",
        }
    }

    /// Classify a rustls error raised while handshaking.
    pub fn classify(e: &rustls::Error) -> Self {
        use rustls::{CertificateError as C, Error as E, PeerIncompatible as PI};
        match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => Self::Malformed,
            E::InappropriateHandshakeMessage { .. } | E::DecryptError => Self::Malformed,
            E::NoCertificatesPresented => Self::NoClientCert,
            E::InvalidCertificate(c) => match c {
                C::UnknownIssuer => Self::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => Self::CertExpired,
                C::NotValidYet | C::NotValidYetContext { .. } => Self::CertNotYetValid,
                C::Revoked => Self::CertRevoked,
                C::ApplicationVerificationFailure => Self::PolicyDenied,
                _ => Self::BadCertificate,
            },
            E::PeerIncompatible(p) => match p {
                PI::Tls12NotOffered
                | PI::Tls12NotOfferedOrEnabled
                | PI::Tls13RequiredForQuic
                | PI::SupportedVersionsExtensionRequired
                // What a real TLS <= 1.1 ClientHello trips first: it has no
                // signature_algorithms extension.
                | PI::SignatureAlgorithmsExtensionRequired => Self::ProtocolVersion,
                PI::NoCipherSuitesInCommon
                | PI::NoKxGroupsInCommon
                | PI::NoSignatureSchemesInCommon
                | PI::NoEcPointFormatsInCommon => Self::NoSharedCipher,
                _ => Self::Other,
            },
            E::AlertReceived(_) => Self::PeerAlert,
            E::PeerMisbehaved(_) => Self::Malformed,
            e if crate::tls::sign_gate::HandshakeRefused::is(e) => Self::RateLimited,
            _ => Self::Other,
        }
    }
}

/// Why a connection ended (the access log's `close_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions finished cleanly.
    Done,
    HandshakeFailed(HandshakeFailure),
    IdleTimeout,
    /// Every upstream refused or timed out.
    UpstreamUnavailable,
    /// The client reset or errored: reset the upstream too.
    ClientReset,
    /// The upstream reset or errored: reset the client too.
    UpstreamReset,
    /// The client broke the TLS protocol after the handshake.
    ClientProtocolError,
    /// Shut down by the process (drain deadline).
    Shutdown,
    /// TLS towards the upstream failed (e.g. its certificate did not verify).
    UpstreamTlsFailed(HandshakeFailure),
    /// An `http` listener refused a request with this status (400, 408, 431).
    HttpRejected(u16),
    /// Refused after the handshake by a per-caller limit (`max_connections_per_caller`).
    Limited,
    /// The PROXY v2 header could not carry what it must (the client certificate).
    ProxyHeaderTooLarge,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::HandshakeFailed(_) => "handshake_failed",
            Self::IdleTimeout => "idle_timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::ClientReset => "client_reset",
            Self::UpstreamReset => "upstream_reset",
            Self::ClientProtocolError => "client_protocol_error",
            Self::Shutdown => "shutdown",
            Self::UpstreamTlsFailed(_) => "upstream_tls_failed",
            Self::HttpRejected(_) => "http_rejected",
            Self::Limited => "limited",
            Self::ProxyHeaderTooLarge => "proxy_header_too_large",
        }
    }
}

/// What a fired timer means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing is due (the deadline moved).
    No,
    /// The upstream connect attempt took too long: cancel it (its failure then
    /// moves on to the next upstream).
    ConnectAttempt,
    /// The connection must close; see [`super::Conn::poll_close`].
    Close,
}
