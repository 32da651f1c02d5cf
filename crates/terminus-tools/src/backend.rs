//! `terminus backend`: a small non-blocking (mio, one thread) TCP backend to put
//! behind the terminator in benchmarks: `echo` (writes back what it reads), `source`
//! (writes an endless stream until the peer closes), `sink` (reads and discards).
//! Optional TLS (rustls, aws-lc-rs) so re-encryption can be measured. Holds tens of
//! thousands of idle connections: a connection costs its socket and a small struct.
#![forbid(unsafe_code)]

use crate::bench::stream::Stream;
use anyhow::{Context, Result};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Echo,
    Source,
    Sink,
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
/// Bytes one connection may move per event before the others get a turn.
const BUDGET: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// A running backend; stopped (and its thread joined) on drop.
pub struct Handle {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Stop serving: close the listener and every connection.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// TLS for the backend from a PEM certificate chain and key.
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let provider = terminus_core::tls::server_provider();
    let ck = terminus_core::tls::certified_key(cert, key, &provider)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    Ok(Arc::new(cfg))
}

/// Bind `addr` and serve on a new thread.
pub fn spawn(
    mode: Mode,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Handle> {
    crate::bench::raise_nofile();
    let mut listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let poll = Poll::new().context("cannot create a poller")?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::Builder::new()
        .name("terminus-backend".into())
        .spawn(move || serve(poll, listener, mode, tls, &st))
        .context("cannot spawn the backend thread")?;
    Ok(Handle {
        addr,
        stop,
        waker,
        thread: Some(thread),
    })
}

/// A non-blocking listener with a deep accept queue (std's and mio's 128 overflows
/// under a connect/close benchmark, and an overflow costs the client a 1 s SYN retry).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(TcpListener::from_std(s.into()))
}

struct Conn {
    stream: Stream,
    /// Echo: bytes read but not yet written back (the peer is slow to read).
    pending: Vec<u8>,
    pos: usize,
}

fn serve(
    mut poll: Poll,
    listener: TcpListener,
    mode: Mode,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: &AtomicBool,
) {
    let mut events = Events::with_capacity(1024);
    let mut slots = Slots::default();
    let mut requeue: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let source: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    while !stop.load(Ordering::SeqCst) {
        let wait = if requeue.is_empty() {
            None
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, wait) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            eprintln!("terminus: backend: poll failed: {e}");
            return;
        }
        let mut todo = std::mem::take(&mut requeue);
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => slots.accept_all(&poll, &listener, &tls, &mut todo),
                Token(i) => todo.push(i),
            }
        }
        todo.sort_unstable();
        todo.dedup();
        for i in todo {
            let Some(c) = slots.conns.get_mut(i).and_then(|c| c.as_mut()) else {
                continue;
            };
            match drive(c, mode, &mut buf, &source) {
                Step::Wait => {}
                Step::More => requeue.push(i),
                Step::Close => slots.close(&poll, i),
            }
        }
    }
}

/// The connections of one backend thread; a connection's index is its mio token.
#[derive(Default)]
struct Slots {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Slots {
    /// Accept until the listener would block; new connections go to `todo`.
    fn accept_all(
        &mut self,
        poll: &Poll,
        listener: &TcpListener,
        tls: &Option<Arc<rustls::ServerConfig>>,
        todo: &mut Vec<usize>,
    ) {
        loop {
            match listener.accept() {
                Ok((mut sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let tls_conn = match tls {
                        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                            Ok(c) => Some(c.into()),
                            Err(_) => continue,
                        },
                        None => None,
                    };
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    if poll
                        .registry()
                        .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        self.free.push(i);
                        continue;
                    }
                    self.conns[i] = Some(Conn {
                        stream: Stream::new(sock, tls_conn),
                        pending: Vec::new(),
                        pos: 0,
                    });
                    todo.push(i);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // Out of fds or the like: try again on the next event.
                Err(_) => break,
            }
        }
    }

    fn close(&mut self, poll: &Poll, i: usize) {
        if let Some(mut c) = self.conns[i].take() {
            let _ = poll.registry().deregister(&mut c.stream.sock);
            c.stream.close(false);
        }
        self.free.push(i);
    }
}

enum Step {
    /// Blocked on the socket: the next event resumes it.
    Wait,
    /// Budget used up with work left.
    More,
    Close,
}

fn drive(c: &mut Conn, mode: Mode, buf: &mut [u8], source: &[u8]) -> Step {
    match c.stream.handshake() {
        Ok(true) => {}
        Ok(false) => return Step::Wait,
        Err(_) => return Step::Close,
    }
    let mut budget = BUDGET;
    while budget > 0 {
        let step = match mode {
            Mode::Echo => echo(c, buf, &mut budget),
            Mode::Sink => match c.stream.read(buf) {
                Ok(0) => Some(Step::Close),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    None
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Some(Step::Wait),
                Err(_) => Some(Step::Close),
            },
            Mode::Source => send_source(c, buf, source, &mut budget),
        };
        if let Some(step) = step {
            return step;
        }
    }
    Step::More
}

/// One echo step: flush what waits, read, write it back. `None`: go on.
fn echo(c: &mut Conn, buf: &mut [u8], budget: &mut usize) -> Option<Step> {
    // Backpressure: read no more until what was read has been written.
    while c.pos < c.pending.len() {
        match c.stream.write(&c.pending[c.pos..]) {
            Ok(n) => c.pos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(Step::Wait),
            Err(_) => return Some(Step::Close),
        }
    }
    c.pending.clear();
    c.pos = 0;
    match c.stream.read(buf) {
        Ok(0) => Some(Step::Close),
        Ok(n) => {
            *budget = budget.saturating_sub(n);
            let mut w = 0;
            while w < n {
                match c.stream.write(&buf[w..n]) {
                    Ok(k) => w += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return Some(Step::Close),
                }
            }
            if w < n {
                c.pending.extend_from_slice(&buf[w..n]);
                return Some(Step::Wait);
            }
            None
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(Step::Wait),
        Err(_) => Some(Step::Close),
    }
}

/// One source step: notice the peer closing, then write `source`. `None`: go on.
fn send_source(c: &mut Conn, buf: &mut [u8], source: &[u8], budget: &mut usize) -> Option<Step> {
    // Notice the peer closing (and drain what it sends).
    match c.stream.read(buf) {
        Ok(0) => return Some(Step::Close),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Err(_) => return Some(Step::Close),
    }
    match c.stream.write(source) {
        Ok(n) => {
            *budget = budget.saturating_sub(n.max(1));
            None
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => Some(Step::Wait),
        Err(_) => Some(Step::Close),
    }
}

/// `terminus backend --listen ADDR [--mode M] [--tls-cert F --tls-key F]`: serve until
/// SIGINT/SIGTERM. Prints `listening addr=<ip:port>` once accepting.
pub fn run_cli(
    listen: &str,
    mode: Mode,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let addr = match std::net::ToSocketAddrs::to_socket_addrs(listen)
        .ok()
        .and_then(|mut a| a.next())
    {
        Some(a) => a,
        None => {
            eprintln!("terminus: backend: --listen {listen:?}: not HOST:PORT");
            return ExitCode::from(2);
        }
    };
    let tls = match (cert, key) {
        (Some(c), Some(k)) => match server_tls(c, k) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("terminus: backend: {e:#}");
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
        _ => {
            eprintln!("terminus: backend: --tls-cert and --tls-key go together");
            return ExitCode::from(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("terminus: backend: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    let mut h = match spawn(mode, addr, tls) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("terminus: backend: {e:#}");
            return ExitCode::from(1);
        }
    };
    println!("listening addr={}", h.addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    h.stop();
    ExitCode::SUCCESS
}
