//! resolver: the one resolver thread of the process ([`spawn`]), which re-resolves
//! each listener's named upstreams every `resolve_interval_ms` through
//! [`crate::host::lookup::Lookup`] and swaps the new set in
//! ([`crate::proxy::upstream::UpstreamSet::refresh`]). Workers never resolve: a
//! connection loads the current set once, when its client handshake completes.
//!
//! I/O contract: name lookups on this thread only, never a worker. Logs the first
//! failure of each failure streak to stderr.
#![forbid(unsafe_code)]

use crate::proxy::upstream::RefreshEvent;
use crate::runtime::listener::ListenerShared;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest the resolver thread sleeps, so that a reload that shortens
/// `resolve_interval_ms` (or adds names) is followed soon.
const MAX_NAP: Duration = Duration::from_secs(1);

/// Start the process's resolver thread: each listener's named upstreams are
/// resolved again every `resolve_interval_ms` (read from the listener's current
/// material, so a reload's new entries and interval are followed).
pub fn spawn(listeners: Vec<Arc<ListenerShared>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("terminus-resolver".into())
        .spawn(move || {
            let start = Instant::now();
            let mut due: Vec<Instant> = listeners.iter().map(|_| start).collect();
            loop {
                let now = Instant::now();
                for (l, due) in listeners.iter().zip(due.iter_mut()) {
                    let live = l.live.load_full();
                    if now < *due {
                        // A reload may have shortened the interval.
                        *due = (*due).min(now + live.upstreams.resolve_interval);
                        continue;
                    }
                    *due = now + live.upstreams.resolve_interval;
                    if live.upstreams.has_names() {
                        refresh(&l.name, &live);
                    }
                }
                let next = due.iter().min().copied().unwrap_or(now + MAX_NAP);
                std::thread::sleep(
                    next.saturating_duration_since(Instant::now())
                        .min(MAX_NAP)
                        .max(Duration::from_millis(1)),
                );
            }
        })?;
    Ok(())
}

/// Resolve one listener's names again; log the first failure of a streak, the
/// recovery, and a changed set.
fn refresh(listener: &str, live: &crate::runtime::listener::ListenerLive) {
    let lookup = &live.resolver;
    let events = live
        .upstreams
        .refresh(&mut |host, port| lookup.resolve(host, port).map_err(|e| e.to_string()));
    for e in events {
        match e {
            RefreshEvent::Failed { entry, why, kept } => crate::op_warn!(
                "listener \"{listener}\": upstream {entry}: cannot resolve: {why}; \
                 keeping its last good addresses {kept:?} (counted in \
                 terminus_upstream_resolve_errors_total, logged once until it resolves again)"
            ),
            RefreshEvent::Recovered { entry } => {
                crate::op_info!("listener \"{listener}\": upstream {entry}: resolves again")
            }
            RefreshEvent::Changed { addrs } => crate::op_info!(
                "listener \"{listener}\": upstreams now {addrs:?} (new connections)"
            ),
        }
    }
}
