//! h2: HTTP/2 on an `http` listener, terminated from the client and spoken again to
//! an h2 upstream, or translated to HTTP/1.1 for an HTTP/1.1 one (`h1`), each
//! request treated as an HTTP/1.1 one is.
//!
//! Owns [`H2Proxy`]: the `h2` crate's server connection with the client and the
//! upstream connection (`up`: the `h2` crate's client, or hyper's HTTP/1 client),
//! each over a [`pipe::Pipe`] (the `Conn`'s plaintext in and out), and the pairs of
//! streams between them. When the upstream connection ends (HTTP/1.1 close, an h2
//! GOAWAY or EOF) while streams wait for it, [`H2Proxy::take_redial`] asks the
//! `Conn` for a new one (at most `max_upstream_redials` per client connection);
//! streams it had taken and not answered are refused (REFUSED_STREAM) when it
//! provably did not process them, answered 502 / UNAVAILABLE otherwise. The `Conn` feeds each side's
//! decrypted bytes in, calls [`H2Proxy::drive`], and seals what each pipe holds for
//! its peer; `drive` polls every future of both codecs with a waker that wakes
//! nothing until none makes progress, so no wake-up is ever needed. The codec's
//! own bounds (concurrent streams, pending-accept and local-error resets, header
//! list size, CONTINUATION count, one pending pong and SETTINGS ack) are set from
//! [`H2Settings`]; the pipes bound what waits for each peer.
//!
//! I/O contract: none; no clock (the codec reads `Instant::now` for its reset-stream
//! expiry only).
#![forbid(unsafe_code)]

pub mod h1;
pub mod pipe;
pub mod stream;
#[cfg(test)]
mod tests;
mod up;

pub use up::Kind as UpstreamKind;

use crate::proxy::http::RequestFilter;
use bytes::Bytes;
use h2::{server, Reason, RecvStream};
use pipe::{noop_waker, Pipe, PipeIo};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use stream::{Pump, PumpError, Treated};
use up::{Failed, Upstream};

/// Bytes a codec may write ahead of the `Conn` sealing them, per side: frames are
/// at most 16 KiB, so this keeps a few in flight without holding a window's worth.
pub const PIPE_LIMIT: usize = 64 * 1024;

/// HTTP/2 limits of a listener (`[listeners.http.h2]`), each the codec's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct H2Settings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS offered to the client.
    pub max_concurrent_streams: u32,
    /// Per-stream receive window (bytes held per stream at most).
    pub stream_window: u32,
    /// Connection receive window.
    pub connection_window: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: decoded header bytes per request (HPACK bombs
    /// and CONTINUATION floods stop here).
    pub max_header_list_size: u32,
    /// Streams the client reset before they were accepted (rapid reset): over this,
    /// GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_accept_reset_streams: usize,
    /// Streams reset by terminus for the client's protocol errors: over this, GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// New upstream connections one client connection may ask for after its
    /// upstream connection ended with streams waiting; past it they are answered
    /// 502 / UNAVAILABLE and the client gets GOAWAY.
    pub max_upstream_redials: u32,
}

impl Default for H2Settings {
    fn default() -> H2Settings {
        H2Settings {
            max_concurrent_streams: 100,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_header_list_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 64,
            max_upstream_redials: 100,
        }
    }
}

enum Downstream {
    Handshaking(Box<server::Handshake<PipeIo, Bytes>>),
    Open(Box<server::Connection<PipeIo, Bytes>>),
    Done,
}

/// Where a proxied stream stands.
enum Stage {
    /// Treated, waiting for the upstream connection to take a stream.
    Queued(Option<(http::Request<()>, RecvStream)>),
    /// Sent; the request body moves while the response is awaited.
    Waiting {
        response: up::Response,
        up: Option<Pump>,
    },
    /// The response head went to the client; bodies move both ways.
    Streaming {
        up: Option<Pump>,
        down: Option<Pump>,
    },
}

struct Pair {
    respond: Option<server::SendResponse<Bytes>>,
    grpc: bool,
    stage: Stage,
}

/// Both HTTP/2 connections of one client connection (see the module doc).
pub struct H2Proxy {
    waker: Waker,
    /// Towards and from the client.
    pub down: Pipe,
    /// Towards and from the upstream (a new one for each upstream connection).
    pub up: Pipe,
    downstream: Downstream,
    upstream: Upstream,
    /// Streams in arrival order (an HTTP/1.1 upstream takes them in that order).
    pairs: Vec<Pair>,
    kind: UpstreamKind,
    settings: H2Settings,
    pipe_limit: usize,
    /// Upstream connections still allowed after this one.
    redials_left: u32,
    /// A new upstream connection was asked for and is not there yet.
    dialing: bool,
}

impl H2Proxy {
    /// `pipe_limit`: bytes that may wait to be sealed for each peer; `kind`: what
    /// the upstream speaks.
    pub fn new(s: &H2Settings, pipe_limit: usize, kind: UpstreamKind) -> H2Proxy {
        let down = Pipe::new(pipe_limit);
        let up = Pipe::new(pipe_limit);
        let downstream = server::Builder::new()
            .max_concurrent_streams(s.max_concurrent_streams)
            .initial_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_header_list_size(s.max_header_list_size)
            .max_pending_accept_reset_streams(s.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(s.max_local_error_reset_streams))
            .max_send_buffer_size(s.stream_window as usize)
            .handshake(down.io());
        H2Proxy {
            waker: noop_waker(),
            upstream: Upstream::new(kind, s, &up, pipe_limit),
            down,
            up,
            downstream: Downstream::Handshaking(Box::new(downstream)),
            pairs: Vec::new(),
            kind,
            settings: *s,
            pipe_limit,
            redials_left: s.max_upstream_redials,
            dialing: false,
        }
    }

    /// The client's connection ended (EOF, GOAWAY, a protocol error) and every
    /// stream with it: nothing more will be said to it but what the pipe holds.
    pub fn finished(&self) -> bool {
        matches!(self.downstream, Downstream::Done) && self.pairs.is_empty()
    }

    /// Streams in progress.
    pub fn streams(&self) -> usize {
        self.pairs.len()
    }

    /// Stop taking streams (GOAWAY); those in progress finish.
    pub fn drain(&mut self) {
        if let Downstream::Open(c) = &mut self.downstream {
            c.graceful_shutdown();
        }
    }

    /// Whether the upstream connection ended while streams wait for one and another
    /// is allowed: then true once, and the `Conn` dials again
    /// ([`H2Proxy::redialled`] or [`H2Proxy::redial_failed`] follows).
    pub fn take_redial(&mut self) -> bool {
        let queued = || {
            self.pairs
                .iter()
                .any(|p| matches!(p.stage, Stage::Queued(_)))
        };
        if !self.upstream.is_done() || self.dialing || self.redials_left == 0 || !queued() {
            return false;
        }
        self.redials_left -= 1;
        self.dialing = true;
        true
    }

    /// The new upstream connection is up: its codec starts over a new pipe (no-op
    /// when none was asked for: the first connection's codec is the one from `new`).
    pub fn redialled(&mut self) {
        if !self.dialing {
            return;
        }
        self.up = Pipe::new(self.pipe_limit);
        self.upstream = Upstream::new(self.kind, &self.settings, &self.up, self.pipe_limit);
        self.dialing = false;
    }

    /// No upstream could be reached: waiting streams are answered 502 /
    /// UNAVAILABLE, and the client gets GOAWAY.
    pub fn redial_failed(&mut self) {
        self.dialing = false;
        self.redials_left = 0;
    }

    /// Whether streams the upstream does not take now may wait for a later
    /// connection (this one going away, or a redial allowed).
    fn may_wait(&self) -> bool {
        self.dialing || self.redials_left > 0
    }

    /// Poll everything until nothing moves. `filter` treats each new request.
    pub fn drive(&mut self, filter: &mut RequestFilter) {
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        // Each round moves a window's worth at most; the bound only guards a bug.
        for _ in 0..64 {
            let mut moved = false;
            let before = self.sizes();
            self.poll_downstream(&mut cx, filter, &mut moved);
            self.poll_upstream(&mut cx);
            self.poll_pairs(&mut cx, &mut moved);
            if !moved && self.sizes() == before {
                break;
            }
        }
    }

    fn sizes(&self) -> [usize; 4] {
        let (d, u) = (self.down.lock(), self.up.lock());
        [d.unread(), d.tx.len(), u.unread(), u.tx.len()]
    }

    fn poll_downstream(
        &mut self,
        cx: &mut Context<'_>,
        filter: &mut RequestFilter,
        moved: &mut bool,
    ) {
        if let Downstream::Handshaking(h) = &mut self.downstream {
            match Pin::new(&mut **h).poll(cx) {
                Poll::Ready(Ok(c)) => self.downstream = Downstream::Open(Box::new(c)),
                Poll::Ready(Err(_)) => self.downstream = Downstream::Done,
                Poll::Pending => return,
            }
        }
        let Downstream::Open(conn) = &mut self.downstream else {
            return;
        };
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    *moved = true;
                    let (parts, body) = req.into_parts();
                    let req = http::Request::from_parts(parts, ());
                    let grpc = stream::request_is_grpc(&req);
                    match stream::treat(req, filter) {
                        // gRPC needs HTTP/2 end to end: refused here, nothing sent.
                        Treated::Forward(_) if grpc && self.kind == UpstreamKind::Http1 => {
                            let (head, body) = stream::grpc_needs_h2();
                            answer(respond, head, body);
                        }
                        Treated::Forward(req) => self.pairs.push(Pair {
                            respond: Some(respond),
                            grpc,
                            stage: Stage::Queued(Some((req, body))),
                        }),
                        Treated::Answer(head, body) => answer(respond, head, body),
                    }
                }
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    // The codec sent GOAWAY (or the client did, or left).
                    self.downstream = Downstream::Done;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_>) {
        self.upstream.poll(cx);
        if self.upstream.is_done() && !self.may_wait() {
            // No more streams can be served: the client should go elsewhere.
            self.drain();
        }
    }

    fn poll_pairs(&mut self, cx: &mut Context<'_>, moved: &mut bool) {
        let mut i = 0;
        while i < self.pairs.len() {
            if self.poll_pair(i, cx, moved) {
                // In order: queued streams keep their turn.
                self.pairs.remove(i);
                *moved = true;
            } else {
                i += 1;
            }
        }
    }

    /// Advance pair `i`; true: it is over.
    fn poll_pair(&mut self, i: usize, cx: &mut Context<'_>, moved: &mut bool) -> bool {
        let may_wait = self.may_wait();
        let upstream = &mut self.upstream;
        let p = &mut self.pairs[i];
        if matches!(p.stage, Stage::Queued(_)) {
            if p.client_reset(cx) {
                return true;
            }
            match upstream.poll_ready(cx) {
                Poll::Pending => return false,
                // This connection takes no more: wait for the next one, if any.
                Poll::Ready(false) if may_wait => return false,
                Poll::Ready(false) => return p.unavailable(),
                Poll::Ready(true) => {}
            }
            let Stage::Queued(q) = &mut p.stage else {
                unreachable!("checked above")
            };
            let (req, body) = q.take().expect("a queued pair holds its request");
            *moved = true;
            match upstream.send(req, body) {
                Some((response, up)) => p.stage = Stage::Waiting { response, up },
                None => return p.unavailable(),
            }
        }
        p.poll_bodies(cx, moved)
    }
}

impl Pair {
    /// Move the response head and both bodies; true: the pair is over.
    fn poll_bodies(&mut self, cx: &mut Context<'_>, moved: &mut bool) -> bool {
        if let Stage::Waiting { response, up } = &mut self.stage {
            match response.poll(cx) {
                Poll::Pending => {
                    match up.as_mut().map(|p| p.poll(cx, moved)).and_then(ready) {
                        Some(Ok(())) => *up = None,
                        Some(Err(e)) => return self.fail(e),
                        None => {}
                    }
                    return self.client_reset(cx);
                }
                Poll::Ready(Err(f)) => return self.failed(f),
                Poll::Ready(Ok((head, body, end))) => {
                    *moved = true;
                    let respond = self.respond.as_mut().expect("responded once");
                    let out = respond.send_response(head, end);
                    self.respond = None;
                    let up = up.take();
                    let down = match out {
                        Ok(out) => (!end).then(|| Pump::new(body, out)),
                        Err(_) => return true,
                    };
                    self.stage = Stage::Streaming { up, down };
                }
            }
        }
        let Stage::Streaming { up, down } = &mut self.stage else {
            return false;
        };
        let mut failed = None;
        for pump in [&mut *up, &mut *down] {
            match pump.as_mut().map(|p| p.poll(cx, moved)).and_then(ready) {
                Some(Ok(())) => *pump = None,
                Some(Err(e)) => failed = Some(e),
                None => {}
            }
        }
        if let Some(e) = failed {
            return self.fail(e);
        }
        matches!(
            &self.stage,
            Stage::Streaming {
                up: None,
                down: None
            }
        )
    }

    /// Before the response: whether the client reset the stream (then the
    /// upstream's is cancelled as the pair drops).
    fn client_reset(&mut self, cx: &mut Context<'_>) -> bool {
        self.respond
            .as_mut()
            .is_some_and(|r| r.poll_reset(cx).is_ready())
    }

    /// Answer 502 / UNAVAILABLE here; the pair is over.
    fn unavailable(&mut self) -> bool {
        if let Some(r) = self.respond.take() {
            let (head, body) = stream::unavailable(self.grpc);
            answer(r, head, body);
        }
        true
    }

    /// The upstream gave no response: refused (the client may retry), reset as the
    /// upstream reset it, or, lost with its connection, answered 502 / UNAVAILABLE.
    fn failed(&mut self, f: Failed) -> bool {
        match f {
            Failed::Refused => self.fail(PumpError::Recv(Reason::REFUSED_STREAM)),
            Failed::Reset(r) => self.fail(PumpError::Recv(r)),
            Failed::Lost => self.unavailable(),
        }
    }

    /// One side failed: reset every stream of the pair still open (dropping the
    /// others' handles cancels them).
    fn fail(&mut self, e: PumpError) -> bool {
        let r = match e {
            PumpError::Recv(r) | PumpError::Send(r) => r,
        };
        if let Some(respond) = self.respond.as_mut() {
            respond.send_reset(r);
        }
        match &mut self.stage {
            Stage::Waiting { up, .. } => {
                if let Some(p) = up {
                    p.reset(r);
                }
            }
            Stage::Streaming { up, down } => {
                for p in [up, down].into_iter().flatten() {
                    p.reset(r);
                }
            }
            Stage::Queued(_) => {}
        }
        true
    }
}

fn ready<T>(p: Poll<T>) -> Option<T> {
    match p {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Answer a stream here (a refusal, or no upstream).
fn answer(mut respond: server::SendResponse<Bytes>, head: http::Response<()>, body: Option<Bytes>) {
    let end = body.is_none();
    if let Ok(mut s) = respond.send_response(head, end) {
        if let Some(b) = body {
            let _ = s.send_data(b, true);
        }
    }
}
