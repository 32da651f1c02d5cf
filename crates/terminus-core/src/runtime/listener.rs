//! listener: a listener's state as the workers see it.
//!
//! Owns: [`ListenerShared`] (one per listener, shared by every worker: name,
//! address, open-connection count, and the reloadable [`ListenerLive`] behind an
//! `ArcSwap`) and [`ListenerLocal`] (one per listener per worker: its
//! SO_REUSEPORT socket, the accept op, the round-robin cursor).
//! I/O contract: [`ListenerLive::build`] (from the listener's
//! [`ListenerSettings`]) reads its certificate and key files (startup and reload threads, never a worker). Names in `upstreams` were
//! resolved when the config was loaded; the resolver thread (`runtime::resolver`)
//! refreshes `ListenerLive::upstreams` in place, and a worker only loads its current
//! set, once per connection.
#![forbid(unsafe_code)]

use super::settings::ListenerSettings;
use crate::proxy::conn::ConnLimits;
use crate::proxy::upstream::UpstreamSet;
use crate::runtime::uring::OpId;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

/// What every worker shares about one listener.
pub struct ListenerShared {
    pub name: String,
    pub addr: SocketAddr,
    /// Everything a reload may replace; swapped whole.
    pub live: ArcSwap<ListenerLive>,
    /// Open connections over all workers (max_connections is per listener).
    pub active: AtomicUsize,
    /// Who calls it (`GET /callers`); None without an admin endpoint to read it.
    pub callers: Option<Arc<crate::telemetry::callers::CallerTable>>,
    /// Per-caller limit state, shared by the workers and kept across reloads.
    pub caller_limits: Arc<crate::proxy::authz::limits::CallerLimits>,
}

/// A listener's reloadable material: TLS, upstreams, limits. New connections take
/// the current one; live connections keep theirs until they close.
pub struct ListenerLive {
    /// Server config plus the certificates it serves.
    pub tls: crate::tls::ServerTls,
    /// Re-encryption: TLS configs (a session store per upstream address) and the
    /// name to verify the upstream against.
    pub upstream_tls: Option<crate::tls::UpstreamClients>,
    /// Send a PROXY v2 header with identity TLVs ahead of the upstream bytes.
    pub proxy_v2: bool,
    /// ... with the verified client's leaf certificate (`PP2_SUBTYPE_SSL_CLIENT_CERT`).
    pub proxy_v2_client_cert: bool,
    /// Per-caller limits (connections, handshakes per source; the request rate is
    /// decided in `http_policy`). Their shared state is `ListenerShared::caller_limits`.
    pub caller_limits: crate::proxy::authz::limits::LimitSettings,
    /// The entries as written and the resolved set new connections load (refreshed
    /// by the resolver thread); passive health per address.
    pub upstreams: UpstreamSet,
    /// How the resolver thread looks names up (`[resolver]`).
    pub resolver: crate::host::lookup::Lookup,
    pub limits: ConnLimits,
    /// `protocol = "http"`: the request filter's settings.
    pub http: Option<crate::proxy::http::HttpSettings>,
    /// HTTP listeners with rules or a request rate: decided per request.
    pub http_policy: Option<Arc<crate::proxy::authz::gate::Policy>>,
    pub max_connections: usize,
    /// (certificate file, notAfter Unix seconds) of every served certificate.
    pub cert_expiry: Vec<(String, i64)>,
    /// (certificate file, nextUpdate Unix seconds) of every stapled OCSP response.
    pub ocsp_next_update: Vec<(String, i64)>,
}

impl ListenerLive {
    /// Read and check everything the listener serves with; errors name the file.
    pub fn build(s: ListenerSettings) -> Result<ListenerLive, crate::tls::TlsError> {
        let tls = crate::tls::server_tls(&s.tls)?;
        let upstream_tls = crate::tls::upstream_clients(&s.tls)?;
        let cert_expiry = tls
            .certs
            .served()
            .filter_map(|c| {
                let t = crate::tls::leaf_not_after(&c.key.cert)?;
                Some((c.path.display().to_string(), t))
            })
            .collect();
        let ocsp_next_update = tls
            .certs
            .served()
            .filter_map(|c| Some((c.path.display().to_string(), c.ocsp_next_update?)))
            .collect();
        let caller_limits = s.policy.limits.clone();
        let http_policy = (s.http.is_some() && s.policy.active()).then(|| Arc::new(s.policy));
        Ok(ListenerLive {
            http: s.http,
            http_policy,
            ocsp_next_update,
            tls,
            upstream_tls,
            proxy_v2: s.proxy_v2,
            proxy_v2_client_cert: s.proxy_v2_client_cert,
            caller_limits,
            upstreams: UpstreamSet::new(s.upstreams, s.health, s.resolve_interval, health_epoch()),
            resolver: s.lookup,
            limits: s.limits,
            max_connections: s.max_connections,
            cert_expiry,
        })
    }
}

/// The instant every upstream address's health times count from (one per process,
/// so health carried across a reload compares like with like).
fn health_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// One worker's side of a listener.
pub struct ListenerLocal {
    pub shared: Arc<ListenerShared>,
    /// This worker's SO_REUSEPORT socket; `None` once draining closed it.
    pub fd: Option<OwnedFd>,
    /// The multishot accept in flight.
    pub accept: Option<OpId>,
    /// Round-robin position over the upstreams (per worker: no shared counter).
    pub rr_cursor: usize,
    /// Out of file descriptors: re-arm the accept only at this time, not at once
    /// (an immediate re-arm would fail again and spin).
    pub rearm_at: Option<Instant>,
    /// This worker's server config for the current `live` (its verifier leaves
    /// refused clients in the worker's sink), rebuilt after a reload.
    tls: Option<(std::sync::Weak<ListenerLive>, Arc<rustls::ServerConfig>)>,
}

impl ListenerLocal {
    /// This worker's server config for `live`: shares certificates, session cache
    /// and ticketer, but its verifier reports refused clients to `sink`.
    pub fn server_config(
        &mut self,
        live: &Arc<ListenerLive>,
        sink: &crate::tls::RejectSink,
    ) -> Arc<rustls::ServerConfig> {
        // The Weak keeps the address from being reused: no false match.
        match &self.tls {
            Some((l, c)) if std::ptr::eq(l.as_ptr(), Arc::as_ptr(live)) => c.clone(),
            _ => {
                let c = live.tls.config_for(sink);
                self.tls = Some((Arc::downgrade(live), c.clone()));
                c
            }
        }
    }

    pub fn new(shared: Arc<ListenerShared>, fd: OwnedFd, worker: usize) -> Self {
        ListenerLocal {
            shared,
            fd: Some(fd),
            accept: None,
            rr_cursor: worker,
            rearm_at: None,
            tls: None,
        }
    }
}
