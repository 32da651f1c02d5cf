//! h2_proxy: the HTTP/2 proxy of an `http` listener (`proxy::h2::H2Proxy`) between a
//! client and an upstream (h2, or HTTP/1.1 when the first byte's top bit is set) that
//! both send arbitrary bytes, in arbitrary pieces, with either side finishing, the
//! process draining, either side not reading for a while (its pipe fills), and each
//! redial the proxy asks for either made (a fresh upstream) or failed. The seeds open
//! with the client preface and real frames, so the codecs get past the handshake;
//! from there the input is a program.
//!
//! Checked, on top of "no panic": what waits to be sealed for either peer stays
//! within the pipe's bound plus one write of the codec, the streams in progress
//! never exceed what the listener offers, and once both peers have finished and
//! their output has been taken, the proxy is finished (no stream is left waiting
//! for bytes that cannot come: such a stream would hold its memory until the idle
//! timeout).

use super::bytes::Bytes;
use terminus::proxy::h2::{H2Proxy, H2Settings, UpstreamKind};
use terminus::proxy::http::{HttpSettings, IdentityHeaders, RequestFilter};

/// What waits for one peer: small, so the full pipe is reached quickly.
const PIPE: usize = 16 * 1024;
/// One write of the codec past a full pipe (a frame of at most 16 KiB plus its
/// head, buffered by the codec's own encoder).
const SLACK: usize = 64 * 1024;

pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let first = b.u8();
    let kind = if first & 0x80 != 0 {
        UpstreamKind::Http1
    } else {
        UpstreamKind::H2
    };
    let settings = H2Settings {
        max_concurrent_streams: u32::from(first % 8) + 1,
        max_upstream_redials: 3,
        stream_window: 65_535,
        connection_window: 65_535 * 2,
        max_header_list_size: 4096,
        ..H2Settings::default()
    };
    let mut filter = RequestFilter::new(HttpSettings {
        identity: IdentityHeaders::Xfcc,
        max_header_bytes: 4096,
        allow_bare_lf: false,
        head_timeout: std::time::Duration::from_secs(10),
        h2: Some(settings),
        upstream_h2: kind == UpstreamKind::H2,
    });
    filter.set_connection(Some("10.0.0.7:5555".parse().unwrap()), Some("svc"), None);
    let mut p = H2Proxy::new(&settings, PIPE, kind);
    // Whether each peer reads what it is sent (a peer that stops fills its pipe).
    let (mut client_reads, mut upstream_reads) = (true, true);
    while !b.is_empty() {
        match b.u8() % 8 {
            0 | 1 => p.down.lock().feed(&mut b.long().to_vec()),
            2 | 3 => p.up.lock().feed(&mut b.long().to_vec()),
            4 => p.down.lock().eof = true,
            5 => p.up.lock().eof = true,
            6 => p.drain(),
            _ => match b.u8() % 2 {
                0 => client_reads = !client_reads,
                _ => upstream_reads = !upstream_reads,
            },
        }
        p.drive(&mut filter);
        if p.take_redial() {
            // What the Conn's driver reports back: a new connection, or none.
            if b.bool() {
                p.redialled();
            } else {
                p.redial_failed();
            }
            p.drive(&mut filter);
        }
        check_bounds(&p, &settings);
        if client_reads {
            p.down.lock().tx.clear();
        }
        if upstream_reads {
            p.up.lock().tx.clear();
        }
    }
    // Both peers finish and read everything, and no upstream can be reached any
    // more: nothing may be left waiting.
    for _ in 0..8 {
        p.down.lock().eof = true;
        p.up.lock().eof = true;
        p.drive(&mut filter);
        if p.take_redial() {
            p.redial_failed();
            p.drive(&mut filter);
        }
        check_bounds(&p, &settings);
        p.down.lock().tx.clear();
        p.up.lock().tx.clear();
    }
    assert!(
        p.finished(),
        "both peers finished, yet {} stream(s) are still in progress",
        p.streams()
    );
}

fn check_bounds(p: &H2Proxy, s: &H2Settings) {
    for (peer, pipe) in [("client", &p.down), ("upstream", &p.up)] {
        let held = pipe.lock().tx.len();
        assert!(
            held <= PIPE + SLACK,
            "{held} bytes wait for the {peer}, over the bound"
        );
    }
    assert!(
        p.streams() <= s.max_concurrent_streams as usize,
        "{} streams in progress, {} offered",
        p.streams(),
        s.max_concurrent_streams
    );
}
