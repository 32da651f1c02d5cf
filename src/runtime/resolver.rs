//! resolver: host names to addresses, off the data path.
//!
//! Owns: [`Lookup`] (one name: the `[resolver] hosts_file` first, re-read at every
//! lookup, then the system resolver), [`parse_hosts`] (the /etc/hosts syntax) and
//! the one resolver thread of the process ([`spawn`]), which re-resolves each
//! listener's named upstreams every `resolve_interval_ms` and swaps the new set in
//! ([`crate::proxy::upstream::UpstreamSet::refresh`]). Workers never resolve: a
//! connection loads the current set once, when its client handshake completes.
//!
//! I/O contract: reads the hosts file and calls `getaddrinfo` (blocking, through
//! std's `ToSocketAddrs`) on the caller's thread: config loading (start, `check`,
//! SIGHUP reload) and the resolver thread, never a worker. Logs the first failure of
//! each failure streak to stderr.
#![forbid(unsafe_code)]

use crate::proxy::upstream::RefreshEvent;
use crate::runtime::listener::ListenerShared;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a name did not resolve; `Display` is the text after `field: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    #[error("cannot read the hosts file {path}: {source}")]
    HostsFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hosts file {path}:{line}: {why}")]
    HostsFileSyntax {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// getaddrinfo's own message.
    #[error("{0}")]
    System(std::io::Error),
    #[error("the name resolved to no address")]
    NoAddress,
}

/// How names are looked up: `[resolver] hosts_file` first (when set), then the
/// system resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    pub hosts_file: Option<PathBuf>,
}

impl Lookup {
    /// Every address of `host` (A and AAAA), with `port`, deduplicated in the order
    /// found. Never empty on success.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(path) = &self.hosts_file {
            let ips = hosts_file_lookup(path, host)?;
            if !ips.is_empty() {
                return Ok(dedup(ips.into_iter().map(|ip| SocketAddr::new(ip, port))));
            }
        }
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(ResolveError::System)?;
        let addrs = dedup(addrs);
        if addrs.is_empty() {
            return Err(ResolveError::NoAddress);
        }
        Ok(addrs)
    }
}

fn dedup(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The addresses the hosts file at `path` gives `host` (empty: not listed).
fn hosts_file_lookup(path: &Path, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResolveError::HostsFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    let entries = parse_hosts(&text).map_err(|(line, why)| ResolveError::HostsFileSyntax {
        path: path.to_path_buf(),
        line,
        why,
    })?;
    Ok(entries
        .into_iter()
        .filter(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(host)))
        .map(|(ip, _)| ip)
        .collect())
}

/// One hosts-file line: an address and its names.
pub type HostsLine = (IpAddr, Vec<String>);

/// /etc/hosts syntax: `IP NAME [NAME...]` per line, `#` starts a comment, blank
/// lines ignored. Error: (1-based line, why).
pub fn parse_hosts(text: &str) -> Result<Vec<HostsLine>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next() else { continue };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| (n + 1, format!("{ip:?} is not an IP address")))?;
        let names: Vec<String> = fields.map(str::to_owned).collect();
        if names.is_empty() {
            return Err((n + 1, format!("{ip} is followed by no name")));
        }
        out.push((ip, names));
    }
    Ok(out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_syntax_comments_and_errors() {
        let text = "# pinned\n127.0.0.2 svc.test other # trailing\n\n::1 v6.test\n";
        let h = parse_hosts(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(h[0].1, ["svc.test", "other"]);
        assert_eq!(
            parse_hosts("127.0.0.1 a\nnot-an-ip b\n"),
            Err((2, "\"not-an-ip\" is not an IP address".into()))
        );
        assert_eq!(
            parse_hosts("127.0.0.1\n"),
            Err((1, "127.0.0.1 is followed by no name".into()))
        );
    }

    #[test]
    fn the_hosts_file_comes_first_and_is_read_at_every_lookup() {
        let dir = std::env::temp_dir().join(format!("terminus-resolver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, "127.0.0.2 svc.test\n127.0.0.3 svc.test\n").unwrap();
        let l = Lookup {
            hosts_file: Some(path.clone()),
        };
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            l.resolve("SVC.test", 80).unwrap(),
            [a("127.0.0.2:80"), a("127.0.0.3:80")]
        );
        std::fs::write(&path, "127.0.0.4 svc.test\n").unwrap();
        assert_eq!(l.resolve("svc.test", 81).unwrap(), [a("127.0.0.4:81")]);
        // Not in the file: the system resolver (localhost resolves offline).
        assert!(l
            .resolve("localhost", 1)
            .unwrap()
            .contains(&a("127.0.0.1:1")));
        std::fs::write(&path, "garbage\n").unwrap();
        let e = l.resolve("svc.test", 80).unwrap_err().to_string();
        assert!(e.contains(":1: \"garbage\" is not an IP address"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            l.resolve("svc.test", 80),
            Err(ResolveError::HostsFileRead { .. })
        ));
    }
}
