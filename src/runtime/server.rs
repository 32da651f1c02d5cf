//! server: `terminus run` — builds TLS configs, binds one SO_REUSEPORT socket per
//! listener per worker, starts pinned workers, reports readiness, and turns
//! signals into drain/stop.
//!
//! Readiness contract (tests and scripts rely on it): once every worker is up, stdout
//! carries one `listening name=<name> addr=<ip:port>` line per listener, then `ready`.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::runtime::listener::{ListenerLive, ListenerShared};
use crate::runtime::run_state::{RunState, RunStateCell};
use crate::runtime::uring::{Uring, UringConfig, UringError};
use crate::runtime::worker::{self, MetricsOut, WorkerSetup};
use arc_swap::ArcSwap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid configuration or TLS material (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Uring(#[from] UringError),
    #[error("{0}")]
    Runtime(String),
}

/// A started server: what `run` waits on, and what the demo and tests drive.
pub struct Running {
    pub listeners: Vec<Arc<ListenerShared>>,
    pub state: Arc<RunStateCell>,
    /// Where `/metrics`, `/healthz`, `/readyz` are served (`[admin]`).
    pub admin: Option<SocketAddr>,
    /// Reload the config file and every file it names now (what SIGHUP does).
    pub reload: crossbeam_channel::Sender<()>,
    workers: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// Close everything now.
    pub fn stop(&self) {
        self.state.store(RunState::Stopping);
    }

    /// Wait for every worker to exit.
    pub fn join(self) -> Result<(), RunError> {
        let mut err = None;
        for (i, h) in self.workers.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => err = Some(format!("worker {i}: io_uring_enter failed: {e}")),
                Err(_) => err = Some(format!("worker {i} panicked")),
            }
        }
        err.map_or(Ok(()), |e| Err(RunError::Runtime(e)))
    }
}

/// CPUs this process may run on (its affinity mask: taskset, cpusets, systemd).
pub fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|v| v.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per accept.
    s.set_nodelay(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

/// Start every worker and return once all are accepting.
pub fn start(cfg: &Config) -> Result<Running, RunError> {
    let ring_cfg = UringConfig {
        entries: cfg.runtime.ring_entries,
        sqpoll: cfg.runtime.sqpoll,
        recv_buffers: cfg.runtime.recv_buffers,
        recv_buffer_size: cfg.runtime.recv_buffer_size,
    };
    // Probe once up front so an unusable io_uring is one clear message, not N.
    drop(Uring::<()>::new(UringConfig {
        entries: 8,
        sqpoll: false,
        recv_buffers: 1,
        recv_buffer_size: 4096,
    })?);

    let allowed = allowed_cpus();
    let workers = cfg.runtime.workers.unwrap_or(allowed.len().max(1));
    let cpus: Vec<Option<usize>> = (0..workers)
        .map(|i| {
            if !cfg.runtime.pin_cpus {
                return Ok(None);
            }
            match &cfg.runtime.cpus {
                Some(list) => {
                    let c = list[i % list.len()];
                    if !allowed.is_empty() && !allowed.contains(&c) {
                        return Err(RunError::Config(format!(
                            "{}: runtime.cpus: CPU {c} is not in this process's affinity mask {allowed:?}",
                            cfg.source.display()
                        )));
                    }
                    Ok(Some(c))
                }
                None if allowed.is_empty() => Ok(None),
                None => Ok(Some(allowed[i % allowed.len()])),
            }
        })
        .collect::<Result<_, _>>()?;

    let mut shared = Vec::new();
    let mut sockets: Vec<Vec<OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    for l in &cfg.listeners {
        let live = ListenerLive::build(l).map_err(RunError::Config)?;
        // Bind the first socket to learn the real port (listen = ":0"), the rest join it.
        let first = bind(l.listen, l.backlog).map_err(|e| {
            RunError::Runtime(format!(
                "listener {}: cannot listen on {}: {e}",
                l.name, l.listen
            ))
        })?;
        let addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(l.listen);
        sockets[0].push(first.into());
        for socks in sockets.iter_mut().skip(1) {
            let s = bind(addr, l.backlog).map_err(|e| {
                RunError::Runtime(format!("listener {}: cannot listen on {addr}: {e}", l.name))
            })?;
            socks.push(s.into());
        }
        shared.push(Arc::new(ListenerShared {
            name: l.name.clone(),
            addr,
            live: ArcSwap::from_pointee(live),
            active: AtomicUsize::new(0),
        }));
    }

    let log = crate::ops::log::LogSink::start(&cfg.log.access).map_err(|e| {
        RunError::Config(format!(
            "{}: log.access: cannot open: {e}",
            cfg.source.display()
        ))
    })?;
    let state = Arc::new(RunStateCell::new(RunState::Running));
    let reloads = Arc::new(crate::ops::reload::ReloadStats::default());
    // The admin port is bound before any worker runs: a busy port fails startup,
    // and `/readyz` answers 503 until every worker accepts.
    let mut admin_addr = None;
    let mut admin_state = None;
    let mut metrics_tx = None;
    if let Some(a) = &cfg.admin {
        let sock = std::net::TcpListener::bind(a.listen)
            .map_err(|e| RunError::Runtime(format!("admin: cannot listen on {}: {e}", a.listen)))?;
        admin_addr = sock.local_addr().ok();
        let st = Arc::new(crate::ops::admin::AdminState {
            listeners: shared.clone(),
            state: state.clone(),
            ready: AtomicBool::new(false),
            snapshots: std::sync::Mutex::new(vec![None; workers]),
            reloads: reloads.clone(),
            log_dropped: log.dropped.clone(),
            workers,
        });
        metrics_tx = Some(
            crate::ops::admin::start(sock, a, st.clone())
                .map_err(|e| RunError::Runtime(format!("admin: cannot start: {e}")))?,
        );
        admin_state = Some(st);
    }
    let snapshot_interval =
        Duration::from_millis(cfg.admin.as_ref().map_or(250, |a| a.snapshot_interval_ms));
    let drain = Duration::from_millis(cfg.runtime.drain_timeout_ms);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(workers);
    let mut handles = Vec::new();
    for (i, socks) in sockets.into_iter().enumerate() {
        let setup = WorkerSetup {
            index: i,
            cpu: cpus[i],
            ring: ring_cfg,
            listeners: shared.iter().cloned().zip(socks).collect(),
            state: state.clone(),
            log: log.clone(),
            metrics: metrics_tx.clone().map(|tx| MetricsOut {
                tx,
                interval: snapshot_interval,
            }),
            max_buffered_per_worker: cfg.runtime.max_buffered_bytes_per_worker,
        };
        let tx = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("terminus-w{i}"))
            .spawn(move || match worker::setup(setup) {
                Ok(w) => {
                    let _ = tx.send(Ok(()));
                    w.run(drain)
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    Ok(())
                }
            })
            .map_err(|e| RunError::Runtime(format!("cannot spawn worker {i}: {e}")))?;
        handles.push(h);
    }
    let reload = crate::ops::reload::spawn(
        crate::ops::reload::Reloader::new(cfg.clone(), shared.clone(), reloads.clone()),
        Duration::from_millis(cfg.runtime.reload_interval_ms),
    )
    .map_err(|e| RunError::Runtime(format!("cannot spawn the reload thread: {e}")))?;
    let running = Running {
        listeners: shared,
        state,
        admin: admin_addr,
        reload,
        workers: handles,
    };
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                running.stop();
                let _ = running.join();
                return Err(RunError::Runtime(e));
            }
            Err(_) => return Err(RunError::Runtime("a worker died during setup".into())),
        }
    }
    if let Some(st) = admin_state {
        st.ready.store(true, Ordering::SeqCst);
    }
    Ok(running)
}

/// `terminus run`: serve until SIGTERM/SIGINT (drain), a second signal stops at once.
pub fn run(cfg: Config) -> Result<(), RunError> {
    for l in &cfg.listeners {
        for w in crate::tls::cert_warnings(l) {
            eprintln!("terminus: warning: {w}");
        }
    }
    // Handlers first: they need descriptors, which a flood of clients arriving right
    // after `ready` could exhaust; a signal during startup waits in the iterator.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| RunError::Runtime(format!("cannot install signal handlers: {e}")))?;
    let running = start(&cfg)?;
    {
        let mut out = std::io::stdout().lock();
        for l in &running.listeners {
            let _ = writeln!(out, "listening name={} addr={}", l.name, l.addr);
        }
        if let Some(a) = running.admin {
            let _ = writeln!(out, "admin addr={a}");
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let state = running.state.clone();
    let reload = running.reload.clone();
    std::thread::Builder::new()
        .name("terminus-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    let _ = reload.send(());
                    continue;
                }
                if state.load() == RunState::Running {
                    eprintln!("terminus: draining (a second signal stops at once)");
                    state.store(RunState::Draining);
                } else {
                    state.store(RunState::Stopping);
                }
            }
        })
        .map_err(|e| RunError::Runtime(format!("cannot spawn signal thread: {e}")))?;
    running.join()
}
