//! What the bench reads about the host around a measured window: the CPU time all
//! CPUs spent busy (`/proc/stat`) and the CPU time of the run's own processes
//! (`/proc/PID/stat`), whose difference is the **foreign CPU**: work of processes
//! that are not part of the run (other builds, other jobs), plus steal (time the
//! hypervisor gave to other guests), which competes with the measurement.
//!
//! I/O contract: reads `/proc/stat` and `/proc/PID/stat` when sampled; the arithmetic
//! ([`parse_busy_ns`], [`foreign_cpus`]) is pure.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};

/// Average foreign CPUs over a window above which a round is flagged noisy. The run
/// itself keeps both CPUs of a 2-CPU host near busy; a quarter of a CPU taken by
/// others is about 12 % of such a machine, comparable to the ±15 % spread that flags
/// a figure.
pub const NOISY_FOREIGN_CPUS: f64 = 0.25;

/// Clock ticks per second of `/proc/stat` and `/proc/PID/stat` (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time all CPUs spent busy, from the aggregate `cpu ` line of `/proc/stat`, in
/// ns: user + nice + system + irq + softirq + steal (guest time is already inside
/// user and nice; idle and iowait are not busy).
pub fn parse_busy_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if f.len() < 8 {
        return None;
    }
    let ticks = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    Some(ticks * (1_000_000_000 / USER_HZ))
}

/// Busy CPU time of the host so far, ns.
pub fn busy_ns() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_busy_ns(&s).with_context(|| "/proc/stat: no parsable `cpu ` line".to_string())
}

/// One reading of the host and the run, taken at each edge of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostSample {
    /// The host's busy CPU time, ns.
    pub busy_ns: u64,
    /// utime+stime of the run's processes, ns.
    pub run_ns: u64,
}

impl HostSample {
    /// Read the host and the CPU time of `pids` (the bench's own process first;
    /// duplicates are counted once). A process that is gone counts as 0.
    pub fn read(pids: &[u32]) -> Result<HostSample> {
        let busy_ns = busy_ns()?;
        let mut seen = Vec::new();
        let mut run_ns = 0;
        for &p in pids {
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            run_ns += super::target::process_cpu_ns(p).unwrap_or(0);
        }
        Ok(HostSample { busy_ns, run_ns })
    }
}

/// Average CPUs used by others over a window of `window_s` seconds between two
/// samples; `extra_run_ns` is run CPU the samples do not hold (a target read through
/// its admin endpoint). Never negative: the counters are tick-granular, so a quiet
/// host can read slightly below zero.
pub fn foreign_cpus(a: HostSample, b: HostSample, extra_run_ns: u64, window_s: f64) -> f64 {
    if window_s <= 0.0 {
        return 0.0;
    }
    let busy = b.busy_ns.saturating_sub(a.busy_ns) as f64;
    let run = b.run_ns.saturating_sub(a.run_ns) as f64 + extra_run_ns as f64;
    ((busy - run) / 1e9 / window_s).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_from_a_proc_stat_line() {
        let s = "cpu  100 5 20 9000 7 1 2 3 40 0\ncpu0 50 0 10 4500 3 0 1 1 20 0\nintr 1\n";
        // user+nice+system+irq+softirq+steal = 100+5+20+1+2+3 ticks of 10 ms.
        assert_eq!(parse_busy_ns(s), Some(131 * 10_000_000));
        assert_eq!(
            parse_busy_ns("cpu0 1 2 3 4 5 6 7 8\n"),
            None,
            "no aggregate line"
        );
        assert_eq!(parse_busy_ns("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(parse_busy_ns("cpu  1 x 3 4 5 6 7 8\n"), None);
    }

    #[test]
    fn real_proc_counts_this_process() {
        let me = std::process::id();
        let a = HostSample::read(&[me, me]).unwrap();
        // Burn ~60 ms of CPU on this thread, then read again.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(60) {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let b = HostSample::read(&[me]).unwrap();
        assert!(a.busy_ns > 0 && b.busy_ns >= a.busy_ns, "{a:?} -> {b:?}");
        assert!(b.run_ns > a.run_ns, "own CPU did not grow: {a:?} -> {b:?}");
        // The host was at least as busy as this process (both tick-granular).
        assert!(
            b.busy_ns - a.busy_ns + 20_000_000 >= b.run_ns - a.run_ns,
            "{a:?} -> {b:?}"
        );
        let f = foreign_cpus(a, b, 0, t0.elapsed().as_secs_f64());
        assert!(f.is_finite() && f >= 0.0, "{f}");
        // A gone process counts as nothing, not an error.
        assert!(HostSample::read(&[u32::MAX]).is_ok());
    }

    #[test]
    fn foreign_is_busy_minus_run_per_second() {
        let a = HostSample {
            busy_ns: 10_000_000_000,
            run_ns: 4_000_000_000,
        };
        let b = HostSample {
            busy_ns: 13_000_000_000,
            run_ns: 5_500_000_000,
        };
        // 3 s busy, 1.5 s ours, 0.5 s more ours through an admin endpoint, over 2 s.
        assert!((foreign_cpus(a, b, 500_000_000, 2.0) - 0.5).abs() < 1e-9);
        assert_eq!(foreign_cpus(a, b, 5_000_000_000, 2.0), 0.0, "clamped at 0");
        assert_eq!(foreign_cpus(a, b, 0, 0.0), 0.0);
    }
}
