//! server: `terminus run` — builds TLS configs, binds one SO_REUSEPORT socket per
//! listener per worker, starts pinned workers, reports readiness, and turns
//! signals into drain/stop.
//!
//! Readiness contract (tests and scripts rely on it): once every worker is up, stdout
//! carries one `listening name=<name> addr=<ip:port>` line per listener, then `ready`.
#![forbid(unsafe_code)]

use crate::config::Config;
use crate::conn::ConnLimits;
use crate::upstream::UpstreamSet;
use crate::uring::{Uring, UringConfig, UringError};
use crate::worker::{self, ListenerShared, WorkerSetup, DRAINING, RUNNING, STOPPING};
use arc_swap::ArcSwap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
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
    pub state: Arc<AtomicU8>,
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
        self.state.store(STOPPING, Ordering::SeqCst);
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
    drop(Uring::new(UringConfig {
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
        let tls = crate::tls::server_tls(l).map_err(|e| RunError::Config(e.to_string()))?;
        let upstream_tls =
            crate::tls::upstream_client_config(l).map_err(|e| RunError::Config(e.to_string()))?;
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
            tls: ArcSwap::from_pointee(tls),
            upstream_tls,
            proxy_v2: l.proxy_protocol.as_deref() == Some("v2"),
            upstreams: UpstreamSet::new(l.upstreams.clone()),
            limits: ConnLimits {
                max_buffered: l.max_buffered_bytes,
                handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
                idle_timeout: Duration::from_millis(l.idle_timeout_ms),
                connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            },
            max_connections: l.max_connections,
            active: AtomicUsize::new(0),
            stats: Default::default(),
        }));
    }

    let log = crate::log::LogSink::start(&cfg.log.access).map_err(|e| {
        RunError::Config(format!(
            "{}: log.access: cannot open: {e}",
            cfg.source.display()
        ))
    })?;
    let state = Arc::new(AtomicU8::new(RUNNING));
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
    let running = Running {
        listeners: shared,
        state,
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
    Ok(running)
}

/// `terminus run`: serve until SIGTERM/SIGINT (drain), a second signal stops at once.
pub fn run(cfg: Config) -> Result<(), RunError> {
    for l in &cfg.listeners {
        for w in crate::tls::cert_warnings(l) {
            eprintln!("terminus: warning: {w}");
        }
    }
    let running = start(&cfg)?;
    {
        let mut out = std::io::stdout().lock();
        for l in &running.listeners {
            let _ = writeln!(out, "listening name={} addr={}", l.name, l.addr);
        }
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let state = running.state.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| RunError::Runtime(format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("terminus-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if state.load(Ordering::SeqCst) == RUNNING {
                    eprintln!("terminus: draining (a second signal stops at once)");
                    state.store(DRAINING, Ordering::SeqCst);
                } else {
                    state.store(STOPPING, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| RunError::Runtime(format!("cannot spawn signal thread: {e}")))?;
    running.join()
}
