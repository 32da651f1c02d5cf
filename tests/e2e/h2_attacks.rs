//! The known HTTP/2 attacks against an `upstream_protocol = "h2"` listener, each
//! written frame by frame over a real rustls client (a well-behaved client library
//! would not send them), with a Python grpcio upstream behind: rapid reset
//! (CVE-2023-44487), CONTINUATION flood (CVE-2024-27316 class), HPACK bomb, SETTINGS
//! and PING floods from a client that never reads, a zero-window stall, too many
//! concurrent streams. Each is cut off (GOAWAY, REFUSED_STREAM, or terminus stops
//! reading), the memory each attacking connection holds is measured (terminus'
//! RssAnon, as tests/e2e/hostile.rs does) and bounded, and a well-behaved call still
//! succeeds afterwards. And the polite ending: a drain (SIGTERM) sends GOAWAY.

use crate::common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (k, v) in pairs {
        p.extend_from_slice(&k.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `flags`.
fn hpack_int(flags: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal field: `index` of its name in the static table (0: the name follows),
/// `flags`/`n` its representation (0x00/4 without indexing, 0x40/6 with).
fn literal(flags: u8, n: u32, index: usize, name: &str, value: &str, out: &mut Vec<u8>) {
    hpack_int(flags, n, index, out);
    if index == 0 {
        hpack_int(0, 7, name.len(), out);
        out.extend_from_slice(name.as_bytes());
    }
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value.as_bytes());
}

/// A gRPC request's header block: POST https localhost `path`.
fn grpc_head(path: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x87]; // :method POST, :scheme https (static table)
    literal(0, 4, 1, "", "localhost", &mut b);
    literal(0, 4, 4, "", path, &mut b);
    literal(0, 4, 0, "content-type", "application/grpc", &mut b);
    literal(0, 4, 0, "te", "trailers", &mut b);
    b
}

/// One gRPC message (uncompressed).
fn grpc_message(m: &[u8]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&(m.len() as u32).to_be_bytes());
    b.extend_from_slice(m);
    b
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// Frames read until `done` says so, the peer closes, or `timeout`; and whether
/// the peer closed.
fn read_frames(
    t: &mut Tls,
    timeout: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> (Vec<Frame>, bool) {
    t.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let (mut buf, mut frames) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 64 * 1024];
    while Instant::now() < deadline && !done(&frames) {
        match t.read(&mut chunk) {
            Ok(0) => return (frames, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (frames, true),
        }
        while buf.len() >= 9 {
            let n = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + n {
                break;
            }
            let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
            frames.push(Frame {
                kind: buf[3],
                flags: buf[4],
                stream,
                payload: buf[9..9 + n].to_vec(),
            });
            buf.drain(..9 + n);
        }
    }
    (frames, false)
}

fn goaway(frames: &[Frame]) -> Option<u32> {
    frames.iter().find(|f| f.kind == GOAWAY).map(Frame::code)
}

struct Fixture {
    _pki: Pki,
    _upstream: GrpcUpstream,
    t: Terminus,
    cfg: Arc<rustls::ClientConfig>,
}

impl Fixture {
    /// One worker (so RSS growth is this listener's), `keys` at listener level.
    fn new(keys: &[(&str, &str)]) -> Fixture {
        let pki = Pki::generate();
        let upstream = GrpcUpstream::start();
        let mut l = ListenerConf::new("grpc", &[upstream.addr])
            .opt("protocol", "\"http\"")
            .opt("upstream_protocol", "\"h2\"");
        for (k, v) in keys {
            l = l.opt(k, v);
        }
        let config = write_config(&pki, Some(1), &[l]);
        no_idle_trim(&config);
        let t = Terminus::builder().config(&config).prefix(NO_PURGE).start();
        let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[b"h2"]);
        Fixture {
            _pki: pki,
            _upstream: upstream,
            t,
            cfg,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.t.addr("grpc")
    }

    /// A connection that sent the preface and its SETTINGS (`extra` appended).
    fn open(&self, extra: &[(u16, u32)]) -> Tls {
        let mut t = tls_connect(self.addr(), &self.cfg);
        assert_eq!(t.conn.alpn_protocol(), Some(&b"h2"[..]));
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(extra));
        t.write_all(&hello).unwrap();
        t
    }

    /// A well-behaved unary call on a new connection gets its echo and trailers.
    fn assert_serves(&self) {
        let mut t = self.open(&[]);
        let mut out = frame(HEADERS, END_HEADERS, 1, &grpc_head("/echo.Echo/Unary"));
        out.extend(frame(DATA, END_STREAM, 1, &grpc_message(b"still here")));
        out.extend(frame(SETTINGS, 1, 0, &[]));
        t.write_all(&out).unwrap();
        let end = |f: &[Frame]| {
            f.iter()
                .any(|f| f.kind == HEADERS && f.stream == 1 && f.flags & END_STREAM != 0)
        };
        let (frames, _) = read_frames(&mut t, Duration::from_secs(10), end);
        assert!(end(&frames), "no trailers: {frames:?}");
        let data: Vec<u8> = frames
            .iter()
            .filter(|f| f.kind == DATA && f.stream == 1)
            .flat_map(|f| f.payload.clone())
            .collect();
        assert_eq!(data, grpc_message(b"still here"));
    }

    /// Growth of terminus' RssAnon while `n` connections made by `attack` are held.
    fn held_memory(&self, n: usize, attack: impl Fn(&Fixture) -> Tls + Sync) -> u64 {
        // Warm the worker's buffers and allocator first (see tests/e2e/hostile.rs).
        for _ in 0..4 {
            self.assert_serves();
        }
        let before = rss(&self.t);
        let held: Vec<Tls> = thread::scope(|s| {
            let hs: Vec<_> = (0..n).map(|_| s.spawn(|| attack(self))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        thread::sleep(Duration::from_millis(300));
        let grown = rss(&self.t).saturating_sub(before);
        drop(held);
        grown / n as u64
    }
}

#[test]
fn rapid_reset_is_answered_with_goaway_enhance_your_calm() {
    let fx = Fixture::new(&[]);
    let mut t = fx.open(&[]);
    let head = grpc_head("/echo.Echo/Unary");
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_HEADERS, id, &head));
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = t.write_all(&out);
    let (frames, _) = read_frames(&mut t, Duration::from_secs(10), |f| goaway(f).is_some());
    assert_eq!(goaway(&frames), Some(ENHANCE_YOUR_CALM), "{frames:?}");
    fx.assert_serves();
}

#[test]
fn a_continuation_flood_is_cut_off() {
    let fx = Fixture::new(&[]);
    let mut t = fx.open(&[]);
    t.write_all(&frame(HEADERS, 0, 1, &grpc_head("/echo.Echo/Unary")))
        .unwrap();
    let mut block = Vec::new();
    literal(0, 4, 0, "x-junk", &"j".repeat(4000), &mut block);
    let continuation = frame(CONTINUATION, 0, 1, &block);
    // The server may cut the connection before all 20 are written (on a busy host
    // this thread can run late): the writes stop there.
    let first = (0..20)
        .take_while(|_| t.write_all(&continuation).is_ok())
        .count();
    assert!(first > 0, "not one CONTINUATION frame could be written");
    let (frames, _) = read_frames(&mut t, Duration::from_secs(10), |f| goaway(f).is_some());
    assert_eq!(goaway(&frames), Some(ENHANCE_YOUR_CALM), "{frames:?}");
    // And no more is read: the rest of a 40 MB flood does not get through.
    t.sock
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sent = (0..10_000)
        .take_while(|_| t.write_all(&continuation).is_ok())
        .count();
    eprintln!(
        "CONTINUATION flood: GOAWAY after {first} frames written, {sent} more before the cut"
    );
    assert!(sent < 10_000);
    fx.assert_serves();
}

#[test]
fn an_hpack_bomb_is_refused_before_it_is_decoded_whole() {
    let fx = Fixture::new(&[]);
    let per_conn = fx.held_memory(8, |fx| {
        let mut t = fx.open(&[]);
        // One 4 KiB field into the dynamic table, then referenced by one byte each:
        // 16 KiB of frame, 48 MiB of decoded headers.
        let mut block = grpc_head("/echo.Echo/Unary");
        literal(0x40, 6, 0, "x-bomb", &"b".repeat(4000), &mut block);
        while block.len() < 16_000 {
            block.push(0x80 | 62); // indexed: the newest dynamic entry
        }
        t.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .unwrap();
        let cut = |f: &[Frame]| {
            goaway(f).is_some() || f.iter().any(|f| f.kind == RST_STREAM || f.kind == HEADERS)
        };
        let (frames, _) = read_frames(&mut t, Duration::from_secs(10), cut);
        let refused = frames
            .iter()
            .any(|f| (f.kind == RST_STREAM && f.code() == REFUSED_STREAM) || f.kind == HEADERS);
        assert!(
            goaway(&frames) == Some(ENHANCE_YOUR_CALM) || refused,
            "{frames:?}"
        );
        t
    });
    eprintln!("HPACK bomb: {} KiB held per connection", per_conn >> 10);
    assert!(per_conn < 1 << 20, "{per_conn} bytes per connection");
    fx.assert_serves();
}

/// A client that floods `frame` and never reads: terminus stops reading it once
/// what it owes the client is full.
fn flood_never_reading(fx: &Fixture, f: &[u8]) -> Tls {
    let mut t = fx.open(&[]);
    t.conn.set_buffer_limit(None);
    t.sock
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let burst: Vec<u8> = f.iter().copied().cycle().take(f.len() * 4096).collect();
    let mut written = 0u64;
    loop {
        assert!(
            written < 256 << 20,
            "terminus never stopped reading the flood"
        );
        match t.write(&burst) {
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    t
}

#[test]
fn settings_and_ping_floods_from_a_client_that_never_reads_hold_bounded_memory() {
    let fx = Fixture::new(&[]);
    let idle = fx.held_memory(8, |fx| fx.open(&[]));
    eprintln!("an idle HTTP/2 connection: {} KiB held", idle >> 10);
    for (what, f) in [
        ("SETTINGS", settings(&[(4, 65_535)])),
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        // The first round also grows the worker's one-time memory (buffers and
        // allocator pools of sizes not used before): measured on the second.
        let first = fx.held_memory(8, |fx| flood_never_reading(fx, &f));
        let per_conn = fx.held_memory(8, |fx| flood_never_reading(fx, &f));
        eprintln!(
            "{what} flood: {} KiB held per connection ({} KiB on the first round)",
            per_conn >> 10,
            first >> 10
        );
        // What waits for a client that does not read: max_buffered_bytes of records
        // and the 64 KiB pipe towards it, max_buffered_bytes of its frames not read
        // (pipe and leg); RssAnon moves in 2 MiB steps over the 8 connections.
        assert!(
            per_conn <= (1 << 20) + (256 << 10),
            "{what}: {per_conn} bytes"
        );
    }
    fx.assert_serves();
}

#[test]
fn a_zero_window_stall_holds_one_window_and_times_out() {
    let fx = Fixture::new(&[("idle_timeout_ms", "1500")]);
    let per_conn = fx.held_memory(8, |fx| {
        // SETTINGS_INITIAL_WINDOW_SIZE 0, and never a WINDOW_UPDATE.
        let mut t = fx.open(&[(4, 0)]);
        let mut out = frame(HEADERS, END_HEADERS, 1, &grpc_head("/echo.Echo/Big"));
        out.extend(frame(DATA, END_STREAM, 1, &grpc_message(b"12345678")));
        t.write_all(&out).unwrap();
        let head = |f: &[Frame]| f.iter().any(|f| f.kind == HEADERS && f.stream == 1);
        let (frames, _) = read_frames(&mut t, Duration::from_secs(10), head);
        assert!(head(&frames), "{frames:?}");
        t
    });
    // An 8 MiB response stalls: terminus holds at most its receive windows from the
    // upstream (256 KiB stream, 1 MiB connection) and what waits for the client.
    eprintln!(
        "zero-window stall: {} KiB held per connection",
        per_conn >> 10
    );
    assert!(per_conn <= 2 << 20, "{per_conn} bytes per connection");
    let mut t = fx.open(&[(4, 0)]);
    let (_, closed) = read_frames(&mut t, Duration::from_secs(10), |_| false);
    assert!(
        closed,
        "a connection with nothing moving is closed at idle_timeout_ms"
    );
    fx.assert_serves();
}

#[test]
fn streams_over_max_concurrent_streams_are_refused() {
    let fx = Fixture::new(&[]);
    let mut t = fx.open(&[]);
    let head = grpc_head("/echo.Echo/Stream");
    let mut out = Vec::new();
    for i in 0..150u32 {
        out.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &head));
    }
    t.write_all(&out).unwrap();
    let refused = |f: &[Frame]| {
        f.iter()
            .filter(|f| f.kind == RST_STREAM && f.code() == REFUSED_STREAM)
            .count()
    };
    let (frames, _) = read_frames(&mut t, Duration::from_secs(10), |f| refused(f) >= 50);
    assert_eq!(refused(&frames), 50, "{:?}", goaway(&frames));
    let lowest = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM)
        .map(|f| f.stream)
        .min();
    assert_eq!(lowest, Some(201), "the first 100 streams were accepted");
    drop(t);
    fx.assert_serves();
}

#[test]
fn a_drain_sends_goaway_and_closes_once_streams_are_done() {
    let mut fx = Fixture::new(&[]);
    let mut t = fx.open(&[]);
    t.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
    let (frames, _) = read_frames(&mut t, Duration::from_secs(5), |f| {
        f.iter().any(|f| f.kind == SETTINGS && f.flags & 1 != 0)
    });
    assert!(!frames.is_empty(), "no SETTINGS from terminus");
    fx.t.signal("TERM");
    // GOAWAY NO_ERROR, and a PING to time the last stream id by (RFC 9113 6.8).
    let ping = |f: &[Frame]| f.iter().any(|f| f.kind == PING && f.flags & 1 == 0);
    let (frames, _) = read_frames(&mut t, Duration::from_secs(10), |f| {
        goaway(f).is_some() && ping(f)
    });
    assert_eq!(goaway(&frames), Some(0), "GOAWAY NO_ERROR: {frames:?}");
    let p = frames.iter().find(|f| f.kind == PING).unwrap();
    t.write_all(&frame(PING, 1, 0, &p.payload)).unwrap();
    let (_, closed) = read_frames(&mut t, Duration::from_secs(10), |_| false);
    assert!(closed, "the connection closes once it has no streams");
    assert_eq!(fx.t.wait_exit(Duration::from_secs(10)), Some(0));
}
