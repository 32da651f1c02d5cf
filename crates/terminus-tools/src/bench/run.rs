//! The run: spawn the pinned workers, measure the window (with the target's and
//! the host's CPU read around it), join the workers and build the report.

use super::report::{report, TargetFigures};
use super::{host, worker, BenchOpts, BenchReport, ErrorCounts, Progress, TargetProbe, Workload};
use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Raise the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// Run one measurement. Blocks for about setup + `duration`.
pub fn run(opts: &BenchOpts, progress: Progress) -> Result<BenchReport> {
    let workers = opts.workers.clamp(1, opts.connections.max(1));
    // Each connection is an fd here (and two on a proxy), plus a margin for the rest.
    let nofile = raise_nofile();
    if opts.connections as u64 + 64 > nofile {
        return Err(anyhow!(
            "{} connections need more open files than the limit allows ({nofile}; raise `ulimit -n`)",
            opts.connections
        ));
    }
    let cpus = worker_cpus(opts, workers);

    // Fail before the load, not after it, when the target cannot be read.
    if let Some(p) = &opts.probe {
        p.cpu_ns().context("cannot read the target's CPU time")?;
    }
    let idle = opts.workload == Workload::Idle;
    let rss_before = match (&opts.probe, idle) {
        (Some(p), true) => Some(p.rss_bytes().context("target memory before opening")?),
        _ => None,
    };
    let sh = Arc::new(worker::Shared {
        opts: opts.clone(),
        tls: opts
            .tls
            .as_ref()
            .map(|t| (t.config.clone(), t.server_name.clone())),
        progress: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: Barrier::new(workers + 1),
        end: Barrier::new(workers + 1),
        release: Barrier::new(workers + 1),
    });
    let handles = spawn_workers(opts, &sh, &cpus, workers)?;

    let run_pids = run_pids(opts);
    let client = TargetProbe::Threads {
        pid: std::process::id(),
        prefix: "bench-w".into(),
    };
    sh.start.wait();
    let cpu0 = opts.probe.as_ref().map(|p| p.cpu_ns()).transpose();
    let host0 = host::HostSample::read(&run_pids).ok();
    let client0 = client.cpu_ns().ok();
    let t0 = Instant::now();
    wait_window(opts, &sh, &progress, t0);
    sh.stop.store(true, Ordering::Relaxed);
    sh.end.wait();
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = opts.probe.as_ref().map(|p| p.cpu_ns()).transpose();
    let host1 = host::HostSample::read(&run_pids).ok();
    let client1 = client.cpu_ns().ok();
    let rss_after = match (&opts.probe, idle) {
        (Some(p), true) => Some(p.rss_bytes().context("target memory after opening")),
        _ => None,
    };
    sh.release.wait();
    let mut total = join_workers(handles)?;
    let (cpu0, cpu1) = (
        cpu0.context("target CPU at the start")?,
        cpu1.context("target CPU at the end")?,
    );
    let target_ns = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    // A target read over HTTP is a process the samples do not hold: add its CPU.
    let admin_ns = match opts.probe {
        Some(TargetProbe::Admin { .. }) => target_ns.unwrap_or(0),
        _ => 0,
    };
    let target = TargetFigures {
        cpu_s: target_ns.map(|ns| ns as f64 / 1e9),
        rss_before,
        rss_after: rss_after.transpose()?,
        client_cpu_s: client0
            .zip(client1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
        foreign_cpus: host0
            .zip(host1)
            .map(|(a, b)| host::foreign_cpus(a, b, admin_ns, window)),
    };
    if opts.workload == Workload::Bulk {
        total.ops = total.bytes / opts.size.max(1) as u64;
    }
    Ok(report(opts, workers, window, total, target))
}

/// The processes whose CPU is the run's: this one, a `/proc` target, `run_pids`.
fn run_pids(opts: &BenchOpts) -> Vec<u32> {
    let mut pids = vec![std::process::id()];
    match &opts.probe {
        Some(TargetProbe::Pid(p)) | Some(TargetProbe::Threads { pid: p, .. }) => pids.push(*p),
        _ => {}
    }
    pids.extend(&opts.run_pids);
    pids
}

/// The CPU of each worker: `--cpus` in turn, else the allowed CPUs from the last.
fn worker_cpus(opts: &BenchOpts, workers: usize) -> Vec<Option<usize>> {
    let allowed = terminus_core::host::cpus::allowed_cpus();
    (0..workers)
        .map(|i| match &opts.cpus {
            Some(list) if !list.is_empty() => Some(list[i % list.len()]),
            Some(_) => None,
            None if allowed.is_empty() => None,
            None => Some(allowed[allowed.len() - 1 - i % allowed.len()]),
        })
        .collect()
}

/// One thread per worker, the connections split evenly (the first ones get one more).
fn spawn_workers(
    opts: &BenchOpts,
    sh: &Arc<worker::Shared>,
    cpus: &[Option<usize>],
    workers: usize,
) -> Result<Vec<std::thread::JoinHandle<worker::WorkerResult>>> {
    let mut handles = Vec::new();
    let mut first = 0;
    for (i, cpu) in cpus.iter().enumerate() {
        let n = opts.connections / workers + usize::from(i < opts.connections % workers);
        let sh = sh.clone();
        let cpu = *cpu;
        let h = std::thread::Builder::new()
            .name(format!("bench-w{i}"))
            .spawn(move || worker::guarded(&sh, i, first, n, cpu))
            .context("cannot spawn a bench worker")?;
        first += n;
        handles.push(h);
    }
    Ok(handles)
}

/// Wait out the measuring window (or a stop), printing a progress line a second.
fn wait_window(opts: &BenchOpts, sh: &worker::Shared, progress: &Progress, t0: Instant) {
    let end = t0 + opts.duration;
    let user_stop = || {
        opts.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    };
    let mut next_line = t0 + Duration::from_secs(1);
    let mut last = 0u64;
    while Instant::now() < end && !user_stop() && !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())),
        );
        if let (Progress::Stderr(label), true) = (progress, Instant::now() >= next_line) {
            let p = sh.progress.load(Ordering::Relaxed);
            let what = if opts.workload == Workload::Bulk {
                format!("{:.3} Gbit/s", (p - last) as f64 * 8.0 / 1e9)
            } else {
                format!("{} ops/s", p - last)
            };
            let _ = writeln!(
                std::io::stderr(),
                "{label}{:>4.0}s  {what}",
                t0.elapsed().as_secs_f64()
            );
            last = p;
            next_line += Duration::from_secs(1);
        }
    }
}

/// The workers' results, summed (the first error sample of each kind kept).
fn join_workers(
    handles: Vec<std::thread::JoinHandle<worker::WorkerResult>>,
) -> Result<worker::WorkerResult> {
    let mut t = worker::WorkerResult::empty();
    for h in handles {
        let r = h.join().map_err(|_| anyhow!("a bench worker panicked"))?;
        t.hist
            .add(&r.hist)
            .map_err(|e| anyhow!("histogram: {e:?}"))?;
        t.ops += r.ops;
        t.bytes += r.bytes;
        t.errors.add(&r.errors);
        t.resumed += r.resumed;
        t.full += r.full;
        t.established += r.established;
        for (k, v) in r.samples {
            t.samples.entry(k).or_insert(v);
        }
    }
    t.errors.add(&ErrorCounts::default());
    Ok(t)
}
