//! settings: what the runtime is told about a listener. [`ListenerSettings`] holds
//! it in the lower layers' own types (tls, proxy, host), made from the config's
//! `[[listeners]]` and `[resolver]` tables by [`ListenerSettings::from_config`], the
//! one place the runtime reads the listener schema; [`ListenerLive::build`] works
//! from the settings alone.
//!
//! I/O contract: none.
//!
//! [`ListenerLive::build`]: super::listener::ListenerLive::build
#![forbid(unsafe_code)]

use crate::config::{Listener, ProxyProtocol, Resolver};
use crate::host::endpoint::Endpoint;
use crate::host::lookup::Lookup;
use crate::proxy::authz::gate::Policy;
use crate::proxy::conn::ConnLimits;
use crate::proxy::http::{HttpSettings, IdentityHeaders};
use crate::proxy::upstream::HealthPolicy;
use crate::tls::ListenerTls;
use std::net::SocketAddr;
use std::time::Duration;

/// One listener's settings, converted from the config. Field meanings are the
/// config's (see ARCHITECTURE.md and the README).
#[derive(Debug)]
pub struct ListenerSettings {
    pub tls: ListenerTls,
    /// `protocol = "http"`: the request filter's settings.
    pub http: Option<HttpSettings>,
    /// Per-request rules and limits (applied only on http listeners, when active).
    pub policy: Policy,
    /// Send a PROXY v2 header with identity TLVs ahead of the upstream bytes.
    pub proxy_v2: bool,
    /// ... with the verified client's leaf (`proxy_protocol_client_cert`).
    pub proxy_v2_client_cert: bool,
    /// The `upstreams` entries as written, each with what it resolved to at load.
    pub upstreams: Vec<(Endpoint, Vec<SocketAddr>)>,
    pub health: HealthPolicy,
    pub resolve_interval: Duration,
    /// How the resolver thread looks names up (`[resolver]`).
    pub lookup: Lookup,
    pub limits: ConnLimits,
    pub max_connections: usize,
}

impl ListenerSettings {
    /// Listener `l` of a config whose `[resolver]` is `resolver` (checked: `validate`
    /// refused invalid rules before any listener is built).
    pub fn from_config(l: &Listener, resolver: &Resolver) -> ListenerSettings {
        let http = (l.protocol.as_deref() == Some("http")).then(|| {
            let t = l.http.clone().unwrap_or_default();
            HttpSettings {
                identity: IdentityHeaders::parse(&t.identity_headers).unwrap_or_default(),
                max_header_bytes: t.max_header_bytes,
                allow_bare_lf: t.allow_bare_lf,
                head_timeout: Duration::from_millis(t.head_timeout_ms),
                h2: l.offers_h2().then_some(t.h2),
                upstream_h2: l.upstream_h2(),
            }
        });
        ListenerSettings {
            tls: l.tls(),
            http,
            policy: Policy {
                rules: l.http_rules().unwrap_or_default(),
                limits: l.limit_settings(),
            },
            proxy_v2: l.proxy_protocol == ProxyProtocol::V2,
            proxy_v2_client_cert: l.proxy_protocol_client_cert,
            upstreams: l
                .upstream_entries
                .iter()
                .cloned()
                .zip(l.upstream_addrs.iter().cloned())
                .collect(),
            health: HealthPolicy {
                first: Duration::from_millis(l.upstream_backoff_ms),
                max: Duration::from_millis(l.upstream_backoff_max_ms),
            },
            resolve_interval: Duration::from_millis(l.resolve_interval_ms),
            lookup: Lookup {
                hosts_file: resolver.hosts_file.clone(),
            },
            limits: ConnLimits {
                max_buffered: l.max_buffered_bytes,
                handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            },
            max_connections: l.max_connections,
        }
    }
}
