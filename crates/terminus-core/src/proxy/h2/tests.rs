//! The codec over pipes, polled with the no-op waker: first bare (a server and a
//! client in memory), then through [`H2Proxy`] between a client and an upstream.

use super::pipe::{noop_waker, Pipe};
use super::*;
use crate::proxy::http::{HttpSettings, IdentityHeaders};
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

#[test]
fn the_codec_runs_over_pipes_with_a_waker_that_wakes_nothing() {
    let (sp, cp) = (Pipe::new(1 << 16), Pipe::new(1 << 16));
    let mut server_hs = server::handshake(sp.io());
    let mut client_hs = Box::pin(client::handshake(cp.io()));
    let (mut server, mut client, mut sender) = (None, None, None);
    for _ in 0..10 {
        if server.is_none() {
            if let Poll::Ready(r) = poll(&mut server_hs) {
                server = Some(r.unwrap());
            }
        }
        if sender.is_none() {
            if let Poll::Ready(r) = poll(&mut client_hs) {
                let (s, c) = r.unwrap();
                sender = Some(s);
                client = Some(c);
            }
        }
        if let Some(c) = client.as_mut() {
            assert!(poll(c).is_pending());
        }
        shuttle(&sp, &cp);
    }
    let (mut server, mut client, mut sender) = (server.unwrap(), client.unwrap(), sender.unwrap());
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
    let mut proxy = H2Proxy::new(&H2Settings::default(), 1 << 16);
    let (client_pipe, upstream_pipe) = (Pipe::new(1 << 16), Pipe::new(1 << 16));
    let mut client_hs = Box::pin(client::handshake(client_pipe.io()));
    let mut up_hs = server::handshake(upstream_pipe.io());
    let mut filter = filter;
    let (mut c, mut u) = (None, None);
    for _ in 0..10 {
        proxy.drive(&mut filter);
        shuttle(&client_pipe, &proxy.down);
        shuttle(&upstream_pipe, &proxy.up);
        if c.is_none() {
            if let Poll::Ready(r) = poll(&mut client_hs) {
                c = Some(r.unwrap());
            }
        }
        if u.is_none() {
            if let Poll::Ready(r) = poll(&mut up_hs) {
                u = Some(r.unwrap());
            }
        }
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
