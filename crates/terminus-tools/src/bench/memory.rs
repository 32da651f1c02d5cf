//! `terminus bench --in-memory`: rustls' own work per handshake, with no sockets, no
//! driver and no `Conn` around it: the cryptographic floor of a connection (issue 28).
//!
//! The server side is the `ServerConfig` terminus itself builds for a listener of a
//! config file (its certificate, suites, groups, ticketer, client verifier), so the
//! figure is the floor of that listener; the client side is the bench's own client
//! config (`--ca`, `--client-cert`, `--resume`, `--group`). Client and server exchange
//! `Vec<u8>`s on this thread; the server's calls (`new`, `read_tls`,
//! `process_new_packets`, `write_tls`) are timed apart from the client's, as
//! `benches/handshake.rs` does, so `server_us_per_op` is what a terminus worker pays
//! inside rustls. Pin it (`taskset`) to the CPU the server would use.
//!
//! I/O contract: reads the config file and the PEM files it names.

use anyhow::{anyhow, Context};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an in-memory run measured.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub in_memory: bool,
    pub listener: String,
    pub handshakes: u64,
    pub resumed: u64,
    /// The server's share per handshake, µs.
    pub server_us_per_op: f64,
    /// The client's share per handshake, µs.
    pub client_us_per_op: f64,
    pub duration_s: f64,
}

/// The server config terminus builds for listener `name` of the config at `path`
/// (the only listener when `name` is None).
pub fn listener_server_config(
    path: &Path,
    name: Option<&str>,
) -> anyhow::Result<(String, Arc<ServerConfig>)> {
    let cfg = terminus_core::config::Config::load(path).map_err(|e| anyhow!("{e}"))?;
    let l = match name {
        Some(n) => cfg
            .listeners
            .iter()
            .find(|l| l.name == n)
            .ok_or_else(|| anyhow!("{}: no listener named {n:?}", path.display()))?,
        None if cfg.listeners.len() == 1 => &cfg.listeners[0],
        None => {
            return Err(anyhow!(
                "{}: several listeners; name one with --listener",
                path.display()
            ))
        }
    };
    let server = terminus_core::tls::server_config(&l.tls()).map_err(|e| anyhow!("{e}"))?;
    Ok((l.name.clone(), server))
}

/// Handshakes back to back for `duration`; with `resume`, each spends a ticket the
/// previous one was given (one in-memory store), else every one is full.
pub fn run(
    listener: String,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
    resume: bool,
    duration: Duration,
) -> anyhow::Result<MemoryReport> {
    let mut cfg = (*client).clone();
    cfg.resumption = if resume {
        Resumption::in_memory_sessions(256)
    } else {
        Resumption::disabled()
    };
    let client = Arc::new(cfg);
    let (mut n, mut resumed) = (0u64, 0u64);
    let (mut server_t, mut client_t) = (Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    while start.elapsed() < duration {
        let (s, c, kind) =
            one(&server, &client, &name).with_context(|| format!("handshake {}", n + 1))?;
        server_t += s;
        client_t += c;
        n += 1;
        resumed += u64::from(kind == Some(HandshakeKind::Resumed));
    }
    let per = |t: Duration| t.as_secs_f64() * 1e6 / n.max(1) as f64;
    Ok(MemoryReport {
        in_memory: true,
        listener,
        handshakes: n,
        resumed,
        server_us_per_op: per(server_t),
        client_us_per_op: per(client_t),
        duration_s: start.elapsed().as_secs_f64(),
    })
}

/// One handshake, through the server's session tickets: (server time, client time,
/// the server's handshake kind).
fn one(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> anyhow::Result<(Duration, Duration, Option<HandshakeKind>)> {
    let t = Instant::now();
    let mut c = ClientConnection::new(client.clone(), name.clone())?;
    let mut client_t = t.elapsed();
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone())?;
    let mut server_t = t.elapsed();
    // Each pass moves the client's flight to the server and the server's back; done
    // when neither has anything left to say (the tickets included).
    for _ in 0..8 {
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        let t = Instant::now();
        while c.wants_write() {
            c.write_tls(&mut to_server)?;
        }
        client_t += t.elapsed();
        let t = Instant::now();
        if !to_server.is_empty() {
            s.read_tls(&mut &to_server[..])?;
            s.process_new_packets()?;
        }
        while s.wants_write() {
            s.write_tls(&mut to_client)?;
        }
        server_t += t.elapsed();
        let t = Instant::now();
        if !to_client.is_empty() {
            c.read_tls(&mut &to_client[..])?;
            c.process_new_packets()?;
        }
        client_t += t.elapsed();
        if to_server.is_empty()
            && to_client.is_empty()
            && !c.is_handshaking()
            && !s.is_handshaking()
        {
            return Ok((server_t, client_t, s.handshake_kind()));
        }
    }
    Err(anyhow!("the handshake did not finish in 8 flights"))
}
