//! The `terminus run` child: spawn, wait for `ready` (listener and admin addresses, I/O
//! backend), signals, exit, stderr; and `run_to_exit` for the commands that end by
//! themselves.
//!
//! One switch for whole suites: when the test process has `TERMINUS_IO=io_uring` or
//! `TERMINUS_IO=epoll` in its environment (inherited by every child, where it overrides
//! `[runtime] io`), every `Terminus` start asserts that the child's `io backend=` line
//! names that backend, so a suite run that claims epoll really ran on epoll (`.ci/run`
//! runs the integration suites a second time so). `auto` or unset: no check.
//!
//! Another: `TERMINUS_TEST_PREFIX` puts a wrapper in front of every server child
//! ([`command_with_prefix`]).

use super::{bin, client_config, collect_into, write_config, ListenerConf, Pki, READY_TIMEOUT};
use rustls::ClientConfig;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Raise RLIMIT_NOFILE to its hard limit (inherited by the terminus child), so that
/// hundreds of concurrent connections fit on both sides.
pub fn raise_fd_limit() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the rlimit struct we own on the stack.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max.min(65536);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

/// A running `terminus run --config FILE`, killed (SIGKILL) and reaped on drop.
pub struct Terminus {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    /// The `io backend=` line's value (`io_uring`, `epoll`).
    io_backend: Option<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// The environment variable that picks the I/O backend for every child, overriding
/// `[runtime] io`.
pub const IO_ENV: &str = "TERMINUS_IO";

/// The backend every child of this test process must report: `TERMINUS_IO` when it
/// forces one (`io_uring`, `epoll`); None when it is unset or `auto`.
pub fn forced_io_backend() -> Option<String> {
    match std::env::var(IO_ENV) {
        Ok(v) if v != "auto" => Some(v),
        _ => None,
    }
}

impl Terminus {
    /// `terminus run --config FILE`: spawn and wait for `ready`; panics (with the
    /// child's stderr) if it does not come. Shorthand for
    /// `Terminus::builder().config(config).start()`.
    pub fn start(config: &Path) -> Terminus {
        Terminus::builder().config(config).start()
    }

    /// A `terminus run` child to configure (config or flags, prefix, environment,
    /// backend check) and [`TerminusBuilder::start`].
    pub fn builder() -> TerminusBuilder {
        TerminusBuilder::default()
    }

    /// Spawn `cmd` (a `terminus run`, perhaps under a prefix) and wait for `ready`; when
    /// `expect_io` is set, the `io backend=` line must name it.
    fn spawn(mut cmd: Command, expect_io: Option<String>) -> Terminus {
        raise_fd_limit();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn `terminus run`");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect_into(child.stderr.take().unwrap(), stderr.clone());

        // Stdout is drained for the child's whole life (so it never blocks on a full
        // pipe); lines up to `ready` are handed over through a channel.
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut t = Terminus {
            child,
            addrs: HashMap::new(),
            admin: None,
            io_backend: None,
            stderr,
        };
        t.wait_ready(&rx);
        if let Some(want) = expect_io {
            assert_eq!(
                t.io_backend.as_deref(),
                Some(want.as_str()),
                "{IO_ENV}={want} is set, so terminus must run on {want}: its `io backend=` \
                 line says otherwise (None: no such line); stderr:\n{}",
                t.stderr()
            );
        }
        t
    }

    /// Read stdout lines until `ready`, noting the `admin addr=`, `io backend=` and
    /// `listening` lines.
    fn wait_ready(&mut self, rx: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                // Stdout closed (the child is exiting) or the deadline passed: wait a
                // little (bounded) for the exit, so a startup failure shows its code.
                match self.exit_status_within(Duration::from_secs(5)) {
                    Some(status) => panic!(
                        "terminus exited ({status}) before printing `ready`; stderr:\n{}",
                        self.stderr()
                    ),
                    None => panic!(
                        "terminus did not print `ready` within {READY_TIMEOUT:?}; stderr:\n{}",
                        self.stderr()
                    ),
                }
            };
            let line = line.trim();
            if line == "ready" {
                return;
            }
            if let Some(a) = line.strip_prefix("admin addr=") {
                self.admin = Some(a.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")));
            }
            if let Some(b) = line.strip_prefix("io backend=") {
                self.io_backend = Some(b.to_string());
            }
            if let Some(rest) = line.strip_prefix("listening ") {
                let (n, a) = listening_line(line, rest);
                self.addrs.insert(n, a);
            }
        }
    }

    /// The exit status if the child exits within `timeout`, else None (still running).
    fn exit_status_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no `listening name={name}` line; got {:?}", self.addrs))
    }

    /// The backend from the `io backend=<io_uring|epoll>` readiness line; None if the
    /// child printed no such line.
    pub fn io_backend(&self) -> Option<String> {
        self.io_backend.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `[admin]` address from the `admin addr=` line.
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("no `admin addr=` line: is [admin] in the config?")
    }

    /// Send a signal by name (`TERM`, `HUP`...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Wait for the process to exit (panics after `timeout`); its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.wait_exit_status(timeout).code()
    }

    /// [`Terminus::wait_exit`], the whole status (a signal shows, e.g. SIGSYS from a
    /// seccomp filter).
    pub fn wait_exit_status(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_with_deadline(&mut self.child, timeout)
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Panics if the process has exited (a crash while handling a bad client, say).
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "terminus exited unexpectedly with {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }
}

/// `name=N addr=A` of a `listening ...` line (`rest`, the part after `listening `).
fn listening_line(line: &str, rest: &str) -> (String, SocketAddr) {
    let mut name = None;
    let mut addr = None;
    for field in rest.split_whitespace() {
        if let Some(v) = field.strip_prefix("name=") {
            name = Some(v.to_string());
        } else if let Some(v) = field.strip_prefix("addr=") {
            addr = Some(
                v.parse::<SocketAddr>()
                    .unwrap_or_else(|e| panic!("bad addr in {line:?}: {e}")),
            );
        }
    }
    match (name, addr) {
        (Some(n), Some(a)) => {
            assert_ne!(a.port(), 0, "terminus printed port 0: {line:?}");
            (n, a)
        }
        _ => panic!("malformed listening line {line:?}"),
    }
}

impl Drop for Terminus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a terminus command to completion with a deadline; returns (status code, stdout,
/// stderr). Panics if it has not exited by then.
pub fn run_to_exit(args: &[&OsStr], timeout: Duration) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_command_to_exit(cmd, timeout)
}

/// `terminus check --config CONFIG` to completion (20 s at most): (status code,
/// stdout, stderr).
pub fn run_check(config: &Path) -> (Option<i32>, String, String) {
    let args = ["check".as_ref(), "--config".as_ref(), config.as_os_str()];
    run_to_exit(&args, Duration::from_secs(20))
}

/// [`run_to_exit`] for any command (terminus under a prefix, say).
pub fn run_command_to_exit(cmd: Command, timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = super::spawn_piped(cmd, Stdio::null());
    let out = collect_pipe(child.stdout.take().unwrap());
    let err = collect_pipe(child.stderr.take().unwrap());
    let status = wait_with_deadline(&mut child, timeout);
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// The environment variable whose whitespace-separated words go right in front of the
/// terminus binary of every server child (after a test's own prefix), so that a whole
/// suite can run under a wrapper, e.g. `terminus-seccomp-exec --profile FILE --strict --`.
pub const PREFIX_ENV: &str = "TERMINUS_TEST_PREFIX";

/// `PREFIX... $TERMINUS_TEST_PREFIX... terminus` (just `terminus` when both are empty),
/// arguments still to add.
pub fn command_with_prefix(prefix: &[&str]) -> Command {
    let env = std::env::var(PREFIX_ENV).unwrap_or_default();
    let mut words = prefix
        .iter()
        .copied()
        .chain(env.split_whitespace())
        .chain([bin()]);
    let mut c = Command::new(words.next().expect("at least the binary"));
    c.args(words);
    c
}

fn collect_pipe<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    })
}

/// Wait for a child to exit, killing it and panicking if it takes longer than `timeout`.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child process did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How to start a `terminus run` child ([`Terminus::builder`]). By default: no
/// arguments after `run`, no prefix, the test process' environment, and the
/// `TERMINUS_IO` backend check.
#[derive(Default)]
pub struct TerminusBuilder {
    prefix: Vec<String>,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    io_from_config: bool,
}

impl TerminusBuilder {
    /// `run --config FILE`.
    pub fn config(mut self, config: &Path) -> Self {
        self.args.extend(["--config".into(), config.into()]);
        self
    }

    /// `run ARGS...` (the one-command mode's flags, say).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// The child's working directory (relative paths in flags resolve from it).
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// A command prefix such as `["taskset", "-c", "0"]` ([`command_with_prefix`]).
    pub fn prefix(mut self, prefix: &[&str]) -> Self {
        self.prefix.extend(prefix.iter().map(|w| w.to_string()));
        self
    }

    /// An extra environment variable for the child (`NOTIFY_SOCKET`, say).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.into(), value.as_ref().to_os_string()));
        self
    }

    /// `TERMINUS_IO` removed from the child's environment, so that the config alone
    /// picks the backend (the `auto` tests of tests/other/seccomp.rs must test `auto` even
    /// in a suite run under `TERMINUS_IO=epoll`). No backend check: the test asserts
    /// [`Terminus::io_backend`] itself.
    pub fn io_from_config(mut self) -> Self {
        self.io_from_config = true;
        self
    }

    /// Spawn and wait for `ready`; panics (with the child's stderr) if it does not
    /// come, or if the `io backend=` line is not the one `TERMINUS_IO` forces.
    pub fn start(self) -> Terminus {
        let prefix: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        let mut cmd = command_with_prefix(&prefix);
        cmd.arg("run").args(&self.args).envs(self.env);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if self.io_from_config {
            cmd.env_remove(IO_ENV);
            Terminus::spawn(cmd, None)
        } else {
            Terminus::spawn(cmd, forced_io_backend())
        }
    }
}

/// A whole set-up: a PKI, a config with the given listeners, and a running terminus.
pub struct Proxy {
    pub term: Terminus,
    pub pki: Pki,
}

impl Proxy {
    pub fn start(workers: Option<usize>, listeners: &[ListenerConf]) -> Proxy {
        let pki = Pki::generate();
        let config = write_config(&pki, workers, listeners);
        let term = Terminus::start(&config);
        Proxy { term, pki }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.term.addr(name)
    }

    pub fn client(&self) -> Arc<ClientConfig> {
        client_config(&self.pki, rustls::ALL_VERSIONS, &[])
    }
}

impl Terminus {
    /// Wait (bounded by `timeout`) until the child's stderr contains `needle`; the
    /// stderr collected so far. Panics on timeout.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let err = self.stderr();
            if err.contains(needle) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stderr within {timeout:?}; stderr:\n{err}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The next datagram on a `NOTIFY_SOCKET` socket as text; panics after the socket's
/// read timeout.
pub fn recv_notify(sock: &std::os::unix::net::UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no {what} datagram on NOTIFY_SOCKET: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
