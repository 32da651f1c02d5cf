//! conn_session: a whole `Conn` behind a real handshake. A rustls client (no
//! certificate, the PKI's client, or one of an unknown CA; TLS 1.3 or 1.2; SNI or
//! not) connects to a listener (plain, mTLS with a candidate policy and PROXY v2,
//! http with rules and a rate), then the input is a program: the client sends
//! plaintext (requests, pipelined, chunked, or anything), raw bytes into its TLS
//! stream, close_notify, a key update, FIN or a reset; the plaintext upstream
//! answers arbitrary bytes, FIN or a reset; time passes.
//!
//! Checked, besides [`super::sim`]'s rules: the upstream's stream starts with a PROXY
//! v2 header our parser reads (mTLS listener) and, on the http listener, is a series
//! of well-formed requests without any header terminus owns from the client
//! ([`super::http_filter::check_requests`]); the connection ends with a reason.

use super::bytes::{Bytes, Splits};
use super::sim::Sim;
use super::world::{world, HTTP, MTLS, PLAIN};
use rustls::ClientConnection;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use terminus::proxy::conn::Side;

/// A client and the Conn, with the client's bytes in flight.
pub struct Session {
    pub sim: Sim,
    pub client: Option<ClientConnection>,
    /// Client TLS bytes not taken by the Conn yet.
    wire: Vec<u8>,
    /// How much of `sim.to_client` the client has read.
    read: usize,
    pub client_got: Vec<u8>,
    splits: Splits,
}

impl Session {
    pub fn new(listener: usize, client: Arc<rustls::ClientConfig>, sni: u8, split: u8) -> Session {
        let w = world();
        let name = match sni % 3 {
            0 => "localhost",
            1 => "127.0.0.1",
            _ => "other.example",
        };
        let client = ClientConnection::new(client, name.try_into().unwrap()).expect("client");
        let mut s = Session {
            sim: Sim::new(&w.listeners[listener]),
            client: Some(client),
            wire: Vec::new(),
            read: 0,
            client_got: Vec::new(),
            splits: Splits::new(split),
        };
        s.pump();
        s
    }

    /// Move bytes between the client and the Conn until neither moves.
    pub fn pump(&mut self) {
        for _ in 0..200 {
            let mut moved = false;
            if let Some(c) = self.client.as_mut() {
                while c.wants_write() {
                    if c.write_tls(&mut self.wire).is_err() {
                        break;
                    }
                }
            }
            if !self.wire.is_empty() && self.sim.wants(Side::Client) {
                let n = self.splits.next().min(self.wire.len());
                let used = self.sim.recv(Side::Client, &self.wire[..n]);
                self.wire.drain(..used);
                moved |= used > 0;
            }
            if self.read < self.sim.to_client.len() {
                let mut b = &self.sim.to_client[self.read..];
                self.read = self.sim.to_client.len();
                moved = true;
                if let Some(c) = self.client.as_mut() {
                    let mut ok = true;
                    while ok && !b.is_empty() {
                        // Ok(0) with bytes left: the client takes no more (it has
                        // the peer's close_notify); looping would spin forever.
                        ok = match c.read_tls(&mut b) {
                            Ok(0) => break,
                            Ok(_) => c.process_new_packets().is_ok(),
                            Err(_) => false,
                        };
                        let mut buf = Vec::new();
                        let _ = c.reader().read_to_end(&mut buf);
                        self.client_got.extend_from_slice(&buf);
                    }
                    if !ok {
                        // The client gave up (an alert, a broken record): it says
                        // no more, and its socket closes.
                        self.client = None;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The client writes plaintext.
    pub fn write(&mut self, data: &[u8]) {
        if let Some(c) = self.client.as_mut() {
            let _ = c.writer().write_all(data);
        }
        self.pump();
    }

    /// Raw bytes into the client's TLS stream.
    pub fn garbage(&mut self, data: &[u8]) {
        self.wire.extend_from_slice(data);
        self.pump();
    }
}

pub fn run(data: &[u8]) {
    session(data);
}

/// Run the program in `data`; the session as it ended (for the stable tests).
pub fn session(data: &[u8]) -> Session {
    let w = world();
    let mut b = Bytes::new(data);
    let listener = [PLAIN, MTLS, HTTP][usize::from(b.u8()) % 3];
    let c = b.u8();
    let set = if c & 0x80 != 0 {
        &w.clients12
    } else {
        &w.clients
    };
    let client = set[usize::from(c & 3) % 3].clone();
    let sni = b.u8();
    let mut s = Session::new(listener, client, sni, b.u8());
    let mut up_eof = false;
    let mut steps = 0;
    while !b.is_empty() && steps < 64 {
        steps += 1;
        match b.u8() % 12 {
            0..=2 => {
                let d = b.short();
                s.write(d);
            }
            3 => {
                let d = b.long();
                s.write(d);
            }
            4 => {
                let d = b.short();
                s.garbage(d);
            }
            5 | 6 => {
                let d = b.short();
                if !up_eof {
                    let mut splits = Splits::new(b.u8());
                    let mut at = 0;
                    while at < d.len() {
                        let n = splits.next().min(d.len() - at);
                        let used = s.sim.recv(Side::Upstream, &d[at..at + n]);
                        if used == 0 {
                            break;
                        }
                        at += used;
                        s.pump();
                    }
                }
            }
            7 => {
                if let Some(c) = s.client.as_mut() {
                    c.send_close_notify();
                }
                s.pump();
            }
            8 => {
                if let Some(c) = s.client.as_mut() {
                    let _ = c.refresh_traffic_keys();
                }
                s.pump();
            }
            9 => {
                match b.u8() % 4 {
                    0 => s.sim.eof(Side::Client),
                    1 => s.sim.error(Side::Client),
                    2 => s.sim.eof(Side::Upstream),
                    _ => s.sim.error(Side::Upstream),
                }
                up_eof = true;
                s.pump();
            }
            10 => {
                s.sim.advance(Duration::from_millis(u64::from(b.u8()) * 50));
                s.pump();
            }
            _ => {
                let d = b.short();
                s.write(d);
                s.sim.eof(Side::Upstream);
                up_eof = true;
                s.pump();
            }
        }
        if s.sim.closed().is_some() {
            break;
        }
    }
    s.sim.eof(Side::Client);
    s.sim.eof(Side::Upstream);
    s.sim.finish();
    check_upstream(&s, listener, c & 3);
    s
}

fn check_upstream(s: &Session, listener: usize, client: u8) {
    let up = &s.sim.to_upstream;
    if listener == MTLS && !up.is_empty() {
        let (_, n) = super::proxy_v2::parser::parse(up)
            .unwrap_or_else(|e| panic!("the PROXY v2 preamble does not parse: {e}"));
        assert!(n <= up.len());
    }
    if listener == HTTP && s.sim.connects == 1 {
        let e = super::http_filter::Expect {
            xff: Some("192.0.2.7"),
            identity: client == 1,
        };
        super::http_filter::check_requests(up, &e);
    }
}
