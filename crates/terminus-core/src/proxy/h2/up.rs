//! up: the upstream connection of an [`super::H2Proxy`], h2 or HTTP/1.1, and one
//! stream's response from it.
//!
//! Owns [`Upstream`] (the handshake, then the connection, polled until it ends;
//! whether it takes new streams: an h2 upstream that sent GOAWAY, or an HTTP/1.1
//! one busy with a request, does not) and [`Response`], with how a stream that got
//! none failed ([`Failed`]): provably not processed, reset, or lost with its
//! connection.
//!
//! I/O contract: none; polled with the no-op waker (see `pipe`).
#![forbid(unsafe_code)]

use super::h1;
use super::pipe::{Pipe, PipeIo};
use super::stream::{Pump, Source};
use super::H2Settings;
use bytes::Bytes;
use h2::{client, Reason, RecvStream};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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

/// What the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    H2,
    Http1,
}

pub enum Upstream {
    H2Handshaking(ClientHandshake),
    H2 {
        send: client::SendRequest<Bytes>,
        conn: Box<client::Connection<PipeIo, Bytes>>,
        /// False once it refused a new stream (GOAWAY): those in flight finish.
        taking: bool,
    },
    H1Handshaking(h1::Handshake),
    H1 {
        send: h1::Sender,
        conn: Box<h1::Connection>,
    },
    /// Its connection ended (or could not be made).
    Done,
}

impl Upstream {
    /// A new connection's handshake over `pipe`.
    pub fn new(kind: Kind, s: &H2Settings, pipe: &Pipe, buf: usize) -> Upstream {
        match kind {
            Kind::H2 => {
                let h = client::Builder::new()
                    .initial_window_size(s.stream_window)
                    .initial_connection_window_size(s.connection_window)
                    .max_header_list_size(s.max_header_list_size.saturating_mul(4))
                    .max_send_buffer_size(s.stream_window as usize)
                    .handshake(pipe.io());
                Upstream::H2Handshaking(Box::pin(h))
            }
            Kind::Http1 => Upstream::H1Handshaking(h1::handshake(pipe.io(), buf)),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Upstream::Done)
    }

    /// Finish the handshake, poll the connection; Done once it ended.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        match self {
            Upstream::H2Handshaking(h) => match h.as_mut().poll(cx) {
                Poll::Ready(Ok((send, conn))) => {
                    *self = Upstream::H2 {
                        send,
                        conn: Box::new(conn),
                        taking: true,
                    }
                }
                Poll::Ready(Err(_)) => *self = Upstream::Done,
                Poll::Pending => return,
            },
            Upstream::H1Handshaking(h) => match h.as_mut().poll(cx) {
                Poll::Ready(Ok((send, conn))) => {
                    *self = Upstream::H1 {
                        send,
                        conn: Box::new(conn),
                    }
                }
                Poll::Ready(Err(_)) => *self = Upstream::Done,
                Poll::Pending => return,
            },
            _ => {}
        }
        let ended = match self {
            Upstream::H2 { conn, .. } => Pin::new(&mut **conn).poll(cx).is_ready(),
            Upstream::H1 { conn, .. } => Pin::new(&mut **conn).poll(cx).is_ready(),
            _ => false,
        };
        if ended {
            // Streams still waiting on it fail as its codec is dropped.
            *self = Upstream::Done;
        }
    }

    /// Whether a stream may be sent now. Ready(false): this connection takes no
    /// more (it is over, or going away).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        match self {
            Upstream::H2Handshaking(_) | Upstream::H1Handshaking(_) => Poll::Pending,
            Upstream::Done => Poll::Ready(false),
            Upstream::H2 { taking: false, .. } => Poll::Ready(false),
            Upstream::H2 { send, taking, .. } => match send.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => {
                    // GOAWAY (or the connection broke): what is in flight finishes.
                    *taking = false;
                    Poll::Ready(false)
                }
                Poll::Pending => Poll::Pending,
            },
            // One request at a time: ready again once the previous exchange is over.
            Upstream::H1 { send, .. } => match send.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Send a request (after `poll_ready` said so): its response, and the pump of
    /// its body for an h2 upstream (hyper reads an HTTP/1.1 one itself). None: the
    /// connection refused it.
    pub fn send(
        &mut self,
        req: http::Request<()>,
        body: RecvStream,
    ) -> Option<(Response, Option<Pump>)> {
        match self {
            Upstream::H2 { send, taking, .. } => {
                let end = body.is_end_stream();
                match send.send_request(req, end) {
                    Ok((response, out)) => {
                        let up = (!end).then(|| Pump::new(Source::H2(body), out));
                        Some((Response::H2(response), up))
                    }
                    Err(_) => {
                        *taking = false;
                        None
                    }
                }
            }
            Upstream::H1 { send, .. } => Some((Response::H1(h1::send(send, req, body)), None)),
            _ => None,
        }
    }
}

/// A sent stream's response, to come.
pub enum Response {
    H2(client::ResponseFuture),
    H1(h1::ResponseFuture),
}

/// How a stream that got no response failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The upstream provably did not process it (past its GOAWAY's last stream,
    /// or REFUSED_STREAM): the client may retry it.
    Refused,
    /// The upstream reset it with this reason.
    Reset(Reason),
    /// Its connection was lost or broke: whether it was processed is unknown.
    Lost,
}

/// A response head for the client, its body, and whether that is empty.
pub type Head = (http::Response<()>, Source, bool);

impl Response {
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Failed>> {
        match self {
            Response::H2(f) => match Pin::new(f).poll(cx) {
                Poll::Ready(Ok(resp)) => {
                    let (parts, body) = resp.into_parts();
                    let end = body.is_end_stream();
                    let head = http::Response::from_parts(parts, ());
                    Poll::Ready(Ok((head, Source::H2(body), end)))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(classify(&e))),
                Poll::Pending => Poll::Pending,
            },
            Response::H1(f) => match f.as_mut().poll(cx) {
                Poll::Ready(Ok(resp)) => {
                    let (head, body) = h1::response(resp);
                    let end = body.is_end_stream();
                    Poll::Ready(Ok((head, Source::H1(body), end)))
                }
                // HTTP/1.1 cannot say a request was not processed.
                Poll::Ready(Err(_)) => Poll::Ready(Err(Failed::Lost)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// An h2 stream's failure: a graceful GOAWAY (NO_ERROR) fails only the streams
/// past its last stream id (those before it finish, or fail with the connection
/// as lost), so it proves those were not processed, as REFUSED_STREAM does.
fn classify(e: &h2::Error) -> Failed {
    if e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR) {
        return Failed::Refused;
    }
    match e.reason() {
        Some(Reason::REFUSED_STREAM) if e.is_reset() => Failed::Refused,
        Some(r) if e.is_reset() => Failed::Reset(r),
        _ => Failed::Lost,
    }
}
