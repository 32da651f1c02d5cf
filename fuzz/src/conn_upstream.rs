//! conn_upstream: the upstream side of a re-encrypting `Conn` (tcp with PROXY v2,
//! or http). A rustls client completes its handshake and sends plaintext (a request
//! on the http listener); the upstream then answers, by the mode byte, either
//! arbitrary bytes as its TLS stream (mode 0), or through a real rustls server whose
//! output is corrupted at chosen offsets (mode 1: `(u16 offset, xor)` pairs) —
//! arbitrary bytes reach every stage of the upstream handshake and the records
//! after it. Then FIN or a reset.
//!
//! Checked: [`super::sim`]'s rules, and that the connection ends with a reason.

use super::bytes::{Bytes, Splits};
use super::conn_session::Session;
use super::world::{world, HTTP_REENCRYPT, REENCRYPT};
use rustls::ServerConnection;
use std::io::{Read, Write};
use terminus::proxy::conn::Side;

pub fn run(data: &[u8]) {
    let w = world();
    let mut b = Bytes::new(data);
    let listener = [REENCRYPT, HTTP_REENCRYPT][usize::from(b.u8() & 1)];
    let mode = b.u8();
    let mut splits = Splits::new(b.u8());
    let request = b.short();
    let mut s = Session::new(listener, w.clients[0].clone(), 0, b.u8());
    if listener == HTTP_REENCRYPT && request.is_empty() {
        s.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    } else {
        s.write(request);
    }
    let ending = b.u8();
    if mode & 1 == 0 {
        let stream = b.rest();
        let mut at = 0;
        while at < stream.len() && s.sim.wants(Side::Upstream) {
            let n = splits.next().min(stream.len() - at);
            let used = s.sim.recv(Side::Upstream, &stream[at..at + n]);
            at += used;
            s.pump();
            if used == 0 {
                break;
            }
        }
    } else {
        let answer = b.short().to_vec();
        let mut flips = Vec::new();
        while !b.is_empty() {
            flips.push((usize::from(b.u16()), b.u8()));
        }
        real_upstream(&mut s, &answer, &flips, &mut splits);
    }
    if ending & 1 == 0 {
        s.sim.eof(Side::Upstream);
    } else {
        s.sim.error(Side::Upstream);
    }
    s.pump();
    s.sim.eof(Side::Client);
    s.sim.finish();
}

/// A rustls server as the upstream: reads what the Conn sent (after the PROXY v2
/// header, if any), answers `answer` once its handshake is done, and its bytes are
/// flipped at `flips` (offsets into everything it sends) on their way.
fn real_upstream(s: &mut Session, answer: &[u8], flips: &[(usize, u8)], splits: &mut Splits) {
    let w = world();
    let mut server = ServerConnection::new(w.upstream.clone()).expect("server");
    let mut read = 0;
    let mut sent = 0usize;
    let mut answered = false;
    for _ in 0..100 {
        let mut moved = false;
        let up = &s.sim.to_upstream;
        if read == 0 && up.starts_with(&terminus::proxy::proxy_v2::SIGNATURE) {
            match super::proxy_v2::parser::parse(up) {
                Ok((_, n)) => read = n,
                Err(_) => return,
            }
        }
        if read < up.len() {
            let mut b = &up[read..];
            read = up.len();
            moved = true;
            if server.read_tls(&mut b).is_err() || server.process_new_packets().is_err() {
                // The server's alert still goes out below.
            }
            let mut sink = Vec::new();
            let _ = server.reader().read_to_end(&mut sink);
        }
        if !server.is_handshaking() && !answered {
            answered = true;
            let _ = server.writer().write_all(answer);
        }
        let mut out = Vec::new();
        while server.wants_write() {
            if server.write_tls(&mut out).is_err() {
                break;
            }
        }
        for (i, byte) in out.iter_mut().enumerate() {
            for &(at, x) in flips {
                if at == sent + i {
                    *byte ^= x;
                }
            }
        }
        sent += out.len();
        let mut at = 0;
        while at < out.len() && s.sim.wants(Side::Upstream) {
            let n = splits.next().min(out.len() - at);
            let used = s.sim.recv(Side::Upstream, &out[at..at + n]);
            at += used;
            moved = true;
            if used == 0 {
                break;
            }
        }
        s.pump();
        if !moved || s.sim.closed().is_some() || !s.sim.connected {
            return;
        }
    }
}
