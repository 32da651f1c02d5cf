//! conn_client: a whole `Conn` from the client side, raw bytes. Input: a listener
//! byte (plain, mTLS with a candidate policy, http, re-encrypting, http
//! re-encrypting), a split byte ([`super::bytes::Splits`]), an ending byte (FIN,
//! reset, or silence until the timeouts), then the client's TLS stream: the seeds
//! are real ClientHellos (fuzz/seeds/conn_client/, `scripts/fuzz-seeds.sh`). The
//! upstream, once connected, answers nothing and closes after the client.
//!
//! Checked (besides no panic): the connection closes with a reason by the end, the
//! reason stays, a closed connection asks for nothing more (see [`super::sim`]).

use super::bytes::{Bytes, Splits};
use super::sim::Sim;
use super::world::world;
use std::time::Duration;
use terminus::proxy::conn::Side;

pub fn run(data: &[u8]) {
    let w = world();
    let mut b = Bytes::new(data);
    let live = &w.listeners[usize::from(b.u8()) % w.listeners.len()];
    let mut splits = Splits::new(b.u8());
    let ending = b.u8();
    let stream = b.rest();
    let mut sim = Sim::new(live);
    let mut at = 0;
    while at < stream.len() && sim.wants(Side::Client) {
        let n = splits.next().min(stream.len() - at);
        let used = sim.recv(Side::Client, &stream[at..at + n]);
        at += used;
        if used == 0 {
            break;
        }
        sim.advance(Duration::from_millis(1));
    }
    match ending % 3 {
        0 => sim.eof(Side::Client),
        1 => sim.error(Side::Client),
        _ => {}
    }
    sim.eof(Side::Upstream);
    sim.finish();
}
