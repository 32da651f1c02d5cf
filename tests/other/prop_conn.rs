//! Property tests (proptest) of the sans-IO connection (`terminus::proxy::conn::Conn`),
//! driven through its public API by an in-memory world: a rustls client, the Conn,
//! and a fake upstream (plaintext, or a rustls server for re-encryption), with a
//! random schedule deciding which side moves next, random chunk sizes for every
//! transfer (client TLS bytes into the Conn, upstream bytes into the Conn, partial
//! "sends" out of it), random connect latency, and random EOF timing. The world
//! behaves like the worker: it only feeds a side while `wants_*_recv()` says so,
//! hands every `poll_*_send` buffer back with `handle_*_sent` once delivered, and
//! delivers nothing after `poll_close()` says the connection is over.
//!
//! | property | cases |
//! |---|---|
//! | `valid_sessions_deliver_everything_in_order_and_end_done` | 128 |
//! | `resets_and_early_eofs_end_with_a_reason_and_deliver_prefixes` | 128 |
//! | `client_garbage_never_panics_and_always_closes` | 256 |
//!
//! Ignored, each pinning a conn.rs bug these properties found (see their docs):
//! `bytes_after_client_close_notify_in_one_chunk_do_not_hang`,
//! `client_close_before_upstream_tls_handshake_loses_nothing`. Until they are
//! fixed the world steers around them (`client_may_close`, no close_notify before
//! garbage).
//!
//! Every case checks: no panic; bytes delivered in order, never duplicated (whole
//! streams compared; each stream is a non-repeating pattern); a close reason in the
//! end (with a far-future `handle_timeout` as the driver's last resort, where the
//! property allows one); a reason, once given, stays the same while the driver keeps
//! polling; a closed connection asks for no more input.
//!
//! Counts are fixed (`ProptestConfig::with_cases`), failures are not persisted to
//! files. The test PKI is made once per test binary.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use terminus::proxy::conn::{
    CloseReason, Conn, ConnLimits, Expired, HandshakeFailure, Phase, Side,
};
use terminus::tools::client::{ClientConfigBuilder, Trust};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        // A failing case shrinks in seconds, not minutes.
        max_shrink_iters: 4096,
        ..ProptestConfig::with_cases(n)
    }
}

struct Pki {
    server: Arc<ServerConfig>,
    /// [TLS 1.3 and 1.2, TLS 1.2 only]
    clients: [Arc<ClientConfig>; 2],
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        terminus::tls::install_provider();
        let t = terminus::tools::certs::test_pki(1, "example.org").unwrap();
        let server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![t.server_der.clone()], t.server_key())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(t.ca_der).unwrap();
        let any = ClientConfigBuilder::new(Trust::Roots(roots.clone()));
        let tls12 =
            ClientConfigBuilder::new(Trust::Roots(roots)).versions(&[&rustls::version::TLS12]);
        Pki {
            server: Arc::new(server),
            clients: [any.build().unwrap(), tls12.build().unwrap()],
        }
    })
}

/// A byte stream with no repeats of any 8-byte window at 8-byte alignment
/// (SplitMix64 of the index), so a reordered or duplicated chunk cannot compare equal.
fn stream(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while out.len() < len {
        i = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = i;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Something that goes wrong at a step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The client socket fails (reset).
    ClientError,
    /// The upstream socket fails (only once connected).
    UpstreamError,
    /// The client's FIN arrives now, cutting its TLS stream wherever it is.
    ClientEofNow,
    /// The upstream's FIN arrives now, cutting its stream (only once connected).
    UpstreamEofNow,
    /// Every connect attempt fails (at the connect, whenever that is).
    UpstreamUnavailable,
}

/// Bad bytes from the client.
#[derive(Debug, Clone)]
enum Garbage {
    /// Once the client's TLS stream reaches `at` bytes (0: from the start), cut it
    /// there and send these bytes instead; the client falls silent.
    Replace { at: usize, bytes: Vec<u8> },
    /// Flip bits of the byte at `at` of the client's TLS stream; the client goes on.
    Flip { at: usize, xor: u8 },
}

#[derive(Debug, Clone)]
struct Plan {
    /// Client offers TLS 1.2 only.
    tls12: bool,
    /// `Some(tls12)`: the upstream leg is re-encrypted (to a rustls server).
    upstream_tls: Option<bool>,
    max_buffered: usize,
    preamble: Vec<u8>,
    client_len: usize,
    upstream_len: usize,
    seed: u64,
    /// The client ends with close_notify (else only with FIN).
    client_close_notify: bool,
    /// The TLS upstream ends with close_notify (else only with FIN).
    upstream_close_notify: bool,
    /// Transfer sizes, used in turn.
    chunks: Vec<usize>,
    /// Which enabled action runs at each step; then the world runs to quiescence.
    schedule: Vec<u16>,
    fault: Option<(usize, Fault)>,
    garbage: Option<Garbage>,
}

fn chunk() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 1..8usize,
        3 => 1..600usize,
        3 => 1..20_000usize,
        1 => 16_000..70_000usize,
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        (
            any::<bool>(),
            proptest::option::of(any::<bool>()),
            prop_oneof![1..4096usize, 16_384..300_000usize],
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 1..300)
            ],
        ),
        (
            prop_oneof![0..64usize, 0..20_000usize, 0..300_000usize],
            prop_oneof![0..64usize, 0..20_000usize, 0..300_000usize],
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        ),
        proptest::collection::vec(chunk(), 1..16),
        proptest::collection::vec(any::<u16>(), 0..3000),
    )
        .prop_map(
            |(
                (tls12, upstream_tls, max_buffered, preamble),
                (client_len, upstream_len, seed, client_close_notify, upstream_close_notify),
                chunks,
                schedule,
            )| Plan {
                tls12,
                upstream_tls,
                max_buffered,
                preamble,
                client_len,
                upstream_len,
                seed,
                client_close_notify,
                upstream_close_notify,
                chunks,
                schedule,
                fault: None,
                garbage: None,
            },
        )
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::ClientError),
        Just(Fault::UpstreamError),
        Just(Fault::ClientEofNow),
        Just(Fault::UpstreamEofNow),
        Just(Fault::UpstreamUnavailable),
    ]
}

fn garbage() -> impl Strategy<Value = Garbage> {
    let record = (
        prop_oneof![20..=24u8, any::<u8>()],
        prop_oneof![Just([3u8, 3]), Just([3u8, 1]), any::<[u8; 2]>()],
        proptest::collection::vec(any::<u8>(), 0..400),
        any::<Option<u16>>(),
    )
        .prop_map(|(kind, version, body, lie)| {
            let mut r = vec![kind, version[0], version[1]];
            r.extend_from_slice(&lie.unwrap_or(body.len() as u16).to_be_bytes());
            r.extend_from_slice(&body);
            r
        });
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..2000),
        proptest::collection::vec(record, 1..5).prop_map(|r| r.concat()),
        Just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    prop_oneof![
        // From the first byte: not TLS at all.
        (bytes.clone()).prop_map(|bytes| Garbage::Replace { at: 0, bytes }),
        // Mid-handshake or after it.
        (0..6000usize, bytes).prop_map(|(at, bytes)| Garbage::Replace { at, bytes }),
        (prop_oneof![0..400usize, 0..6000usize], 1..=255u8)
            .prop_map(|(at, xor)| Garbage::Flip { at, xor }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    ClientWrite,
    ClientCloseNotify,
    ClientTlsOut,
    InjectGarbage,
    FeedConnFromClient,
    ClientEof,
    PollClientSend,
    DeliverToClient,
    PollConnect,
    ConnectDone,
    PollUpstreamSend,
    DeliverToUpstream,
    PollUpstreamShutdown,
    PollClientShutdown,
    UpstreamWrite,
    UpstreamCloseNotify,
    UpstreamTlsOut,
    FeedConnFromUpstream,
    UpstreamEof,
    Tick,
}

const ALL_ACTS: [Act; 20] = [
    Act::ClientWrite,
    Act::ClientCloseNotify,
    Act::ClientTlsOut,
    Act::InjectGarbage,
    Act::FeedConnFromClient,
    Act::ClientEof,
    Act::PollClientSend,
    Act::DeliverToClient,
    Act::PollConnect,
    Act::ConnectDone,
    Act::PollUpstreamSend,
    Act::DeliverToUpstream,
    Act::PollUpstreamShutdown,
    Act::PollClientShutdown,
    Act::UpstreamWrite,
    Act::UpstreamCloseNotify,
    Act::UpstreamTlsOut,
    Act::FeedConnFromUpstream,
    Act::UpstreamEof,
    Act::Tick,
];

/// Timeouts far beyond anything the schedule's ticks add up to: no deadline fires
/// unless the test asks for it.
const LONG: Duration = Duration::from_secs(3600);

struct World<'p> {
    plan: &'p Plan,
    conn: Conn,
    now: Instant,
    chunk_at: usize,
    /// In the run-to-quiescence phase transfers use at least this many bytes.
    min_chunk: usize,

    // The client: its app data, its TLS, the wire towards the Conn.
    client: ClientConnection,
    /// Sends nothing more (replaced by garbage) or failed.
    client_silent: bool,
    client_data: Vec<u8>,
    client_written: usize,
    client_close_notify_sent: bool,
    c2s: Vec<u8>,
    c2s_fed: usize,
    client_eof_sent: bool,
    garbage_done: bool,
    client_got: Vec<u8>,
    client_saw_close_notify: bool,
    client_saw_fin: bool,
    /// A Conn -> client send in flight and how much of it was delivered.
    to_client: Option<(Vec<u8>, usize)>,

    // The upstream.
    connect_pending: bool,
    connected: bool,
    /// The TLS upstream (a rustls server), when re-encrypting.
    up: Option<ServerConnection>,
    /// The TLS upstream failed (after a fault or garbage): it reads no more.
    up_failed: bool,
    /// Every byte that reached the upstream socket (preamble included).
    up_raw: Vec<u8>,
    up_raw_fed: usize,
    /// The upstream's view of the client's bytes (after the preamble, decrypted).
    upstream_got: Vec<u8>,
    upstream_saw_close_notify: bool,
    upstream_saw_fin: bool,
    upstream_data: Vec<u8>,
    upstream_written: usize,
    upstream_close_notify_sent: bool,
    /// Upstream -> Conn wire (plaintext, or TLS records).
    s2c: Vec<u8>,
    s2c_fed: usize,
    upstream_eof_sent: bool,
    to_upstream: Option<(Vec<u8>, usize)>,

    close: Option<CloseReason>,
    /// What went wrong on purpose: (fault, phase when it happened).
    fault_applied: Option<(Fault, Phase)>,
    garbage_applied: bool,
    timed_out: bool,
}

fn fail(msg: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(msg.into())
}

impl<'p> World<'p> {
    fn new(plan: &'p Plan) -> Self {
        let pki = pki();
        let now = Instant::now();
        let limits = ConnLimits {
            max_buffered: plan.max_buffered,
            handshake_timeout: LONG,
            idle_timeout: LONG,
            connect_timeout: LONG,
        };
        let client_cfg = pki.clients[usize::from(plan.tls12)].clone();
        let upstream_data = stream(plan.upstream_len, plan.seed ^ 0x5555);
        World {
            plan,
            conn: Conn::new(
                UnbufferedServerConnection::new(pki.server.clone()).unwrap(),
                limits,
                now,
            ),
            now,
            chunk_at: 0,
            min_chunk: 1,
            client: ClientConnection::new(client_cfg, "localhost".try_into().unwrap()).unwrap(),
            client_silent: false,
            client_data: stream(plan.client_len, plan.seed),
            client_written: 0,
            client_close_notify_sent: false,
            c2s: Vec::new(),
            c2s_fed: 0,
            client_eof_sent: false,
            garbage_done: plan.garbage.is_none(),
            client_got: Vec::new(),
            client_saw_close_notify: false,
            client_saw_fin: false,
            to_client: None,
            connect_pending: false,
            connected: false,
            up: None,
            up_failed: false,
            up_raw: Vec::new(),
            up_raw_fed: 0,
            upstream_got: Vec::new(),
            upstream_saw_close_notify: false,
            upstream_saw_fin: false,
            // A plaintext upstream's bytes are all "on the wire" from the start.
            s2c: if plan.upstream_tls.is_none() {
                upstream_data.clone()
            } else {
                Vec::new()
            },
            upstream_data,
            upstream_written: 0,
            upstream_close_notify_sent: false,
            s2c_fed: 0,
            upstream_eof_sent: false,
            to_upstream: None,
            close: None,
            fault_applied: None,
            garbage_applied: false,
            timed_out: false,
        }
    }

    fn next_chunk(&mut self) -> usize {
        let c = self.plan.chunks[self.chunk_at % self.plan.chunks.len()];
        self.chunk_at += 1;
        c.max(self.min_chunk)
    }

    fn valid(&self) -> bool {
        self.plan.garbage.is_none() && self.fault_applied.is_none()
    }

    /// The client app has nothing more to hand its TLS, and its TLS nothing more
    /// to put on the wire.
    fn client_idle(&self) -> bool {
        self.client_silent
            || (self.client_written == self.client_data.len()
                && (self.client_close_notify_sent || !self.plan.client_close_notify)
                && !self.client.wants_write())
    }

    fn upstream_idle(&self) -> bool {
        match &self.up {
            None => self.plan.upstream_tls.is_none(),
            Some(up) if self.up_failed => !up.wants_write(),
            Some(up) => {
                !up.is_handshaking()
                    && self.upstream_written == self.upstream_data.len()
                    && (self.upstream_close_notify_sent || !self.plan.upstream_close_notify)
                    && !up.wants_write()
            }
        }
    }

    /// Whether a valid client may end its stream now. With a TLS upstream it waits
    /// for that handshake: ending earlier trips a known Conn bug (see
    /// `client_close_before_upstream_tls_handshake_loses_nothing`); drop this gate
    /// once that is fixed.
    fn client_may_close(&self) -> bool {
        self.plan.garbage.is_some()
            || self.plan.upstream_tls.is_none()
            // The Conn's own side of that handshake is done once it has read the
            // upstream's Finished (TLS 1.2: the server finishes first).
            || self.up.as_ref().is_some_and(|u| {
                !u.is_handshaking() && !u.wants_write() && self.s2c_fed == self.s2c.len()
            })
    }

    fn enabled(&self, act: Act) -> bool {
        let tls_up = self.up.is_some() && !self.up_failed;
        match act {
            Act::ClientWrite => !self.client_silent && self.client_written < self.client_data.len(),
            Act::ClientCloseNotify => {
                !self.client_silent
                    && self.plan.client_close_notify
                    && !self.client_close_notify_sent
                    && self.client_written == self.client_data.len()
                    // rustls sends close_notify at once, ahead of plaintext it still
                    // holds back for the handshake: a client closes after it.
                    && !self.client.is_handshaking()
                    && self.client_may_close()
            }
            Act::ClientTlsOut => !self.client_silent && self.client.wants_write(),
            Act::InjectGarbage => {
                !self.garbage_done
                    && match self.plan.garbage {
                        Some(Garbage::Replace { at, .. }) => {
                            self.c2s.len() >= at || self.client_idle()
                        }
                        Some(Garbage::Flip { at, .. }) => {
                            self.c2s.len() > at.max(self.c2s_fed) || self.client_idle()
                        }
                        None => false,
                    }
            }
            Act::FeedConnFromClient => {
                !self.client_eof_sent
                    && self.c2s_fed < self.c2s.len()
                    && self.conn.wants_recv(Side::Client)
            }
            Act::ClientEof => {
                // A FIN follows the last byte, and the worker only sees it through
                // an armed receive. A valid client closes once its handshake is done.
                !self.client_eof_sent
                    && self.c2s_fed == self.c2s.len()
                    && self.client_idle()
                    && self.garbage_done
                    && self.client_may_close()
                    && self.conn.wants_recv(Side::Client)
                    && (self.client_silent
                        || self.plan.garbage.is_some()
                        || !self.client.is_handshaking())
            }
            Act::PollClientSend => self.to_client.is_none(),
            Act::DeliverToClient => self.to_client.is_some(),
            Act::PollConnect => !self.connect_pending && !self.connected,
            Act::ConnectDone => self.connect_pending,
            Act::PollUpstreamSend => self.connected && self.to_upstream.is_none(),
            Act::DeliverToUpstream => self.to_upstream.is_some(),
            Act::PollUpstreamShutdown => self.connected && !self.upstream_saw_fin,
            Act::PollClientShutdown => !self.client_saw_fin,
            Act::UpstreamWrite => tls_up && self.upstream_written < self.upstream_data.len(),
            Act::UpstreamCloseNotify => {
                tls_up
                    && self.plan.upstream_close_notify
                    && !self.upstream_close_notify_sent
                    && self.upstream_written == self.upstream_data.len()
                    && self.up.as_ref().is_some_and(|u| !u.is_handshaking())
            }
            Act::UpstreamTlsOut => self.up.as_ref().is_some_and(|u| u.wants_write()),
            Act::FeedConnFromUpstream => {
                self.connected
                    && !self.upstream_eof_sent
                    && self.s2c_fed < self.s2c.len()
                    && self.conn.wants_recv(Side::Upstream)
            }
            Act::UpstreamEof => {
                self.connected
                    && !self.upstream_eof_sent
                    && self.s2c_fed == self.s2c.len()
                    && self.upstream_idle()
                    && self.conn.wants_recv(Side::Upstream)
            }
            Act::Tick => true,
        }
    }

    /// Run one action; whether anything moved.
    fn act(&mut self, act: Act) -> Result<bool, TestCaseError> {
        let now = self.now;
        Ok(match act {
            Act::ClientWrite => {
                let n = self.next_chunk();
                let end = (self.client_written + n).min(self.client_data.len());
                let n = self
                    .client
                    .writer()
                    .write(&self.client_data[self.client_written..end])
                    .map_err(|e| fail(format!("client write: {e}")))?;
                self.client_written += n;
                n > 0
            }
            Act::ClientCloseNotify => {
                self.client.send_close_notify();
                self.client_close_notify_sent = true;
                true
            }
            Act::ClientTlsOut => {
                while self.client.wants_write() {
                    self.client.write_tls(&mut self.c2s).unwrap();
                }
                true
            }
            Act::InjectGarbage => self.inject_garbage(),
            Act::FeedConnFromClient => self.feed(Side::Client),
            Act::ClientEof => {
                self.client_eof_sent = true;
                self.conn.handle_eof(Side::Client, now);
                true
            }
            Act::PollClientSend => self.poll_send(Side::Client)?,
            Act::DeliverToClient => self.deliver(Side::Client)?,
            Act::PollConnect => {
                if self.conn.poll_connect() {
                    self.connect_pending = true;
                    true
                } else {
                    false
                }
            }
            Act::ConnectDone => self.connect_done(),
            Act::PollUpstreamSend => self.poll_send(Side::Upstream)?,
            Act::DeliverToUpstream => self.deliver(Side::Upstream)?,
            Act::PollUpstreamShutdown => self.poll_upstream_shutdown()?,
            Act::PollClientShutdown => self.poll_client_shutdown()?,
            Act::UpstreamWrite => {
                let n = self.next_chunk();
                let end = (self.upstream_written + n).min(self.upstream_data.len());
                let up = self.up.as_mut().unwrap();
                let n = up
                    .writer()
                    .write(&self.upstream_data[self.upstream_written..end])
                    .map_err(|e| fail(format!("upstream write: {e}")))?;
                self.upstream_written += n;
                n > 0
            }
            Act::UpstreamCloseNotify => {
                self.up.as_mut().unwrap().send_close_notify();
                self.upstream_close_notify_sent = true;
                true
            }
            Act::UpstreamTlsOut => {
                let up = self.up.as_mut().unwrap();
                while up.wants_write() {
                    up.write_tls(&mut self.s2c).unwrap();
                }
                true
            }
            Act::FeedConnFromUpstream => self.feed(Side::Upstream),
            Act::UpstreamEof => {
                self.upstream_eof_sent = true;
                self.conn.handle_eof(Side::Upstream, now);
                true
            }
            Act::Tick => {
                let ms = (self.next_chunk() % 8) as u64;
                self.now += Duration::from_millis(ms);
                if self.conn.handle_timeout(self.now) != Expired::No {
                    return Err(fail("a deadline fired with hour-long timeouts"));
                }
                false
            }
        })
    }

    /// `InjectGarbage`: the plan's garbage replaces or corrupts client bytes not yet fed.
    fn inject_garbage(&mut self) -> bool {
        self.garbage_done = true;
        match self.plan.garbage.as_ref().unwrap() {
            Garbage::Replace { at, bytes } => {
                let cut = (*at).clamp(self.c2s_fed, self.c2s.len());
                self.c2s.truncate(cut);
                self.c2s.extend_from_slice(bytes);
                self.client_silent = true;
                self.garbage_applied = true;
            }
            Garbage::Flip { at, xor } => {
                let at = (*at).max(self.c2s_fed);
                if at < self.c2s.len() {
                    self.c2s[at] ^= xor;
                    self.garbage_applied = true;
                }
            }
        }
        true
    }

    /// `ConnectDone`: the upstream connect completes (or fails, by the plan's fault).
    fn connect_done(&mut self) -> bool {
        let now = self.now;
        self.connect_pending = false;
        if self
            .plan
            .fault
            .is_some_and(|(_, f)| f == Fault::UpstreamUnavailable)
        {
            self.fault_applied = Some((Fault::UpstreamUnavailable, self.conn.phase()));
            self.conn.handle_upstream_unavailable();
            return true;
        }
        let tls = self.plan.upstream_tls.map(|tls12| {
            self.up = Some(ServerConnection::new(pki().server.clone()).unwrap());
            let cfg = pki().clients[usize::from(tls12)].clone();
            UnbufferedClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap()
        });
        self.connected = true;
        self.conn
            .handle_upstream_connected(now, self.plan.preamble.clone(), tls);
        true
    }

    /// `PollUpstreamShutdown`: the Conn shuts the upstream down (FIN).
    fn poll_upstream_shutdown(&mut self) -> Result<bool, TestCaseError> {
        if !self.conn.poll_shutdown(Side::Upstream) {
            return Ok(false);
        }
        if self.to_upstream.is_some() {
            return Err(fail("upstream shut down with a send in flight"));
        }
        self.upstream_saw_fin = true;
        if self.valid() {
            // Everything the client sent is there before the FIN.
            prop_assert_eq!(self.upstream_got.len(), self.client_data.len());
            if self.up.is_some() {
                prop_assert!(self.upstream_saw_close_notify, "FIN before close_notify");
            }
        }
        Ok(true)
    }

    /// `PollClientShutdown`: the Conn shuts the client down (FIN).
    fn poll_client_shutdown(&mut self) -> Result<bool, TestCaseError> {
        if !self.conn.poll_shutdown(Side::Client) {
            return Ok(false);
        }
        if self.to_client.is_some() {
            return Err(fail("client shut down with a send in flight"));
        }
        self.client_saw_fin = true;
        if self.valid() {
            prop_assert!(self.client_saw_close_notify, "FIN before close_notify");
            prop_assert_eq!(self.client_got.len(), self.upstream_data.len());
        }
        Ok(true)
    }

    /// The send the Conn handed out for `side` that is still arriving there.
    fn outbox(&mut self, side: Side) -> &mut Option<(Vec<u8>, usize)> {
        match side {
            Side::Client => &mut self.to_client,
            Side::Upstream => &mut self.to_upstream,
        }
    }

    /// `PollClientSend` / `PollUpstreamSend`: take what the Conn has for `side`.
    fn poll_send(&mut self, side: Side) -> Result<bool, TestCaseError> {
        let Some(b) = self.conn.poll_send(side) else {
            return Ok(false);
        };
        let (name, saw_fin) = match side {
            Side::Client => ("client", self.client_saw_fin),
            Side::Upstream => ("upstream", self.upstream_saw_fin),
        };
        if b.is_empty() {
            return Err(fail(format!("poll_{name}_send handed out an empty buffer")));
        }
        if saw_fin {
            if self.valid() {
                return Err(fail(format!("bytes for the {name} after its FIN")));
            }
            // The worker's send fails (EPIPE).
            self.conn.handle_error(side);
            return Ok(true);
        }
        *self.outbox(side) = Some((b, 0));
        Ok(true)
    }

    /// `DeliverToClient` / `DeliverToUpstream`: the next chunk of the send arrives.
    fn deliver(&mut self, side: Side) -> Result<bool, TestCaseError> {
        let n = self.next_chunk();
        let (buf, done) = self.outbox(side).take().unwrap();
        let end = (done + n).min(buf.len());
        match side {
            Side::Client => self.client_receives(&buf[done..end])?,
            Side::Upstream => self.upstream_receives(&buf[done..end])?,
        }
        if end == buf.len() {
            self.conn.handle_sent(side, buf, self.now);
        } else {
            *self.outbox(side) = Some((buf, end));
        }
        Ok(true)
    }

    /// `FeedConnFromClient` / `FeedConnFromUpstream`: the next chunk of what `side`
    /// wrote reaches the Conn.
    fn feed(&mut self, side: Side) -> bool {
        let chunk = self.next_chunk();
        let (wire, fed) = match side {
            Side::Client => (&mut self.c2s, &mut self.c2s_fed),
            Side::Upstream => (&mut self.s2c, &mut self.s2c_fed),
        };
        let n = chunk.min(wire.len() - *fed);
        let at = *fed;
        *fed += n;
        self.conn
            .handle_data(side, &mut wire[at..at + n].to_vec(), self.now);
        true
    }

    /// TLS bytes from the Conn reach the client.
    fn client_receives(&mut self, mut b: &[u8]) -> Result<(), TestCaseError> {
        if self.client_silent && !self.valid() {
            // A client that sent garbage or failed: the bytes are dropped.
            return Ok(());
        }
        while !b.is_empty() {
            let step = self
                .client
                .read_tls(&mut b)
                .map_err(|e| e.to_string())
                .and_then(|n| match n {
                    // rustls reads nothing after close_notify.
                    0 => Err(format!("{} bytes after close_notify", b.len())),
                    _ => Ok(()),
                })
                .and_then(|_| self.client.process_new_packets().map_err(|e| e.to_string()));
            // (A garbage run may see the Conn's fatal alert after its close_notify:
            // harmless, the client ignores it.)
            if let Err(e) = step {
                if self.valid() {
                    return Err(fail(format!("the client rejected the Conn's bytes: {e}")));
                }
                // An alert after garbage, a corrupted stream: the client is done.
                self.client_silent = true;
                self.garbage_done = true;
                return Ok(());
            }
            match self.client.reader().read_to_end(&mut self.client_got) {
                Ok(_) => self.client_saw_close_notify = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(format!("client read: {e}"))),
            }
        }
        Ok(())
    }

    /// Bytes from the Conn reach the upstream socket.
    fn upstream_receives(&mut self, b: &[u8]) -> Result<(), TestCaseError> {
        self.up_raw.extend_from_slice(b);
        if self.up_failed {
            return Ok(());
        }
        let pre = self.plan.preamble.len();
        let start = self.up_raw_fed.max(pre);
        if start >= self.up_raw.len() {
            return Ok(());
        }
        self.up_raw_fed = self.up_raw.len();
        let Some(up) = self.up.as_mut() else {
            self.upstream_got.extend_from_slice(&self.up_raw[start..]);
            return Ok(());
        };
        let valid = self.plan.garbage.is_none() && self.fault_applied.is_none();
        let mut s = &self.up_raw[start..];
        while !s.is_empty() {
            let step = up
                .read_tls(&mut s)
                .map_err(|e| e.to_string())
                .and_then(|n| match n {
                    // rustls reads nothing after close_notify.
                    0 => Err(format!("{} bytes after close_notify", s.len())),
                    _ => Ok(()),
                })
                .and_then(|_| up.process_new_packets().map_err(|e| e.to_string()));
            if let Err(e) = step {
                if valid {
                    return Err(fail(format!("the upstream rejected the Conn's TLS: {e}")));
                }
                // (After a fault or garbage — the known early-close bug — the Conn
                // may break the upstream's TLS; the upstream gives up.)
                self.up_failed = true;
                return Ok(());
            }
            match up.reader().read_to_end(&mut self.upstream_got) {
                Ok(_) => self.upstream_saw_close_notify = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(format!("upstream read: {e}"))),
            }
        }
        Ok(())
    }

    fn apply_fault(&mut self, f: Fault) {
        let phase = self.conn.phase();
        let now = self.now;
        match f {
            Fault::ClientError => self.conn.handle_error(Side::Client),
            Fault::UpstreamError if self.connected => self.conn.handle_error(Side::Upstream),
            Fault::ClientEofNow if !self.client_eof_sent => {
                self.client_eof_sent = true;
                self.conn.handle_eof(Side::Client, now);
            }
            Fault::UpstreamEofNow if self.connected && !self.upstream_eof_sent => {
                self.upstream_eof_sent = true;
                self.conn.handle_eof(Side::Upstream, now);
            }
            // Not applicable now (or applied at connect time).
            _ => return,
        }
        self.fault_applied = Some((f, phase));
    }

    /// After every step: a close reason, once given, stays; a closed connection
    /// asks for no input.
    fn observe(&mut self) -> Result<(), TestCaseError> {
        let now = self.conn.poll_close();
        match (self.close, now) {
            (None, r) => self.close = r,
            (Some(a), Some(b)) if a == b => {}
            (Some(a), b) => return Err(fail(format!("close reason changed: {a:?} -> {b:?}"))),
        }
        if self.close.is_some() {
            prop_assert!(
                !self.conn.wants_recv(Side::Client),
                "closed but wants client bytes"
            );
            prop_assert!(
                !self.conn.wants_recv(Side::Upstream),
                "closed but wants upstream bytes"
            );
        }
        Ok(())
    }

    /// The driver's view after close: it polls once more (as a flush would), and
    /// the reason must not move.
    fn poll_after_close(&mut self) -> Result<(), TestCaseError> {
        let _ = self.conn.poll_connect();
        let _ = self.conn.poll_send(Side::Client);
        let _ = self.conn.poll_send(Side::Upstream);
        let _ = self.conn.poll_shutdown(Side::Upstream);
        let _ = self.conn.poll_shutdown(Side::Client);
        self.observe()
    }

    /// Run the schedule, then every enabled action in turn until nothing moves. A
    /// fault happens at its step or, if it does not apply then, as soon as it does;
    /// one planned past the schedule's end happens at its end.
    fn run(&mut self) -> Result<(), TestCaseError> {
        for (step, &pick) in self.plan.schedule.iter().enumerate() {
            // A fault that does not apply yet (no upstream to reset) waits.
            if self.fault_applied.is_none() && self.plan.fault.is_some_and(|(at, _)| at <= step) {
                self.inject_fault()?;
            }
            if self.close.is_some() {
                return self.poll_after_close();
            }
            let enabled: Vec<Act> = ALL_ACTS.into_iter().filter(|&a| self.enabled(a)).collect();
            let act = enabled[usize::from(pick) % enabled.len()];
            self.act(act)?;
            self.observe()?;
        }
        if self.fault_applied.is_none() && self.plan.fault.is_some() {
            self.inject_fault()?;
            if self.close.is_some() {
                return self.poll_after_close();
            }
        }
        self.settle()
    }

    fn inject_fault(&mut self) -> Result<(), TestCaseError> {
        let (_, f) = self.plan.fault.unwrap();
        if self.close.is_some() {
            return Ok(());
        }
        self.apply_fault(f);
        self.observe()?;
        match self.fault_applied {
            Some((f, phase)) => self.check_fault_reason(f, phase),
            None => Ok(()),
        }
    }

    fn settle(&mut self) -> Result<(), TestCaseError> {
        self.min_chunk = 4096;
        for _ in 0..100_000 {
            if self.close.is_some() {
                return self.poll_after_close();
            }
            let mut moved = false;
            for act in ALL_ACTS {
                if act != Act::Tick && self.enabled(act) && self.act(act)? {
                    moved = true;
                }
                self.observe()?;
                if self.close.is_some() {
                    return self.poll_after_close();
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err(fail("the world did not settle"))
    }

    /// The driver's last resort for a connection that went quiet: its deadline.
    fn time_out(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..3 {
            if self.close.is_some() {
                return Ok(());
            }
            self.timed_out = true;
            self.now += LONG * 2;
            match self.conn.handle_timeout(self.now) {
                Expired::No => return Err(fail("deadline long passed, handle_timeout says No")),
                // The worker cancels the attempt; with no upstream left, unavailable.
                Expired::ConnectAttempt => self.conn.handle_upstream_unavailable(),
                Expired::Close => {
                    if self.conn.poll_close().is_none() {
                        return Err(fail("handle_timeout said Close, poll_close says None"));
                    }
                }
            }
            self.observe()?;
            self.settle()?;
        }
        match self.close {
            Some(_) => Ok(()),
            None => Err(fail(format!(
                "no close reason even after timeouts (phase {:?})",
                self.conn.phase()
            ))),
        }
    }

    fn check_fault_reason(&self, f: Fault, phase: Phase) -> Result<(), TestCaseError> {
        let want = match (f, phase) {
            (Fault::ClientError, Phase::Handshaking)
            | (Fault::ClientEofNow, Phase::Handshaking) => {
                CloseReason::HandshakeFailed(HandshakeFailure::PeerClosed)
            }
            (Fault::ClientError, _) => CloseReason::ClientReset,
            (Fault::UpstreamError, _) => CloseReason::UpstreamReset,
            _ => return Ok(()),
        };
        prop_assert_eq!(self.close, Some(want), "right after {:?} in {:?}", f, phase);
        Ok(())
    }

    /// Whatever happened: what each side got is a prefix of what the other sent.
    fn check_prefixes(&self) -> Result<(), TestCaseError> {
        let pre = &self.plan.preamble;
        let n = self.up_raw.len().min(pre.len());
        prop_assert!(
            self.up_raw[..n] == pre[..n],
            "the preamble was not sent first"
        );
        prop_assert!(
            self.client_data.starts_with(&self.upstream_got),
            "upstream got {} bytes that are not a prefix of the client's {}",
            self.upstream_got.len(),
            self.client_data.len()
        );
        prop_assert!(
            self.upstream_data.starts_with(&self.client_got),
            "client got {} bytes that are not a prefix of the upstream's {}",
            self.client_got.len(),
            self.upstream_data.len()
        );
        prop_assert!(self.conn.bytes_client_to_upstream as usize <= self.client_data.len());
        prop_assert!(self.conn.bytes_upstream_to_client as usize <= self.upstream_data.len());
        Ok(())
    }
}

/// Runs `f` on another thread; panics when it has not returned in 10 s (a hung
/// Conn fails the test instead of the suite).
fn returns_within_10s(what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        panic!("{what} did not return within 10 s (spinning)");
    }
}

/// A new Conn (64 KiB buffers, hour-long timeouts) waiting for a ClientHello.
fn fresh_conn(pki: &Pki, now: Instant) -> Conn {
    let limits = ConnLimits {
        max_buffered: 64 * 1024,
        handshake_timeout: LONG,
        idle_timeout: LONG,
        connect_timeout: LONG,
    };
    Conn::new(
        UnbufferedServerConnection::new(pki.server.clone()).unwrap(),
        limits,
        now,
    )
}

/// A Conn after a finished handshake with a client, upstream connected (plain).
fn streaming_conn() -> (Conn, ClientConnection, Instant) {
    let pki = pki();
    let now = Instant::now();
    let mut conn = fresh_conn(pki, now);
    let mut client =
        ClientConnection::new(pki.clients[0].clone(), "localhost".try_into().unwrap()).unwrap();
    while client.is_handshaking() {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        conn.handle_data(Side::Client, &mut wire.to_vec(), now);
        while let Some(b) = conn.poll_send(Side::Client) {
            client.read_tls(&mut &b[..]).unwrap();
            client.process_new_packets().unwrap();
            conn.handle_sent(Side::Client, b, now);
        }
    }
    (conn, client, now)
}

/// Found by `client_garbage_never_panics_and_always_closes` (reported, not fixed
/// here: conn.rs is being reworked). Once rustls has read a close_notify, its
/// `read_tls` returns `Ok(0)` without consuming anything; the loop in
/// `Conn::handle_client_data` treats `Ok(_)` as progress (`stuck = 0`) and never
/// looks at `client_read_closed`, so bytes after the close_notify that rustls did
/// not take in the same `read_tls` call (it reads at most 4096 bytes per call) make
/// it spin forever: one client pins a worker thread (and every connection on it).
/// Minimal input: a valid TLS 1.3 session, then one chunk of close_notify + 4096
/// bytes of anything. `handle_upstream_data` has the same loop for a TLS upstream
/// (close_notify + more bytes from the upstream).
#[test]
fn bytes_after_client_close_notify_in_one_chunk_do_not_hang() {
    let (mut conn, mut client, now) = streaming_conn();
    client.send_close_notify();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire.extend_from_slice(&[0; 4096]);
    returns_within_10s("handle_client_data(close_notify + 4096 bytes)", move || {
        conn.handle_data(Side::Client, &mut wire.to_vec(), now);
        assert!(!conn.wants_recv(Side::Client));
    });
}

/// The valid-session property: everything arrives, in order, then `Done`.
fn check_valid_session(plan: &Plan) -> Result<(), TestCaseError> {
    let mut w = World::new(plan);
    w.run()?;
    w.check_prefixes()?;
    prop_assert_eq!(
        w.close,
        Some(CloseReason::Done),
        "phase {:?}",
        w.conn.phase()
    );
    prop_assert!(w.up_raw.starts_with(&plan.preamble));
    prop_assert!(
        w.upstream_got == w.client_data,
        "upstream got {} of {} bytes",
        w.upstream_got.len(),
        w.client_data.len()
    );
    prop_assert!(
        w.client_got == w.upstream_data,
        "client got {} of {} bytes",
        w.client_got.len(),
        w.upstream_data.len()
    );
    prop_assert!(w.upstream_saw_fin && w.client_saw_fin && w.client_saw_close_notify);
    if plan.upstream_tls.is_some() {
        prop_assert!(w.upstream_saw_close_notify);
    }
    prop_assert_eq!(w.conn.bytes_client_to_upstream as usize, plan.client_len);
    prop_assert_eq!(w.conn.bytes_upstream_to_client as usize, plan.upstream_len);
    Ok(())
}

/// Found by `valid_sessions_deliver_everything_in_order_and_end_done` and
/// `client_garbage_never_panics_and_always_closes` (reported, not fixed here:
/// conn.rs is being reworked). With a TLS upstream, a client that ends its stream
/// (close_notify or FIN) before the upstream's handshake is done: at the worker's
/// second flush after the connect (the first send completed, the upstream has not
/// answered yet), `feed_upstream` sees `client_read_closed` and no plaintext left —
/// the client's bytes sit unsent inside the upstream rustls session, waiting for
/// the handshake — and queues close_notify, which rustls sends at once, right after
/// the ClientHello; `poll_upstream_shutdown` then allows the FIN. The upstream sees
/// a handshake aborted by close_notify ("received fatal alert: CloseNotify") and
/// never gets the request; the Conn's own later handshake records go out after its
/// FIN (the worker's send then fails: `UpstreamReset`).
/// Minimal input: TLS 1.3 both legs, client sends "hello" + close_notify right
/// after its handshake, upstream connected afterwards.
#[test]
fn client_close_before_upstream_tls_handshake_loses_nothing() {
    let pki = pki();
    let now = Instant::now();
    let mut conn = fresh_conn(pki, now);
    let name = || "localhost".try_into().unwrap();
    let mut client = ClientConnection::new(pki.clients[0].clone(), name()).unwrap();
    let to_conn = |client: &mut ClientConnection, conn: &mut Conn| {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        conn.handle_data(Side::Client, &mut wire.to_vec(), now);
    };
    while client.is_handshaking() {
        to_conn(&mut client, &mut conn);
        while let Some(b) = conn.poll_send(Side::Client) {
            client.read_tls(&mut &b[..]).unwrap();
            client.process_new_packets().unwrap();
            conn.handle_sent(Side::Client, b, now);
        }
    }
    client.writer().write_all(b"hello").unwrap();
    client.send_close_notify();
    to_conn(&mut client, &mut conn);
    assert!(conn.poll_connect());
    let up_tls = UnbufferedClientConnection::new(pki.clients[0].clone(), name()).unwrap();
    conn.handle_upstream_connected(now, Vec::new(), Some(up_tls));

    // The upstream: a rustls server. Flush like the worker: every completed send is
    // followed by another poll, before the upstream's answer arrives.
    let mut up = ServerConnection::new(pki.server.clone()).unwrap();
    let mut up_got = Vec::new();
    let mut fin = false;
    for _ in 0..10 {
        while let Some(b) = conn.poll_send(Side::Upstream) {
            assert!(!fin, "bytes for the upstream after its FIN");
            let mut s = &b[..];
            while !s.is_empty() {
                up.read_tls(&mut s).unwrap();
                if let Err(e) = up.process_new_packets() {
                    panic!("the upstream rejected the Conn's TLS: {e}");
                }
            }
            let _ = up.reader().read_to_end(&mut up_got);
            conn.handle_sent(Side::Upstream, b, now);
        }
        fin |= conn.poll_shutdown(Side::Upstream);
        let mut answer = Vec::new();
        while up.wants_write() {
            up.write_tls(&mut answer).unwrap();
        }
        conn.handle_data(Side::Upstream, &mut answer.to_vec(), now);
    }
    assert_eq!(up_got, b"hello");
    assert!(fin);
}

proptest! {
    #![proptest_config(cases(128))]

    /// A valid client session (TLS 1.3 or 1.2) and a plaintext or re-encrypted
    /// upstream, every byte stream split at random points, the connect and both EOFs
    /// at random times: each side gets exactly what the other sent, the upstream its
    /// preamble first, the FINs only after everything, and the connection ends `Done`
    /// with no timeout.
    #[test]
    fn valid_sessions_deliver_everything_in_order_and_end_done(plan in plan()) {
        check_valid_session(&plan)?;
    }

    /// The same sessions with a reset, an early EOF (a cut stream) or an unavailable
    /// upstream at a random step: a reset closes at once with the side's reason,
    /// every run ends with a close reason, and what each side got is a prefix of
    /// what the other sent.
    #[test]
    fn resets_and_early_eofs_end_with_a_reason_and_deliver_prefixes(
        plan in plan(),
        at in prop_oneof![0..30usize, 0..300usize, 0..3000usize],
        f in fault(),
    ) {
        let plan = Plan { fault: Some((at, f)), ..plan };
        let mut w = World::new(&plan);
        w.run()?;
        if w.close.is_none() && w.fault_applied.is_none() && f != Fault::UpstreamUnavailable {
            // The fault never applied (e.g. no upstream yet): this was a valid run.
            return Ok(());
        }
        w.time_out()?;
        w.check_prefixes()?;
        match w.fault_applied {
            Some((Fault::UpstreamUnavailable, _)) => {
                prop_assert_eq!(w.close, Some(CloseReason::UpstreamUnavailable));
                prop_assert!(w.upstream_got.is_empty());
            }
            Some((Fault::ClientEofNow, Phase::Handshaking)) | Some((Fault::ClientError, Phase::Handshaking)) => {
                prop_assert!(!w.connected && w.upstream_got.is_empty());
            }
            _ => {}
        }
    }

    /// Garbage from the client — instead of TLS, cut into a handshake or a session,
    /// or one flipped bit — with EOF at a random time: no panic, a close reason in the
    /// end (with a timeout as the last resort), a failed handshake never connects the
    /// upstream, and a corrupted record never reaches it (what arrives is a prefix
    /// of the real plaintext).
    #[test]
    fn client_garbage_never_panics_and_always_closes(plan in plan(), g in garbage()) {
        // No close_notify before the garbage: bytes after it in one chunk hang the
        // Conn (see `bytes_after_client_close_notify_in_one_chunk_do_not_hang`);
        // drop this once that is fixed.
        let plan = Plan { garbage: Some(g), client_close_notify: false, ..plan };
        let mut w = World::new(&plan);
        w.run()?;
        w.time_out()?;
        w.check_prefixes()?;
        if let Some(CloseReason::HandshakeFailed(_)) = w.close {
            prop_assert!(!w.connected && !w.connect_pending && w.upstream_got.is_empty());
        }
    }
}
