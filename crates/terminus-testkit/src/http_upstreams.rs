//! http_upstreams: two small upstreams for the HTTP/2 proxy tests, real servers on
//! real sockets. [`Http1Upstream`]: HTTP/1.1, blocking, a thread per connection;
//! its routes echo a body (`/echo`), answer chunked with trailers (`/chunked`),
//! close-delimited (`/close-delimited`), or with the request head as received
//! (`/head`), anything else with its path and connection number; it can say
//! `Connection: close` on every response. [`H2Upstream`]: HTTP/2 (the `h2` crate on
//! a current-thread tokio runtime of its own thread) that sends GOAWAY once a
//! connection has taken N streams.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An HTTP/1.1 upstream (see the module doc).
pub struct Http1Upstream {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Http1Upstream {
    /// `close_every`: every response says `Connection: close`, then the
    /// connection is closed.
    pub fn start(close_every: bool) -> Http1Upstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("local addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let h = h.clone();
                std::thread::spawn(move || serve(s, n, close_every, &h));
            }
        });
        Http1Upstream { addr, conns, heads }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Every request head received so far, as received.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn read_line(r: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

/// A request head (through its empty line), or None at EOF.
fn read_head(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let line = read_line(r)?;
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body after `head`: Content-Length or chunked (trailers read and dropped).
fn read_body(r: &mut impl BufRead, head: &str) -> Option<Vec<u8>> {
    let chunked = field(head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    if !chunked {
        let n: usize = field(head, "content-length").map_or(Some(0), |v| v.parse().ok())?;
        let mut body = vec![0; n];
        r.read_exact(&mut body).ok()?;
        return Some(body);
    }
    let mut body = Vec::new();
    loop {
        let size = read_line(r)?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            while read_line(r)? != "\r\n" {}
            return Some(body);
        }
        let at = body.len();
        body.resize(at + n + 2, 0);
        r.read_exact(&mut body[at..]).ok()?;
        body.truncate(at + n);
    }
}

fn serve(s: TcpStream, conn: usize, close_every: bool, heads: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(r) = s.try_clone() else { return };
    let mut r = BufReader::new(r);
    let mut w = s;
    while let Some(head) = read_head(&mut r) {
        let Some(body) = read_body(&mut r, &head) else {
            return;
        };
        heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(head.clone());
        let close = close_every || field(&head, "connection") == Some("close");
        let conn_field = if close { "Connection: close\r\n" } else { "" };
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let out: Vec<u8> = match path.as_str() {
            "/chunked" => format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\
                 {conn_field}\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: 42\r\n\r\n"
            )
            .into_bytes(),
            "/close-delimited" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-");
                let _ = w.flush();
                std::thread::sleep(Duration::from_millis(50));
                let _ = w.write_all(b"delimited body");
                return;
            }
            _ => {
                let body = match path.as_str() {
                    "/echo" => body,
                    "/head" => head.into_bytes(),
                    _ => format!("{path} conn={conn}").into_bytes(),
                };
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n{conn_field}\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(&body);
                out
            }
        };
        if w.write_all(&out).is_err() || close {
            return;
        }
    }
}

/// An HTTP/2 upstream (cleartext, prior knowledge) that sends GOAWAY (graceful:
/// the streams it took finish) once a connection has taken `goaway_after` streams;
/// each response's body is `conn=C stream=K`.
pub struct H2Upstream {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
}

impl H2Upstream {
    pub fn start(goaway_after: usize) -> H2Upstream {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let streams = Arc::new(AtomicUsize::new(0));
        let (c, st) = (conns.clone(), streams.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                while let Ok((s, _)) = l.accept().await {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::spawn(serve_h2(s, n, goaway_after, st.clone()));
                }
            });
        });
        H2Upstream {
            addr,
            conns,
            streams,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Streams taken so far, over every connection.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

async fn serve_h2(
    s: tokio::net::TcpStream,
    conn: usize,
    goaway_after: usize,
    total: Arc<AtomicUsize>,
) {
    let Ok(mut h) = h2::server::handshake(s).await else {
        return;
    };
    let mut taken = 0;
    while let Some(Ok((_req, mut respond))) = h.accept().await {
        taken += 1;
        total.fetch_add(1, Ordering::SeqCst);
        if taken == goaway_after {
            h.graceful_shutdown();
        }
        let body = bytes::Bytes::from(format!("conn={conn} stream={taken}"));
        if let Ok(mut s) = respond.send_response(http::Response::new(()), false) {
            let _ = s.send_data(body, true);
        }
    }
}
