//! validate: every problem with values the schema accepted, one error each.
//!
//! Owns the rules (ranges, required entries, uniqueness, cross-field checks), one
//! function per section, in the order the errors are reported. No I/O: files the
//! config names are checked by `tls` and `ops::check`.
#![forbid(unsafe_code)]

use super::error::{ConfigError, ConfigErrorKind};
use super::location::Seg::{Index as I, Key as K};
use super::location::{Locator, Seg};
use super::schema::{
    AccessLog, Admin, ClientAuth, ClientAuthMode, Config, InvalidCertificate, Listener,
    ProxyProtocol, Runtime, Sni, UpstreamTls,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

impl Config {
    /// Every validation problem; `listeners` gets the index of each listener that
    /// has one.
    pub(super) fn validate(
        &self,
        at: &Locator<'_>,
        listeners: &mut Vec<usize>,
    ) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut bad = |path: &[Seg<'_>], msg: String| {
            if let [K("listeners"), I(i), ..] = path {
                listeners.push(*i);
            }
            out.push(at.error(path, ConfigErrorKind::Invalid(msg)))
        };
        validate_runtime(&self.runtime, &mut bad);
        if let Some(a) = &self.admin {
            validate_admin(a, &mut bad);
        }
        if self.log.access == AccessLog::File(PathBuf::new()) {
            bad(
                &[K("log"), K("access")],
                "must be \"stderr\", \"off\" or a file path, got an empty string".into(),
            );
        }
        validate_listeners(self, &mut bad);
        out
    }
}

/// Reports one problem at a field path.
type Bad<'b> = dyn FnMut(&[Seg<'_>], String) + 'b;

fn validate_runtime(rt: &Runtime, bad: &mut Bad<'_>) {
    let at = |key| [K("runtime"), K(key)];
    if rt.workers == Some(0) {
        bad(&at("workers"), "must be at least 1".into());
    }
    if rt.cpus.as_ref().is_some_and(|c| c.is_empty()) {
        bad(
            &at("cpus"),
            "must list at least one CPU (or be left out)".into(),
        );
    }
    if !(rt.ring_entries.is_power_of_two() && (2..=32768).contains(&rt.ring_entries)) {
        bad(
            &at("ring_entries"),
            format!(
                "must be a power of two between 2 and 32768, got {}",
                rt.ring_entries
            ),
        );
    }
    if !(rt.recv_buffers.is_power_of_two() && rt.recv_buffers <= 32768) {
        bad(
            &at("recv_buffers"),
            format!(
                "must be a power of two between 1 and 32768, got {}",
                rt.recv_buffers
            ),
        );
    }
    if rt.recv_buffer_size < 4096 {
        bad(
            &at("recv_buffer_size"),
            format!("must be at least 4096 bytes, got {}", rt.recv_buffer_size),
        );
    }
    if rt.max_buffered_bytes_per_worker < 1 << 20 {
        bad(
            &at("max_buffered_bytes_per_worker"),
            format!(
                "must be at least 1048576 bytes (1 MiB), got {}",
                rt.max_buffered_bytes_per_worker
            ),
        );
    }
    for (key, v) in [
        ("drain_timeout_ms", rt.drain_timeout_ms),
        ("reload_interval_ms", rt.reload_interval_ms),
    ] {
        if v == 0 {
            bad(&at(key), "must be greater than 0".into());
        }
    }
    for (key, v) in [("user", &rt.user), ("group", &rt.group)] {
        if v.as_deref() == Some("") {
            bad(
                &at(key),
                "must name a user or group, got an empty string".into(),
            );
        }
    }
    if rt.group.is_some() && rt.user.is_none() {
        bad(
            &at("group"),
            "needs `user` too: switching only the group would keep root and every \
             capability"
                .into(),
        );
    }
}

fn validate_admin(a: &Admin, bad: &mut Bad<'_>) {
    for (key, v) in [
        ("max_connections", a.max_connections as u64),
        ("timeout_ms", a.timeout_ms),
        ("snapshot_interval_ms", a.snapshot_interval_ms),
        ("callers_max", a.callers_max as u64),
    ] {
        if v == 0 {
            bad(&[K("admin"), K(key)], "must be greater than 0".into());
        }
    }
}

/// The list as a whole (present, names and addresses unique), then each listener.
fn validate_listeners(cfg: &Config, bad: &mut Bad<'_>) {
    if cfg.listeners.is_empty() {
        bad(
            &[K("listeners")],
            "at least one [[listeners]] entry is required".into(),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let admin = cfg.admin.as_ref().map(|a| a.listen);
    for (i, l) in cfg.listeners.iter().enumerate() {
        let field = |key: &'static str| [K("listeners"), I(i), K(key)];
        if l.name.is_empty() {
            bad(&field("name"), "must not be empty".into());
        } else if let Some(first) = names.insert(&l.name, i) {
            names.insert(&l.name, first);
            bad(
                &field("name"),
                format!(
                    "duplicate listener name {:?} (already used by listeners[{first}])",
                    l.name
                ),
            );
        }
        // Literal addresses here; names are checked once resolved (`resolve_names`).
        if let Some(listen) = l.listen_setting.addr().filter(|a| a.port() != 0) {
            if let Some(first) = addrs.insert(listen, i) {
                addrs.insert(listen, first);
                bad(
                    &field("listen"),
                    format!("address {listen} is already used by listeners[{first}]"),
                );
            }
            if admin == Some(listen) {
                bad(
                    &field("listen"),
                    format!("address {listen} is also the admin address"),
                );
            }
        }
        validate_listener(l, i, bad);
    }
}

/// One listener's own values and sections.
fn validate_listener(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    if l.upstream_entries.is_empty() {
        bad(
            &field("upstreams"),
            "at least one upstream is required".into(),
        );
    }
    validate_limits(l, i, bad);
    validate_svid(l, i, bad);
    if let Err(e) = ProxyProtocol::from_setting(l.proxy_protocol_setting.as_deref()) {
        bad(&field("proxy_protocol"), e.to_string());
    }
    for (j, proto) in l.alpn.iter().enumerate() {
        if proto.is_empty() || proto.len() > 255 {
            bad(
                &[K("listeners"), I(i), K("alpn"), I(j)],
                format!(
                    "an ALPN protocol name must be 1 to 255 bytes, got {}",
                    proto.len()
                ),
            );
        }
    }
    validate_tls_policy(l, i, bad);
    validate_http(l, i, bad);
    validate_sni(&l.sni, i, bad);
    if let Some(ca) = &l.client_auth {
        validate_client_auth(ca, i, bad);
    }
    if let Some(up) = &l.upstream_tls {
        validate_upstream_tls(up, i, bad);
    }
}

/// `upstream_protocol` and `alpn` on an http listener: an `h2` upstream gets HTTP/2
/// from every client (`alpn` is `h2` only); an `http1` one gets HTTP/1.1, from
/// HTTP/1.1 clients as they are and from HTTP/2 clients (`h2` in `alpn`) translated.
fn validate_http_protocols(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    let (allowed, name): (&[&str], _) = match l.upstream_protocol.as_deref() {
        None | Some("http1") => (&["http/1.1", "h2"], "http1"),
        Some("h2") => (&["h2"], "h2"),
        Some(p) => {
            bad(
                &field("upstream_protocol"),
                format!("must be \"http1\" or \"h2\", got {p:?}"),
            );
            return;
        }
    };
    if let Some(p) = l.alpn.iter().find(|p| !allowed.contains(&p.as_str())) {
        let why = if name == "h2" {
            "every client speaks HTTP/2 to an h2 upstream"
        } else {
            "HTTP/1.1 clients are forwarded as they are, HTTP/2 ones translated"
        };
        bad(
            &field("alpn"),
            format!(
                "an http listener with upstream_protocol = \"{name}\" offers {} only \
                 ({why}), got {p:?}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
    }
    let h2 = l.http.as_ref().map(|t| t.h2).unwrap_or_default();
    let at = |key: &'static str| [K("listeners"), I(i), K("http"), K("h2"), K(key)];
    if h2.max_concurrent_streams == 0 {
        bad(&at("max_concurrent_streams"), "must be at least 1".into());
    }
    for (key, v) in [
        ("stream_window", h2.stream_window),
        ("connection_window", h2.connection_window),
    ] {
        if !(65_535..=(1 << 31) - 1).contains(&v) {
            bad(
                &at(key),
                format!("must be between 65535 and 2147483647, got {v}"),
            );
        }
    }
    if h2.max_header_list_size < 1024 {
        bad(&at("max_header_list_size"), "must be at least 1024".into());
    }
}

/// `protocol` and `[listeners.http]`.
fn validate_http(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    let http = match l.protocol.as_deref() {
        None | Some("tcp") => false,
        Some("http") => true,
        Some(p) => {
            bad(
                &field("protocol"),
                format!("must be \"tcp\" or \"http\", got {p:?}"),
            );
            return;
        }
    };
    if !http {
        if l.http.is_some() {
            bad(&field("http"), "needs protocol = \"http\"".into());
        }
        if l.upstream_protocol.is_some() {
            bad(
                &field("upstream_protocol"),
                "needs protocol = \"http\"".into(),
            );
        }
        return;
    }
    validate_http_protocols(l, i, bad);
    let t = l.http.clone().unwrap_or_default();
    let at = |key: &'static str| [K("listeners"), I(i), K("http"), K(key)];
    if let Err(e) = crate::proxy::http::IdentityHeaders::parse(&t.identity_headers) {
        bad(&at("identity_headers"), e);
    }
    if !(256..=1 << 20).contains(&t.max_header_bytes) {
        bad(
            &at("max_header_bytes"),
            format!(
                "must be between 256 and 1048576, got {}",
                t.max_header_bytes
            ),
        );
    }
    if t.max_header_bytes > l.max_buffered_bytes {
        bad(
            &at("max_header_bytes"),
            format!(
                "must not exceed max_buffered_bytes ({}): a head is buffered whole",
                l.max_buffered_bytes
            ),
        );
    }
    if t.head_timeout_ms == 0 {
        bad(&at("head_timeout_ms"), "must be at least 1".into());
    }
    if let Err(p) = l.http_rules() {
        match p.rule {
            Some(j) => bad(
                &[
                    K("listeners"),
                    I(i),
                    K("http"),
                    K("rules"),
                    I(j),
                    K(p.field),
                ],
                p.error.to_string(),
            ),
            None => bad(&at(p.field), p.error.to_string()),
        }
    }
}

/// `min_version`, `cipher_suites`, `groups`: known names, and a TLS 1.3 suite when
/// only TLS 1.3 is offered.
fn validate_tls_policy(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    use crate::tls::suites::{group, group_names, suite, suite_names, MinVersion};
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    let min = match l.min_version.as_deref().map(MinVersion::parse) {
        Some(Err(e)) => {
            bad(&field("min_version"), e);
            None
        }
        Some(Ok(v)) => Some(v),
        None => Some(MinVersion::Tls12),
    };
    let mut tls13_suites = 0;
    for (j, name) in l.cipher_suites.iter().enumerate() {
        match suite(name) {
            Some(s) => tls13_suites += usize::from(s.tls13().is_some()),
            None => bad(
                &[K("listeners"), I(i), K("cipher_suites"), I(j)],
                format!("unknown cipher suite {name:?}; valid: {}", suite_names()),
            ),
        }
    }
    for (j, name) in l.groups.iter().enumerate() {
        if group(name).is_none() {
            bad(
                &[K("listeners"), I(i), K("groups"), I(j)],
                format!(
                    "unknown key exchange group {name:?}; valid: {}",
                    group_names()
                ),
            );
        }
    }
    let all_known = l.cipher_suites.iter().all(|n| suite(n).is_some());
    if min == Some(MinVersion::Tls13)
        && !l.cipher_suites.is_empty()
        && all_known
        && tls13_suites == 0
    {
        bad(
            &field("cipher_suites"),
            "min_version = \"1.3\" but no TLS 1.3 suite is listed (TLS13_...)".into(),
        );
    }
}

/// A listener's timeouts, ticket lifetime and connection/buffer limits.
fn validate_limits(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    for (key, v) in [
        ("handshake_timeout_ms", l.handshake_timeout_ms),
        ("idle_timeout_ms", l.idle_timeout_ms),
        ("connect_timeout_ms", l.connect_timeout_ms),
    ] {
        if v == 0 {
            bad(&field(key), "must be greater than 0".into());
        }
    }
    if !(1..=604_800).contains(&l.ticket_lifetime_s) {
        bad(
            &field("ticket_lifetime_s"),
            format!(
                "must be between 1 and 604800 seconds (7 days, RFC 8446), got {}",
                l.ticket_lifetime_s
            ),
        );
    }
    if l.resolve_interval_ms == 0 {
        bad(
            &field("resolve_interval_ms"),
            "must be greater than 0".into(),
        );
    }
    if l.upstream_backoff_ms > 0 && l.upstream_backoff_max_ms < l.upstream_backoff_ms {
        bad(
            &field("upstream_backoff_max_ms"),
            format!(
                "must be at least upstream_backoff_ms ({}), got {}",
                l.upstream_backoff_ms, l.upstream_backoff_max_ms
            ),
        );
    }
    if l.max_connections == 0 {
        bad(&field("max_connections"), "must be at least 1".into());
    }
    if let Err(e) = crate::proxy::authz::Mode::parse(&l.limits_mode) {
        bad(&field("limits_mode"), e.to_string());
    }
    if l.requests_per_second_per_caller > 0 && l.protocol.as_deref() != Some("http") {
        bad(
            &field("requests_per_second_per_caller"),
            "counts HTTP requests: needs protocol = \"http\"".into(),
        );
    }
    if l.limits_max_callers == 0 {
        bad(&field("limits_max_callers"), "must be at least 1".into());
    }
    if l.proxy_protocol_client_cert
        && ProxyProtocol::from_setting(l.proxy_protocol_setting.as_deref()).ok()
            != Some(ProxyProtocol::V2)
    {
        bad(
            &field("proxy_protocol_client_cert"),
            "goes in the PROXY v2 header: needs proxy_protocol = \"v2\"".into(),
        );
    }
    if l.proxy_protocol_client_cert && l.protocol.as_deref() == Some("http") {
        bad(
            &field("proxy_protocol_client_cert"),
            "is for TCP listeners: an http listener passes the certificate in its identity headers (identity_headers)".into(),
        );
    }
    if l.burst > 0 && l.requests_per_second_per_caller == 0 {
        bad(
            &field("burst"),
            "is the bucket size of requests_per_second_per_caller, which is not set".into(),
        );
    }
    if l.max_buffered_bytes < 16384 {
        bad(
            &field("max_buffered_bytes"),
            format!(
                "must be at least 16384 bytes (one TLS record), got {}",
                l.max_buffered_bytes
            ),
        );
    }
}

/// `[[listeners.sni]]`: names present and well-formed, each claimed by one entry.
fn validate_sni(entries: &[Sni], i: usize, bad: &mut Bad<'_>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (j, sni) in entries.iter().enumerate() {
        let at = |key| [K("listeners"), I(i), K("sni"), I(j), K(key)];
        if sni.server_names.is_empty() {
            bad(
                &at("server_names"),
                "must list at least one server name".into(),
            );
        }
        for (n, name) in sni.server_names.iter().enumerate() {
            let path = [
                K("listeners"),
                I(i),
                K("sni"),
                I(j),
                K("server_names"),
                I(n),
            ];
            if let Some(why) = sni_name_problem(name) {
                bad(&path, why);
                continue;
            }
            if let Some(first) = seen.insert(name.to_ascii_lowercase(), j) {
                bad(
                    &path,
                    format!("{name:?} is already listed by listeners[{i}].sni[{first}]"),
                );
            }
        }
    }
}

/// A server name for `[[listeners.sni]]` must be a DNS name, optionally `*.` + a
/// DNS name; what is wrong with `name` otherwise.
fn sni_name_problem(name: &str) -> Option<String> {
    let base = name.strip_prefix("*.").unwrap_or(name);
    let dns_ok = !base.contains('*')
        && base.contains(|c: char| c.is_ascii_alphabetic())
        && rustls_pki_types::DnsName::try_from(base).is_ok();
    if dns_ok {
        None
    } else {
        Some(format!(
            "{name:?} is not a DNS name or a \"*.\" wildcard of one (clients send SNI only \
             for DNS names, e.g. \"api.internal\" or \"*.example.org\")"
        ))
    }
}

fn validate_client_auth(ca: &ClientAuth, i: usize, bad: &mut Bad<'_>) {
    check_client_auth(ca, &[K("listeners"), I(i), K("client_auth")], bad);
    if let Some(c) = &ca.candidate {
        let base = [K("listeners"), I(i), K("client_auth"), K("candidate")];
        check_client_auth(c, &base, bad);
        if c.candidate.is_some() {
            bad(
                &[
                    K("listeners"),
                    I(i),
                    K("client_auth"),
                    K("candidate"),
                    K("candidate"),
                ],
                "a candidate policy has no candidate of its own: promote this one first".into(),
            );
        }
    }
}

/// The rules of one client-auth table (`client_auth` or its `candidate`) at `base`.
fn check_client_auth(ca: &ClientAuth, base: &[Seg<'_>], bad: &mut Bad<'_>) {
    let at = |key| {
        let mut p = base.to_vec();
        p.push(K(key));
        p
    };
    check_workload_value(ca.trust.as_deref(), &at("trust"), bad);
    if !ca.trust_domains.is_empty() && !ca.workload_trust() {
        bad(
            &at("trust_domains"),
            "restricts the Workload API's bundles: set trust = \"workload_api\" too".into(),
        );
    }
    if ca.mode != ClientAuthMode::None && ca.ca.is_empty() && !ca.workload_trust() {
        bad(
            &at("ca"),
            format!(
                "mode \"{}\" needs at least one CA bundle to verify client certificates \
                 against (ca = [\"clients-ca.pem\"])",
                ca.mode.as_str()
            ),
        );
    }
    if ca.mode == ClientAuthMode::None && !ca.allow.is_empty() {
        bad(
            &at("allow"),
            "mode is \"none\" (also the default when `mode` is left out): no client \
             certificate is asked for, so this allow-list would be silently ignored; set \
             mode = \"require\" (or \"optional\") to enforce it, or remove `allow`"
                .into(),
        );
    }
    if ca.invalid_certificate == InvalidCertificate::Anonymous
        && ca.mode != ClientAuthMode::Optional
    {
        bad(
            &at("invalid_certificate"),
            format!(
                "\"anonymous\" applies to mode \"optional\" only (mode is \"{}\"): \
                 set mode = \"optional\" or remove `invalid_certificate`",
                ca.mode.as_str()
            ),
        );
    }
    for (k, entry) in ca.allow.iter().enumerate() {
        if let Err(why) = crate::tls::policy::AllowRule::parse(entry) {
            let mut p = at("allow");
            p.push(I(k));
            bad(&p, why.to_string());
        }
    }
}

fn validate_upstream_tls(up: &UpstreamTls, i: usize, bad: &mut Bad<'_>) {
    let at = |key| [K("listeners"), I(i), K("upstream_tls"), K(key)];
    check_workload_value(up.trust.as_deref(), &at("trust"), bad);
    check_workload_value(up.svid.as_deref(), &at("svid"), bad);
    if up.workload_svid() && (up.cert.is_some() || up.key.is_some()) {
        bad(
            &at("svid"),
            "the client certificate comes from the Workload API: remove `cert` and `key`".into(),
        );
    }
    if up.ca.is_empty() && !up.workload_trust() {
        bad(
            &at("ca"),
            "must list at least one CA bundle to verify the upstream's certificate against".into(),
        );
    }
    if rustls_pki_types::ServerName::try_from(up.server_name.as_str()).is_err() {
        bad(
            &at("server_name"),
            format!("{:?} is not a DNS name or an IP address", up.server_name),
        );
    }
    match (&up.cert, &up.key) {
        (Some(_), None) => bad(
            &at("cert"),
            "a client certificate needs its private key: set `key` too (or neither)".into(),
        ),
        (None, Some(_)) => bad(
            &at("key"),
            "a private key needs its client certificate: set `cert` too (or neither)".into(),
        ),
        _ => {}
    }
}

/// `svid`, `trust`: the one source they can name.
fn check_workload_value(v: Option<&str>, at: &[Seg<'_>], bad: &mut Bad<'_>) {
    if let Some(v) = v.filter(|v| *v != crate::tls::WORKLOAD_API) {
        bad(
            at,
            format!("must be \"{}\", got {v:?}", crate::tls::WORKLOAD_API),
        );
    }
}

/// `cert`/`key`, or `svid = "workload_api"` (with an optional `svid_hint`).
fn validate_svid(l: &Listener, i: usize, bad: &mut Bad<'_>) {
    let field = |key: &'static str| [K("listeners"), I(i), K(key)];
    check_workload_value(l.svid.as_deref(), &field("svid"), bad);
    let empty = |p: &std::path::Path| p.as_os_str().is_empty();
    match &l.svid {
        Some(_) if !empty(&l.cert) || !empty(&l.key) || l.ocsp.is_some() => bad(
            &field("svid"),
            "the certificate and key come from the Workload API: remove `cert`, `key` and `ocsp`"
                .into(),
        ),
        Some(_) => {}
        None if l.svid_hint.is_some() => bad(
            &field("svid_hint"),
            "picks a Workload API SVID: set svid = \"workload_api\" too".into(),
        ),
        None => {
            for (key, p) in [("cert", &l.cert), ("key", &l.key)] {
                if empty(p) {
                    bad(&[K("listeners"), I(i)], format!("missing field `{key}`"));
                }
            }
        }
    }
}
