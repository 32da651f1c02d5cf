//! proxy_v2: the PROXY v2 encoder (`proxy::proxy_v2::Header::encode`) against the
//! tests' parser (tests/common/proxy_v2.rs, included here by path) and HAProxy's
//! limits. Input: a presence byte, the addresses, then each field's bytes.
//!
//! Checked: the header parses, fills exactly what `encode` wrote, and every field
//! comes back as it was given or is left out whole, never cut (as the encoder
//! promises); the header stays within what HAProxy reads (src/connection.c
//! `conn_recv_proxy`, HAProxy 2.9+: an AUTHORITY of at most 255 bytes, a UNIQUE_ID of
//! at most 128, no TLV value over 1024 bytes (`HA_PP2_MAX_ALLOC`: the connection is
//! dropped), the whole header within its 16 KiB buffer).

#[path = "../../tests/common/proxy_v2.rs"]
pub mod parser;

use super::bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use terminus::proxy::proxy_v2::{Header, Ssl};

/// HAProxy's limits (include/haproxy/connection-t.h, src/connection.c).
pub const HAPROXY_AUTHORITY_MAX: usize = 255;
pub const HAPROXY_UNIQUE_ID_MAX: usize = 128;
pub const HAPROXY_TLV_MAX: usize = 1024;
pub const HAPROXY_HEADER_MAX: usize = 16_384;

fn addr(b: &mut Bytes<'_>) -> SocketAddr {
    let ip = match b.u8() % 3 {
        0 => IpAddr::V4(Ipv4Addr::from(b.u32())),
        1 => IpAddr::V6(Ipv4Addr::from(b.u32()).to_ipv6_mapped()),
        _ => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&[b.take(16), &[0u8; 16]].concat()[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    SocketAddr::new(ip, b.u16())
}

fn text(b: &mut Bytes<'_>, long: bool) -> String {
    let raw = if long { b.long() } else { b.short() };
    String::from_utf8_lossy(raw).into_owned()
}

pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    if data.first() == Some(&b'\r') {
        // A header as an upstream would receive it: the parser alone.
        let _ = parser::parse(data);
        return;
    }
    let has = b.u16();
    let long = |bit: u16| has & (1 << bit) != 0;
    let src = addr(&mut b);
    let dst = addr(&mut b);
    let opt = |bit: u16, b: &mut Bytes<'_>| (has & (1 << bit) != 0).then(|| text(b, long(bit + 8)));
    let alpn = opt(0, &mut b).map(String::into_bytes);
    let authority = opt(1, &mut b);
    let spiffe = opt(2, &mut b);
    let unique_id = opt(3, &mut b).map(String::into_bytes);
    let ssl = (has & (1 << 4) != 0).then(|| {
        let f = b.u8();
        Ssl {
            client_cert_presented: f & 1 != 0,
            resumed: f & 2 != 0,
            verified: f & 4 != 0,
            version: (f & 8 != 0).then(|| text(&mut b, false)),
            cn: (f & 16 != 0).then(|| text(&mut b, f & 64 != 0)),
            cipher: (f & 32 != 0).then(|| text(&mut b, false)),
            sig_alg: (f & 128 != 0).then(|| text(&mut b, false)),
            key_alg: (has & (1 << 5) != 0).then(|| text(&mut b, false)),
            // Opt-in and bound by the 16-bit length only, not HAProxy's limits
            // checked here: covered by the unit tests of `encode_checked`.
            client_cert: None,
        }
    });
    let h = Header {
        src,
        dst,
        alpn,
        authority,
        ssl,
        spiffe,
        unique_id,
    };
    let mut out = b.short().to_vec();
    let start = out.len();
    h.encode(&mut out);
    let bytes = &out[start..];
    let (p, n) = parser::parse(bytes).unwrap_or_else(|e| panic!("our header does not parse: {e}"));
    assert_eq!(
        n,
        bytes.len(),
        "the length field does not cover what was written"
    );
    assert!(
        n <= HAPROXY_HEADER_MAX,
        "header of {n} bytes: over HAProxy's buffer"
    );
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let (ps, pd) = p.addresses.expect("PROXY command with addresses");
    let canon = |a: SocketAddr| {
        let ip = match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            ip => ip,
        };
        SocketAddr::new(ip, a.port())
    };
    if v4(src) && v4(dst) {
        assert_eq!((canon(ps), canon(pd)), (canon(src), canon(dst)));
        assert!(ps.is_ipv4());
    } else {
        assert_eq!((canon(ps), canon(pd)), (canon(src), canon(dst)));
        assert!(ps.is_ipv6());
    }
    assert!(p.other.is_empty(), "unknown TLVs written: {:?}", p.other);
    // Each field as given, or left out whole.
    let same_or_none = |got: &Option<Vec<u8>>, want: &Option<Vec<u8>>, what: &str| {
        if let Some(g) = got {
            assert_eq!(Some(g), want.as_ref(), "{what} changed");
        }
    };
    same_or_none(&p.alpn, &h.alpn, "ALPN");
    same_or_none(&p.unique_id, &h.unique_id, "UNIQUE_ID");
    same_or_none(
        &p.authority.clone().map(String::into_bytes),
        &h.authority.clone().map(String::into_bytes),
        "AUTHORITY",
    );
    same_or_none(
        &p.spiffe.clone().map(String::into_bytes),
        &h.spiffe.clone().map(String::into_bytes),
        "SPIFFE ID",
    );
    if let (Some(ps), Some(hs)) = (&p.ssl, &h.ssl) {
        for (got, want, what) in [
            (&ps.version, &hs.version, "SSL version"),
            (&ps.cn, &hs.cn, "SSL CN"),
            (&ps.cipher, &hs.cipher, "SSL cipher"),
            (&ps.sig_alg, &hs.sig_alg, "SSL sig_alg"),
            (&ps.key_alg, &hs.key_alg, "SSL key_alg"),
        ] {
            if let Some(g) = got {
                assert_eq!(Some(g), want.as_ref(), "{what} changed");
            }
        }
        assert_eq!(ps.verify == 0, hs.client_cert_presented && hs.verified);
    }
    // A short field always fits: it must be there.
    let fits =
        |v: &Option<Vec<u8>>, max: usize| v.as_ref().is_some_and(|v| v.len() <= max.min(255));
    if fits(&h.alpn, HAPROXY_TLV_MAX) {
        assert!(p.alpn.is_some(), "a short ALPN was left out");
    }
    // HAProxy's limits, TLV by TLV.
    let body = &bytes[16..];
    let addr_len = if bytes[13] == 0x11 { 12 } else { 36 };
    let mut rest = &body[addr_len..];
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        assert!(
            len <= HAPROXY_TLV_MAX,
            "TLV 0x{kind:02x} of {len} bytes: HAProxy drops the connection"
        );
        if kind == 0x02 {
            assert!(
                len <= HAPROXY_AUTHORITY_MAX,
                "AUTHORITY of {len} bytes: HAProxy refuses the header"
            );
        }
        if kind == 0x05 {
            assert!(
                len <= HAPROXY_UNIQUE_ID_MAX,
                "UNIQUE_ID of {len} bytes: HAProxy refuses the header"
            );
        }
        rest = &rest[3 + len..];
    }
}
