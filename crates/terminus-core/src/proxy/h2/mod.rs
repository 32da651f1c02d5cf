//! h2: HTTP/2 on an `http` listener, terminated from the client and spoken again to
//! an h2 upstream, each request treated as an HTTP/1.1 one is.
//!
//! Owns [`H2Proxy`]: the `h2` crate's server connection with the client and client
//! connection with the upstream, each over a [`pipe::Pipe`] (the `Conn`'s plaintext
//! in and out), and the [`stream::Pair`]s between them. The `Conn` feeds each side's
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

pub mod pipe;
pub mod stream;
#[cfg(test)]
mod tests;

use crate::proxy::http::RequestFilter;
use bytes::Bytes;
use h2::{client, server, Reason, RecvStream};
use pipe::{noop_waker, Pipe, PipeIo};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use stream::{Pump, PumpError, Treated};

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
        }
    }
}

type ClientHandshake = Pin<
    Box<
        dyn Future<
                Output = Result<
                    (
                        client::SendRequest<Bytes>,
                        client::Connection<PipeIo, Bytes>,
                    ),
                    h2::Error,
                >,
            > + Send,
    >,
>;

enum Downstream {
    Handshaking(Box<server::Handshake<PipeIo, Bytes>>),
    Open(Box<server::Connection<PipeIo, Bytes>>),
    Done,
}

enum Upstream {
    Handshaking(ClientHandshake),
    Open {
        send: client::SendRequest<Bytes>,
        conn: Box<client::Connection<PipeIo, Bytes>>,
    },
    /// Its connection ended: new streams are answered 502 / UNAVAILABLE.
    Done,
}

/// Where a proxied stream stands.
enum Stage {
    /// Treated, waiting for the upstream connection to take a stream.
    Queued(Option<(http::Request<()>, RecvStream)>),
    /// Sent; the request body moves while the response is awaited.
    Waiting {
        response: client::ResponseFuture,
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
    /// Towards and from the upstream.
    pub up: Pipe,
    downstream: Downstream,
    upstream: Upstream,
    pairs: Vec<Pair>,
}

impl H2Proxy {
    /// `pipe_limit`: bytes that may wait to be sealed for each peer.
    pub fn new(s: &H2Settings, pipe_limit: usize) -> H2Proxy {
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
        let upstream = client::Builder::new()
            .initial_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_header_list_size(s.max_header_list_size.saturating_mul(4))
            .max_send_buffer_size(s.stream_window as usize)
            .handshake(up.io());
        H2Proxy {
            waker: noop_waker(),
            down,
            up,
            downstream: Downstream::Handshaking(Box::new(downstream)),
            upstream: Upstream::Handshaking(Box::pin(upstream)),
            pairs: Vec::new(),
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
        if let Upstream::Handshaking(h) = &mut self.upstream {
            match h.as_mut().poll(cx) {
                Poll::Ready(Ok((send, conn))) => {
                    self.upstream = Upstream::Open {
                        send,
                        conn: Box::new(conn),
                    }
                }
                Poll::Ready(Err(_)) => self.upstream = Upstream::Done,
                Poll::Pending => return,
            }
        }
        if let Upstream::Open { conn, .. } = &mut self.upstream {
            if Pin::new(&mut **conn).poll(cx).is_ready() {
                self.upstream = Upstream::Done;
            }
        }
        if matches!(self.upstream, Upstream::Done) {
            // No more streams can be served: the client should go elsewhere.
            self.drain();
        }
    }

    fn poll_pairs(&mut self, cx: &mut Context<'_>, moved: &mut bool) {
        let mut i = 0;
        while i < self.pairs.len() {
            if self.poll_pair(i, cx, moved) {
                self.pairs.swap_remove(i);
                *moved = true;
            } else {
                i += 1;
            }
        }
    }

    /// Advance pair `i`; true: it is over.
    fn poll_pair(&mut self, i: usize, cx: &mut Context<'_>, moved: &mut bool) -> bool {
        let upstream = &mut self.upstream;
        let p = &mut self.pairs[i];
        if let Stage::Queued(q) = &mut p.stage {
            let send = match upstream {
                Upstream::Handshaking(_) => return false,
                Upstream::Done => {
                    if let Some(r) = p.respond.take() {
                        let (head, body) = stream::unavailable(p.grpc);
                        answer(r, head, body);
                    }
                    return true;
                }
                Upstream::Open { send, .. } => send,
            };
            match send.poll_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => {
                    *upstream = Upstream::Done;
                    return false;
                }
                Poll::Ready(Ok(())) => {}
            }
            let (req, body) = q.take().expect("a queued pair holds its request");
            let end = body.is_end_stream();
            match send.send_request(req, end) {
                Ok((response, out)) => {
                    let up = (!end).then(|| Pump::new(body, out));
                    p.stage = Stage::Waiting { response, up };
                }
                Err(_) => {
                    if let Some(r) = p.respond.take() {
                        let (head, body) = stream::unavailable(p.grpc);
                        answer(r, head, body);
                    }
                    return true;
                }
            }
        }
        p.poll_bodies(cx, moved)
    }
}

impl Pair {
    /// Move the response head and both bodies; true: the pair is over.
    fn poll_bodies(&mut self, cx: &mut Context<'_>, moved: &mut bool) -> bool {
        if let Stage::Waiting { response, up } = &mut self.stage {
            match up.as_mut().map(|p| p.poll(cx, moved)).and_then(ready) {
                Some(Ok(())) => *up = None,
                Some(Err(e)) => return self.fail(e),
                None => {}
            }
            match Pin::new(response).poll(cx) {
                Poll::Pending => {
                    return self.client_reset(cx);
                }
                Poll::Ready(Err(e)) => {
                    return self.fail(PumpError::Recv(
                        e.reason().unwrap_or(Reason::INTERNAL_ERROR),
                    ));
                }
                Poll::Ready(Ok(resp)) => {
                    *moved = true;
                    let (parts, body) = resp.into_parts();
                    let end = body.is_end_stream();
                    let respond = self.respond.as_mut().expect("responded once");
                    let out = respond.send_response(http::Response::from_parts(parts, ()), end);
                    self.respond = None;
                    let up = match &mut self.stage {
                        Stage::Waiting { up, .. } => up.take(),
                        _ => None,
                    };
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
