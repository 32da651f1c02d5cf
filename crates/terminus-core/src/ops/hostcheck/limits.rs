//! limits: the kernel version, descriptor and locked-memory limits, CPUs and their
//! frequency governor.

use super::*;

/// (major, minor) of the running kernel.
pub(super) fn kernel_version() -> Option<(u32, u32)> {
    let rel = read_trim("/proc/sys/kernel/osrelease")?;
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

pub(super) fn kernel_item() -> Item {
    let rel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    match kernel_version() {
        // The probe can't see opcode flags: multishot accept and buffer rings are 6.0.
        Some(v) if v >= (6, 0) => item(
            Status::Ok,
            "kernel",
            format!("{rel} (>= 6.0: multishot accept, buffer rings)"),
        ),
        Some(_) => item(
            Status::Fail,
            "kernel",
            format!("{rel}: terminus needs >= 6.0 for multishot accept and buffer rings"),
        )
        .fix("run on Linux >= 6.0"),
        None => item(
            Status::Warn,
            "kernel",
            format!("version {rel:?} not understood"),
        ),
    }
}

/// Soft and hard value of a /proc/self/limits row; None = unlimited.
type Limit = (Option<u64>, Option<u64>);

pub(super) fn self_limit(row: &str) -> Option<Limit> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = limits.lines().find_map(|l| l.strip_prefix(row))?;
    let mut f = rest.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()?, f.next()?))
}

pub(super) fn show(v: Option<u64>) -> String {
    v.map_or("unlimited".into(), |n| n.to_string())
}

pub(super) fn nofile_item(p: &HostParams) -> Item {
    let need = 2 * p.connections as u64 + FD_SLACK;
    let Some((soft, hard)) = self_limit("Max open files") else {
        return item(
            Status::Warn,
            "RLIMIT_NOFILE",
            "/proc/self/limits unreadable",
        );
    };
    let detail = format!(
        "soft {}, hard {}; {} connections need about {need} (2 per connection + {FD_SLACK})",
        show(soft),
        show(hard),
        p.connections
    );
    if soft.is_none_or(|s| s >= need) {
        return item(Status::Ok, "RLIMIT_NOFILE", detail);
    }
    // terminus does not raise its own soft limit (tuning/limits.conf says why).
    let fix = if hard.is_none_or(|h| h >= need) {
        format!(
            "raise the soft limit: `ulimit -n {}` or LimitNOFILE=1048576 (tuning/limits.conf)",
            show(hard)
        )
    } else {
        "LimitNOFILE=1048576 in the systemd unit, or tuning/limits.conf (nofile 1048576)".into()
    };
    item(Status::Warn, "RLIMIT_NOFILE", detail).fix(fix)
}

pub(super) fn memlock_item() -> Item {
    let Some((soft, hard)) = self_limit("Max locked memory") else {
        return item(
            Status::Warn,
            "RLIMIT_MEMLOCK",
            "/proc/self/limits unreadable",
        );
    };
    let detail = format!("soft {}, hard {}", show(soft), show(hard));
    if soft.is_none() {
        return item(Status::Ok, "RLIMIT_MEMLOCK", detail);
    }
    match kernel_version() {
        Some(v) if v >= (5, 12) => item(
            Status::Ok,
            "RLIMIT_MEMLOCK",
            format!("{detail} (since 5.12 rings are not charged to it; terminus registers no fixed buffers)"),
        ),
        _ => item(
            Status::Warn,
            "RLIMIT_MEMLOCK",
            format!("{detail}: this kernel charges ring memory to it"),
        )
        .fix("LimitMEMLOCK=infinity or tuning/limits.conf (memlock unlimited)"),
    }
}

/// "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]
pub(super) fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    v.extend(a..=b);
                }
            }
            None => v.extend(part.parse::<usize>().ok()),
        }
    }
    v
}

pub(super) fn cpus_item(p: &HostParams) -> Item {
    let allowed = crate::host::cpus::allowed_cpus();
    let online = read_trim("/sys/devices/system/cpu/online")
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    let (workers, why) =
        crate::host::cpus::worker_count(p.workers, allowed.len(), crate::host::cpus::quota_cpus());
    let list = self_status("Cpus_allowed_list").unwrap_or_else(|| format!("{allowed:?}"));
    let detail = format!(
        "{} allowed ({list}) of {} online; terminus starts {workers} worker(s): {why}",
        allowed.len(),
        online.len()
    );
    if allowed.is_empty() {
        return item(Status::Warn, "CPUs", "affinity mask unreadable");
    }
    if workers > allowed.len() {
        return item(
            Status::Warn,
            "CPUs",
            format!("{detail}: more workers than CPUs"),
        )
        .fix("runtime.workers <= allowed CPUs (one pinned worker per core)");
    }
    item(Status::Ok, "CPUs", detail)
}

pub(super) fn governor_item() -> Item {
    let mut govs: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let is_cpu = name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !is_cpu {
                continue;
            }
            if let Ok(g) = std::fs::read_to_string(e.path().join("cpufreq/scaling_governor")) {
                *govs.entry(g.trim().to_string()).or_default() += 1;
            }
        }
    }
    if govs.is_empty() {
        return item(
            Status::Ok,
            "CPU governor",
            "no cpufreq scaling_governor (typical in a VM; the host decides the clock)",
        );
    }
    let detail = govs
        .iter()
        .map(|(g, n)| format!("{n} x {g}"))
        .collect::<Vec<_>>()
        .join(", ");
    if govs.keys().all(|g| g == "performance") {
        item(Status::Ok, "CPU governor", detail)
    } else {
        item(
            Status::Warn,
            "CPU governor",
            format!("{detail}: clock ramps up only after load arrives (p99)"),
        )
        .fix("cpupower frequency-set -g performance (tuning/README.md)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
    }
}
