//! What the bench reads about the server it loads: CPU time and resident memory,
//! from /proc (a PID, or some of its threads) or from its admin `/metrics`.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where the target's CPU and memory figures come from.
#[derive(Clone, Debug)]
pub enum TargetProbe {
    /// Every thread of a process (`/proc/PID/task/*`).
    Pid(u32),
    /// Threads of a process whose name (`comm`) starts with a prefix, e.g. the
    /// in-process demo's `terminus-w` workers (so the bench client is not counted).
    Threads { pid: u32, prefix: String },
    /// `GET /metrics` on the admin endpoint: `process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`.
    Admin { addr: SocketAddr, timeout: Duration },
}

impl TargetProbe {
    /// CPU time the target has used so far, in nanoseconds.
    pub fn cpu_ns(&self) -> Result<u64> {
        match self {
            TargetProbe::Pid(pid) => threads_cpu_ns(*pid, None),
            TargetProbe::Threads { pid, prefix } => threads_cpu_ns(*pid, Some(prefix)),
            TargetProbe::Admin { addr, timeout } => {
                let m = fetch_metrics(*addr, *timeout)?;
                let v = metric(&m, "process_cpu_seconds_total").with_context(|| {
                    format!("http://{addr}/metrics has no process_cpu_seconds_total line")
                })?;
                Ok((v * 1e9) as u64)
            }
        }
    }

    /// Resident memory of the target process, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        match self {
            TargetProbe::Pid(pid) | TargetProbe::Threads { pid, .. } => vm_rss(*pid),
            TargetProbe::Admin { addr, timeout } => {
                let m = fetch_metrics(*addr, *timeout)?;
                let v = metric(&m, "process_resident_memory_bytes").with_context(|| {
                    format!("http://{addr}/metrics has no process_resident_memory_bytes line")
                })?;
                Ok(v as u64)
            }
        }
    }
}

/// Sum of the CPU time of a process's threads (optionally only those whose name
/// starts with `prefix`). Prefers schedstat (ns, exact); falls back to stat's
/// utime+stime (clock ticks) where schedstat is missing. For the whole process the
/// result is at least the process's own utime+stime, which keeps the CPU of threads
/// that already exited (short-lived admin threads, say); the live-thread sum alone
/// would drop it and could even go backwards.
fn threads_cpu_ns(pid: u32, prefix: Option<&str>) -> Result<u64> {
    let live = live_threads_cpu_ns(pid, prefix)?;
    if prefix.is_some() {
        return Ok(live);
    }
    let whole = process_cpu_ns(pid).unwrap_or(0);
    Ok(live.max(whole))
}

fn live_threads_cpu_ns(pid: u32, prefix: Option<&str>) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))?;
    let mut total = 0u64;
    for t in rd.flatten() {
        let p = t.path();
        if let Some(prefix) = prefix {
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if !comm.trim_end().starts_with(prefix) {
                continue;
            }
        }
        // A thread may exit between read_dir and here: skip it.
        if let Some(ns) = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
        } else if let Ok(stat) = std::fs::read_to_string(p.join("stat")) {
            total += stat_cpu_ns(&stat).unwrap_or(0);
        }
    }
    Ok(total)
}

/// utime+stime of a /proc stat line, in ns (USER_HZ = 100 on Linux).
fn stat_cpu_ns(stat: &str) -> Option<u64> {
    // comm may contain spaces and ')': the fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: u64 = f.get(11)?.parse().ok()?;
    let s: u64 = f.get(12)?.parse().ok()?;
    Some((u + s) * 10_000_000)
}

fn vm_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, `RssAnon`...), in bytes. The
/// one reader of these for the bench and the integration tests.
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{path}: bad {field} line {line:?}"))?;
            return Ok(kib * 1024);
        }
    }
    bail!("{path}: no {field} line")
}

/// utime+stime of a whole process (/proc/PID/stat), in ns (whole clock ticks).
pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    stat_cpu_ns(&stat).with_context(|| format!("{path}: no utime/stime in {stat:?}"))
}

/// `GET /metrics` over HTTP/1.1 (Connection: close); the body as text.
pub fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("admin {addr}: cannot connect"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .with_context(|| format!("admin {addr}: cannot send the request"))?;
    let mut body = Vec::new();
    // Bounded: a metrics page is small; 16 MiB is far beyond any real one.
    s.take(16 << 20)
        .read_to_end(&mut body)
        .with_context(|| format!("admin {addr}: cannot read the response"))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("admin {addr}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("admin {addr}: GET /metrics answered {status:?}");
    }
    Ok(body.to_string())
}

/// The value of the sample `name <value>` in Prometheus text; `name` may carry
/// labels exactly as printed (`terminus_connections_total{listener="edge"}`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with([' ', '\t']) {
            return None; // a longer name, or labels
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let t = "# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total counter\n\
                 process_cpu_seconds_total_extra 9\nprocess_cpu_seconds_total 12.5\n\
                 process_resident_memory_bytes 1048576\n";
        assert_eq!(metric(t, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric(t, "process_resident_memory_bytes"), Some(1048576.0));
        assert_eq!(metric(t, "process_open_fds"), None);
    }

    #[test]
    fn stat_line_with_odd_comm() {
        let line = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0";
        assert_eq!(stat_cpu_ns(line), Some(200 * 10_000_000));
    }

    #[test]
    fn own_threads_use_cpu() {
        let pid = std::process::id();
        // A thread of its own name: other test threads come and go meanwhile.
        let (a, b) = std::thread::Builder::new()
            .name("cpuburn-test".into())
            .spawn(move || {
                let a = threads_cpu_ns(pid, Some("cpuburn-test")).unwrap();
                // ~50 ms of real work (black_box keeps the loop), then a yield: a
                // running thread's schedstat only moves at scheduler events.
                let t0 = std::time::Instant::now();
                let mut x = 0u64;
                while t0.elapsed() < std::time::Duration::from_millis(50) {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
                (a, threads_cpu_ns(pid, Some("cpuburn-test")).unwrap())
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(b > a, "CPU time did not grow: {a} -> {b}");
        // Once the thread has exited, only the process line counts it, in USER_HZ
        // ticks: utime and stime are each truncated by up to one tick (10 ms).
        let whole = threads_cpu_ns(pid, None).unwrap();
        assert!(
            whole + 20_000_000 >= b,
            "process {whole} ns < thread {b} ns"
        );
        assert!(vm_rss(pid).unwrap() > 0);
        assert!(status_bytes(pid, "VmHWM").unwrap() >= status_bytes(pid, "VmRSS").unwrap() / 2);
        let e = status_bytes(pid, "NoSuchField").unwrap_err().to_string();
        assert_eq!(e, format!("/proc/{pid}/status: no NoSuchField line"));
    }
}
