//! listens: who holds a listening socket, from /proc/net/tcp{,6} and the socket
//! inodes in /proc/PID/fd (all processes as root, the user's own otherwise).
//!
//! I/O contract: reads /proc only.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

/// Who listens on `addr` ("pid 12 (terminus)"), for `run`'s overlap refusal.
pub fn who_listens(addr: SocketAddr) -> String {
    let h = holders(addr, false);
    if h.is_empty() {
        unknown_holder()
    } else {
        describe(&h)
    }
}

pub fn unknown_holder() -> String {
    if is_root() {
        "a socket no process was found for".to_owned()
    } else {
        "another user's process (run check as root to see which)".to_owned()
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

impl Holder {
    pub fn is_terminus(&self) -> bool {
        self.comm == "terminus"
    }
}

pub fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| format!("pid {} ({})", h.pid, h.comm))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Processes owning a LISTEN socket that overlaps `addr`.
pub fn holders(addr: SocketAddr, cross_family: bool) -> Vec<Holder> {
    holders_of(&listening_inodes(addr, cross_family))
}

/// Inodes of the LISTEN sockets on `addr`'s port whose address is `addr`'s or a
/// wildcard overlapping it (`cross_family`: also an IPv6 wildcard or IPv4-mapped
/// socket for an IPv4 address, and the reverse).
pub fn listening_inodes(addr: SocketAddr, cross_family: bool) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for (ip, port, inode) in parse_listeners(&text) {
            if port == addr.port() && overlaps(ip, addr.ip(), cross_family) && inode != 0 {
                out.push(inode);
            }
        }
    }
    out
}

/// The LISTEN rows (state 0A) of a /proc/net/tcp or tcp6 table: (address, port, inode).
pub fn parse_listeners(text: &str) -> Vec<(IpAddr, u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            Some((
                parse_proc_ip(ip)?,
                u16::from_str_radix(port, 16).ok()?,
                f[9].parse().ok()?,
            ))
        })
        .collect()
}

/// The kernel prints each 32-bit word of the address as a native-endian number.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::from(word(hex)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

fn overlaps(held: IpAddr, want: IpAddr, cross_family: bool) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (held, want) = (canon(held), canon(want));
    if held.is_ipv4() != want.is_ipv4() {
        return cross_family && (held.is_unspecified() || want.is_unspecified());
    }
    held == want || held.is_unspecified() || want.is_unspecified()
}

/// Processes with a descriptor on one of `inodes` (sockets), in pid order.
pub fn holders_of(inodes: &[u64]) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| "?".into());
            out.push(Holder { pid, comm });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn proc_net_tcp_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
                  \x20  1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n";
        let rows = parse_listeners(v4);
        let lo = if cfg!(target_endian = "little") {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::new(1, 0, 0, 127)
        };
        assert_eq!(rows, [(IpAddr::V4(lo), 8080, 4242)]);
        let v6 = "header\n   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        assert_eq!(
            parse_listeners(v6),
            [(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 443, 77)]
        );
    }

    #[test]
    fn address_overlap() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlaps(ip("127.0.0.1"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("0.0.0.0"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("127.0.0.1"), ip("0.0.0.0"), false));
        assert!(!overlaps(ip("127.0.0.2"), ip("127.0.0.1"), false));
        assert!(!overlaps(ip("::"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("::"), ip("127.0.0.1"), true));
        assert!(overlaps(ip("::ffff:127.0.0.1"), ip("127.0.0.1"), false));
        assert!(!overlaps(ip("::1"), ip("127.0.0.1"), true));
    }
}
