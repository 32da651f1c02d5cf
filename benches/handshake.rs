//! TLS 1.3 handshake cost, fully in memory (rustls client and server exchanging
//! `Vec<u8>`s; no sockets, no io_uring).
//!
//! Two groups with the same cases:
//! - `handshake_server`: only the server's share — `ServerConnection::new`,
//!   `read_tls`, `process_new_packets`, `write_tls` — timed with `iter_custom`
//!   around those calls alone. This is the per-handshake CPU a terminus worker pays
//!   (minus the io_uring and `Conn` bookkeeping) and the figure to compare with the
//!   ≤160 µs target.
//! - `handshake_pair`: client plus server, the whole exchange.
//!
//! Cases: ECDSA P-256 server key with X25519; the same with X25519MLKEM768; an
//! RSA-2048 server key with X25519; resumption by ticket (ECDSA, X25519; the
//! client reuses its config, so each handshake spends the ticket the previous one
//! issued); mTLS (ECDSA, X25519, the server requires and verifies an ECDSA P-256
//! client certificate with `WebPkiClientVerifier`). Every full handshake includes
//! the one ticket the server issues, as terminus's default config does.
//!
//! Reproduce: `cargo bench --bench handshake` (add `-- --warm-up-time 1
//! --measurement-time 3` for a quick run).

mod common;

use common::{client, client_config, handshake, pki, server_config, ClientOpts};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::client::ClientConfig;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::{HandshakeKind, ServerConfig};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

struct Case {
    name: &'static str,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    expect: HandshakeKind,
}

fn cases() -> Vec<Case> {
    let p = pki();
    let ecdsa = server_config(&p.ecdsa, None);
    let full = |kx| ClientOpts {
        kx,
        suite: None,
        resume: false,
        cert: None,
    };
    vec![
        Case {
            name: "ecdsa_p256_x25519_full",
            server: ecdsa.clone(),
            client: client_config(&p.roots, full(kx_group::X25519)),
            expect: HandshakeKind::Full,
        },
        Case {
            name: "ecdsa_p256_x25519mlkem768_full",
            server: ecdsa.clone(),
            client: client_config(&p.roots, full(kx_group::X25519MLKEM768)),
            expect: HandshakeKind::Full,
        },
        Case {
            name: "rsa2048_x25519_full",
            server: server_config(&p.rsa, None),
            client: client_config(&p.roots, full(kx_group::X25519)),
            expect: HandshakeKind::Full,
        },
        Case {
            name: "ecdsa_p256_x25519_resumed",
            server: ecdsa,
            client: client_config(
                &p.roots,
                ClientOpts {
                    resume: true,
                    ..full(kx_group::X25519)
                },
            ),
            expect: HandshakeKind::Resumed,
        },
        Case {
            name: "ecdsa_p256_x25519_mtls_full",
            server: server_config(&p.ecdsa, Some(&p.roots)),
            client: client_config(
                &p.roots,
                ClientOpts {
                    cert: Some(&p.client),
                    ..full(kx_group::X25519)
                },
            ),
            expect: HandshakeKind::Full,
        },
    ]
}

/// Check a case negotiates what its name says, and say so once.
fn check(c: &Case) {
    // Prime resumption: the first handshake is full and leaves a ticket.
    let _ = handshake(&mut client(&c.client), &c.server);
    let mut cl = client(&c.client);
    let (server, _) = handshake(&mut cl, &c.server);
    assert_eq!(server.handshake_kind(), Some(c.expect), "{}", c.name);
    if c.name.contains("mtls") {
        assert!(server.peer_certificates().is_some(), "client cert verified");
    }
    eprintln!(
        "{}: {:?}, {:?}, {:?}, kx {:?}",
        c.name,
        server.handshake_kind().unwrap(),
        server.protocol_version().unwrap(),
        server.negotiated_cipher_suite().unwrap().suite(),
        server.negotiated_key_exchange_group().unwrap().name(),
    );
}

fn bench(cr: &mut Criterion) {
    let cases = cases();
    for c in &cases {
        check(c);
    }

    let mut g = cr.benchmark_group("handshake_server");
    for c in &cases {
        g.bench_function(BenchmarkId::from_parameter(c.name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut cl = client(&c.client);
                    let (server, t) = handshake(&mut cl, &c.server);
                    debug_assert_eq!(server.handshake_kind(), Some(c.expect));
                    black_box(server);
                    total += t;
                }
                total
            })
        });
    }
    g.finish();

    let mut g = cr.benchmark_group("handshake_pair");
    for c in &cases {
        g.bench_function(BenchmarkId::from_parameter(c.name), |b| {
            b.iter(|| {
                let mut cl = client(&c.client);
                black_box(handshake(&mut cl, &c.server))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
