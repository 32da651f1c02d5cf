//! client: TLS towards the upstream (re-encryption, `[listeners.upstream_tls]`).
//!
//! Owns [`upstream_client_config`] and [`UpstreamClients`] (one client config per
//! upstream address, each with its own [`UpstreamSessions`] store, so sessions are
//! never offered to another upstream and a refusal turns resumption off for that
//! address alone, [`ResumeBackoff`]: per upstream address, whether terminus may
//! offer it a session to resume, and for how long it stops after a refusal).
//!
//! I/O contract: building reads the upstream CA bundles and the optional client
//! certificate and key; connecting is pure.

use super::pem::{certified_key, load_roots};
use super::server::server_provider;
use super::settings::{ListenerTls, UpstreamTls};
use super::{TlsError, UpstreamTlsProblem};
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::ServerName;
use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// TLS towards the upstream (`[listeners.upstream_tls]`): verified against its `ca`
/// bundles and `server_name` (sent as SNI when a DNS name), with the optional client
/// certificate for mTLS, aws-lc-rs, TLS 1.2 and 1.3, and in-memory session resumption
/// (shared by every connection using the returned Arc). `None` when the listener
/// forwards plaintext.
pub fn upstream_client_config(
    l: &ListenerTls,
) -> Result<Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>, TlsError> {
    let Some(up) = &l.upstream_tls else {
        return Ok(None);
    };
    upstream_config(&l.name, up).map(Some)
}

fn upstream_config(
    listener: &str,
    up: &UpstreamTls,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), TlsError> {
    let at = |problem| TlsError::UpstreamTls {
        listener: listener.to_owned(),
        problem,
    };
    let name = ServerName::try_from(up.server_name.clone()).map_err(|e| {
        at(UpstreamTlsProblem::ServerName {
            name: up.server_name.clone(),
            why: e.to_string(),
        })
    })?;
    let provider = server_provider();
    let mut roots = load_roots(&up.ca)?;
    // `trust = "workload_api"`: every bundle pushed (the upstream's certificate must
    // still be valid for `server_name`: a DNS SAN on its SVID).
    if up.workload_trust() {
        roots.roots.extend(super::workload::trust_anchors(&[])?);
    }
    if roots.is_empty() {
        return Err(at(UpstreamTlsProblem::NoCa));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| at(UpstreamTlsProblem::Versions(e)))?
        .with_root_certificates(roots);
    let mut cfg = match (&up.cert, &up.key) {
        _ if up.workload_svid() => {
            let (svid, key) = super::workload::svid(None)?;
            let label = super::workload::svid_label(&svid);
            let ck = super::pem::certified_key_from(&label, &label, svid.chain, key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ck)))
        }
        (Some(cert), Some(key)) => {
            let ck = certified_key(cert, key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ck)))
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(at(UpstreamTlsProblem::CertWithoutKey)),
    };
    cfg.alpn_protocols = up.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Resumption: rustls' default in-memory cache (tickets and TLS 1.2 session IDs).
    // `upstream_clients` gives each upstream address its own store instead.
    Ok((Arc::new(cfg), name))
}

/// TLS 1.3 tickets kept per upstream address (each connection uses one; each
/// handshake brings the upstream's new ones).
const TICKETS_PER_UPSTREAM: usize = 32;

/// The re-encryption clients of one listener (`[listeners.upstream_tls]`): one
/// ClientConfig per upstream address, each with its own [`UpstreamSessions`] store,
/// so that the sessions of one upstream are never offered to another (they all share
/// `server_name`, rustls' cache key) and an upstream that refuses resumption can have
/// its sessions dropped and resumption turned off alone. With `resume = false` every
/// handshake is a full one.
#[derive(Debug)]
pub struct UpstreamClients {
    name: ServerName<'static>,
    /// Resumption disabled: the retry after a refused session, and `resume = false`.
    full: Arc<rustls::ClientConfig>,
    /// Per upstream address (empty with `resume = false`); a short list.
    resuming: Vec<(SocketAddr, Arc<rustls::ClientConfig>, Arc<UpstreamSessions>)>,
}

/// [`UpstreamClients`] for the listener's upstreams, `None` when it forwards plaintext.
pub fn upstream_clients(l: &ListenerTls) -> Result<Option<UpstreamClients>, TlsError> {
    let Some(up) = &l.upstream_tls else {
        return Ok(None);
    };
    let (base, name) = upstream_config(&l.name, up)?;
    let mut full = (*base).clone();
    full.resumption = rustls::client::Resumption::disabled();
    let resuming = if up.resume {
        l.upstreams
            .iter()
            .map(|&addr| {
                let store = Arc::new(UpstreamSessions::default());
                let mut cfg = (*base).clone();
                cfg.resumption = rustls::client::Resumption::store(store.clone());
                (addr, Arc::new(cfg), store)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Some(UpstreamClients {
        name,
        full: Arc::new(full),
        resuming,
    }))
}

impl UpstreamClients {
    /// The name the upstream's certificate is verified against.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }

    fn entry(
        &self,
        addr: SocketAddr,
    ) -> Option<&(SocketAddr, Arc<rustls::ClientConfig>, Arc<UpstreamSessions>)> {
        self.resuming.iter().find(|(a, _, _)| *a == addr)
    }

    /// The config a handshake with `addr` uses: its own session store, or none
    /// (`full`, or `resume = false`).
    pub fn config(&self, addr: SocketAddr, full: bool) -> &Arc<rustls::ClientConfig> {
        match self.entry(addr) {
            Some((_, cfg, _)) if !full => cfg,
            _ => &self.full,
        }
    }

    /// A client connection towards `addr` (its ClientHello is queued), and whether it
    /// offers a session to resume. `full`: offer none, whatever is stored.
    pub fn connect(
        &self,
        addr: SocketAddr,
        full: bool,
    ) -> Option<(rustls::client::UnbufferedClientConnection, bool)> {
        OFFERED.with(|o| o.set(false));
        // The ClientHello is built inside `new`, on this thread: the store's lookups
        // for it are this connection's.
        let c = rustls::client::UnbufferedClientConnection::new(
            self.config(addr, full).clone(),
            self.name.clone(),
        )
        .ok()?;
        Some((c, OFFERED.with(|o| o.replace(false))))
    }

    /// `addr` refused a session terminus offered (the handshake failed): drop every
    /// session kept for it and stop offering any for a while ([`ResumeBackoff`]).
    /// Returns how long when this refusal turned resumption off (once per off
    /// period, however many connections were refused).
    pub fn refused(&self, addr: SocketAddr) -> Option<Duration> {
        self.entry(addr)?.2.refused(Instant::now())
    }

    /// A handshake with `addr` resumed: its backoff starts over.
    pub fn resumed(&self, addr: SocketAddr) {
        if let Some((_, _, store)) = self.entry(addr) {
            store.lock().backoff.resumed();
        }
    }

    /// How many sessions are kept for `addr` now (TLS 1.3 tickets, plus a TLS 1.2
    /// session), for tests.
    pub fn sessions(&self, addr: SocketAddr) -> usize {
        self.entry(addr).map_or(0, |(_, _, s)| {
            let st = s.lock();
            st.tls13.len() + st.tls12.is_some() as usize
        })
    }
}

thread_local! {
    /// Set when a session store handed out a session on this thread (see
    /// [`UpstreamClients::connect`]).
    static OFFERED: Cell<bool> = const { Cell::new(false) };
}

/// The sessions terminus keeps for one upstream address, and whether it may offer
/// them ([`ResumeBackoff`]): while resumption is off, nothing is handed out and new
/// sessions are not kept. Every entry is for the listener's one `server_name`, so
/// the name rustls passes is not looked at.
#[derive(Debug, Default)]
pub struct UpstreamSessions {
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: VecDeque<rustls::client::Tls13ClientSessionValue>,
    backoff: ResumeBackoff,
}

impl UpstreamSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refused(&self, now: Instant) -> Option<Duration> {
        let mut st = self.lock();
        st.tls12 = None;
        st.tls13.clear();
        st.backoff.refused(now)
    }

    fn offering(st: &SessionState) -> bool {
        st.backoff.allows(Instant::now())
    }
}

fn offered<T>(v: Option<T>) -> Option<T> {
    if v.is_some() {
        OFFERED.with(|o| o.set(true));
    }
    v
}

impl rustls::client::ClientSessionStore for UpstreamSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: rustls::NamedGroup) {
        self.lock().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.lock().kx_hint
    }

    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        let mut st = self.lock();
        if Self::offering(&st) {
            st.tls12 = Some(value);
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        let st = self.lock();
        offered(st.tls12.clone().filter(|_| Self::offering(&st)))
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.lock().tls12 = None;
    }

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut st = self.lock();
        if Self::offering(&st) {
            if st.tls13.len() >= TICKETS_PER_UPSTREAM {
                st.tls13.pop_front();
            }
            st.tls13.push_back(value);
        }
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let mut st = self.lock();
        if !Self::offering(&st) {
            return None;
        }
        offered(st.tls13.pop_back())
    }
}

/// How long resumption towards an upstream stays off after its first refusal; each
/// further refusal (once resumption was offered again) doubles it, up to
/// [`RESUME_OFF_MAX`]. A resumed handshake resets it.
pub const RESUME_OFF_FIRST: Duration = Duration::from_secs(10);
pub const RESUME_OFF_MAX: Duration = Duration::from_secs(3600);

/// Resumption towards one upstream address: on, or off until a time after it was
/// refused (a handshake offering a session failed). Exponential backoff, like a
/// circuit breaker: after the off period one connection offers a session again.
#[derive(Debug, Clone, Default)]
pub struct ResumeBackoff {
    off_until: Option<Instant>,
    /// Refusals since the last resumed handshake.
    strikes: u32,
}

impl ResumeBackoff {
    /// Whether a session may be offered (and new ones kept) now.
    pub fn allows(&self, now: Instant) -> bool {
        !matches!(self.off_until, Some(t) if now < t)
    }

    /// The upstream refused a session. Returns how long resumption is now off when
    /// this refusal turned it off, `None` when it was off already (other connections
    /// that took a session before the first refusal was seen): one report per off
    /// period, not one per connection.
    pub fn refused(&mut self, now: Instant) -> Option<Duration> {
        if !self.allows(now) {
            return None;
        }
        let off = RESUME_OFF_FIRST
            .saturating_mul(1u32 << self.strikes.min(16))
            .min(RESUME_OFF_MAX);
        self.strikes = self.strikes.saturating_add(1);
        self.off_until = Some(now + off);
        Some(off)
    }

    /// A handshake resumed: the upstream supports resumption (again).
    pub fn resumed(&mut self) {
        self.strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumption_backs_off_exponentially_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = ResumeBackoff::default();
        assert!(b.allows(t0));
        assert_eq!(b.refused(t0), Some(RESUME_OFF_FIRST));
        assert!(!b.allows(t0));
        // Connections that took a session before the refusal: no new period.
        assert_eq!(b.refused(t0 + Duration::from_secs(1)), None);
        let t1 = t0 + RESUME_OFF_FIRST;
        assert!(b.allows(t1));
        assert_eq!(b.refused(t1), Some(RESUME_OFF_FIRST * 2));
        let t2 = t1 + RESUME_OFF_FIRST * 2;
        assert_eq!(b.refused(t2), Some(RESUME_OFF_FIRST * 4));
        let mut t = t2 + RESUME_OFF_FIRST * 4;
        for _ in 0..20 {
            let off = b.refused(t).unwrap();
            assert!(off <= RESUME_OFF_MAX);
            t += off;
        }
        assert_eq!(b.refused(t), Some(RESUME_OFF_MAX));
        b.resumed();
        let t = t + RESUME_OFF_MAX;
        assert_eq!(b.refused(t), Some(RESUME_OFF_FIRST));
    }
}
