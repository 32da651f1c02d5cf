//! access_log: the schema of the access log line, one JSON object per connection.
//!
//! Owns: `AccessLine` and how a finished connection fills it. `event` says how
//! it ended (`connection`, `handshake_error`, `upstream_tls_error`); failures also
//! carry `reason` and what the refused client presented.
//!
//! I/O contract: none; the worker hands the line to [`crate::telemetry::log`].

use crate::proxy::conn::{CloseReason, Conn};
use crate::proxy::proxy_v2::version_name;
use crate::tls::identity::PeerIdentity;
use std::net::SocketAddr;

/// Serialized straight from borrowed fields (no intermediate JSON map): it runs on
/// the worker.
#[derive(serde::Serialize)]
struct AccessLine<'a> {
    /// RFC 3339 UTC with microseconds.
    ts: String,
    event: &'static str,
    listener: &'a str,
    worker: usize,
    client: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    sni: Option<&'a str>,
    alpn: Option<std::borrow::Cow<'a, str>>,
    tls_version: Option<&'static str>,
    cipher: Option<&'static str>,
    resumed: bool,
    client_auth: &'static str,
    peer_spiffe: Option<&'a str>,
    peer_dns: &'a [String],
    peer_cn: Option<&'a str>,
    peer_serial: Option<&'a str>,
    handshake_us: Option<u64>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    close_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// With a candidate policy: its verdict, `allow` or `refuse`, and why it refuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_reason: Option<&'static str>,
    /// `invalid_certificate = "anonymous"` admitted a failing certificate: why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_certificate: Option<&'static str>,
}

/// Where a finished connection ran, as the worker knows it.
#[derive(Clone, Copy)]
pub struct Endpoints<'a> {
    pub listener: &'a str,
    pub worker: usize,
    /// Only known when the log is on (one getpeername at accept).
    pub client: Option<SocketAddr>,
    /// The upstream it was connected to, if it got that far.
    pub upstream: Option<SocketAddr>,
}

/// The access log line of a connection that closed for `closing`.
pub fn line(at: Endpoints<'_>, closing: Option<CloseReason>, conn: &Conn) -> String {
    let tls = conn.tls();
    let closing = closing.unwrap_or(CloseReason::Done);
    let (event, reason) = match closing {
        CloseReason::HandshakeFailed(r) => ("handshake_error", Some(r.as_str())),
        CloseReason::UpstreamTlsFailed(r) => ("upstream_tls_error", Some(r.as_str())),
        _ => ("connection", None),
    };
    let handshake = conn.handshake_duration();
    // The verified peer, or (for a refused one, or one a candidate policy asked for)
    // what it presented.
    let peer = conn
        .verified_peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| PeerIdentity::from_der(der).ok());
    let rejected = conn.rejected_client();
    let auth = conn.auth();
    let presented = match (&peer, auth) {
        (None, Some(a)) => tls
            .peer_certificates()
            .and_then(|c| c.first())
            .or(a.refused_leaf.as_ref())
            .and_then(|der| PeerIdentity::from_der(der).ok()),
        _ => None,
    };
    let id = peer
        .as_ref()
        .or_else(|| rejected.and_then(|r| r.identity.as_ref()))
        .or(presented.as_ref());
    let candidate = auth.and_then(|a| a.candidate.as_ref());
    let classify = |e: &rustls::Error| crate::proxy::conn::HandshakeFailure::classify(e).as_str();
    let line = AccessLine {
        ts: crate::telemetry::log::now_rfc3339(),
        event,
        listener: at.listener,
        worker: at.worker,
        client: at.client,
        upstream: at.upstream,
        sni: conn.server_name(),
        alpn: tls.alpn_protocol().map(String::from_utf8_lossy),
        tls_version: handshake.and(tls.protocol_version()).map(version_name),
        cipher: handshake
            .and(tls.negotiated_cipher_suite())
            .and_then(|c| c.suite().as_str()),
        resumed: tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_auth: if peer.is_some() { "verified" } else { "none" },
        peer_spiffe: id.and_then(|i| i.spiffe.as_deref()),
        peer_dns: id.map_or(&[], |i| &i.dns[..]),
        peer_cn: id.and_then(|i| i.cn.as_deref()),
        peer_serial: id.map(|i| i.serial.as_str()),
        handshake_us: handshake.map(|d| d.as_micros() as u64),
        bytes_in: conn.bytes_client_to_upstream,
        bytes_out: conn.bytes_upstream_to_client,
        // Whole microseconds: `3006.251`, not `3006.2514290000004`.
        duration_ms: conn.started().elapsed().as_micros() as f64 / 1e3,
        close_reason: closing.as_str(),
        reason,
        peer_subject: reason.and(id.map(|i| i.subject.as_str())),
        error: reason.and(rejected.map(|r| r.error.to_string())),
        candidate: candidate.map(|c| if c.is_ok() { "allow" } else { "refuse" }),
        candidate_reason: candidate.and_then(|c| c.as_ref().err()).map(classify),
        invalid_certificate: auth.and_then(|a| a.anonymous.as_ref()).map(classify),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// An event line other than a connection's: the fields every line starts with,
/// then `rest`'s (serde's flatten keeps that order).
fn event_line(event: &'static str, at: Endpoints<'_>, rest: impl serde::Serialize) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a, T> {
        ts: String,
        event: &'static str,
        listener: &'a str,
        worker: usize,
        client: Option<SocketAddr>,
        #[serde(flatten)]
        rest: T,
    }
    serde_json::to_string(&Line {
        ts: crate::telemetry::log::now_rfc3339(),
        event,
        listener: at.listener,
        worker: at.worker,
        client: at.client,
        rest,
    })
    .unwrap_or_default()
}

/// The `http_denied` line of a request an http listener's rules denied (or, in
/// report mode, would have): which rule, the request line's method, the canonical
/// path, and the caller's identity (never its certificate).
pub fn http_denied(at: Endpoints<'_>, d: &crate::proxy::authz::gate::Denied) -> String {
    #[derive(serde::Serialize)]
    struct Denied<'a> {
        rule: &'a str,
        method: &'a str,
        path: &'a str,
        identity: &'a str,
        enforced: bool,
    }
    let rest = Denied {
        rule: &d.rule,
        method: &d.method,
        path: &d.path,
        identity: &d.identity,
        enforced: d.enforced,
    };
    event_line("http_denied", at, rest)
}

/// The line of a connection, handshake or request over a per-caller limit:
/// `event = "limited"`, refused (`enforced`) or only reported (`limits_mode =
/// "report"`).
pub fn limited(
    at: Endpoints<'_>,
    limit: crate::proxy::authz::limits::Limit,
    enforced: bool,
    caller: &str,
) -> String {
    #[derive(serde::Serialize)]
    struct Limited<'a> {
        limit: &'static str,
        caller: &'a str,
        enforced: bool,
    }
    let rest = Limited {
        limit: limit.as_str(),
        caller,
        enforced,
    };
    event_line("limited", at, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_start_with_the_common_fields_then_their_own() {
        let at = Endpoints {
            listener: "web",
            worker: 2,
            client: Some("192.0.2.1:4000".parse().unwrap()),
            upstream: None,
        };
        let line = limited(at, crate::proxy::authz::limits::Limit::Requests, true, "c");
        let (ts, rest) = line.split_once(",\"event\"").unwrap();
        assert!(ts.starts_with("{\"ts\":\""), "{line}");
        assert_eq!(
            rest,
            ":\"limited\",\"listener\":\"web\",\"worker\":2,\"client\":\"192.0.2.1:4000\",\
             \"limit\":\"requests_per_second_per_caller\",\"caller\":\"c\",\"enforced\":true}"
        );
    }
}
