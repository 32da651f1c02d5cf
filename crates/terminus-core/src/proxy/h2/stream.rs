//! stream: one client stream and its upstream stream, from request to trailers.
//!
//! Owns [`Pair`] (where a proxied stream stands: queued for the upstream's
//! connection, waiting for its response, or moving bodies both ways), [`Pump`] (one
//! body from a `RecvStream` to a `SendStream`, within the flow-control windows of
//! both: data is released to its sender only once the receiver's window took it, so
//! a stream holds at most one window's worth), and [`treat`], the request's
//! treatment: the HTTP/1.1 filter's owned headers, added headers and gate, applied
//! to an HTTP/2 head.
//!
//! I/O contract: none; polled with a waker that wakes nothing (see `pipe`).
#![forbid(unsafe_code)]

use crate::proxy::authz::gate::Decision;
use crate::proxy::http::RequestFilter;
use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::task::{Context, Poll};

/// Where a body comes from: a stream of the client's or of an h2 upstream's
/// connection (its window reopens as its bytes go on), or an HTTP/1.1 upstream's
/// response (its connection reads on as it is drained).
pub enum Source {
    H2(RecvStream),
    H1(super::h1::RespBody),
}

impl Source {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Reason>>> {
        match self {
            Source::H2(r) => r
                .poll_data(cx)
                .map(|d| d.map(|d| d.map_err(|e| reason(&e)))),
            Source::H1(b) => b.poll_data(cx),
        }
    }

    fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, Reason>> {
        match self {
            Source::H2(r) => r.poll_trailers(cx).map_err(|e| reason(&e)),
            Source::H1(b) => b.poll_trailers(cx),
        }
    }

    /// `n` bytes went on: the sender may send that many more.
    fn release(&mut self, n: usize) {
        if let Source::H2(r) = self {
            let _ = r.flow_control().release_capacity(n);
        }
    }
}

/// One body on its way, and whether it is through.
pub struct Pump {
    recv: Source,
    send: SendStream<Bytes>,
    /// Received, not yet sent (the send window was smaller).
    pending: Bytes,
    body_done: bool,
}

/// Why a pump stopped early.
pub enum PumpError {
    /// The receiving side failed or reset: reset the sending side with this.
    Recv(Reason),
    /// The sending side was reset: reset the receiving side with this.
    Send(Reason),
}

fn reason(e: &h2::Error) -> Reason {
    e.reason().unwrap_or(Reason::INTERNAL_ERROR)
}

impl Pump {
    pub fn new(recv: Source, send: SendStream<Bytes>) -> Pump {
        Pump {
            recv,
            send,
            pending: Bytes::new(),
            body_done: false,
        }
    }

    /// Move what can move. Ready(Ok): the body and its trailers went through.
    pub fn poll(&mut self, cx: &mut Context<'_>, moved: &mut bool) -> Poll<Result<(), PumpError>> {
        loop {
            if !self.pending.is_empty() {
                if self.send.capacity() == 0 {
                    self.send.reserve_capacity(self.pending.len());
                    match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(PumpError::Send(reason(&e))))
                        }
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(PumpError::Send(Reason::CANCEL)))
                        }
                        Poll::Pending => return self.check_reset(cx),
                    }
                }
                let n = self.send.capacity().min(self.pending.len());
                if n == 0 {
                    return self.check_reset(cx);
                }
                let chunk = self.pending.split_to(n);
                if let Err(e) = self.send.send_data(chunk, false) {
                    return Poll::Ready(Err(PumpError::Send(reason(&e))));
                }
                // The receiver's window reopens by what the sender's took.
                self.recv.release(n);
                *moved = true;
                continue;
            }
            if !self.body_done {
                match self.recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(b))) => {
                        self.pending = b;
                        *moved = true;
                        continue;
                    }
                    Poll::Ready(Some(Err(r))) => return Poll::Ready(Err(PumpError::Recv(r))),
                    Poll::Ready(None) => self.body_done = true,
                    Poll::Pending => return self.check_reset(cx),
                }
            }
            let end = match self.recv.poll_trailers(cx) {
                Poll::Ready(Ok(Some(t))) => self.send.send_trailers(t),
                Poll::Ready(Ok(None)) => self.send.send_data(Bytes::new(), true),
                Poll::Ready(Err(r)) => return Poll::Ready(Err(PumpError::Recv(r))),
                Poll::Pending => return self.check_reset(cx),
            };
            *moved = true;
            return Poll::Ready(end.map_err(|e| PumpError::Send(reason(&e))));
        }
    }

    /// Waiting: unless the receiver of what we send reset the stream.
    fn check_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(Err(PumpError::Send(r))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(PumpError::Send(reason(&e)))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reset both streams (one of them failed with `r`).
    pub fn reset(&mut self, r: Reason) {
        self.send.send_reset(r);
    }
}

/// What [`treat`] decided for a request.
pub enum Treated {
    Forward(Request<()>),
    /// Answer it here: the response head, its body (if any).
    Answer(Response<()>, Option<Bytes>),
}

/// Whether a request is gRPC (its answers are gRPC statuses).
fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The same treatment as an HTTP/1.1 head: client copies of owned headers dropped,
/// terminus's added (X-Forwarded-*, the identity headers), then the rules and
/// limits. A denied gRPC call is answered as gRPC does: HTTP 200, trailers only,
/// `grpc-status` 7 (denied) or 8 (limited).
pub fn treat(req: Request<()>, filter: &mut RequestFilter) -> Treated {
    let (mut parts, ()) = req.into_parts();
    filter.requests += 1;
    for name in crate::proxy::http::OWNED {
        parts.headers.remove(name);
    }
    let host = parts.uri.authority().map(|a| a.as_str().to_owned());
    for (name, value) in filter.added_fields() {
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            parts.headers.append(n, v);
        }
    }
    if let Some(fh) = filter.forwarded_host().map(str::to_owned).or(host) {
        if let Ok(v) = HeaderValue::from_str(&fh) {
            parts.headers.append("x-forwarded-host", v);
        }
    }
    let grpc = is_grpc(&parts.headers);
    if let Some(g) = filter.gate_mut() {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let decided = g.decide(parts.method.as_str(), target);
        let answer = match decided {
            Ok(Decision::Forward) => None,
            Ok(Decision::Deny { rule }) => Some(if grpc {
                grpc_status(7, &format!("denied by rule \"{rule}\""))
            } else {
                plain(403, format!("denied by rule \"{rule}\"\n"), None)
            }),
            Ok(Decision::Limit {
                limit,
                retry_after_s,
            }) => Some(if grpc {
                grpc_status(8, &format!("rate limited: {}", limit.as_str()))
            } else {
                plain(
                    429,
                    format!("rate limited: {}\n", limit.as_str()),
                    Some(retry_after_s),
                )
            }),
            Err(e) => Some(if grpc {
                grpc_status(3, e.as_str())
            } else {
                plain(400, format!("{}\n", e.as_str()), None)
            }),
        };
        if let Some((head, body)) = answer {
            return Treated::Answer(head, body);
        }
    }
    Treated::Forward(Request::from_parts(parts, ()))
}

/// A trailers-only gRPC answer.
fn grpc_status(code: u8, message: &str) -> (Response<()>, Option<Bytes>) {
    let mut r = Response::new(());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    (r, None)
}

fn plain(status: u16, body: String, retry_after_s: Option<u64>) -> (Response<()>, Option<Bytes>) {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if let Some(s) = retry_after_s {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    (r, Some(Bytes::from(body)))
}

/// A gRPC call on a listener whose upstream speaks HTTP/1.1: answered here,
/// UNAVAILABLE, nothing sent upstream (gRPC needs HTTP/2 end to end).
pub fn grpc_needs_h2() -> (Response<()>, Option<Bytes>) {
    grpc_status(
        14,
        "the upstream speaks HTTP/1.1 (upstream_protocol = \"http1\"); gRPC needs HTTP/2 end to end",
    )
}

/// The answer when the upstream cannot take a stream: 502, or gRPC's UNAVAILABLE.
pub fn unavailable(grpc: bool) -> (Response<()>, Option<Bytes>) {
    if grpc {
        grpc_status(14, "upstream unavailable")
    } else {
        plain(502, "upstream unavailable\n".into(), None)
    }
}

pub fn request_is_grpc<T>(r: &Request<T>) -> bool {
    is_grpc(r.headers())
}
