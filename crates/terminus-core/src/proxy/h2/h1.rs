//! h1: HTTP/1.1 towards the upstream for an HTTP/2 client (`upstream_protocol =
//! "http1"` with `h2` in `alpn`).
//!
//! Owns the translation of a stream's request into an HTTP/1.1 one (origin-form
//! target, `Host` from `:authority`, cookies joined, no connection-specific
//! fields) and of the response back ([`response`]: the same fields dropped),
//! [`ReqBody`] (the client's stream as hyper's request body: its window reopens as
//! hyper takes the bytes), [`RespBody`] (hyper's response body, chunked trailers
//! included, as a [`super::stream::Source`]) and the I/O hyper's HTTP/1 client
//! connection runs over: the upstream [`PipeIo`], polled with the no-op waker as
//! the h2 codec is, no executor and no runtime. HTTP/1.1 has no multiplexing: the
//! connection carries one request at a time (hyper's `SendRequest` is ready again
//! only once the previous exchange is over), so queued streams wait their turn.
//!
//! I/O contract: none; no clock.
#![forbid(unsafe_code)]

use super::pipe::PipeIo;
use bytes::Bytes;
use h2::{Reason, RecvStream};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type Sender = http1::SendRequest<ReqBody>;
pub type Connection = http1::Connection<PipeIo, ReqBody>;
pub type Handshake = Pin<Box<dyn Future<Output = hyper::Result<(Sender, Connection)>> + Send>>;
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = hyper::Result<http::Response<Incoming>>> + Send>>;

/// hyper's HTTP/1 client over `io`: its read and write buffers are bounded by
/// `buf` (one buffer each, no vectored queue), as the pipes are.
pub fn handshake(io: PipeIo, buf: usize) -> Handshake {
    let mut b = http1::Builder::new();
    b.writev(false).max_buf_size(buf.max(8192));
    Box::pin(b.handshake(io))
}

/// Send `req` (ready: the caller polled `poll_ready`).
pub fn send(send: &mut Sender, req: http::Request<()>, body: RecvStream) -> ResponseFuture {
    Box::pin(send.send_request(request(req, body)))
}

/// Fields that are about one HTTP/1.1 connection, never forwarded either way.
const CONNECTION_FIELDS: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Drop connection-specific fields (RFC 9110 7.6.1, RFC 9113 8.2.2): those the
/// `Connection` field names, then the fixed ones; `TE` stays on a request only as
/// `trailers`.
pub fn strip_connection_fields(h: &mut HeaderMap, request: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(CONNECTION_FIELDS.iter()) {
        h.remove(n);
    }
    h.remove("proxy-connection");
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !(request && te_trailers) {
        h.remove(header::TE);
    }
}

/// The stream's (treated) request as HTTP/1.1.
pub fn request(req: http::Request<()>, body: RecvStream) -> http::Request<ReqBody> {
    let (mut parts, ()) = req.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = target
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    parts.version = http::Version::HTTP_11;
    strip_connection_fields(&mut parts.headers, true);
    // HTTP/2 may split cookies into fields of their own; HTTP/1.1 wants one.
    let cookies: Vec<&[u8]> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if cookies.len() > 1 {
        if let Ok(v) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
            parts.headers.insert(header::COOKIE, v);
        }
    }
    // :authority is the target's host; a Host field beside it must not differ.
    if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        parts.headers.insert(header::HOST, v);
    }
    http::Request::from_parts(
        parts,
        ReqBody {
            recv: body,
            data_done: false,
        },
    )
}

/// The upstream's response head for the client, and its body.
pub fn response(resp: http::Response<Incoming>) -> (http::Response<()>, RespBody) {
    let (mut parts, body) = resp.into_parts();
    strip_connection_fields(&mut parts.headers, false);
    parts.version = http::Version::HTTP_2;
    let body = RespBody {
        body,
        trailers: None,
    };
    (http::Response::from_parts(parts, ()), body)
}

/// The client's stream as hyper's request body.
pub struct ReqBody {
    recv: RecvStream,
    data_done: bool,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    // hyper takes it into its bounded buffer: the client may send
                    // that much more.
                    let _ = this.recv.flow_control().release_capacity(b.len());
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(mut t))) => {
                strip_connection_fields(&mut t, false);
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

/// hyper's response body, read frame by frame (its trailers kept for
/// `poll_trailers`).
pub struct RespBody {
    body: Incoming,
    trailers: Option<HeaderMap>,
}

impl RespBody {
    pub fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Reason>>> {
        loop {
            return match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => Poll::Ready(Some(Ok(d))),
                    Err(f) => {
                        if let Ok(mut t) = f.into_trailers() {
                            strip_connection_fields(&mut t, false);
                            self.trailers = Some(t);
                        }
                        Poll::Ready(None)
                    }
                },
                // A body cut short (the upstream closed, a bad chunk): the client's
                // stream is reset.
                Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(Reason::INTERNAL_ERROR))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// After `poll_data` ended: the chunked trailers, if any.
    pub fn poll_trailers(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, Reason>> {
        Poll::Ready(Ok(self.trailers.take()))
    }
}
