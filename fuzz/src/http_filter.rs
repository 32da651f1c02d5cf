//! http_filter: the request filter of http listeners on its own
//! (`proxy::http::RequestFilter`): heads, chunked bodies, pipelining. Input: a
//! settings byte (bare LF allowed, `max_header_bytes`), a connection byte (client
//! address, SNI), a split byte, then the client's plaintext. Seeds: request heads of
//! curl and wrk, chunked and pipelined requests (fuzz/seeds/http_filter/).
//!
//! Checked: what reaches the upstream is, request after request, a well-formed
//! HTTP/1.1 request (CRLF only, parsed by httparse, framed by one Content-Length or
//! by strict chunked encoding), one per request the filter accepted; no header
//! terminus owns arrives from the client — each owned header is either absent or
//! exactly the one terminus wrote ([`check_requests`]). [`super::conn_session`]
//! applies the same check to what a whole Conn sends its upstream.

use super::bytes::{Bytes, Splits};
use terminus::proxy::http::{HttpSettings, IdentityHeaders, RequestFilter, OWNED};

/// What terminus adds to every request of a connection.
pub struct Expect<'a> {
    /// `X-Forwarded-For` (the client's IP), if the connection has one.
    pub xff: Option<&'a str>,
    /// A verified client certificate: identity headers may appear (once each).
    pub identity: bool,
}

pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let s = b.u8();
    let settings = HttpSettings {
        identity: IdentityHeaders::Both,
        max_header_bytes: [64, 512, 4096, 16_384][usize::from(s >> 1) % 4],
        allow_bare_lf: s & 1 == 1,
        head_timeout: std::time::Duration::from_secs(10),
        h2: None,
        upstream_h2: false,
    };
    let c = b.u8();
    let mut splits = Splits::new(b.u8());
    let input = b.rest();
    let mut f = RequestFilter::new(settings);
    let client = (c & 1 == 1).then(|| "192.0.2.7:40000".parse().unwrap());
    let sni = (c & 2 == 2).then_some("example.org");
    if c & 4 == 4 {
        f.set_connection(client, sni, None);
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut refused = false;
    while at < input.len() {
        let n = splits.next().min(input.len() - at);
        let mut chunk = input[at..at + n].to_vec();
        at += n;
        let before = out.len();
        match f.feed(&mut chunk, &mut out) {
            Ok(()) => assert!(chunk.is_empty(), "feed left input behind without refusing"),
            Err(r) => {
                assert!(matches!(r.status, 400 | 431), "refusal status {}", r.status);
                refused = true;
                break;
            }
        }
        assert!(out.len() >= before);
    }
    if refused {
        // Nothing more passes once refused.
        let mut more = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let before = out.len();
        let _ = f.feed(&mut more, &mut out);
        assert_eq!(out.len(), before, "bytes passed after a refusal");
    }
    let xff = (c & 5 == 5).then_some("192.0.2.7");
    let expect = Expect {
        xff,
        identity: false,
    };
    let heads = check_requests(&out, &expect);
    assert_eq!(
        heads as u64, f.requests,
        "{heads} request heads reached the upstream, the filter accepted {}",
        f.requests
    );
}

/// Check the byte stream an upstream receives from an http listener; returns the
/// number of request heads in it. The stream may end inside a body, never inside
/// a head (heads are written whole).
pub fn check_requests(out: &[u8], e: &Expect<'_>) -> usize {
    let mut rest = out;
    let mut heads = 0;
    while !rest.is_empty() {
        let end = find(rest, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("an incomplete head reached the upstream: {:?}", show(rest)))
            + 4;
        let head = &rest[..end];
        rest = &rest[end..];
        heads += 1;
        for (i, &ch) in head.iter().enumerate() {
            if ch == b'\n' {
                assert!(
                    i > 0 && head[i - 1] == b'\r',
                    "bare LF in a forwarded head: {:?}",
                    show(head)
                );
            }
            if ch == b'\r' {
                assert_eq!(
                    head.get(i + 1),
                    Some(&b'\n'),
                    "bare CR in a forwarded head: {:?}",
                    show(head)
                );
            }
        }
        let mut hs = [httparse::EMPTY_HEADER; 160];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, head.len()),
            other => panic!(
                "forwarded head does not parse ({other:?}): {:?}",
                show(head)
            ),
        }
        assert_eq!(req.version.map(|v| v <= 1), Some(true));
        let mut counts = [0usize; OWNED.len()];
        let mut length = None;
        let mut chunked = false;
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            if let Some(k) = OWNED.iter().position(|o| *o == name) {
                counts[k] += 1;
                let v = std::str::from_utf8(h.value).unwrap_or("");
                match k {
                    0 => assert_eq!(
                        Some(v),
                        e.xff,
                        "X-Forwarded-For from the client: {:?}",
                        show(head)
                    ),
                    1 => assert_eq!(v, "https", "X-Forwarded-Proto from the client"),
                    3..=5 => assert!(
                        e.identity,
                        "identity header {name} for a client without one: {:?}",
                        show(head)
                    ),
                    6 => panic!(
                        "Forwarded from the client reached the upstream: {:?}",
                        show(head)
                    ),
                    _ => {}
                }
            }
            if name == "content-length" {
                let v: u64 = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!("invalid Content-Length forwarded: {:?}", show(head))
                    });
                assert!(
                    length.is_none_or(|l| l == v),
                    "two Content-Lengths forwarded"
                );
                length = Some(v);
            }
            if name == "transfer-encoding" {
                assert!(!chunked, "two Transfer-Encodings forwarded");
                assert!(h.value.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                chunked = true;
            }
            assert!(name != "upgrade", "Upgrade forwarded");
        }
        for (k, n) in counts.iter().enumerate() {
            assert!(
                *n <= 1,
                "{} forwarded {n} times: {:?}",
                OWNED[k],
                show(head)
            );
        }
        assert_eq!(counts[1], 1, "no X-Forwarded-Proto: {:?}", show(head));
        assert_eq!(
            counts[0],
            usize::from(e.xff.is_some()),
            "X-Forwarded-For: {:?}",
            show(head)
        );
        assert!(!(chunked && length.is_some()), "both framings forwarded");
        if chunked {
            match chunked_body(rest) {
                Some(n) => rest = &rest[n..],
                None => return heads,
            }
        } else if let Some(n) = length {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n >= rest.len() {
                return heads;
            }
            rest = &rest[n..];
        }
    }
    heads
}

/// The length of a strictly chunked body at the start of `b` (None: `b` ends inside
/// it, validly so far); panics on a framing error.
fn chunked_body(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = find(&b[at..], b"\r\n")? + at;
        let line = &b[at..line_end];
        assert!(!line.contains(&b'\n'), "bare LF in chunked framing");
        let size_part = line.split(|&c| c == b';').next().unwrap_or(&[]);
        let size = std::str::from_utf8(size_part)
            .ok()
            .map(str::trim_ascii)
            .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .unwrap_or_else(|| panic!("invalid chunk size forwarded: {:?}", show(line)));
        at = line_end + 2;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let e = find(&b[at..], b"\r\n")? + at;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > b.len() - at {
            return None;
        }
        at += size;
        if b.len() < at + 2 {
            return None;
        }
        assert_eq!(&b[at..at + 2], b"\r\n", "chunk data not followed by CRLF");
        at += 2;
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned()
}
