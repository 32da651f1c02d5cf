//! The codec over pipes, polled with the no-op waker: first bare (a server and a
//! client in memory), then through [`H2Proxy`] between a client and an upstream.

use super::pipe::{noop_waker, Pipe};
use super::*;
use crate::proxy::http::{HttpSettings, IdentityHeaders};
use h2::client;
use std::task::Context;

/// Move what each pipe's codec wrote to the other pipe's reader.
fn shuttle(a: &Pipe, b: &Pipe) -> bool {
    let mut ab = std::mem::take(&mut a.lock().tx);
    let mut ba = std::mem::take(&mut b.lock().tx);
    let moved = !ab.is_empty() || !ba.is_empty();
    b.lock().feed(&mut ab);
    a.lock().feed(&mut ba);
    moved
}

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let w = noop_waker();
    Pin::new(f).poll(&mut Context::from_waker(&w))
}

/// Poll a handshake until its result is in `slot` (a no-op once it is).
fn settle<F, T, E>(slot: &mut Option<T>, hs: &mut F)
where
    F: Future<Output = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    if slot.is_none() {
        if let Poll::Ready(r) = poll(hs) {
            *slot = Some(r.unwrap());
        }
    }
}

#[test]
fn the_codec_runs_over_pipes_with_a_waker_that_wakes_nothing() {
    let (sp, cp) = (Pipe::new(1 << 16), Pipe::new(1 << 16));
    let mut server_hs = server::handshake(sp.io());
    let mut client_hs = Box::pin(client::handshake(cp.io()));
    let (mut server, mut pair) = (None, None);
    for _ in 0..10 {
        settle(&mut server, &mut server_hs);
        settle(&mut pair, &mut client_hs);
        if let Some((_, c)) = pair.as_mut() {
            assert!(poll(c).is_pending());
        }
        shuttle(&sp, &cp);
    }
    let (mut sender, mut client) = pair.unwrap();
    let mut server = server.unwrap();
    let req = http::Request::post("https://svc/pkg.S/M").body(()).unwrap();
    let (mut response, mut body) = sender.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"ping"), true).unwrap();
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let mut got = None;
    let mut answered = None;
    for _ in 0..20 {
        let _ = Pin::new(&mut client).poll(&mut cx);
        if let Poll::Ready(Some(r)) = server.poll_accept(&mut cx) {
            let (req, mut respond) = r.unwrap();
            assert_eq!(req.uri().path(), "/pkg.S/M");
            let mut s = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            s.send_data(Bytes::from_static(b"pong"), false).unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            s.send_trailers(t).unwrap();
            got = Some(req.into_body());
        }
        if answered.is_none() {
            if let Poll::Ready(r) = Pin::new(&mut response).poll(&mut cx) {
                answered = Some(r.unwrap());
            }
        }
        shuttle(&sp, &cp);
    }
    let mut req_body = got.expect("the server accepted the stream");
    match req_body.poll_data(&mut cx) {
        Poll::Ready(Some(Ok(b))) => assert_eq!(&b[..], b"ping"),
        other => panic!("request body: {other:?}"),
    }
    let mut resp = answered.expect("the client got its response").into_body();
    match resp.poll_data(&mut cx) {
        Poll::Ready(Some(Ok(b))) => assert_eq!(&b[..], b"pong"),
        other => panic!("response body: {other:?}"),
    }
    assert!(matches!(resp.poll_data(&mut cx), Poll::Ready(None)));
    match resp.poll_trailers(&mut cx) {
        Poll::Ready(Ok(Some(t))) => assert_eq!(t["grpc-status"], "0"),
        other => panic!("trailers: {other:?}"),
    }
}

/// A client and an upstream, each the codec over its own pipe, either side of a
/// proxy.
struct Rig {
    proxy: H2Proxy,
    filter: RequestFilter,
    client_pipe: Pipe,
    upstream_pipe: Pipe,
    sender: client::SendRequest<Bytes>,
    client: client::Connection<PipeIo, Bytes>,
    upstream: server::Connection<PipeIo, Bytes>,
}

fn turn(r: &mut Rig) {
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let _ = Pin::new(&mut r.client).poll(&mut cx);
    shuttle(&r.client_pipe, &r.proxy.down);
    shuttle(&r.upstream_pipe, &r.proxy.up);
    r.proxy.drive(&mut r.filter);
    shuttle(&r.client_pipe, &r.proxy.down);
    shuttle(&r.upstream_pipe, &r.proxy.up);
}

fn rig(filter: RequestFilter) -> Rig {
    let mut proxy = H2Proxy::new(&H2Settings::default(), 1 << 16, UpstreamKind::H2);
    let (client_pipe, upstream_pipe) = (Pipe::new(1 << 16), Pipe::new(1 << 16));
    let mut client_hs = Box::pin(client::handshake(client_pipe.io()));
    let mut up_hs = server::handshake(upstream_pipe.io());
    let mut filter = filter;
    let (mut c, mut u) = (None, None);
    for _ in 0..10 {
        proxy.drive(&mut filter);
        shuttle(&client_pipe, &proxy.down);
        shuttle(&upstream_pipe, &proxy.up);
        settle(&mut c, &mut client_hs);
        settle(&mut u, &mut up_hs);
    }
    let (sender, client) = c.expect("client handshake");
    Rig {
        proxy,
        filter,
        client_pipe,
        upstream_pipe,
        sender,
        client,
        upstream: u.expect("upstream handshake"),
    }
}

pub(crate) fn filter() -> RequestFilter {
    let mut f = RequestFilter::new(HttpSettings {
        identity: IdentityHeaders::Xfcc,
        max_header_bytes: 1024,
        allow_bare_lf: false,
        head_timeout: std::time::Duration::from_secs(10),
        h2: None,
        upstream_h2: true,
    });
    f.set_connection(
        Some("10.0.0.7:5555".parse().unwrap()),
        Some("api.internal"),
        None,
    );
    f
}

#[test]
fn a_request_crosses_with_owned_headers_replaced_and_trailers_intact() {
    let mut r = rig(filter());
    let req = http::Request::post("https://svc/pkg.S/M")
        .header("content-type", "application/grpc")
        .header("x-forwarded-client-cert", "forged")
        .header("x-custom", "kept")
        .body(())
        .unwrap();
    let (mut response, mut body) = r.sender.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(b"ping"), true).unwrap();
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let mut seen = None;
    let mut answered = None;
    for _ in 0..20 {
        turn(&mut r);
        if let Poll::Ready(Some(x)) = r.upstream.poll_accept(&mut cx) {
            let (req, mut respond) = x.unwrap();
            let mut s = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            s.send_data(Bytes::from_static(b"pong"), false).unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            s.send_trailers(t).unwrap();
            seen = Some(req);
        }
        if answered.is_none() {
            if let Poll::Ready(x) = Pin::new(&mut response).poll(&mut cx) {
                answered = Some(x.unwrap());
            }
        }
    }
    let seen = seen.expect("the upstream got the request");
    let h = seen.headers();
    assert_eq!(seen.uri().path(), "/pkg.S/M");
    assert!(h.get("x-forwarded-client-cert").is_none(), "{h:?}");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "10.0.0.7");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "api.internal");
    let mut req_body = seen.into_body();
    assert!(matches!(req_body.poll_data(&mut cx), Poll::Ready(Some(Ok(b))) if &b[..] == b"ping"));
    let mut resp = answered.expect("the client got the response").into_body();
    assert!(matches!(resp.poll_data(&mut cx), Poll::Ready(Some(Ok(b))) if &b[..] == b"pong"));
    assert!(matches!(resp.poll_data(&mut cx), Poll::Ready(None)));
    assert!(
        matches!(resp.poll_trailers(&mut cx), Poll::Ready(Ok(Some(t))) if t["grpc-status"] == "0")
    );
    assert_eq!(
        r.proxy.streams(),
        0,
        "the pair is gone once both bodies ended"
    );
}

/// An HTTP/2 client in front of an HTTP/1.1 upstream that is a byte buffer: what
/// the proxy writes for it is read as text, its answers are written as bytes.
struct H1Rig {
    proxy: H2Proxy,
    filter: RequestFilter,
    client_pipe: Pipe,
    sender: client::SendRequest<Bytes>,
    client: client::Connection<PipeIo, Bytes>,
}

impl H1Rig {
    fn new() -> H1Rig {
        let mut proxy = H2Proxy::new(&H2Settings::default(), 1 << 16, UpstreamKind::Http1);
        let client_pipe = Pipe::new(1 << 16);
        let mut client_hs = Box::pin(client::handshake(client_pipe.io()));
        let mut filter = filter();
        let mut c = None;
        for _ in 0..10 {
            proxy.drive(&mut filter);
            shuttle(&client_pipe, &proxy.down);
            settle(&mut c, &mut client_hs);
        }
        let (sender, client) = c.expect("client handshake");
        H1Rig {
            proxy,
            filter,
            client_pipe,
            sender,
            client,
        }
    }

    /// A few turns; what the proxy wrote for the upstream.
    fn turns(&mut self) -> String {
        let w = noop_waker();
        let mut cx = Context::from_waker(&w);
        for _ in 0..5 {
            let _ = Pin::new(&mut self.client).poll(&mut cx);
            shuttle(&self.client_pipe, &self.proxy.down);
            self.proxy.drive(&mut self.filter);
            shuttle(&self.client_pipe, &self.proxy.down);
        }
        String::from_utf8(std::mem::take(&mut self.proxy.up.lock().tx)).unwrap()
    }

    fn upstream_says(&mut self, bytes: &[u8], eof: bool) {
        let mut u = self.proxy.up.lock();
        u.feed(&mut bytes.to_vec());
        u.eof = eof;
    }

    fn get(&mut self, path: &str) -> client::ResponseFuture {
        let req = http::Request::get(format!("https://svc.internal{path}"))
            .header("te", "trailers")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        self.sender.send_request(req, true).unwrap().0
    }
}

fn body_text(resp: http::Response<RecvStream>) -> String {
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Poll::Ready(Some(Ok(b))) = body.poll_data(&mut cx) {
        out.extend_from_slice(&b);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn an_h2_stream_goes_to_an_http1_upstream_in_origin_form_and_a_close_asks_for_a_redial() {
    let mut r = H1Rig::new();
    let mut first = r.get("/a?x=1");
    let mut second = r.get("/b");
    let sent = r.turns();
    assert!(sent.starts_with("GET /a?x=1 HTTP/1.1\r\n"), "{sent}");
    let lower = sent.to_ascii_lowercase();
    assert!(lower.contains("\r\nhost: svc.internal\r\n"), "{sent}");
    assert!(lower.contains("\r\ncookie: a=1; b=2\r\n"), "{sent}");
    assert!(lower.contains("\r\nte: trailers\r\n"), "{sent}");
    assert!(
        lower.contains("\r\nx-forwarded-for: 10.0.0.7\r\n"),
        "{sent}"
    );
    assert!(!sent.contains("GET /b"), "one request at a time: {sent}");
    r.upstream_says(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\nKeep-Alive: x\r\n\r\nok",
        true,
    );
    assert_eq!(r.turns(), "");
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let Poll::Ready(Ok(resp)) = Pin::new(&mut first).poll(&mut cx) else {
        panic!("no response to the first stream");
    };
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("connection").is_none());
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(body_text(resp), "ok");
    // The connection closed with the second stream waiting: a new one is asked for
    // (once), and the stream goes on it.
    assert!(r.proxy.take_redial());
    assert!(!r.proxy.take_redial());
    r.proxy.redialled();
    let sent = r.turns();
    assert!(sent.starts_with("GET /b HTTP/1.1\r\n"), "{sent}");
    r.upstream_says(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-sum: 7\r\n\r\n",
        false,
    );
    r.turns();
    let Poll::Ready(Ok(resp)) = Pin::new(&mut second).poll(&mut cx) else {
        panic!("no response to the second stream");
    };
    let mut body = resp.into_body();
    assert!(matches!(body.poll_data(&mut cx), Poll::Ready(Some(Ok(b))) if &b[..] == b"hi"));
    assert!(matches!(body.poll_data(&mut cx), Poll::Ready(None)));
    assert!(matches!(body.poll_trailers(&mut cx), Poll::Ready(Ok(Some(t))) if t["x-sum"] == "7"));
}

#[test]
fn a_grpc_request_for_an_http1_upstream_is_answered_unavailable_here() {
    let mut r = H1Rig::new();
    let req = http::Request::post("https://svc/pkg.S/M")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (mut response, _body) = r.sender.send_request(req, false).unwrap();
    assert_eq!(r.turns(), "", "nothing sent upstream");
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let Poll::Ready(Ok(resp)) = Pin::new(&mut response).poll(&mut cx) else {
        panic!("no answer");
    };
    assert_eq!(resp.headers()["grpc-status"], "14");
}

#[test]
fn kept_alive_http1_connection_takes_the_next_stream() {
    let mut r = H1Rig::new();
    let mut first = r.get("/a");
    let _second = r.get("/b");
    let sent = r.turns();
    assert!(sent.starts_with("GET /a HTTP/1.1\r\n"), "{sent}");
    r.upstream_says(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
    let sent = r.turns();
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    assert!(matches!(
        Pin::new(&mut first).poll(&mut cx),
        Poll::Ready(Ok(_))
    ));
    let sent2 = r.turns();
    assert!(!r.proxy.take_redial(), "no redial");
    assert!(
        format!("{sent}{sent2}").starts_with("GET /b HTTP/1.1\r\n"),
        "{sent}|{sent2}"
    );
}

/// An h2 upstream's GOAWAY names the last stream it processed: a stream past it is
/// refused to the client (REFUSED_STREAM, safe to retry), one before it completes.
#[test]
fn a_stream_past_the_upstreams_goaway_is_refused_and_one_before_it_completes() {
    let mut r = rig(filter());
    let get = || http::Request::get("https://svc/x").body(()).unwrap();
    let (mut first, _) = r.sender.send_request(get(), true).unwrap();
    let (mut second, _) = r.sender.send_request(get(), true).unwrap();
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let mut accepted = Vec::new();
    for _ in 0..10 {
        turn(&mut r);
        while let Poll::Ready(Some(Ok((req, respond)))) = r.upstream.poll_accept(&mut cx) {
            accepted.push((req, respond));
        }
    }
    assert_eq!(accepted.len(), 2, "both streams reached the upstream");
    // GOAWAY(last_stream_id = 1, NO_ERROR), as if the upstream had not taken 3.
    let mut goaway = vec![0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    r.proxy.up.lock().feed(&mut goaway);
    for _ in 0..5 {
        turn(&mut r);
    }
    match Pin::new(&mut second).poll(&mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.reason(), Some(Reason::REFUSED_STREAM), "{e:?}"),
        other => panic!("the second stream: {other:?}"),
    }
    let (_, mut respond) = accepted.remove(0);
    respond
        .send_response(http::Response::new(()), true)
        .unwrap();
    for _ in 0..5 {
        turn(&mut r);
        let _ = r.upstream.poll_accept(&mut cx);
    }
    match Pin::new(&mut first).poll(&mut cx) {
        Poll::Ready(Ok(resp)) => assert_eq!(resp.status(), 200),
        other => panic!("the first stream: {other:?}"),
    }
}

/// A stream the upstream took when its connection was lost (EOF, no GOAWAY) may
/// have been processed: answered 502, not refused.
#[test]
fn a_stream_lost_with_its_upstream_connection_is_answered_502() {
    let mut r = rig(filter());
    let req = http::Request::get("https://svc/x").body(()).unwrap();
    let (mut response, _) = r.sender.send_request(req, true).unwrap();
    let w = noop_waker();
    let mut cx = Context::from_waker(&w);
    let mut taken = None;
    for _ in 0..10 {
        turn(&mut r);
        if let Poll::Ready(Some(Ok(x))) = r.upstream.poll_accept(&mut cx) {
            taken = Some(x);
        }
    }
    assert!(taken.is_some(), "the upstream took the stream");
    r.proxy.up.lock().eof = true;
    for _ in 0..5 {
        turn(&mut r);
    }
    match Pin::new(&mut response).poll(&mut cx) {
        Poll::Ready(Ok(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("{other:?}"),
    }
}
