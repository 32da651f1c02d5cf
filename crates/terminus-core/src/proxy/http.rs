//! http: the request side of an `http` listener — HTTP/1.1 request heads parsed and
//! rewritten on their way to the upstream, bodies streamed untouched.
//!
//! Owns [`RequestFilter`]: a streaming state machine over the client's plaintext.
//! Each request head (up to `max_header_bytes`) is parsed with httparse and written
//! out again without any header terminus owns (the `X-Forwarded-*` set, Envoy's
//! `X-Forwarded-Client-Cert`, RFC 9440's `Client-Cert`/`Client-Cert-Chain`, and
//! `Forwarded`), whatever its case or however often the client sent it, followed by
//! terminus's own. The body is then counted through (`Content-Length`, or chunked
//! framing followed chunk by chunk) and the next head is expected: keep-alive and
//! pipelining need nothing more. Responses are not parsed: they stream back as bytes.
//!
//! Refused with a status, and the connection closed (request smuggling closes here):
//! both `Content-Length` and `Transfer-Encoding`; two different `Content-Length`s; a
//! `Transfer-Encoding` other than `chunked`; an invalid chunk size; obs-fold; a bare
//! LF unless allowed; any other head httparse rejects (400); a head over
//! `max_header_bytes` (431).
//!
//! I/O contract: none; bytes in, bytes out. No clock: the head timer is the caller's
//! ([`RequestFilter::in_head`]).
#![forbid(unsafe_code)]

use crate::proxy::authz::gate::{Admit, RequestGate};
use base64::Engine as _;

/// Header names terminus sets, lowercase: a client's copy never passes.
pub const OWNED: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "forwarded",
];

/// Which identity headers an `http` listener adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityHeaders {
    /// Envoy's `X-Forwarded-Client-Cert: Hash=…;URI=…;DNS=…;Subject="…"`.
    #[default]
    Xfcc,
    /// RFC 9440: `Client-Cert: :DER-base64:` and `Client-Cert-Chain`.
    Rfc9440,
    Both,
}

impl IdentityHeaders {
    pub fn parse(s: &str) -> Result<IdentityHeaders, String> {
        match s {
            "xfcc" => Ok(Self::Xfcc),
            "rfc9440" => Ok(Self::Rfc9440),
            "both" => Ok(Self::Both),
            _ => Err(format!(
                "must be \"xfcc\", \"rfc9440\" or \"both\", got {s:?}"
            )),
        }
    }
}

/// An `http` listener's settings.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub identity: IdentityHeaders,
    pub max_header_bytes: usize,
    pub allow_bare_lf: bool,
    pub head_timeout: std::time::Duration,
    /// HTTP/2 for clients that chose `h2` in ALPN (None: HTTP/1.1 only).
    pub h2: Option<crate::proxy::h2::H2Settings>,
    /// The upstream speaks HTTP/2 (`upstream_protocol = "h2"`): every client
    /// connection is HTTP/2. Otherwise HTTP/1.1, and an HTTP/2 client's requests are
    /// translated.
    pub upstream_h2: bool,
}

/// Why a request was refused: the status sent before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
}

impl Refusal {
    const fn bad(why: &'static str) -> Refusal {
        Refusal { status: 400, why }
    }

    /// The whole response: status line, no body, `Connection: close`.
    pub fn response(self) -> Vec<u8> {
        status_response(self.status)
    }
}

/// A bodiless response with `status` and `Connection: close`.
pub fn status_response(status: u16) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Error",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// This many body bytes to pass.
    Body(u64),
    /// Chunked body: at a chunk-size line.
    ChunkSize,
    /// Chunk data left, then its CRLF.
    ChunkData(u64),
    ChunkDataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// Refused: nothing more passes.
    Failed,
}

/// The request side of one `http` connection.
#[derive(Debug)]
pub struct RequestFilter {
    settings: HttpSettings,
    state: State,
    /// Bytes of a head or of a chunk-size/trailer line not complete yet.
    pending: Vec<u8>,
    /// The headers terminus adds to every request (set once the upstream is known).
    added: Vec<u8>,
    /// `X-Forwarded-Host` from SNI, else each request's `Host`.
    sni: Option<String>,
    pub requests: u64,
    /// Rules and limits (listeners that have them): each checked head is decided.
    gate: Option<Box<RequestGate>>,
    /// The request being read was answered by terminus: its body is dropped.
    dropping: bool,
}

impl RequestFilter {
    pub fn new(settings: HttpSettings) -> RequestFilter {
        RequestFilter {
            settings,
            state: State::Head,
            pending: Vec::new(),
            added: b"X-Forwarded-Proto: https\r\n".to_vec(),
            sni: None,
            requests: 0,
            gate: None,
            dropping: false,
        }
    }

    /// Decide every request with `gate` from now on.
    pub fn set_gate(&mut self, gate: RequestGate) {
        self.gate = Some(Box::new(gate));
    }

    pub fn gate_mut(&mut self) -> Option<&mut RequestGate> {
        self.gate.as_deref_mut()
    }

    pub fn gate(&self) -> Option<&RequestGate> {
        self.gate.as_deref()
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// The headers every request gets: `X-Forwarded-For` (`client`), `-Proto`, and
    /// the identity headers for a verified client (`chain`: leaf first; none for a
    /// client without a certificate).
    pub fn set_connection(
        &mut self,
        client: Option<std::net::SocketAddr>,
        sni: Option<&str>,
        chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) {
        let mut h = String::new();
        if let Some(c) = client {
            h.push_str(&format!("X-Forwarded-For: {}\r\n", c.ip()));
        }
        h.push_str("X-Forwarded-Proto: https\r\n");
        if let Some(leaf) = chain.and_then(|c| c.first()) {
            let id = self.settings.identity;
            if matches!(id, IdentityHeaders::Xfcc | IdentityHeaders::Both) {
                if let Some(v) = xfcc(leaf) {
                    h.push_str(&format!("X-Forwarded-Client-Cert: {v}\r\n"));
                }
            }
            if matches!(id, IdentityHeaders::Rfc9440 | IdentityHeaders::Both) {
                let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
                h.push_str(&format!("Client-Cert: :{}:\r\n", b64(leaf)));
                let rest = &chain.unwrap_or_default()[1..];
                if !rest.is_empty() {
                    let list: Vec<String> = rest.iter().map(|c| format!(":{}:", b64(c))).collect();
                    h.push_str(&format!("Client-Cert-Chain: {}\r\n", list.join(", ")));
                }
            }
        }
        self.added = h.into_bytes();
        self.sni = sni.map(str::to_owned);
    }

    /// The headers [`Self::set_connection`] adds to every request, as name and
    /// value (for HTTP/2, which writes them as fields rather than lines).
    pub fn added_fields(&self) -> impl Iterator<Item = (&str, &str)> {
        let text = std::str::from_utf8(&self.added).unwrap_or_default();
        text.split("\r\n").filter_map(|line| line.split_once(": "))
    }

    /// `X-Forwarded-Host` from SNI (else each request's own host).
    pub fn forwarded_host(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Whether a request head has begun and not ended (the head timer runs).
    pub fn in_head(&self) -> bool {
        self.state == State::Head && !self.pending.is_empty()
    }

    /// Bytes held here (a partial head or line): they count against the buffer bound.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Move the client's plaintext `input` through, appending what goes to the
    /// upstream to `out`. Err: refuse with that status; nothing more passes.
    pub fn feed(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), Refusal> {
        let mut data: &[u8] = input;
        let r = self.run(&mut data, out);
        let used = input.len() - data.len();
        input.drain(..used);
        if r.is_err() {
            self.state = State::Failed;
            input.clear();
            self.pending = Vec::new();
        }
        r
    }

    fn run(&mut self, data: &mut &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        while !data.is_empty() {
            match self.state {
                State::Failed => {
                    *data = &[];
                }
                State::Head => {
                    self.dropping = false;
                    if !self.take_head(data, out)? {
                        return Ok(());
                    }
                }
                State::Body(n) => {
                    let left = self.pass(n, data, out);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkSize => {
                    let Some(line) = self.take_line(data)? else {
                        return Ok(());
                    };
                    let size = chunk_size(&line)?;
                    self.emit(out, &line);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    let left = self.pass(n, data, out);
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkDataEnd => {
                    let Some(line) = self.take_line(data)? else {
                        return Ok(());
                    };
                    if line != b"\r\n" {
                        return Err(Refusal::bad("chunk data not followed by CRLF"));
                    }
                    self.emit(out, &line);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(line) = self.take_line(data)? else {
                        return Ok(());
                    };
                    self.emit(out, &line);
                    if line == b"\r\n" {
                        self.state = State::Head;
                    }
                }
            }
        }
        Ok(())
    }

    /// Up to `n` body bytes from `data`, emitted; how many of the `n` are still due.
    fn pass(&self, n: u64, data: &mut &[u8], out: &mut Vec<u8>) -> u64 {
        let k = n.min(data.len() as u64) as usize;
        self.emit(out, &data[..k]);
        *data = &data[k..];
        n - k as u64
    }

    /// Body bytes go to the upstream, unless their request was answered here.
    fn emit(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if !self.dropping {
            out.extend_from_slice(bytes);
        }
    }

    /// One line (through its LF) of a chunked body, gathered across calls; None:
    /// not complete yet. Lines are short: over 4 KiB is refused.
    fn take_line(&mut self, data: &mut &[u8]) -> Result<Option<Vec<u8>>, Refusal> {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pending.extend_from_slice(&data[..=i]);
                *data = &data[i + 1..];
                let line = std::mem::take(&mut self.pending);
                if !line.ends_with(b"\r\n") {
                    return Err(Refusal::bad("bare LF in chunked framing"));
                }
                Ok(Some(line))
            }
            None => {
                self.pending.extend_from_slice(data);
                *data = &[];
                if self.pending.len() > 4096 {
                    return Err(Refusal::bad("chunk line too long"));
                }
                Ok(None)
            }
        }
    }

    /// Gather a head; once whole, parse, rewrite and emit it. Ok(false): not whole yet.
    fn take_head(&mut self, data: &mut &[u8], out: &mut Vec<u8>) -> Result<bool, Refusal> {
        let max = self.settings.max_header_bytes;
        // Leading empty lines before a request are allowed (RFC 9112 2.2).
        if self.pending.is_empty() {
            while let Some(rest) = data.strip_prefix(b"\r\n") {
                *data = rest;
            }
            if data.is_empty() {
                return Ok(false);
            }
        }
        let start = self.pending.len().saturating_sub(3);
        let room = (max + 1).saturating_sub(self.pending.len());
        let take = data.len().min(room);
        self.pending.extend_from_slice(&data[..take]);
        let end = find_head_end(&self.pending[start..]).map(|e| start + e);
        let Some(end) = end else {
            *data = &data[take..];
            if self.pending.len() > max {
                return Err(Refusal {
                    status: 431,
                    why: "request head over max_header_bytes",
                });
            }
            return Ok(false);
        };
        if end > max {
            return Err(Refusal {
                status: 431,
                why: "request head over max_header_bytes",
            });
        }
        // Give back what followed the head in this call.
        let extra = self.pending.len() - end;
        *data = &data[take - extra..];
        self.pending.truncate(end);
        let head = std::mem::take(&mut self.pending);
        self.state = self.rewrite(&head, out)?;
        self.requests += 1;
        Ok(true)
    }

    /// Parse and check `head` (through its blank line), write it without owned
    /// headers and with ours, and return the body's state.
    fn rewrite(&mut self, head: &[u8], out: &mut Vec<u8>) -> Result<State, Refusal> {
        if !self.settings.allow_bare_lf && has_bare_lf(head) {
            return Err(Refusal::bad("bare LF in the request head"));
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal {
                    status: 431,
                    why: "more than 128 header fields",
                })
            }
            _ => return Err(Refusal::bad("malformed request head")),
        }
        let checked = Checked::validate(&req)?;
        if let Some(g) = self.gate.as_deref_mut() {
            // Decided on the canonical path; an ambiguous one is refused (400).
            match g.check(checked.method, checked.path) {
                Err(e) => return Err(Refusal::bad(e.as_str())),
                // A client waiting for 100 Continue may send the body or not: which
                // one is unknowable, so the answer closes the connection (RFC 9110
                // 10.1.1) rather than guess where the next request starts.
                Ok(Admit::Answered(status))
                    if checked.expect_continue && checked.body != State::Head =>
                {
                    return Err(Refusal {
                        status,
                        why: "answered before a 100-continue body",
                    });
                }
                Ok(Admit::Answered(_)) => {
                    self.dropping = true;
                    return Ok(checked.body);
                }
                Ok(Admit::Forward) => {}
            }
        }
        out.reserve(head.len() + self.added.len() + 64);
        self.write_head(&checked, req.headers, out);
        Ok(checked.body)
    }

    /// Write a checked head: the request line, the client's headers but the owned
    /// ones, ours, then the blank line.
    fn write_head(&self, c: &Checked<'_>, headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
        out.extend_from_slice(c.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(c.path.as_bytes());
        out.extend_from_slice(if c.version == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for h in headers {
            if OWNED.iter().any(|o| h.name.eq_ignore_ascii_case(o)) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.added);
        if let Some(fh) = self.sni.as_deref().or(c.host) {
            out.extend_from_slice(b"X-Forwarded-Host: ");
            out.extend_from_slice(fh.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A parsed request head that passed every check: its request line, how its body
/// is framed, and its Host (for `X-Forwarded-Host` when there is no SNI).
struct Checked<'b> {
    method: &'b str,
    path: &'b str,
    /// The minor version: 0 or 1.
    version: u8,
    body: State,
    host: Option<&'b str>,
    /// `Expect: 100-continue`.
    expect_continue: bool,
}

impl<'b> Checked<'b> {
    /// Refuse what terminus does not forward (CONNECT, Upgrade) and every framing
    /// two parsers could read differently (request smuggling): Content-Length that
    /// is not one number, Transfer-Encoding other than one `chunked`, both at once,
    /// chunked in HTTP/1.0.
    fn validate(req: &httparse::Request<'_, 'b>) -> Result<Checked<'b>, Refusal> {
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(Refusal::bad("malformed request line"));
        };
        if method.eq_ignore_ascii_case("CONNECT") {
            return Err(Refusal::bad("CONNECT is not supported on http listeners"));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut host = None;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or(Refusal::bad("invalid Content-Length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(Refusal::bad("two different Content-Length values"));
                }
                length = Some(v);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                if !v.eq_ignore_ascii_case("chunked") || chunked {
                    return Err(Refusal::bad("Transfer-Encoding other than one chunked"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            } else if name.eq_ignore_ascii_case("host") {
                host = std::str::from_utf8(h.value).ok().map(str::trim);
            } else if name.eq_ignore_ascii_case("upgrade") {
                // After a protocol switch the stream is not HTTP any more, and if the
                // upstream declined it, what followed would reach it unfiltered (with
                // forged identity headers): a tcp listener is the one for tunnels.
                return Err(Refusal::bad("Upgrade is not supported on http listeners"));
            }
        }
        if chunked && length.is_some() {
            return Err(Refusal::bad("both Content-Length and Transfer-Encoding"));
        }
        if version == 0 && chunked {
            return Err(Refusal::bad("chunked in HTTP/1.0"));
        }
        let body = match (chunked, length) {
            (true, _) => State::ChunkSize,
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        Ok(Checked {
            method,
            path,
            version,
            body,
            host,
            expect_continue,
        })
    }
}

/// End of a head (index after its blank line), CRLF or bare-LF style.
fn find_head_end(b: &[u8]) -> Option<usize> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if b[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if b[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

fn has_bare_lf(b: &[u8]) -> bool {
    b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
}

/// `1a;ext=1\r\n` → 26. Hex digits only (no sign, no spaces before), at most 15 of
/// them (no overflow).
fn chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    let body = &line[..line.len() - 2];
    let digits = body.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.strip_suffix(b" ").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Refusal::bad("invalid chunk size"));
    }
    let s = std::str::from_utf8(digits).map_err(|_| Refusal::bad("invalid chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| Refusal::bad("invalid chunk size"))
}

/// Envoy's XFCC value for a verified leaf: `Hash=<sha256 hex>;URI=…;DNS=…;Subject="…"`.
fn xfcc(leaf: &rustls_pki_types::CertificateDer<'_>) -> Option<String> {
    let id = crate::tls::identity::PeerIdentity::from_der(leaf).ok()?;
    let mut v = format!("Hash={}", id.sha256);
    if let Some(u) = &id.spiffe {
        v.push_str(&format!(";URI={u}"));
    }
    for d in &id.dns {
        v.push_str(&format!(";DNS={d}"));
    }
    let quoted = id.subject.replace('\\', "\\\\").replace('"', "\\\"");
    v.push_str(&format!(";Subject=\"{quoted}\""));
    // A header value must not carry CR/LF or other controls.
    v.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        HttpSettings {
            identity: IdentityHeaders::Xfcc,
            max_header_bytes: 1024,
            allow_bare_lf: false,
            head_timeout: std::time::Duration::from_secs(10),
            h2: None,
            upstream_h2: false,
        }
    }

    fn filter() -> RequestFilter {
        let mut f = RequestFilter::new(settings());
        f.set_connection(
            Some("10.0.0.7:5555".parse().unwrap()),
            Some("api.internal"),
            None,
        );
        f
    }

    /// Feed `input` in pieces of `step` bytes; the output, or the refusal.
    fn run(f: &mut RequestFilter, input: &[u8], step: usize) -> Result<String, Refusal> {
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            let mut v = piece.to_vec();
            f.feed(&mut v, &mut out)?;
            assert!(v.is_empty(), "the filter takes every byte");
        }
        Ok(String::from_utf8(out).unwrap())
    }

    const ADDED: &str =
        "X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: api.internal\r\n";

    #[test]
    fn heads_are_rewritten_bodies_pass_and_requests_pipeline() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n";
        let want = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n{ADDED}\r\nhello\
             GET /b HTTP/1.1\r\nHost: x\r\n{ADDED}\r\n\
             POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{ADDED}\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
        );
        for step in [1, 2, 3, 7, 64, 4096] {
            let mut f = filter();
            assert_eq!(run(&mut f, input, step).unwrap(), want, "step {step}");
            assert_eq!(f.requests, 3);
            assert!(!f.in_head());
        }
    }

    #[test]
    fn client_copies_of_owned_headers_are_dropped_in_any_case_and_number() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: Hash=forged\r\nx-forwarded-client-cert: URI=spiffe://evil\r\nX-FORWARDED-FOR: 1.2.3.4\r\nclient-cert: :AAAA:\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-Host: evil\r\nX-Other: kept\r\n\r\n";
        let out = run(&mut filter(), input, 5).unwrap();
        assert_eq!(
            out,
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Other: kept\r\n{ADDED}\r\n")
        );
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        for (input, status, why) in [
            (&b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..], 400, "both"),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "two different"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400, "Transfer-Encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "Transfer-Encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "chunk size"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400, "chunk size"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", 400, "chunk size"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400, "CRLF"),
            (b"GET / HTTP/1.1\nHost: x\n\n", 400, "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Client-Cert: a\r\n b\r\n\r\n", 400, "malformed"),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
            (b"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400, "Content-Length"),
            (
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                400,
                "Upgrade",
            ),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400, "CONNECT"),
        ] {
            let mut f = filter();
            let e = run(&mut f, input, 4096).unwrap_err();
            assert_eq!(e.status, status, "{}", String::from_utf8_lossy(input));
            assert!(e.why.contains(why), "{why}: {e:?}");
            // Nothing more passes after a refusal.
            let mut more = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            let mut out = Vec::new();
            assert!(f.feed(&mut more, &mut out).is_ok() && out.is_empty());
        }
    }

    #[test]
    fn heads_over_the_limit_get_431_and_bare_lf_can_be_allowed() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        for step in [1, 100, 4096] {
            let e = run(&mut filter(), big.as_bytes(), step).unwrap_err();
            assert_eq!(e.status, 431);
        }
        let mut f = RequestFilter::new(HttpSettings {
            allow_bare_lf: true,
            ..settings()
        });
        let out = run(&mut f, b"GET / HTTP/1.1\nHost: x\n\n", 3).unwrap();
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: x\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(status_response(502)).unwrap(),
            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_denied_request_is_not_written_and_its_body_is_dropped_at_any_split() {
        use crate::proxy::authz::gate::{Policy, RequestGate};
        use crate::proxy::authz::limits::CallerLimits;
        use crate::proxy::authz::{parse_rule, Action, Mode, Rules};
        let rule = parse_rule("no-admin", &["any"], None, Some(&["/admin/*"]), "deny").unwrap();
        let policy = Policy {
            rules: Rules::new(vec![rule], Action::Allow, Mode::Enforce).unwrap(),
            ..Policy::default()
        };
        let policy = std::sync::Arc::new(policy);
        let limits = std::sync::Arc::new(CallerLimits::new(16));
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /%61dmin/x HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nSECRET\
            POST /admin/y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nSECRET\r\n0\r\nT: 1\r\n\r\n\
            GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let want = format!(
            "GET /a HTTP/1.1\r\nHost: x\r\n{ADDED}\r\nGET /b HTTP/1.1\r\nHost: x\r\n{ADDED}\r\n"
        );
        for step in [1, 2, 3, 7, 64, 4096] {
            let mut f = filter();
            f.set_gate(RequestGate::new(
                policy.clone(),
                limits.clone(),
                None,
                None,
                std::time::Instant::now(),
            ));
            assert_eq!(run(&mut f, input, step).unwrap(), want, "step {step}");
            assert_eq!(f.requests, 4);
            let g = f.gate_mut().unwrap();
            // Nothing answered yet: the 403s wait for the response to GET /a.
            assert!(g.to_client.is_empty());
            let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec();
            g.upstream(&mut resp).unwrap();
            let text = String::from_utf8(std::mem::take(&mut g.to_client)).unwrap();
            assert_eq!(text.matches("403 Forbidden").count(), 2, "{text}");
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        }
    }

    #[test]
    fn the_head_timer_runs_only_inside_a_head() {
        let mut f = filter();
        let mut out = Vec::new();
        f.feed(&mut b"GET / HT".to_vec(), &mut out).unwrap();
        assert!(f.in_head() && out.is_empty() && f.held() == 8);
        f.feed(&mut b"TP/1.1\r\n\r\n".to_vec(), &mut out).unwrap();
        assert!(!f.in_head() && f.held() == 0);
    }
}
