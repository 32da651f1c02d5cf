//! lookup: host names to addresses.
//!
//! Owns: [`Lookup`] (one name: the `[resolver] hosts_file` first, re-read at every
//! lookup, then the system resolver) and [`parse_hosts`] (the /etc/hosts syntax).
//! The thread that re-resolves upstream names is the runtime's (`runtime::resolver`).
//!
//! I/O contract: reads the hosts file and calls `getaddrinfo` (blocking, through
//! std's `ToSocketAddrs`) on the caller's thread: config loading (start, `check`,
//! SIGHUP reload) and the resolver thread, never a worker.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

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
