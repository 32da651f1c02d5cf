//! sysctl: the kernel settings of tuning/sysctl.conf against this host's.

use super::*;

/// One `key = value` line of tuning/sysctl.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommended {
    pub key: String,
    pub value: String,
    /// Written `-key = value`: the key may be absent on older kernels.
    pub optional: bool,
}

/// The settings tuning/sysctl.conf recommends, in file order.
pub fn recommended_sysctls() -> Vec<Recommended> {
    parse_sysctl_conf(SYSCTL_CONF)
}

pub(super) fn parse_sysctl_conf(text: &str) -> Vec<Recommended> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (optional, l) = match l.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, l),
            };
            let (k, v) = l.split_once('=')?;
            Some(Recommended {
                key: k.trim().to_string(),
                value: v.split_whitespace().collect::<Vec<_>>().join(" "),
                optional,
            })
        })
        .collect()
}

/// Whether the running value is at least as good as the recommendation. The file
/// only raises limits or turns on safe switches, so: a port range must contain the
/// recommended one, a 0/1 switch must match, and numbers must be at least as large
/// (field by field for `min default max` triples).
pub fn sysctl_meets(key: &str, recommended: &str, current: &str) -> bool {
    let nums =
        |s: &str| -> Option<Vec<i64>> { s.split_whitespace().map(|f| f.parse().ok()).collect() };
    let (Some(r), Some(c)) = (nums(recommended), nums(current)) else {
        return recommended
            .split_whitespace()
            .eq(current.split_whitespace());
    };
    if r.len() != c.len() {
        return false;
    }
    if key == "net.ipv4.ip_local_port_range" && r.len() == 2 {
        return c[0] <= r[0] && c[1] >= r[1];
    }
    if r.len() == 1 && (r[0] == 0 || r[0] == 1) {
        return c == r;
    }
    c.iter().zip(&r).all(|(c, r)| c >= r)
}

pub(super) fn sysctl_items() -> Vec<Item> {
    recommended_sysctls()
        .into_iter()
        // Reported with the io_uring items above.
        .filter(|r| !r.key.starts_with("kernel.io_uring"))
        .map(|r| {
            let name = format!("sysctl {}", r.key);
            let path = format!("/proc/sys/{}", r.key.replace('.', "/"));
            let fix = format!(
                "sysctl -w {}=\"{}\" (persist: tuning/sysctl.conf -> /etc/sysctl.d/60-terminus.conf)",
                r.key, r.value
            );
            match std::fs::read_to_string(&path) {
                Err(_) if r.optional => item(
                    Status::Ok,
                    name,
                    "absent on this kernel (optional)".to_string(),
                ),
                Err(e) => item(
                    Status::Warn,
                    name,
                    format!("unreadable ({e}); recommended {}", r.value),
                ),
                Ok(cur) => {
                    let cur = cur.split_whitespace().collect::<Vec<_>>().join(" ");
                    if sysctl_meets(&r.key, &r.value, &cur) {
                        item(
                            Status::Ok,
                            name,
                            format!("{cur} (recommended {})", r.value),
                        )
                    } else {
                        item(
                            Status::Warn,
                            name,
                            format!("{cur} (recommended {})", r.value),
                        )
                        .fix(fix)
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_conf_parses_every_setting() {
        let r = recommended_sysctls();
        let keys: Vec<&str> = r.iter().map(|r| r.key.as_str()).collect();
        assert!(keys.contains(&"net.core.somaxconn"), "{keys:?}");
        assert!(keys.contains(&"net.ipv4.tcp_rmem"), "{keys:?}");
        let uring = r
            .iter()
            .find(|r| r.key == "kernel.io_uring_disabled")
            .unwrap();
        assert!(uring.optional && uring.value == "0");
        // Every non-comment line of the file is a setting we understood.
        let settings = SYSCTL_CONF
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert_eq!(r.len(), settings);
        assert!(r
            .iter()
            .all(|r| !r.key.contains(' ') && !r.value.is_empty()));
    }

    #[test]
    fn sysctl_comparison_rules() {
        assert!(sysctl_meets("net.core.somaxconn", "65535", "65535"));
        assert!(sysctl_meets("net.core.somaxconn", "65535", "131072"));
        assert!(!sysctl_meets("net.core.somaxconn", "65535", "4096"));
        assert!(!sysctl_meets("net.ipv4.tcp_tw_reuse", "1", "2"));
        assert!(sysctl_meets("net.ipv4.tcp_slow_start_after_idle", "0", "0"));
        assert!(!sysctl_meets(
            "net.ipv4.tcp_slow_start_after_idle",
            "0",
            "1"
        ));
        assert!(sysctl_meets(
            "net.ipv4.ip_local_port_range",
            "10000 65535",
            "1024 65535"
        ));
        assert!(!sysctl_meets(
            "net.ipv4.ip_local_port_range",
            "10000 65535",
            "32768 60999"
        ));
        assert!(!sysctl_meets(
            "net.ipv4.tcp_wmem",
            "4096 16384 16777216",
            "4096 16384 4194304"
        ));
        assert!(sysctl_meets(
            "net.ipv4.tcp_rmem",
            "4096 131072 33554432",
            "4096 131072 67108864"
        ));
    }
}
