//! cpus: the CPUs this process may use — its affinity mask ([`allowed_cpus`]) and the
//! CPU quota a cgroup v2 container or systemd unit gives it ([`quota_cpus`]).
//!
//! Owns: parsing `/proc/self/cgroup` (the `0::/path` line) and `cpu.max`
//! (`QUOTA PERIOD` or `max PERIOD`) into a whole number of CPUs, ceil(quota/period).
//! I/O contract: [`quota_cpus`] reads `/proc/self/cgroup` and the `cpu.max` files
//! from the cgroup up to the root once at startup (and for `check`); the parsers are
//! pure.
#![forbid(unsafe_code)]

/// CPUs this process may run on (its affinity mask: taskset, cpusets, systemd).
pub fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|v| v.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` text (the `0::` line);
/// None on a v1-only host.
pub fn v2_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
}

/// CPUs a `cpu.max` line allows: ceil(quota / period), at least 1; None for `max`
/// (no quota) or text that is not `QUOTA PERIOD`.
pub fn cpus_from_cpu_max(cpu_max: &str) -> Option<usize> {
    let mut f = cpu_max.split_whitespace();
    let quota = f.next()?;
    let period: u64 = f.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota: u64 = quota.parse().ok()?;
    Some(quota.div_ceil(period).max(1) as usize)
}

/// This process's cgroup v2 CPU quota in whole CPUs, if it has one.
pub fn quota_cpus() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    quota_cpus_at(&text, std::path::Path::new("/sys/fs/cgroup"))
}

/// The quota of the cgroup `proc_self_cgroup` names, under the cgroup2 mount `root`.
/// The nearest `cpu.max` up the tree that sets a quota wins over the cgroup's own
/// `max`: a container's own cgroup often has none while its parent (the pod) does,
/// and the kernel enforces every level. A hybrid v1/v2 host (cpu on v1) has no
/// `cpu.max` anywhere: no quota.
pub fn quota_cpus_at(proc_self_cgroup: &str, root: &std::path::Path) -> Option<usize> {
    let path = v2_path(proc_self_cgroup)?;
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut smallest: Option<usize> = None;
    while dir.starts_with(root) {
        if let Some(n) = std::fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|t| cpus_from_cpu_max(&t))
        {
            smallest = Some(smallest.map_or(n, |s| s.min(n)));
        }
        if !dir.pop() {
            break;
        }
    }
    smallest
}

/// Workers when `[runtime] workers` is not set: one per CPU of the affinity mask,
/// but no more than the cgroup quota allows (a pod limited to 2 CPUs on a 64-core
/// node runs 2 workers).
pub fn default_workers(affinity_cpus: usize, quota: Option<usize>) -> usize {
    let n = affinity_cpus.max(1);
    quota.map_or(n, |q| n.min(q.max(1)))
}

/// The worker count and why, as the startup line and `check` say it.
pub fn worker_count(
    configured: Option<usize>,
    affinity_cpus: usize,
    quota: Option<usize>,
) -> (usize, String) {
    if let Some(n) = configured {
        return (n, "runtime.workers".into());
    }
    let n = default_workers(affinity_cpus, quota);
    let why = match quota {
        Some(q) if q < affinity_cpus => {
            format!("cgroup cpu.max quota of {q} CPU(s); the affinity mask has {affinity_cpus}")
        }
        _ => format!("one per CPU of the affinity mask ({affinity_cpus})"),
    };
    (n, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_comes_from_the_cgroup_files_nearest_limit_up_the_tree() {
        let root = std::env::temp_dir().join(format!("terminus-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pod = root.join("kubepods.slice/pod1");
        let ctr = pod.join("cri-containerd-abc.scope");
        std::fs::create_dir_all(&ctr).unwrap();
        let line = "0::/kubepods.slice/pod1/cri-containerd-abc.scope\n";
        // Nothing written yet: a hybrid host's unified tree without the cpu controller.
        assert_eq!(quota_cpus_at(line, &root), None);
        std::fs::write(ctr.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(quota_cpus_at(line, &root), None);
        // The pod's limit binds its container.
        std::fs::write(pod.join("cpu.max"), "150000 100000\n").unwrap();
        assert_eq!(quota_cpus_at(line, &root), Some(2));
        // A tighter one of the container's own wins.
        std::fs::write(ctr.join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(quota_cpus_at(line, &root), Some(1));
        // A v1-only /proc/self/cgroup: no quota read.
        assert_eq!(quota_cpus_at("4:cpu,cpuacct:/x\n", &root), None);
        let _ = std::fs::remove_dir_all(&root);
        // This host, as it is: whatever it says must be a sane count.
        assert!(quota_cpus().is_none_or(|n| n >= 1));
    }

    #[test]
    fn worker_count_says_why() {
        assert_eq!(
            worker_count(Some(3), 64, Some(2)),
            (3, "runtime.workers".to_string())
        );
        assert_eq!(
            worker_count(None, 64, Some(2)),
            (
                2,
                "cgroup cpu.max quota of 2 CPU(s); the affinity mask has 64".to_string()
            )
        );
        assert_eq!(
            worker_count(None, 4, None),
            (4, "one per CPU of the affinity mask (4)".to_string())
        );
        assert_eq!(
            worker_count(None, 2, Some(8)),
            (2, "one per CPU of the affinity mask (2)".to_string())
        );
    }

    #[test]
    fn default_workers_is_the_smaller_of_mask_and_quota() {
        assert_eq!(default_workers(64, Some(2)), 2);
        assert_eq!(default_workers(2, Some(8)), 2);
        assert_eq!(default_workers(4, None), 4);
        assert_eq!(default_workers(0, None), 1);
    }

    #[test]
    fn finds_the_v2_line() {
        assert_eq!(
            v2_path("0::/system.slice/terminus.service\n"),
            Some("/system.slice/terminus.service")
        );
        assert_eq!(v2_path("4:memory:/x\n1:cpu:/\n0::/\n"), Some("/"));
        assert_eq!(v2_path("4:memory:/x\n1:cpu:/\n"), None);
    }

    #[test]
    fn quota_rounds_up_and_max_is_none() {
        assert_eq!(cpus_from_cpu_max("max 100000\n"), None);
        assert_eq!(cpus_from_cpu_max("100000 100000\n"), Some(1));
        assert_eq!(cpus_from_cpu_max("150000 100000"), Some(2));
        assert_eq!(cpus_from_cpu_max("200000 100000"), Some(2));
        assert_eq!(cpus_from_cpu_max("10000 100000"), Some(1));
        assert_eq!(cpus_from_cpu_max("50000"), Some(1));
        assert_eq!(cpus_from_cpu_max("x 100000"), None);
        assert_eq!(cpus_from_cpu_max("100 0"), None);
        assert_eq!(cpus_from_cpu_max(""), None);
    }
}
