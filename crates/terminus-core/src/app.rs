//! app: `terminus run`, the composition root: the one place that wires the layers
//! together (config, tls, runtime, telemetry, ops). Builds TLS configs, binds one SO_REUSEPORT socket per
//! listener per worker, starts pinned workers, reports readiness, and turns
//! signals into drain/stop (TERM/INT), reload (HUP) and access log reopen (USR1).
//! Once every listener and the admin socket are bound, and before any worker
//! starts, it applies `[runtime] user`/`group` and then `seccomp` (runtime::confine);
//! the access log is opened in between, as the user it will be reopened as.
//!
//! Readiness contract (tests and scripts rely on it): once every worker is up, stdout
//! carries `io backend=<io_uring|epoll>`, one `listening name=<name> addr=<ip:port>`
//! line per listener, `admin addr=<ip:port>` when on, then `ready`; then, when
//! `NOTIFY_SOCKET` is set (systemd `Type=notify`), `READY=1`; `STOPPING=1` when a
//! drain starts.
#![forbid(unsafe_code)]

use crate::config::{Config, ConfigError, ConfigErrorKind};
use crate::config::{IoSetting, SeccompSetting};
use crate::ops::reload::ReloadStats;
use crate::runtime::backend::{choose_backend, IoChoice};
use crate::runtime::listener::{ListenerLive, ListenerShared};
use crate::runtime::run_state::{RunState, RunStateCell};
use crate::runtime::settings::ListenerSettings;
use crate::runtime::sock;
use crate::runtime::uring::{UringConfig, UringError};
use crate::runtime::worker::{self, MetricsOut, WorkerSetup, WorkerSetupError};
use crate::telemetry::log::LogSink;
use crate::telemetry::metrics::WorkerSnapshot;
use crate::tls::TlsError;
use arc_swap::ArcSwap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why `run`/`start` failed. `Display` is the one line `terminus run` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Invalid configuration (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener's TLS material is unusable (exit code 2).
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// `io = "io_uring"` (forced) on a host where io_uring cannot be used.
    #[error("{0}")]
    Uring(#[from] UringError),
    /// `TERMINUS_IO` holds something else than a backend name (exit code 2).
    #[error("environment variable TERMINUS_IO: {0}")]
    IoEnv(String),
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Listen {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Another process already listens on `addr` (`what`: `listener "x"` or
    /// `admin`) and `reuse_port_with_other_instances` is off.
    #[error(
        "{what}: {addr} is already served by {holder}: starting beside it would split its \
         connections between two processes (SO_REUSEPORT); stop it first, or set [runtime] \
         reuse_port_with_other_instances = true for a handover (README: zero-downtime \
         restart)"
    )]
    Overlap {
        what: String,
        addr: SocketAddr,
        holder: String,
    },
    #[error("admin: cannot listen on {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin: cannot start: {0}")]
    AdminStart(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// `thread` names it as the message does: `worker 3`, `the reload thread`.
    #[error("cannot spawn {thread}: {source}")]
    Spawn {
        thread: String,
        source: std::io::Error,
    },
    /// A worker could not set itself up (pin, ring); the worker's own message.
    #[error("{0}")]
    WorkerSetup(#[source] WorkerSetupError),
    #[error("a worker died during setup")]
    WorkerLost,
    #[error("worker {index}: io_uring_enter failed: {source}")]
    WorkerFailed {
        index: usize,
        source: std::io::Error,
    },
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    /// `[spiffe]`: no Workload API material in time, or a configuration error it reported.
    #[error("{0}")]
    Spiffe(#[from] crate::ops::spiffe::SpiffeError),
    /// `[runtime] user`/`group` or `seccomp` could not be applied.
    #[error("{0}")]
    Confine(String),
}

impl RunError {
    /// `terminus run`'s exit status: 2 when the operator's files are at fault, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Tls(_) | RunError::IoEnv(_) => 2,
            _ => 1,
        }
    }
}

/// A started server: what `run` waits on, and what the demo and tests drive.
pub struct Running {
    pub listeners: Vec<Arc<ListenerShared>>,
    pub state: Arc<RunStateCell>,
    /// Where `/metrics`, `/healthz`, `/readyz` are served (`[admin]`).
    pub admin: Option<SocketAddr>,
    /// Reload the config file and every file it names now (what SIGHUP does).
    pub reload: crossbeam_channel::Sender<crate::ops::reload::Trigger>,
    /// The I/O backend the workers run on.
    pub io: IoChoice,
    /// Each worker's CPU (None: not pinned), and why there are that many workers.
    pub cpus: Vec<Option<usize>>,
    pub workers_why: String,
    /// The access log (SIGUSR1 reopens its file).
    pub log: LogSink,
    /// What `/readyz` reads (None when `[admin]` is off).
    admin_state: Option<Arc<crate::ops::admin::AdminState>>,
    workers: Vec<JoinHandle<std::io::Result<()>>>,
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

    /// Wait for every worker to exit; the error is the last worker's that failed.
    pub fn join(self) -> Result<(), RunError> {
        let mut err = None;
        for (index, h) in self.workers.into_iter().enumerate() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => err = Some(RunError::WorkerFailed { index, source }),
                Err(_) => err = Some(RunError::WorkerPanicked(index)),
            }
        }
        err.map_or(Ok(()), Err)
    }
}

/// Refuse to join another process's SO_REUSEPORT group on `addr` unless the config
/// allows a handover. Decided before our socket listens, so a refused start never
/// holds (and resets) any of the other process's connections. When our bind would
/// fail anyway (a holder without SO_REUSEPORT), that bind error is the message.
fn refuse_overlap(cfg: &Config, what: &str, addr: SocketAddr) -> Result<(), RunError> {
    if cfg.runtime.reuse_port_with_other_instances
        || !sock::someone_listens(addr)
        || sock::bind_only(addr, true).is_err()
    {
        return Ok(());
    }
    Err(RunError::Overlap {
        what: what.to_owned(),
        addr,
        holder: crate::host::listens::who_listens(addr),
    })
}

/// Start every worker and return once all are accepting. The steps, in the order
/// their errors are reported: plan (io_uring probe, CPUs), bind (TLS material and
/// sockets per listener), the access log and admin endpoint, spawn (workers,
/// reloader), ready (every worker set up).
pub fn start(cfg: &Config) -> Result<Running, RunError> {
    let plan = plan(cfg)?;
    // Workload API material must be there before the listeners are built from it;
    // listeners with files only start without waiting.
    let spiffe = match cfg.uses_workload_api() {
        true => Some(crate::ops::spiffe::start(&cfg.spiffe)?),
        false => None,
    };
    let Bound { listeners, sockets } = bind_listeners(cfg, plan.cpus.len())?;
    let admin_sock = bind_admin(cfg)?;
    // Every socket is bound: from here on nothing needs root, and no worker runs yet.
    drop_privileges(cfg)?;
    let common = Common {
        log: LogSink::start(&cfg.log.access).map_err(|e| {
            ConfigError::new(
                &cfg.source,
                None,
                Some("log.access".into()),
                ConfigErrorKind::Open(e),
            )
        })?,
        listeners,
        state: Arc::new(RunStateCell::new(RunState::Running)),
        reloads: Arc::new(ReloadStats::started_now()),
    };
    if cfg.runtime.seccomp == SeccompSetting::Builtin {
        crate::runtime::confine::install_builtin_filter().map_err(RunError::Confine)?;
        crate::op_info!(
            "seccomp: builtin filter installed on every thread: {} syscalls allowed, any \
             other kills the process (SIGSYS)",
            crate::runtime::confine::ALLOWED.len()
        );
    }
    let admin = start_admin(cfg, &common, &plan, admin_sock)?;
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(plan.cpus.len());
    let workers = spawn_workers(cfg, &plan, sockets, &common, &admin, ready_tx)?;
    let reload = crate::ops::reload::spawn(
        crate::ops::reload::Reloader::new(cfg.clone(), common.listeners.clone(), common.reloads),
        Duration::from_millis(cfg.runtime.reload_interval_ms),
    )
    .map_err(|source| RunError::Spawn {
        thread: "the reload thread".into(),
        source,
    })?;
    if let Some(client) = &spiffe {
        client.announce_to(reload.clone());
    }
    crate::runtime::resolver::spawn(common.listeners.clone()).map_err(|source| {
        RunError::Spawn {
            thread: "the resolver thread".into(),
            source,
        }
    })?;
    let running = Running {
        listeners: common.listeners,
        state: common.state,
        admin: admin.addr,
        reload,
        io: plan.io,
        cpus: plan.cpus.clone(),
        workers_why: plan.workers_why.clone(),
        log: common.log,
        admin_state: admin.state.clone(),
        workers,
    };
    await_ready(running, &ready_rx, admin.state.as_deref())
}

/// What the config asks of this host, checked before anything is built.
struct Plan {
    io: IoChoice,
    ring: UringConfig,
    /// One entry per worker: the CPU it is pinned to, if any.
    cpus: Vec<Option<usize>>,
    /// Why that many workers (for the startup line).
    workers_why: String,
}

fn plan(cfg: &Config) -> Result<Plan, RunError> {
    // Chosen once up front so an unusable io_uring is one clear message, not N.
    let io = choose_backend(io_setting(cfg)?)?;
    if let Some(why) = &io.fallback {
        crate::op_warn!(
            "io_uring unavailable, using epoll: {why} (io_uring saves a few % CPU per \
             op, see BENCHMARKING.md; set [runtime] io = \"epoll\" to choose epoll without \
             this notice)"
        );
    }
    let (cpus, workers_why) = worker_cpus(cfg, &crate::host::cpus::allowed_cpus())?;
    Ok(Plan {
        io,
        ring: UringConfig {
            entries: cfg.runtime.ring_entries,
            sqpoll: cfg.runtime.sqpoll,
            recv_buffers: cfg.runtime.recv_buffers,
            recv_buffer_size: cfg.runtime.recv_buffer_size,
        },
        cpus,
        workers_why,
    })
}

/// The setting in force: `TERMINUS_IO` in the environment overrides `[runtime] io`
/// (one switch for a container or a whole test suite, without editing files).
pub fn io_setting(cfg: &Config) -> Result<IoSetting, RunError> {
    match std::env::var("TERMINUS_IO") {
        Ok(v) if !v.is_empty() => IoSetting::parse(&v).map_err(RunError::IoEnv),
        _ => Ok(cfg.runtime.io),
    }
}

/// Workers: `runtime.workers`, else min(affinity mask, cgroup v2 CPU quota). Worker
/// i's CPU: `runtime.cpus[i % len]`, else the affinity mask's i-th (round
/// robin); none when pinning is off or the mask is unknown.
/// Each worker's CPU, and why there are that many workers.
fn worker_cpus(
    cfg: &Config,
    allowed: &[usize],
) -> Result<(Vec<Option<usize>>, String), ConfigError> {
    let rt = &cfg.runtime;
    let (workers, why) =
        crate::host::cpus::worker_count(rt.workers, allowed.len(), crate::host::cpus::quota_cpus());
    let cpus = (0..workers)
        .map(|i| match &rt.cpus {
            _ if !rt.pin_cpus => Ok(None),
            Some(list) => {
                let c = list[i % list.len()];
                if !allowed.is_empty() && !allowed.contains(&c) {
                    return Err(ConfigError::new(
                        &cfg.source,
                        None,
                        Some("runtime.cpus".into()),
                        ConfigErrorKind::Invalid(format!(
                            "CPU {c} is not in this process's affinity mask {allowed:?}"
                        )),
                    ));
                }
                Ok(Some(c))
            }
            None if allowed.is_empty() => Ok(None),
            None => Ok(Some(allowed[i % allowed.len()])),
        })
        .collect::<Result<_, _>>()?;
    Ok((cpus, why))
}

/// Every listener's TLS material and sockets.
struct Bound {
    listeners: Vec<Arc<ListenerShared>>,
    /// `sockets[w]`: worker w's socket of every listener, in config order.
    sockets: Vec<Vec<OwnedFd>>,
}

/// Build each listener's TLS material, then bind its sockets.
fn bind_listeners(cfg: &Config, workers: usize) -> Result<Bound, RunError> {
    let mut shared = Vec::new();
    let mut sockets: Vec<Vec<OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    for l in &cfg.listeners {
        let live = ListenerLive::build(ListenerSettings::from_config(l, &cfg.resolver))?;
        for why in live
            .tls
            .certs
            .served()
            .filter_map(|c| c.ocsp_problem.as_ref())
        {
            crate::op_warn!("listener \"{}\": {why}", l.name);
        }
        let listen_err = |addr, source| RunError::Listen {
            listener: l.name.clone(),
            addr,
            source,
        };
        // Bind the first socket to learn the real port (listen = ":0"), the rest join it.
        refuse_overlap(cfg, &format!("listener \"{}\"", l.name), l.listen)?;
        let first = sock::bind(l.listen, l.backlog).map_err(|e| listen_err(l.listen, e))?;
        let addr = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(l.listen);
        sockets[0].push(first.into());
        for socks in sockets.iter_mut().skip(1) {
            let s = sock::bind(addr, l.backlog).map_err(|e| listen_err(addr, e))?;
            socks.push(s.into());
        }
        shared.push(Arc::new(ListenerShared {
            name: l.name.clone(),
            addr,
            live: ArcSwap::from_pointee(live),
            active: AtomicUsize::new(0),
            callers: cfg
                .admin
                .as_ref()
                .map(|a| Arc::new(crate::telemetry::callers::CallerTable::new(a.callers_max))),
            caller_limits: Arc::new(crate::proxy::authz::limits::CallerLimits::new(
                l.limits_max_callers,
            )),
        }));
    }
    Ok(Bound {
        listeners: shared,
        sockets,
    })
}

/// What the admin endpoint, the workers and the reloader share.
struct Common {
    listeners: Vec<Arc<ListenerShared>>,
    state: Arc<RunStateCell>,
    log: LogSink,
    reloads: Arc<ReloadStats>,
}

/// The admin endpoint, when `[admin]` is on.
#[derive(Default)]
struct AdminStarted {
    addr: Option<SocketAddr>,
    state: Option<Arc<crate::ops::admin::AdminState>>,
    metrics: Option<crossbeam_channel::Sender<WorkerSnapshot>>,
}

/// The admin port is bound before any worker runs (and before the privilege drop):
/// a busy port fails startup.
fn bind_admin(cfg: &Config) -> Result<Option<std::net::TcpListener>, RunError> {
    let Some(a) = &cfg.admin else {
        return Ok(None);
    };
    refuse_overlap(cfg, "admin", a.listen)?;
    let sock = sock::bind_with(a.listen, 128, false).map_err(|source| RunError::AdminListen {
        addr: a.listen,
        source,
    })?;
    Ok(Some(sock.into()))
}

/// `[runtime] user`/`group`: switch now (runtime::confine), then say which of the
/// files a reload reads this user cannot open (a reload of them would fail).
fn drop_privileges(cfg: &Config) -> Result<(), RunError> {
    let Some(who) = &cfg.runtime.run_as else {
        return Ok(());
    };
    crate::runtime::confine::drop_privileges(who).map_err(RunError::Confine)?;
    crate::op_info!(
        "running as user {} (uid {}), group {} (gid {}), no capabilities",
        who.user,
        who.uid,
        who.group,
        who.gid
    );
    let files = crate::ops::check::reloaded_files(cfg);
    if let Ok(bad) = crate::host::users::open_as(&who.user, (who.uid, who.gid), &files) {
        for (path, e) in bad {
            crate::op_warn!(
                "user {} cannot open {}: {e}; a reload that reads it will fail",
                who.user,
                path.display()
            );
        }
    }
    Ok(())
}

/// The admin endpoint on the socket [`bind_admin`] bound; `/readyz` answers 503
/// until every worker accepts.
fn start_admin(
    cfg: &Config,
    common: &Common,
    plan: &Plan,
    sock: Option<std::net::TcpListener>,
) -> Result<AdminStarted, RunError> {
    let workers = plan.cpus.len();
    let (Some(a), Some(sock)) = (&cfg.admin, sock) else {
        return Ok(AdminStarted::default());
    };
    let st = Arc::new(crate::ops::admin::AdminState {
        listeners: common.listeners.clone(),
        state: common.state.clone(),
        ready: AtomicBool::new(false),
        drain_requested: AtomicBool::new(false),
        snapshots: std::sync::Mutex::new(vec![None; workers]),
        reloads: common.reloads.clone(),
        log_dropped: common.log.dropped.clone(),
        workers,
        io_backend: plan.io.backend,
    });
    let addr = sock.local_addr().ok();
    let metrics = crate::ops::admin::start(sock, a, st.clone()).map_err(RunError::AdminStart)?;
    Ok(AdminStarted {
        addr,
        state: Some(st),
        metrics: Some(metrics),
    })
}

/// One pinned thread per worker; each reports on `ready` once set up.
fn spawn_workers(
    cfg: &Config,
    plan: &Plan,
    sockets: Vec<Vec<OwnedFd>>,
    common: &Common,
    admin: &AdminStarted,
    ready: crossbeam_channel::Sender<Result<(), WorkerSetupError>>,
) -> Result<Vec<JoinHandle<std::io::Result<()>>>, RunError> {
    let snapshot_interval =
        Duration::from_millis(cfg.admin.as_ref().map_or(250, |a| a.snapshot_interval_ms));
    let drain = Duration::from_millis(cfg.runtime.drain_timeout_ms);
    let mut handles = Vec::new();
    for (i, socks) in sockets.into_iter().enumerate() {
        let setup = WorkerSetup {
            index: i,
            cpu: plan.cpus[i],
            backend: plan.io.backend,
            ring: plan.ring,
            listeners: common.listeners.iter().cloned().zip(socks).collect(),
            state: common.state.clone(),
            log: common.log.clone(),
            metrics: admin.metrics.clone().map(|tx| MetricsOut {
                tx,
                interval: snapshot_interval,
            }),
            max_buffered_per_worker: cfg.runtime.max_buffered_bytes_per_worker,
            idle_trim: (cfg.runtime.idle_memory_trim_ms > 0)
                .then(|| Duration::from_millis(cfg.runtime.idle_memory_trim_ms)),
        };
        let tx = ready.clone();
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
            .map_err(|source| RunError::Spawn {
                thread: format!("worker {i}"),
                source,
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// Wait until every worker is set up; then `/readyz` turns 200. A worker that
/// fails stops the others.
fn await_ready(
    running: Running,
    ready: &crossbeam_channel::Receiver<Result<(), WorkerSetupError>>,
    admin: Option<&crate::ops::admin::AdminState>,
) -> Result<Running, RunError> {
    for _ in 0..running.workers.len() {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                running.stop();
                let _ = running.join();
                return Err(RunError::WorkerSetup(e));
            }
            Err(_) => return Err(RunError::WorkerLost),
        }
    }
    if let Some(st) = admin {
        st.ready.store(true, Ordering::SeqCst);
    }
    Ok(running)
}

/// `terminus run`: serve until SIGTERM/SIGINT (drain), a second signal stops at once.
pub fn run(cfg: Config) -> Result<(), RunError> {
    crate::telemetry::log::set_format(cfg.log.format);
    for l in &cfg.listeners {
        for w in crate::tls::cert_warnings(&l.tls()) {
            crate::op_warn!("{w}");
        }
    }
    // Handlers first: they need descriptors, which a flood of clients arriving right
    // after `ready` could exhaust; a signal during startup waits in the iterator.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ])
    .map_err(RunError::Signals)?;
    let running = start(&cfg)?;
    print_ready(&running);
    startup_line(&running);
    crate::ops::notify::notify_or_warn(&format!(
        "READY=1\nSTATUS=serving {} listener(s) on {} worker(s)\nMAINPID={}",
        running.listeners.len(),
        running.workers.len(),
        std::process::id()
    ));
    spawn_signal_thread(
        signals,
        &running,
        Duration::from_millis(cfg.runtime.drain_delay_ms),
    )?;
    running.join()
}

/// The one operational line that says what started: version, workers and why, CPUs,
/// backend, listeners (in JSON, the same as fields).
fn startup_line(running: &Running) {
    let cpus: Vec<String> = running
        .cpus
        .iter()
        .map(|c| c.map_or_else(|| "unpinned".to_string(), |c| c.to_string()))
        .collect();
    let listeners: Vec<String> = running
        .listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.addr))
        .collect();
    let admin = running.admin.map(|a| a.to_string());
    let version = env!("CARGO_PKG_VERSION");
    let fields = serde_json::json!({
        "version": version,
        "workers": running.cpus.len(),
        "workers_why": running.workers_why,
        "cpus": cpus,
        "io_backend": running.io.backend.as_str(),
        "listeners": running.listeners.iter()
            .map(|l| serde_json::json!({"name": l.name, "addr": l.addr.to_string()}))
            .collect::<Vec<_>>(),
        "admin": admin,
        "pid": std::process::id(),
    });
    crate::telemetry::log::emit(
        crate::telemetry::log::Level::Info,
        format_args!(
            "terminus {version} started: {} worker(s) ({}), CPUs {}, io {}, listeners {}, \
             admin {}, pid {}",
            running.cpus.len(),
            running.workers_why,
            cpus.join(","),
            running.io.backend.as_str(),
            listeners.join(" "),
            admin.as_deref().unwrap_or("off"),
            std::process::id()
        ),
        fields,
    );
}

/// The readiness lines (see the module doc).
fn print_ready(running: &Running) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "io backend={}", running.io.backend.as_str());
    for l in &running.listeners {
        let _ = writeln!(out, "listening name={} addr={}", l.name, l.addr);
    }
    if let Some(a) = running.admin {
        let _ = writeln!(out, "admin addr={a}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}

/// SIGHUP reloads; SIGUSR1 reopens the access log file; the first SIGTERM/SIGINT
/// drains, the next stops. With a drain delay, the first signal turns `/readyz` 503 at
/// once and a timer thread starts the drain (listeners close) after the delay.
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    running: &Running,
    delay: Duration,
) -> Result<(), RunError> {
    let state = running.state.clone();
    let admin = running.admin_state.clone();
    let mut drain_started = false;
    let reload = running.reload.clone();
    let log = running.log.clone();
    std::thread::Builder::new()
        .name("terminus-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    let _ = reload.send(crate::ops::reload::Trigger::Config);
                    continue;
                }
                if sig == signal_hook::consts::SIGUSR1 {
                    log.reopen();
                    continue;
                }
                if drain_started || state.load() != RunState::Running {
                    state.store(RunState::Stopping);
                    continue;
                }
                drain_started = true;
                crate::ops::notify::notify_or_warn("STOPPING=1\nSTATUS=draining");
                if let Some(a) = &admin {
                    a.drain_requested.store(true, Ordering::SeqCst);
                }
                if delay.is_zero() {
                    crate::op_info!("draining (a second signal stops at once)");
                    state.store(RunState::Draining);
                    continue;
                }
                crate::op_info!(
                    "/readyz 503; still accepting for drain_delay_ms={}, then \
                     draining (a second signal stops at once)",
                    delay.as_millis()
                );
                let later = state.clone();
                let timer = std::thread::Builder::new()
                    .name("terminus-drain-delay".into())
                    .spawn(move || {
                        std::thread::sleep(delay);
                        if later.begin_drain() {
                            crate::op_info!("draining (a second signal stops at once)");
                        }
                    });
                if timer.is_err() {
                    // No timer thread: drain now rather than never.
                    state.store(RunState::Draining);
                }
            }
        })
        .map_err(|source| RunError::Spawn {
            thread: "signal thread".into(),
            source,
        })?;
    Ok(())
}
