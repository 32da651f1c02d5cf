//! admin: the operator's HTTP endpoint (`[admin] listen`): `/metrics` (Prometheus
//! text), `/healthz`, `/readyz`, `/callers` (JSON, see `callers`). Runs on its own
//! threads, never on a worker.
//!
//! Workers publish cumulative snapshots into a channel; a collector thread keeps the
//! latest per worker. A scrape renders from those and from atomics (active
//! connections, reload and log-drop counters) and reads /proc: it takes no lock a
//! worker holds and sends a worker nothing, so a scrape storm costs admin CPU only.
//! One short-lived thread per admin connection, at most `max_connections` at once
//! (more are closed at accept), each bounded by `timeout_ms`.
#![forbid(unsafe_code)]

use crate::config::Admin as AdminConfig;
use crate::runtime::listener::ListenerShared;
use crate::runtime::run_state::{RunState, RunStateCell};
use crate::telemetry::metrics::{self, GlobalView, ListenerView, WorkerSnapshot};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything a scrape reads.
pub struct AdminState {
    pub listeners: Vec<Arc<ListenerShared>>,
    pub state: Arc<RunStateCell>,
    /// Set once every worker accepts; `/readyz` is 503 before.
    pub ready: AtomicBool,
    /// Set by the first SIGTERM: `/readyz` is 503 from then on, while listeners may
    /// still accept for `drain_delay_ms`.
    pub drain_requested: AtomicBool,
    pub snapshots: Mutex<Vec<Option<WorkerSnapshot>>>,
    pub reloads: Arc<crate::ops::reload::ReloadStats>,
    pub log_dropped: Arc<AtomicU64>,
    pub workers: usize,
    pub io_backend: crate::runtime::driver::Backend,
}

impl AdminState {
    pub fn metrics_page(&self) -> String {
        let (totals, buffers, turns) = {
            let snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
            let buffers = snaps
                .iter()
                .flatten()
                .map(|s| (s.worker, s.buffered_bytes, s.buffer_cap_pauses))
                .collect();
            let turns = snaps
                .iter()
                .flatten()
                .map(|s| (s.worker, s.turns))
                .collect();
            (
                metrics::aggregate(self.listeners.len(), &snaps),
                buffers,
                turns,
            )
        };
        let views: Vec<ListenerView> = self
            .listeners
            .iter()
            .map(|l| {
                let live = l.live.load();
                ListenerView {
                    name: l.name.clone(),
                    active: l.active.load(Ordering::Relaxed) as u64,
                    upstreams: live.upstreams.addrs(),
                    upstreams_up: live.upstreams.up(std::time::Instant::now()),
                    resolve_errors: live.upstreams.resolve_errors(),
                    certs: live.cert_expiry.clone(),
                    chain_cache: live.tls.chain_cache_counts(),
                    ocsp: live.ocsp_next_update.clone(),
                    callers_evicted: l.callers.as_ref().map(|c| c.evicted()),
                }
            })
            .collect();
        let global = GlobalView {
            reloads_ok: self.reloads.ok.load(Ordering::Relaxed),
            reloads_error: self.reloads.error.load(Ordering::Relaxed),
            reload_last_ok: !self.reloads.last_failed.load(Ordering::Relaxed),
            reload_last_success_unix_ms: self.reloads.last_success_unix_ms.load(Ordering::Relaxed),
            access_log_dropped: self.log_dropped.load(Ordering::Relaxed),
            ocsp_refused: crate::tls::ocsp::REFUSED.load(Ordering::Relaxed),
            spiffe: {
                use crate::tls::workload as w;
                w::IN_USE.load(Ordering::Relaxed).then(|| {
                    (
                        w::UPDATES_SVID.load(Ordering::Relaxed),
                        w::UPDATES_BUNDLE.load(Ordering::Relaxed),
                        w::STREAM_UP.load(Ordering::Relaxed),
                        w::SVID_EXPIRED.load(Ordering::Relaxed),
                    )
                })
            },
            workers: self.workers,
            io_backend: self.io_backend.as_str(),
            draining: self.state.load() != RunState::Running
                || self.drain_requested.load(Ordering::Relaxed),
            buffers,
            turns,
        };
        metrics::render(&views, &totals, &global, &metrics::Process::read())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.drain_requested.load(Ordering::Relaxed)
            && self.state.load() == RunState::Running
    }
}

/// Start the collector and the HTTP threads; returns the sender workers publish on.
pub fn start(
    listener: TcpListener,
    cfg: &AdminConfig,
    st: Arc<AdminState>,
) -> std::io::Result<crossbeam_channel::Sender<WorkerSnapshot>> {
    // Room for a few snapshots per worker; a full channel drops (cumulative) ones.
    let (tx, rx) = crossbeam_channel::bounded::<WorkerSnapshot>(st.workers * 4 + 4);
    let collector = st.clone();
    std::thread::Builder::new()
        .name("terminus-metrics".into())
        .spawn(move || {
            for snap in rx {
                let mut all = collector
                    .snapshots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let i = snap.worker;
                if i < all.len() {
                    all[i] = Some(snap);
                }
            }
        })?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let max = cfg.max_connections;
    std::thread::Builder::new()
        .name("terminus-admin".into())
        .spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // EMFILE and friends: do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if busy.fetch_add(1, Ordering::Relaxed) >= max {
                    busy.fetch_sub(1, Ordering::Relaxed);
                    continue; // dropped: closed at once
                }
                let (st, conn_busy) = (st.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("terminus-admin-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _ = serve(stream, &st, timeout);
                        conn_busy.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
        })?;
    Ok(tx)
}

/// Largest request head accepted (scrapers send a few hundred bytes).
const MAX_HEAD: usize = 8192;

/// One request per connection, answered with `Connection: close`.
fn serve(mut s: TcpStream, st: &AdminState, timeout: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let (method, path) = match read_head(&mut s)? {
        Head::Request { method, path } => (method, path),
        Head::Closed => return Ok(()),
        Head::Refused { status, body } => {
            return respond(&mut s, status, "text/plain", body, false)
        }
    };
    let head = method == "HEAD";
    if method != "GET" && !head {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET or HEAD\n",
            head,
        );
    }
    let (path, query) = path.split_once('?').unwrap_or((&path, ""));
    if path == "/callers" {
        return callers(&mut s, st, query, head);
    }
    route(&mut s, st, path, head)
}

/// `GET /callers[?listener=NAME]`: every listener's callers inventory as JSON.
fn callers(s: &mut TcpStream, st: &AdminState, query: &str, head: bool) -> std::io::Result<()> {
    let want = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("listener="))
        .map(percent_decode);
    let mut out = serde_json::Map::new();
    for l in &st.listeners {
        if want.as_deref().is_some_and(|w| w != l.name) {
            continue;
        }
        if let Some(t) = &l.callers {
            out.insert(l.name.clone(), t.to_json(l.live.load().tls.has_candidate()));
        }
    }
    if let Some(w) = want.filter(|_| out.is_empty()) {
        let body = format!("no listener named {w:?}\n");
        return respond(s, "404 Not Found", "text/plain", body.as_bytes(), head);
    }
    let body = serde_json::json!({ "listeners": out }).to_string();
    respond(s, "200 OK", "application/json", body.as_bytes(), head)
}

/// `%XX` escapes of a query value (listener names are plain, but a client may escape).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a connection's request head came to.
enum Head {
    Request {
        method: String,
        path: String,
    },
    /// The peer closed before a whole head arrived: nothing to answer.
    Closed,
    /// Too large or unparsable: answered with `status` and `body`.
    Refused {
        status: &'static str,
        body: &'static [u8],
    },
}

/// Read until the request head is complete (at most [`MAX_HEAD`] bytes).
fn read_head(s: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        return Ok(match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => Head::Request {
                method: req.method.unwrap_or("").to_owned(),
                path: req.path.unwrap_or("").to_owned(),
            },
            Ok(httparse::Status::Partial) if len < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => Head::Refused {
                status: "431 Request Header Fields Too Large",
                body: b"request head too large\n",
            },
            Err(_) => Head::Refused {
                status: "400 Bad Request",
                body: b"bad request\n",
            },
        });
    }
}

/// Answer a GET or HEAD of `path` (query string already cut off).
fn route(s: &mut TcpStream, st: &AdminState, path: &str, head: bool) -> std::io::Result<()> {
    match path {
        "/metrics" => {
            let page = st.metrics_page();
            respond(
                s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                page.as_bytes(),
                head,
            )
        }
        "/healthz" => respond(s, "200 OK", "text/plain", b"ok\n", head),
        "/readyz" if st.is_ready() => respond(s, "200 OK", "text/plain", b"ready\n", head),
        "/readyz" => {
            let why: &[u8] = if st.ready.load(Ordering::Relaxed) {
                b"draining\n"
            } else {
                b"starting\n"
            };
            respond(s, "503 Service Unavailable", "text/plain", why, head)
        }
        _ => respond(
            s,
            "404 Not Found",
            "text/plain",
            b"try /metrics, /healthz, /readyz or /callers\n",
            head,
        ),
    }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    s.write_all(&out)?;
    s.flush()
}
