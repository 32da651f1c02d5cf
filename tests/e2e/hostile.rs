//! Hostile peers cost only their own connection (issue 9): a peer that stops
//! reading pins at most 2 × max_buffered_bytes + 64 KiB of terminus' memory, in
//! either direction, flat over time, while other connections on the same worker keep
//! their latency; the worker cap bounds the sum over many such peers.
//!
//! Memory is terminus' anonymous RSS (/proc/PID/status RssAnon: heap and buffer
//! ring, not the binary's code pages, which fault in as code paths first run) after
//! a warm-up that has cycled every provided receive buffer and the allocator's
//! pools, so the growth measured is what the slow connections hold, not one-time
//! worker memory.

use crate::common::*;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Slow connections per run ("8+ connections" in the issue; 16 halves the share
/// of allocator noise in the per-connection figure).
const SLOW: usize = 16;
const CHUNK: usize = 64 * 1024;
/// A slow client that never blocks has written this much: the bound failed.
const MAX_WRITE: u64 = 512 << 20;

/// An upstream that accepts and never reads: its socket buffers fill, then
/// terminus' sends to it stall.
struct DeafUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl DeafUpstream {
    fn spawn() -> DeafUpstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (st, h) = (stop.clone(), held.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => h.lock().unwrap().push(s),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        DeafUpstream { addr, stop, held }
    }
}

impl Drop for DeafUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.held.lock().unwrap().clear();
    }
}

/// A TLS client that writes 64 KiB chunks and never reads, until its writes stall
/// for ~0.6 s (every buffer on the path is full). Returns the live connection and
/// the plaintext bytes it managed to write.
fn write_until_blocked(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> (Tls, u64) {
    let mut t = tls_connect(addr, cfg);
    // Our own pacing: rustls buffers the chunk, the socket write times out.
    t.conn.set_buffer_limit(None);
    t.sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let mut written = 0u64;
    let mut stalls = 0;
    while stalls < 3 {
        assert!(
            written < MAX_WRITE,
            "wrote {written} bytes and never blocked: nothing applies backpressure"
        );
        if !t.conn.wants_write() {
            t.conn.writer().write_all(&chunk).unwrap();
            written += CHUNK as u64;
        }
        let mut progressed = false;
        while t.conn.wants_write() {
            match t.conn.write_tls(&mut t.sock) {
                Ok(_) => progressed = true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("slow client write: {e}"),
            }
        }
        stalls = if progressed { 0 } else { stalls + 1 };
    }
    (t, written)
}

/// Median and max of `n` 1 KiB echo round trips on a fresh connection.
fn echo_latency(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    n: usize,
) -> (Duration, Duration) {
    let mut t = tls_connect(addr, cfg);
    let msg = vec![7u8; 1024];
    let mut d: Vec<Duration> = (0..n)
        .map(|i| {
            let t0 = Instant::now();
            echo_round_trip(&mut t, &msg, &format!("healthy round trip {i}"));
            t0.elapsed()
        })
        .collect();
    d.sort();
    (d[n / 2], d[n - 1])
}

/// Cycle every provided buffer and the allocator: 48 MiB echoed in 1 MiB steps.
/// Then let the allocator return what the warm-up freed (mimalloc purges freed
/// pages after a delay, on its next allocations: a few small handshakes), so the
/// baseline holds no warm-up leftovers that slow peers could hide in.
fn warm_up(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) {
    let mut t = tls_connect(addr, cfg);
    let block = Pattern::bytes(9, 1 << 20);
    for i in 0..48 {
        echo_round_trip(&mut t, &block, &format!("warm-up MiB {i}"));
    }
    drop(t);
    for i in 0..5 {
        thread::sleep(Duration::from_millis(100));
        let mut t = tls_connect(addr, cfg);
        echo_round_trip(&mut t, b"settle", &format!("settle {i}"));
    }
}

#[derive(Clone, Copy, Debug)]
enum Deaf {
    /// The client writes and never reads; the upstream echoes (both directions fill).
    Client,
    /// The upstream never reads; the client floods.
    Upstream,
}

fn slow_peers_pin_bounded_memory(deaf: Deaf, max_buffered: Option<usize>) {
    let echo = Backend::echo();
    let deaf_up = DeafUpstream::spawn();
    let slow_up = match deaf {
        Deaf::Client => echo.addr(),
        Deaf::Upstream => deaf_up.addr,
    };
    let mut slow = ListenerConf::new("slow", &[slow_up]);
    if let Some(m) = max_buffered {
        slow = slow.opt("max_buffered_bytes", &m.to_string());
    }
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(1),
        &[slow, ListenerConf::new("warm", &[echo.addr()])],
    );
    no_idle_trim(&config);
    let mut term = Terminus::builder().config(&config).prefix(NO_PURGE).start();
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let limit = max_buffered.unwrap_or(256 * 1024) as u64;
    let bound = 2 * limit + 64 * 1024;

    warm_up(term.addr("warm"), &cfg);
    let (p50_before, _) = echo_latency(term.addr("warm"), &cfg, 50);
    let before = rss(&term);

    let clients: Vec<(Tls, u64)> = thread::scope(|s| {
        let hs: Vec<_> = (0..SLOW)
            .map(|_| s.spawn(|| write_until_blocked(term.addr("slow"), &cfg)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let written: u64 = clients.iter().map(|c| c.1).sum();
    let blocked = rss(&term);
    let (p50_during, max_during) = echo_latency(term.addr("warm"), &cfg, 50);
    thread::sleep(Duration::from_secs(1));
    let later = rss(&term);

    // The allocator purges and re-touches freed pages on its own schedule: bound the
    // growth at both readings, and call "flat" no growth past the higher earlier one.
    let per_conn = blocked.max(later).saturating_sub(before) / SLOW as u64;
    eprintln!(
        "{deaf:?} stops reading, max_buffered_bytes {limit}: {SLOW} clients wrote {} MiB; \
         RSS {} -> {} -> {} KiB ({} KiB per connection, bound {} KiB); healthy echo p50 \
         {p50_before:?} before, {p50_during:?} during (max {max_during:?})",
        written >> 20,
        before >> 10,
        blocked >> 10,
        later >> 10,
        per_conn >> 10,
        bound >> 10
    );
    // RssAnon moves in the allocator's 2 MiB commit steps: one step of slack over
    // the whole run (128 KiB per connection here); a regression costs MiBs each.
    let slack = (2 << 20) / SLOW as u64;
    assert!(
        per_conn <= bound + slack,
        "{deaf:?}: each slow connection pins {per_conn} bytes, over 2 x {limit} + 64 KiB"
    );
    // mimalloc purges freed pages after a delay and re-faults them on reuse, which
    // moves RssAnon by a few MiB on its own: "flat" means no growth beyond that.
    assert!(
        later.saturating_sub(blocked.max(before)) <= 4 << 20,
        "{deaf:?}: RSS kept growing while the peers were blocked: {blocked} -> {later}"
    );
    // Not a speed target (those live in benches): the worker is not stalled.
    assert!(
        max_during < Duration::from_secs(1) && p50_during < p50_before * 20 + Duration::from_millis(20),
        "{deaf:?}: a healthy connection slowed down: p50 {p50_before:?} -> {p50_during:?}, max {max_during:?}"
    );
    drop(clients);
    term.assert_alive();
}

#[test]
fn non_reading_client_pins_bounded_memory_default_limit() {
    let _g = heavy();
    slow_peers_pin_bounded_memory(Deaf::Client, None);
}

#[test]
fn non_reading_client_pins_bounded_memory_64k_limit() {
    let _g = heavy();
    slow_peers_pin_bounded_memory(Deaf::Client, Some(65536));
}

#[test]
fn non_reading_upstream_pins_bounded_memory_default_limit() {
    let _g = heavy();
    slow_peers_pin_bounded_memory(Deaf::Upstream, None);
}

#[test]
fn non_reading_upstream_pins_bounded_memory_64k_limit() {
    let _g = heavy();
    slow_peers_pin_bounded_memory(Deaf::Upstream, Some(65536));
}

/// Many slow peers on one worker: `max_buffered_bytes_per_worker` bounds their sum.
/// 16 connections that could hold 2 × 256 KiB each (8 MiB) are held to the 1 MiB cap
/// (plus one receive buffer each, the progress allowance), the pauses are counted, and
/// a healthy connection on the same worker still moves 4 MiB.
#[test]
fn worker_cap_bounds_the_sum_of_slow_peers() {
    let _g = heavy();
    let echo = Backend::echo();
    let pki = Pki::generate();
    let config = write_config(
        &pki,
        Some(1),
        &[
            ListenerConf::new("slow", &[echo.addr()]),
            ListenerConf::new("warm", &[echo.addr()]),
        ],
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "workers = 1\n",
        "workers = 1\nmax_buffered_bytes_per_worker = 1048576\n",
    ) + "[admin]\nlisten = \"127.0.0.1:0\"\nsnapshot_interval_ms = 50\n";
    std::fs::write(&config, text).unwrap();
    no_idle_trim(&config);
    let mut term = Terminus::builder().config(&config).prefix(NO_PURGE).start();
    let cfg = client_config(&pki, rustls::ALL_VERSIONS, &[]);
    let cap = 1u64 << 20;

    warm_up(term.addr("warm"), &cfg);
    let before = proc_status_bytes(term.pid(), "RssAnon");
    let clients: Vec<(Tls, u64)> = thread::scope(|s| {
        let hs: Vec<_> = (0..SLOW)
            .map(|_| s.spawn(|| write_until_blocked(term.addr("slow"), &cfg)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let blocked = proc_status_bytes(term.pid(), "RssAnon");
    let growth = blocked.saturating_sub(before);
    // The cap, a 16 KiB receive allowance per direction and the ~64 KiB fixed share
    // per connection.
    let bound = cap + SLOW as u64 * (2 * 16 + 64) * 1024;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (buffered, pauses) = loop {
        let (_, page) = http_get(term.admin(), "/metrics");
        let b = terminus::tools::bench::target::metric(
            &page,
            "terminus_worker_buffered_bytes{worker=\"0\"}",
        );
        let p = terminus::tools::bench::target::metric(
            &page,
            "terminus_worker_buffer_cap_pauses_total{worker=\"0\"}",
        );
        if let (Some(b), Some(p)) = (b, p) {
            if p > 0.0 || Instant::now() > deadline {
                break (b, p);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no worker buffer metrics in\n{page}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "cap {cap}: {SLOW} slow clients wrote {} MiB; RSS +{} KiB (bound {} KiB); \
         worker buffered {buffered} bytes, {pauses} cap pauses",
        clients.iter().map(|c| c.1).sum::<u64>() >> 20,
        growth >> 10,
        bound >> 10
    );
    assert!(pauses > 0.0, "the cap never paused a receive");
    assert!(
        buffered <= (cap + SLOW as u64 * 2 * 16 * 1024) as f64,
        "the worker holds {buffered} bytes, over the {cap} cap"
    );
    // One 2 MiB allocator commit step of slack, as above (8 MiB without the cap).
    assert!(
        growth <= bound + (2 << 20),
        "RSS grew {growth} bytes, over {bound} + 2 MiB"
    );
    // A healthy connection still gets through, a buffer at a time at worst.
    let mut t = tls_connect(term.addr("warm"), &cfg);
    let block = Pattern::bytes(3, 1 << 20);
    for i in 0..4 {
        echo_round_trip(&mut t, &block, &format!("healthy MiB {i} over the cap"));
    }
    drop(clients);
    term.assert_alive();
}
