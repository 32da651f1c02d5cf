//! Readers of /proc: memory and CPU through the bench's reader
//! (`terminus::tools::bench::target`), threads and their CPU affinity.

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`, `RssAnon`), in bytes
/// (`terminus::tools::bench::target::status_bytes`, the bench's reader).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    terminus::tools::bench::target::status_bytes(pid, field).unwrap_or_else(|e| panic!("{e:#}"))
}

/// terminus' anonymous RSS (heap and buffer ring, not code pages).
pub fn rss(t: &super::Terminus) -> u64 {
    proc_status_bytes(t.pid(), "RssAnon")
}

/// mimalloc returns freed pages to the OS after a delay and faults them back on
/// reuse, which moved RssAnon by MiBs on its own; without purging, RSS only grows
/// when terminus touches memory it had not touched before (`Terminus::builder().prefix`).
pub const NO_PURGE: &[&str] = &["env", "MIMALLOC_PURGE_DELAY=-1"];

/// The idle trim (`idle_memory_trim_ms`) gives freed pages back after a quiet
/// second whatever [`NO_PURGE`] says, and a busy host can make that second happen
/// between a test's warm-up and its baseline: the load's reuse of those pages then
/// reads as growth. Tests that compare RSS before and during a load turn it off
/// (`config` must have a `[runtime]` table: `write_config` with workers).
pub fn no_idle_trim(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains("[runtime]\n"), "no [runtime] table in {text}");
    let text = text.replacen("[runtime]\n", "[runtime]\nidle_memory_trim_ms = 0\n", 1);
    std::fs::write(config, text).unwrap();
}

/// utime+stime of a whole process, in ns (`terminus::tools::bench::target`).
pub fn proc_cpu_ns(pid: u32) -> u64 {
    terminus::tools::bench::target::process_cpu_ns(pid).unwrap_or_else(|e| panic!("{e:#}"))
}

/// One thread of a process: tid, name (`comm`) and `Cpus_allowed_list`.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub tid: u32,
    pub comm: String,
    pub cpus_allowed: Vec<usize>,
    pub cpus_allowed_list: String,
}

pub fn tasks(pid: u32) -> Vec<TaskInfo> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A thread may exit between the listing and the reads: skip it then.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        out.push(TaskInfo {
            tid,
            comm: comm.trim().to_string(),
            cpus_allowed: parse_cpu_list(&list),
            cpus_allowed_list: list,
        });
    }
    out
}

/// Parse a kernel CPU list such as `0-3,6,8-9`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// The CPUs this test process may run on.
pub fn own_allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status");
    parse_cpu_list(list.trim())
}

/// Sum of the first field of `/proc/PID/task/*/schedstat` (ns on CPU) over the live
/// threads of a process. Deliberately not the bench's reader
/// (`terminus::tools::bench::target`): tests cross-check that reader against this one.
pub fn proc_threads_schedstat_ns(pid: u32) -> u64 {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"));
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
