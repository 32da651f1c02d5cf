//! External programs (curl, openssl, socat, HAProxy) as children whose output is
//! collected; `openssl s_server` as a TLS upstream; free ports for the tools that
//! cannot listen on port 0.

use super::wait_with_deadline;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A child process whose stdout/stderr are collected by threads as they arrive; killed
/// on drop.
pub struct Spawned {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Spawned {
    pub fn new(cmd: Command) -> Spawned {
        let mut child = spawn_piped(cmd, Stdio::piped());
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
            collect_into(pipe, sink);
        }
        let stdin = child.stdin.take();
        Spawned {
            child,
            stdin,
            out,
            err,
        }
    }

    /// Write `bytes` to the child's stdin and flush.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
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

    /// Wait until stdout contains `needle`; panics after `timeout` with both outputs.
    pub fn expect_stdout(&self, needle: &str, timeout: Duration) {
        assert!(
            self.wait_stdout_contains(needle, timeout),
            "{needle:?} never arrived; stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
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

/// Spawn `cmd` with `stdin` and its stdout and stderr piped (panics if it cannot).
pub fn spawn_piped(mut cmd: Command, stdin: Stdio) -> Child {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// A thread that appends what `pipe` yields to `sink` until EOF, so the child never
/// blocks on a full pipe and the test reads its output at any time.
pub fn collect_into(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) {
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

/// A port on 127.0.0.1 free a moment ago (bound and released), for the tools that
/// cannot listen on port 0 and report it (HAProxy, socat).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_server` on 127.0.0.1:0 serving `cert`/`key` (files in `dir`) and
/// verifying client certificates against `client_ca`, with `mode`'s options (`-www
/// -Verify 1`, `-rev -naccept 1 -Verify 2 -verify_return_error`...); waits (bounded)
/// for its ACCEPT line and returns the address it names.
pub fn openssl_s_server(
    dir: &Path,
    cert: &str,
    key: &str,
    client_ca: &str,
    mode: &[&str],
) -> (Spawned, SocketAddr) {
    require_tool("openssl");
    let mut cmd = Command::new("openssl");
    cmd.arg("s_server")
        .args(["-accept", "127.0.0.1:0"])
        .args(mode)
        .arg("-cert")
        .arg(dir.join(cert))
        .arg("-key")
        .arg(dir.join(key))
        .arg("-CAfile")
        .arg(dir.join(client_ca));
    let s = Spawned::new(cmd);
    assert!(
        s.wait_stdout_contains("ACCEPT", Duration::from_secs(10)),
        "s_server did not start; stdout:\n{}\nstderr:\n{}",
        s.stdout(),
        s.stderr()
    );
    let out = s.stdout();
    let addr = out
        .lines()
        .find_map(|l| l.strip_prefix("ACCEPT "))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in s_server's ACCEPT line: {out}"));
    (s, addr)
}

/// `openssl s_client -connect ADDR -CAfile CA -servername localhost
/// -verify_return_error` (the test PKI's name), more arguments still to add.
pub fn openssl_s_client(addr: SocketAddr, ca: &Path) -> Command {
    require_tool("openssl");
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(["-servername", "localhost", "-verify_return_error"]);
    cmd
}
