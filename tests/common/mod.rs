//! Shared helpers for the real-socket integration tests.
//!
//! Everything here talks to a real `terminus run` child process over real sockets on
//! 127.0.0.1: a temporary test PKI made by `terminus certs`, a config writer, a child
//! guard that waits for the `ready` line and kills the process on drop, in-process
//! backends (std threads), a rustls client trusting the generated CA, and readers for
//! `/proc`. Every wait is bounded: sockets carry read/write timeouts and every poll
//! has a deadline, so a hung proxy fails a test instead of hanging the suite.

#![allow(dead_code)] // each test binary uses a different subset

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use terminus::tools::client::{ClientConfigBuilder, Trust};

/// Read/write timeout of every test socket: a proxy that stops moving bytes fails the
/// test after this long instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `terminus run` child may take to print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket timeout inside the backends (they outlive nothing: the test's drop stops them).
const BACKEND_IO_TIMEOUT: Duration = Duration::from_secs(60);

pub const MIB: usize = 1024 * 1024;

/// Serialises the tests that move hundreds of MiB or open hundreds of connections, so
/// that on a 2-core machine they do not starve each other (or the timing-sensitive
/// tests) of CPU.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The terminus binary under test; `TERMINUS_BIN` points the suite at another
/// build (e.g. the previous commit's, for before/after figures).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TERMINUS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_terminus").into())
    })
}

// ---------------------------------------------------------------------------------
// Temporary directory and PKI
// ---------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "terminus-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Echo every byte back until the peer's EOF, then shut down the write side.
pub fn echo_until_eof(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                let _ = s.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The test PKI of `terminus certs` (`terminus::tools::certs::generate`, the same
/// defaults: 365 days, trust domain `example.org`) written into its own temp dir.
/// Configs are written into the same dir so that `cert = "server.pem"` resolves next
/// to them.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = TempDir::new("pki");
        terminus::tools::certs::generate(dir.path(), 365, "example.org")
            .unwrap_or_else(|e| panic!("test PKI in {}: {e:#}", dir.path().display()));
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca_pem()).expect("open ca.pem") {
            roots
                .add(cert.expect("parse ca.pem"))
                .expect("add CA to root store");
        }
        assert!(!roots.is_empty(), "ca.pem holds no certificate");
        roots
    }
}

// ---------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------

/// One `[[listeners]]` table. `cert`/`key` are always the PKI's server.pem/server.key,
/// given relative to the config file's folder.
#[derive(Clone)]
pub struct ListenerConf {
    pub name: String,
    pub upstreams: Vec<SocketAddr>,
    /// Extra `key = value` lines, value already in TOML syntax.
    pub extra: Vec<(String, String)>,
    /// Raw TOML written after the listener's keys: its sub-tables
    /// (`[listeners.client_auth]`, `[[listeners.sni]]`...), which must follow them.
    pub tables: Vec<String>,
}

impl ListenerConf {
    pub fn new(name: &str, upstreams: &[SocketAddr]) -> ListenerConf {
        ListenerConf {
            name: name.to_string(),
            upstreams: upstreams.to_vec(),
            extra: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Add `key = value` (value in TOML syntax, e.g. `"500"` or `r#"["http/1.1"]"#`).
    pub fn opt(mut self, key: &str, toml_value: &str) -> ListenerConf {
        self.extra.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Append raw TOML at the end of this listener's block, e.g.
    /// `"[listeners.client_auth]\nmode = \"require\"\n"`.
    pub fn raw(mut self, toml: &str) -> ListenerConf {
        self.tables.push(toml.to_string());
        self
    }
}

/// Write `NAME.toml` into the PKI dir and return its path.
pub fn write_config(pki: &Pki, workers: Option<usize>, listeners: &[ListenerConf]) -> PathBuf {
    write_config_with_log(pki, workers, listeners, "off")
}

/// [`write_config`] with `[log] access = ACCESS` (`"off"`, `"stderr"`, or a file path,
/// relative to the PKI dir).
pub fn write_config_with_log(
    pki: &Pki,
    workers: Option<usize>,
    listeners: &[ListenerConf],
    access: &str,
) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let mut s = String::new();
    if let Some(w) = workers {
        writeln!(s, "[runtime]\nworkers = {w}\n").unwrap();
    }
    writeln!(s, "[log]\naccess = {access:?}\n").unwrap();
    for l in listeners {
        let ups: Vec<String> = l.upstreams.iter().map(|a| format!("\"{a}\"")).collect();
        writeln!(s, "[[listeners]]").unwrap();
        writeln!(s, "name = \"{}\"", l.name).unwrap();
        writeln!(s, "listen = \"127.0.0.1:0\"").unwrap();
        writeln!(s, "cert = \"server.pem\"").unwrap();
        writeln!(s, "key = \"server.key\"").unwrap();
        writeln!(s, "upstreams = [{}]", ups.join(", ")).unwrap();
        for (k, v) in &l.extra {
            writeln!(s, "{k} = {v}").unwrap();
        }
        for t in &l.tables {
            s.push_str(t);
            if !t.ends_with('\n') {
                s.push('\n');
            }
        }
        s.push('\n');
    }
    let path = pki.dir().join(format!(
        "terminus-{}.toml",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, s).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------
// The `terminus run` child
// ---------------------------------------------------------------------------------

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
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Terminus {
    /// Spawn and wait for `ready`; panics (with the child's stderr) if it does not come.
    pub fn start(config: &Path) -> Terminus {
        Terminus::start_with_prefix(&[], config)
    }

    /// Same, with a command prefix such as `["taskset", "-c", "0"]`.
    pub fn start_with_prefix(prefix: &[&str], config: &Path) -> Terminus {
        raise_fd_limit();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn `terminus run`");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

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
            stderr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    if line == "ready" {
                        break;
                    }
                    if let Some(a) = line.strip_prefix("admin addr=") {
                        t.admin = Some(a.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")));
                    }
                    if let Some(rest) = line.strip_prefix("listening ") {
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
                                t.addrs.insert(n, a);
                            }
                            _ => panic!("malformed listening line {line:?}"),
                        }
                    }
                }
                Err(_) => {
                    let status = t.child.try_wait().ok().flatten();
                    panic!(
                        "terminus did not print `ready` within {READY_TIMEOUT:?} (exit status: \
                         {status:?}); stderr:\n{}",
                        t.stderr()
                    );
                }
            }
        }
        t
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .addrs
            .get(name)
            .unwrap_or_else(|| panic!("no `listening name={name}` line; got {:?}", self.addrs))
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
        wait_with_deadline(&mut self.child, timeout).code()
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

impl Drop for Terminus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a terminus command to completion with a deadline; returns (status code, stdout,
/// stderr). Panics if it has not exited by then.
pub fn run_to_exit(args: &[&std::ffi::OsStr], timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn terminus");
    let out = collect_pipe(child.stdout.take().unwrap());
    let err = collect_pipe(child.stderr.take().unwrap());
    let status = wait_with_deadline(&mut child, timeout);
    (status.code(), out.join().unwrap(), err.join().unwrap())
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

// ---------------------------------------------------------------------------------
// /proc readers
// ---------------------------------------------------------------------------------

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("parse {field} in {line:?}: {e}"));
            return kib * 1024;
        }
    }
    panic!("no {field} in /proc/{pid}/status");
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

// ---------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------

/// A reproducible byte stream (xorshift64*): the sender and the checker make the same
/// bytes from the same seed, so nothing large is held in memory.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Pattern::new(seed).fill(&mut v);
        v
    }

    /// sha256 of the first `len` bytes of the stream for `seed`, generated in the same
    /// chunk size the senders use (the stream depends on chunking only at 8-byte
    /// granularity, and every chunk size used here is a multiple of 8).
    pub fn sha256(seed: u64, len: u64) -> [u8; 32] {
        let mut p = Pattern::new(seed);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize().into()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------
// Backends (std threads in the test process)
// ---------------------------------------------------------------------------------

/// Counters a backend keeps, readable by the test.
#[derive(Default)]
pub struct BackendStats {
    pub accepted: AtomicUsize,
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
    /// Bytes written to connections so far (the flood server's progress).
    pub written: AtomicU64,
    /// One line per finished connection, for handlers that report something.
    pub reports: Mutex<Vec<String>>,
}

type Handler = Arc<dyn Fn(TcpStream, &BackendStats) + Send + Sync>;

/// A TCP server on 127.0.0.1:0 running `handler` on a thread per connection.
/// Stops accepting on drop; connection threads end with their connection.
pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub stats: Arc<BackendStats>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn spawn(handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(BackendStats::default());
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let accept_thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(BACKEND_IO_TIMEOUT));
                let _ = conn.set_write_timeout(Some(BACKEND_IO_TIMEOUT));
                let _ = conn.set_nodelay(true);
                stats2.accepted.fetch_add(1, Ordering::SeqCst);
                let now = stats2.active.fetch_add(1, Ordering::SeqCst) + 1;
                stats2.max_active.fetch_max(now, Ordering::SeqCst);
                let (h, st) = (handler.clone(), stats2.clone());
                thread::spawn(move || {
                    h(conn, &st);
                    st.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            addr,
            stop,
            stats,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    pub fn max_active(&self) -> usize {
        self.stats.max_active.load(Ordering::SeqCst)
    }

    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::SeqCst)
    }

    pub fn reports(&self) -> Vec<String> {
        self.stats.reports.lock().unwrap().clone()
    }

    /// Poll until `n` reports arrived (bounded by `timeout`).
    pub fn wait_reports(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.reports();
            if r.len() >= n || Instant::now() >= deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Echo every byte back; on EOF from the peer, shut down the write side.
    pub fn echo() -> Backend {
        Backend::spawn(Arc::new(|mut s: TcpStream, _st: &BackendStats| {
            echo_until_eof(&mut s)
        }))
    }

    /// Echo, and report how the connection ended: `"eof <n>"` (FIN after n bytes),
    /// `"reset <n>"` (ECONNRESET) or `"error <n> <kind>"`.
    pub fn echo_observed() -> Backend {
        Backend::spawn(Arc::new(|mut s: TcpStream, st: &BackendStats| {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            let end = loop {
                match s.read(&mut buf) {
                    Ok(0) => break format!("eof {total}"),
                    Ok(n) => {
                        total += n;
                        if let Err(e) = s.write_all(&buf[..n]) {
                            break format!("error {total} {:?}", e.kind());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        break format!("reset {total}")
                    }
                    Err(e) => break format!("error {total} {:?}", e.kind()),
                }
            };
            st.reports.lock().unwrap().push(end);
        }))
    }

    /// Reads `n` bytes, then aborts the connection with a TCP RST (SO_LINGER 0).
    pub fn reset_after(n: usize) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendStats| {
            let mut buf = vec![0u8; n];
            if s.read_exact(&mut buf).is_ok() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                st.reports.lock().unwrap().push(format!("reset after {n}"));
            }
        }))
    }

    /// A minimal HTTP/1.1 server: reads one request head, answers 200 with `body` and
    /// `Connection: close`, then closes.
    pub fn http(body: &'static [u8]) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendStats| {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            st.reports.lock().unwrap().push(first);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
            let _ = s.write_all(body);
            let _ = s.shutdown(Shutdown::Write);
            // Drain whatever the client still sends, until it closes.
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }))
    }

    /// Writes `total` bytes of `Pattern::new(seed)` to every connection (progress in
    /// `stats.written`), then closes. Reads nothing.
    pub fn flood(total: u64, seed: u64) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendStats| {
            let mut p = Pattern::new(seed);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                p.fill(&mut buf[..n]);
                if s.write_all(&buf[..n]).is_err() {
                    st.reports
                        .lock()
                        .unwrap()
                        .push(format!("write failed after {}", total - left));
                    return;
                }
                left -= n as u64;
                st.written.fetch_add(n as u64, Ordering::SeqCst);
            }
            let _ = s.shutdown(Shutdown::Write);
            st.reports.lock().unwrap().push(format!("wrote {total}"));
            // Keep the socket until the peer closes, so the FIN is the only close signal.
            let mut b = [0u8; 1024];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
            }
        }))
    }

    /// Reads to EOF (the proxy's SHUT_WR), then replies `"<len> <sha256 hex>\n"` and
    /// closes. The reply can only arrive if the other direction still flows after the
    /// half-close.
    pub fn digest() -> Backend {
        Backend::spawn(Arc::new(|mut s: TcpStream, st: &BackendStats| {
            let mut h = Sha256::new();
            let mut len = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        len += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        st.reports
                            .lock()
                            .unwrap()
                            .push(format!("read error after {len}: {e}"));
                        return;
                    }
                }
            }
            let line = format!("{len} {}\n", hex(&h.finalize()));
            st.reports.lock().unwrap().push(line.trim().to_string());
            let _ = s.write_all(line.as_bytes());
            let _ = s.shutdown(Shutdown::Write);
        }))
    }

    /// Writes `greeting`, shuts down its write side (FIN), then reads to EOF and reports
    /// `"<len> <sha256 hex>"` of what it read (or the read error).
    pub fn greet_then_fin(greeting: &'static [u8]) -> Backend {
        Backend::spawn(Arc::new(move |mut s: TcpStream, st: &BackendStats| {
            if s.write_all(greeting).is_err() {
                return;
            }
            let _ = s.shutdown(Shutdown::Write);
            let mut h = Sha256::new();
            let mut len = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.update(&buf[..n]);
                        len += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        st.reports
                            .lock()
                            .unwrap()
                            .push(format!("read error after {len}: {e}"));
                        return;
                    }
                }
            }
            st.reports
                .lock()
                .unwrap()
                .push(format!("{len} {}", hex(&h.finalize())));
        }))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// An address on 127.0.0.1 where nothing listens (connects are refused): bind port 0,
/// note the port, close the socket.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

// ---------------------------------------------------------------------------------
// TLS client (rustls, aws-lc-rs)
// ---------------------------------------------------------------------------------

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client config trusting the PKI's CA, with the given versions and ALPN list
/// (`terminus::tools::client`). Resumption uses rustls' default in-memory cache
/// (shared by every connection made with the returned config).
pub fn client_config(
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    ClientConfigBuilder::new(Trust::Roots(pki.roots()))
        .versions(versions)
        .alpn(alpn)
        .build()
        .expect("client config")
}

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// TCP connect and complete the TLS handshake (server name `localhost`).
pub fn try_tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> io::Result<Tls> {
    let sock = tcp_connect(addr);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    let deadline = Instant::now() + IO_TIMEOUT;
    while tls.conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "handshake did not finish",
            ));
        }
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

pub fn tls_connect(addr: SocketAddr, cfg: &Arc<ClientConfig>) -> Tls {
    try_tls_connect(addr, cfg).unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"))
}

/// Abort a connection with a TCP RST (SO_LINGER 0, then close).
pub fn reset_connection(sock: TcpStream) {
    socket2::SockRef::from(&sock)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(sock);
}

/// Read exactly `n` bytes, with a useful message on failure.
pub fn read_n(r: &mut impl Read, n: usize, what: &str) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut v[got..]) {
            Ok(0) => panic!("{what}: connection closed after {got} of {n} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: read failed after {got} of {n} bytes: {e} ({:?})",
                e.kind()
            ),
        }
    }
    v
}

/// Write `data`, then read the same number of bytes back and compare.
pub fn echo_round_trip(tls: &mut Tls, data: &[u8], what: &str) {
    tls.write_all(data)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    tls.flush().unwrap_or_else(|e| panic!("{what}: flush: {e}"));
    let back = read_n(tls, data.len(), what);
    assert!(
        back == data,
        "{what}: echoed bytes differ from the bytes sent"
    );
}

/// How a connection ended from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// TLS: a close_notify (rustls reader returned Ok(0)); raw TCP: FIN.
    Clean,
    /// TLS: TCP EOF without close_notify.
    UncleanEof,
    /// ECONNRESET / broken pipe.
    Reset,
    /// Any other error (TLS alert received, decode error, ...).
    Error(String),
}

/// Read until the peer ends the connection; returns everything read and how it ended.
/// A read timeout panics: the peer never closed.
pub fn read_to_end_tls(tls: &mut Tls, limit: usize, what: &str) -> (Vec<u8>, Ending) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (data, Ending::Clean),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                assert!(
                    data.len() <= limit,
                    "{what}: more than {limit} bytes received"
                );
            }
            Err(e) => return (data, classify(e, what)),
        }
    }
}

/// Raw TCP: read until FIN/RST; a timeout panics.
pub fn read_to_end_raw(s: &mut TcpStream, what: &str) -> (Vec<u8>, Ending) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (data, Ending::Clean),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                assert!(data.len() <= MIB, "{what}: more than 1 MiB received");
            }
            Err(e) => return (data, classify(e, what)),
        }
    }
}

fn classify(e: io::Error, what: &str) -> Ending {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            panic!("{what}: the proxy neither sent data nor closed within {IO_TIMEOUT:?}")
        }
        ErrorKind::UnexpectedEof => Ending::UncleanEof,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Ending::Reset
        }
        _ => Ending::Error(format!("{e} ({:?})", e.kind())),
    }
}

/// The first TLS alert in raw bytes from the server: `(level, description)`.
pub fn first_alert(bytes: &[u8]) -> Option<(u8, u8)> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest[0] == 0x15 && rest.len() >= 7 {
            return Some((rest[5], rest[6]));
        }
        if rest.len() < 5 + len {
            break;
        }
        rest = &rest[5 + len..];
    }
    None
}

/// A real ClientHello record as rustls sends it (TLS 1.2 + 1.3, SNI localhost).
pub fn rustls_client_hello(pki: &Pki) -> Vec<u8> {
    let cfg = client_config(pki, rustls::ALL_VERSIONS, &[]);
    let mut conn =
        ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls to Vec");
    }
    assert_eq!(out[0], 0x16, "not a handshake record");
    assert_eq!(out[5], 0x01, "not a ClientHello");
    out
}

/// A ClientHello of a TLS 1.0-only client (as `openssl s_client -tls1` would send:
/// record and client_version 3.1, no supported_versions, no signature_algorithms).
pub fn tls10_client_hello() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x01]); // client_version TLS 1.0
    body.extend_from_slice(&Pattern::bytes(10, 32)); // random
    body.push(0); // session id
    let suites: [u16; 5] = [0xc014, 0xc013, 0x0035, 0x002f, 0x00ff];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    // server_name: localhost
    let host = b"localhost";
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&((host.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(host.len() as u16).to_be_bytes());
    ext.extend_from_slice(host);
    // supported_groups: secp256r1, secp384r1
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x18]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    handshake_record(0x01, &body, [0x03, 0x01])
}

/// Wrap a handshake message body in a handshake header and one plaintext record.
pub fn handshake_record(msg_type: u8, body: &[u8], record_version: [u8; 2]) -> Vec<u8> {
    let mut hs = vec![msg_type];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(body);
    let mut rec = vec![0x16, record_version[0], record_version[1]];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

// ---------------------------------------------------------------------------------
// External clients (curl, openssl)
// ---------------------------------------------------------------------------------

/// A child process whose stdout/stderr are collected by threads as they arrive; killed
/// on drop.
pub struct Spawned {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Spawned {
    pub fn new(mut cmd: Command) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                out.clone(),
            ),
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                err.clone(),
            ),
        ] {
            let mut pipe = pipe;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let stdin = child.stdin.take();
        Spawned {
            child,
            stdin,
            out,
            err,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Poll until stdout contains `needle`; false on timeout.
    pub fn wait_stdout_contains(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stdout().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.stdout().contains(needle)
    }

    /// Close stdin, then wait for exit (panics after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.stdin.take();
        wait_with_deadline(&mut self.child, timeout)
    }

    /// Wait for exit with stdin still open (so the exit is the peer's doing); `None`
    /// if it is still running after `timeout`.
    pub fn wait_stdin_open(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with a clear message if an external tool the tests rely on is missing
/// (`.ci/run` installs them; the suite must not silently skip).
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not on PATH; install it (`.ci/run` does: apt-get install {name})"
    );
}

/// One HTTP/1.1 GET with `Connection: close`; (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tcp_connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
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
