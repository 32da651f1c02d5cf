//! Bulk data cost after the handshake, in memory.
//!
//! - `records_seal/<suite>/<size>`: server `writer().write_all` + `write_tls`
//!   (encrypt into records, copy out) for one application write of 1, 4 or 16 KiB.
//! - `records_open/<suite>/<size>`: client `read_tls` + `process_new_packets` +
//!   `reader().read` of those records; the sealing is done outside the timed part
//!   (a batch of up to 64 writes is sealed, then opened under one timer).
//! - `conn/*`: terminus's sans-IO [`Conn`] with an in-memory rustls client (the
//!   server picks AES-128-GCM by its own order, as terminus does), 16 KiB
//!   at a time. `upstream_to_client`: `handle_data(Upstream)` (of a copy) +
//!   `poll_send(Client)` (seal) + `handle_sent(Client)`; `client_to_upstream`:
//!   `handle_data(Client)` (open, in place) + `poll_send(Upstream)` +
//!   `handle_sent(Upstream)`. `*_conn_only` times
//!   only the `Conn` calls; `*_with_client` also counts the rustls client's
//!   encrypt or decrypt, the whole in-memory round.
//!
//! Every figure is criterion's throughput in bytes of plaintext per second.
//! Reproduce: `cargo bench --bench records` (add `-- --warm-up-time 1
//! --measurement-time 3` for a quick run).

mod common;

use common::{client, client_config, drain, feed, handshake, pki, read_plain, ClientOpts};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group};
use rustls::server::UnbufferedServerConnection;
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedCipherSuite,
};
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};
use terminus::proxy::conn::{Conn, ConnLimits, Phase, Side};

const SIZES: [usize; 3] = [1024, 4 * 1024, 16 * 1024];
const SUITES: [(&str, SupportedCipherSuite); 3] = [
    ("aes128gcm", cipher_suite::TLS13_AES_128_GCM_SHA256),
    ("aes256gcm", cipher_suite::TLS13_AES_256_GCM_SHA384),
    (
        "chacha20poly1305",
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];
/// How many writes are sealed ahead and then opened under one timer.
const OPEN_BATCH: u64 = 64;

/// The ECDSA server config and a TLS 1.3 X25519 client config trusting it, with
/// `suite` only (None: the default suites).
fn configs(suite: Option<SupportedCipherSuite>) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let p = pki();
    let server_cfg = common::server_config(&p.ecdsa, None);
    let client_cfg = client_config(
        &p.roots,
        ClientOpts {
            kx: kx_group::X25519,
            suite,
            resume: false,
            cert: None,
        },
    );
    (server_cfg, client_cfg)
}

fn established(suite: SupportedCipherSuite) -> (ClientConnection, ServerConnection) {
    let (server_cfg, client_cfg) = configs(Some(suite));
    let mut cl = client(&client_cfg);
    let (server, _) = handshake(&mut cl, &server_cfg);
    assert_eq!(
        server.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite())
    );
    (cl, server)
}

fn seal(server: &mut ServerConnection, plain: &[u8], wire: &mut Vec<u8>) {
    server.writer().write_all(plain).expect("write");
    drain(server, wire);
}

fn records(cr: &mut Criterion) {
    let payload = vec![0x5au8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];

    let mut g = cr.benchmark_group("records_seal");
    for (name, suite) in SUITES {
        let (_client, mut server) = established(suite);
        let mut wire = Vec::with_capacity(32 * 1024);
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    wire.clear();
                    seal(&mut server, black_box(&payload[..size]), &mut wire);
                    black_box(&wire);
                })
            });
        }
    }
    g.finish();

    let mut g = cr.benchmark_group("records_open");
    for (name, suite) in SUITES {
        let (mut client, mut server) = established(suite);
        let mut wire = Vec::with_capacity(OPEN_BATCH as usize * 17 * 1024);
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(OPEN_BATCH);
                        left -= n;
                        wire.clear();
                        for _ in 0..n {
                            seal(&mut server, &payload[..size], &mut wire);
                        }
                        let t = Instant::now();
                        let mut got = 0;
                        let mut s = &wire[..];
                        while !s.is_empty() {
                            client.read_tls(&mut s).expect("read_tls");
                            client.process_new_packets().expect("open");
                            got += read_plain(&mut client, &mut sink);
                        }
                        total += t.elapsed();
                        assert_eq!(got, n as usize * size);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

/// A `Conn` past its handshake with the upstream "connected", and its client.
fn streaming_conn(now: Instant) -> (ClientConnection, Conn) {
    let (server_cfg, client_cfg) = configs(None);
    let limits = ConnLimits {
        max_buffered: 256 * 1024,
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
    };
    let mut cl = client(&client_cfg);
    let mut conn = Conn::new(
        UnbufferedServerConnection::new(server_cfg).expect("server connection"),
        limits,
        now,
    );
    let mut buf = Vec::new();
    for _ in 0..16 {
        buf.clear();
        drain(&mut cl, &mut buf);
        let mut moved = !buf.is_empty();
        if moved {
            conn.handle_data(Side::Client, &mut buf.to_vec(), now);
        }
        if conn.poll_connect() {
            conn.handle_upstream_connected(now, Vec::new(), None);
            moved = true;
        }
        if let Some(b) = conn.poll_send(Side::Client) {
            feed(&mut cl, &b);
            conn.handle_sent(Side::Client, b, now);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(conn.phase(), Phase::Streaming);
    assert!(!cl.is_handshaking());
    (cl, conn)
}

/// `{name}_conn_only` times the `Conn`'s part of `step` (its first figure) and
/// `{name}_with_client` the client's too (the second), each on a fresh pair.
fn conn_and_client(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    now: Instant,
    mut step: impl FnMut(&mut Conn, &mut ClientConnection) -> (Duration, Duration),
) {
    for with_client in [false, true] {
        let (mut cl, mut conn) = streaming_conn(now);
        let which = if with_client {
            "with_client"
        } else {
            "conn_only"
        };
        g.bench_function(format!("{name}_{which}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (server, client) = step(&mut conn, &mut cl);
                    total += server + if with_client { client } else { Duration::ZERO };
                }
                total
            })
        });
    }
}

fn conn(cr: &mut Criterion) {
    const CHUNK: usize = 16 * 1024;
    let chunk = vec![0xa5u8; CHUNK];
    let mut sink = vec![0u8; 64 * 1024];
    let now = Instant::now();
    let mut g = cr.benchmark_group("conn");
    g.throughput(Throughput::Bytes(CHUNK as u64));

    // upstream -> client: seal in the Conn, then (optionally timed) the client opens.
    let down = |conn: &mut Conn, cl: &mut ClientConnection, sink: &mut [u8]| {
        let t = Instant::now();
        conn.handle_data(Side::Upstream, &mut black_box(&chunk).to_vec(), now);
        let b = conn
            .poll_send(Side::Client)
            .expect("records for the client");
        let sealed = t.elapsed();
        let t = Instant::now();
        feed(cl, &b);
        let got = read_plain(cl, sink);
        let opened = t.elapsed();
        let t = Instant::now();
        conn.handle_sent(Side::Client, b, now);
        let returned = t.elapsed();
        assert_eq!(got, CHUNK);
        (sealed + returned, opened)
    };
    conn_and_client(&mut g, "upstream_to_client", now, |conn, cl| {
        down(conn, cl, &mut sink)
    });

    // client -> upstream: the client seals, the Conn opens and hands plaintext over.
    let mut wire = Vec::with_capacity(CHUNK + 1024);
    let mut up = |conn: &mut Conn, cl: &mut ClientConnection| {
        let t = Instant::now();
        cl.writer()
            .write_all(black_box(&chunk))
            .expect("client write");
        wire.clear();
        drain(cl, &mut wire);
        let sealed = t.elapsed();
        let t = Instant::now();
        // In place, as the worker hands over its receive buffer.
        conn.handle_data(Side::Client, &mut wire, now);
        let b = conn
            .poll_send(Side::Upstream)
            .expect("plaintext for the upstream");
        let got = b.len();
        conn.handle_sent(Side::Upstream, b, now);
        let opened = t.elapsed();
        assert_eq!(got, CHUNK);
        (opened, sealed)
    };
    conn_and_client(&mut g, "client_to_upstream", now, &mut up);
    g.finish();
}

criterion_group!(benches, records, conn);
criterion_main!(benches);
