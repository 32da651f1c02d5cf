//! Backends in the test process (std threads): echo, observers, resetters, HTTP,
//! floods, digests.

use super::{hex, Pattern};
use sha2::{Digest, Sha256};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Socket timeout inside the backends (they outlive nothing: the test's drop stops them).
const BACKEND_IO_TIMEOUT: Duration = Duration::from_secs(60);

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
        Backend::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), handler).expect("bind backend")
    }

    /// [`Backend::spawn`] on a chosen address (e.g. 127.0.0.2 with another backend's
    /// port, for upstreams by name).
    pub fn spawn_on(addr: SocketAddr, handler: Handler) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr)?;
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
        Ok(Backend {
            addr,
            stop,
            stats,
            accept_thread: Some(accept_thread),
        })
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

    /// [`Backend::echo`] on a chosen address.
    pub fn echo_on(addr: SocketAddr) -> std::io::Result<Backend> {
        Backend::spawn_on(
            addr,
            Arc::new(|mut s: TcpStream, _st: &BackendStats| echo_until_eof(&mut s)),
        )
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
            if !read_head(&mut s, &mut head, 64 * 1024) {
                return;
            }
            let first = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            st.reports.lock().unwrap().push(first);
            http_ok_then_drain(&mut s, body);
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
            let Some((len, sha)) = read_to_eof_digest(&mut s, st) else {
                return;
            };
            let line = format!("{len} {sha}\n");
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
            if let Some((len, sha)) = read_to_eof_digest(&mut s, st) {
                st.reports.lock().unwrap().push(format!("{len} {sha}"));
            }
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

/// An address on 127.0.0.1 where nothing listens (connects are refused): the port of
/// a socket bound, never listening, and held for the whole test process. A port
/// merely closed again could be taken by a listener of a test running beside
/// (it happened: a terminus listener there answered "refused" connections).
pub fn refused_addr() -> SocketAddr {
    static HELD: std::sync::OnceLock<socket2::Socket> = std::sync::OnceLock::new();
    let s = HELD.get_or_init(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&any.into()).unwrap();
        s
    });
    s.local_addr().unwrap().as_socket().unwrap()
}

/// Reads `s` to EOF: its length and SHA-256 (hex), or None after reporting the read
/// error in `st`.
fn read_to_eof_digest(s: &mut TcpStream, st: &BackendStats) -> Option<(u64, String)> {
    let mut h = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some((len, hex(&h.finalize()))),
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
                return None;
            }
        }
    }
}

/// Answers `200 OK` with `body` (`Connection: close`), shuts down the write side, then
/// drains whatever the client still sends until it closes.
pub fn http_ok_then_drain(s: &mut TcpStream, body: &[u8]) {
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    let _ = s.write_all(body);
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// One HTTP/1.1 request off `r`: its head (through the blank line) and its body as
/// sent (the Content-Length bytes, or the chunked framing through the last chunk);
/// None at EOF or on a read error.
pub fn read_http_request(r: &mut impl BufRead) -> Option<(String, String)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let lower = head.to_ascii_lowercase();
    let mut body = String::new();
    if let Some(n) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut b = vec![0u8; n];
        r.read_exact(&mut b).ok()?;
        body = String::from_utf8_lossy(&b).into_owned();
    } else if lower.contains("transfer-encoding: chunked") {
        while !body.ends_with("0\r\n\r\n") {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            body.push_str(&line);
        }
    }
    Some((head, body))
}

/// Read from `s` onto `head` until it holds a whole request head (up to the blank
/// line), or `limit` bytes; false if the peer closed or failed first.
pub fn read_head(s: &mut impl Read, head: &mut Vec<u8>, limit: usize) -> bool {
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < limit {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}
