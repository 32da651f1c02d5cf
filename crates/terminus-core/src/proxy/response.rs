//! response: where each HTTP/1.1 response from the upstream ends, so that an answer
//! terminus gives itself (403 for a denied request, 429 over a rate limit) reaches the
//! client in its request's place, after the responses to the requests before it and
//! before the responses to those after it, however many requests are pipelined.
//!
//! Owns [`ResponseSequencer`]: the requests of one connection in order, each
//! `Forwarded` (the upstream answers it) or `Local` (terminus does, with these bytes),
//! and a framing parser over the upstream's bytes (RFC 9112 §6.3): a response to
//! HEAD, a 1xx (interim: the final response follows), 204 and 304 have no body;
//! otherwise `Transfer-Encoding: chunked` (chunks and trailers), else
//! `Content-Length`, else the body runs to the upstream's close. Upstream bytes are
//! passed through untouched; the sequencer only decides where local answers go.
//!
//! Only listeners that can answer locally (rules or limits configured) use it: it
//! costs one small head parse per response.
//!
//! I/O contract: none; bytes in, bytes out.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// Why the upstream's response stream cannot be followed: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// One request's place in the response order.
#[derive(Debug)]
enum Slot {
    /// The upstream answers; `head` when the request was HEAD (no body follows).
    Forwarded { head: bool },
    /// Terminus answers with these bytes.
    Local(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Between responses (or inside a head: `pending` holds it).
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// Body delimited by the upstream's close; nothing after it can be sequenced.
    UntilClose,
}

/// The order of one connection's responses (see the module doc).
#[derive(Debug)]
pub struct ResponseSequencer {
    slots: VecDeque<Slot>,
    framing: Framing,
    /// A response head or chunk line not complete yet.
    pending: Vec<u8>,
    max_head: usize,
}

impl ResponseSequencer {
    pub fn new(max_head: usize) -> ResponseSequencer {
        ResponseSequencer {
            slots: VecDeque::new(),
            framing: Framing::Head,
            pending: Vec::new(),
            max_head,
        }
    }

    /// A request went to the upstream.
    pub fn forwarded(&mut self, head_method: bool) {
        self.slots.push_back(Slot::Forwarded { head: head_method });
    }

    /// Terminus answers a request itself with `response`. Appended to `out` at once
    /// when every earlier response is complete, else when the last of them is.
    pub fn local(&mut self, response: Vec<u8>, out: &mut Vec<u8>) {
        self.slots.push_back(Slot::Local(response));
        self.release_locals(out);
    }

    /// Requests whose answer is still owed (forwarded or local).
    pub fn outstanding(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held to find a boundary (a partial head or chunk line).
    pub fn held(&self) -> usize {
        self.pending.len()
            + self
                .slots
                .iter()
                .map(|s| match s {
                    Slot::Local(b) => b.len(),
                    Slot::Forwarded { .. } => 0,
                })
                .sum::<usize>()
    }

    /// Move the upstream's bytes to `out` (untouched), with local answers placed at
    /// the response boundaries they belong to.
    pub fn upstream(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), BadResponse> {
        while !data.is_empty() {
            let n = self.step(data)?;
            out.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.release_locals(out);
        }
        Ok(())
    }

    /// The upstream closed: a body delimited by close ends here. Local answers after
    /// it are released (the client connection closes after them).
    pub fn upstream_closed(&mut self, out: &mut Vec<u8>) {
        if self.framing == Framing::UntilClose {
            self.framing = Framing::Head;
            self.slots.pop_front();
        }
        self.release_locals(out);
    }

    fn release_locals(&mut self, out: &mut Vec<u8>) {
        if self.framing != Framing::Head || !self.pending.is_empty() {
            return;
        }
        while let Some(Slot::Local(_)) = self.slots.front() {
            if let Some(Slot::Local(b)) = self.slots.pop_front() {
                out.extend_from_slice(&b);
            }
        }
    }

    fn response_done(&mut self) {
        self.framing = Framing::Head;
        self.slots.pop_front();
    }

    /// Consume a prefix of `data` that stays within the current response element;
    /// returns its length (at least 1).
    fn step(&mut self, data: &[u8]) -> Result<usize, BadResponse> {
        match self.framing {
            Framing::UntilClose => Ok(data.len()),
            Framing::Length(n) => {
                let k = n.min(data.len() as u64);
                if n == k {
                    self.response_done();
                } else {
                    self.framing = Framing::Length(n - k);
                }
                Ok(k as usize)
            }
            Framing::ChunkData(n) => {
                let k = n.min(data.len() as u64);
                self.framing = if n == k {
                    Framing::ChunkDataEnd
                } else {
                    Framing::ChunkData(n - k)
                };
                Ok(k as usize)
            }
            Framing::Head => self.take_head(data),
            Framing::ChunkSize | Framing::ChunkDataEnd | Framing::Trailers => self.take_line(data),
        }
    }

    fn take_line(&mut self, data: &[u8]) -> Result<usize, BadResponse> {
        let Some(i) = data.iter().position(|&b| b == b'\n') else {
            self.pending.extend_from_slice(data);
            if self.pending.len() > 4096 {
                return Err(BadResponse("chunk line over 4 KiB"));
            }
            return Ok(data.len());
        };
        self.pending.extend_from_slice(&data[..=i]);
        let line = std::mem::take(&mut self.pending);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match self.framing {
            Framing::ChunkSize => {
                let hex = text.split(|&b| b == b';').next().unwrap_or_default();
                let hex = std::str::from_utf8(hex).map_err(|_| BadResponse("chunk size"))?;
                let size = u64::from_str_radix(hex.trim_matches([' ', '\t']), 16)
                    .map_err(|_| BadResponse("chunk size"))?;
                self.framing = if size == 0 {
                    Framing::Trailers
                } else {
                    Framing::ChunkData(size)
                };
            }
            Framing::ChunkDataEnd => {
                if !text.is_empty() {
                    return Err(BadResponse("chunk data not followed by CRLF"));
                }
                self.framing = Framing::ChunkSize;
            }
            _ => {
                if text.is_empty() {
                    self.response_done();
                }
            }
        }
        Ok(i + 1)
    }

    fn take_head(&mut self, data: &[u8]) -> Result<usize, BadResponse> {
        let Some(Slot::Forwarded { head: head_method }) = self.slots.front() else {
            return Err(BadResponse("a response to no request"));
        };
        let head_method = *head_method;
        // Find the end of the head across calls.
        let start = self.pending.len().saturating_sub(3);
        let room = (self.max_head + 1).saturating_sub(self.pending.len());
        let take = data.len().min(room);
        self.pending.extend_from_slice(&data[..take]);
        let Some(end) = find_head_end(&self.pending[start..]).map(|e| start + e) else {
            if self.pending.len() > self.max_head {
                return Err(BadResponse("response head over the limit"));
            }
            return Ok(take);
        };
        let used = take - (self.pending.len() - end);
        self.pending.truncate(end);
        let head = std::mem::take(&mut self.pending);
        self.framing = body_framing(&head, head_method)?;
        if self.framing == Framing::Head {
            // Interim (1xx): the request still awaits its final response.
            if !is_interim(&head) {
                self.slots.pop_front();
            }
        }
        Ok(used)
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn is_interim(head: &[u8]) -> bool {
    head.get(9) == Some(&b'1')
}

/// How the body after `head` is delimited (RFC 9112 §6.3).
fn body_framing(head: &[u8], head_method: bool) -> Result<Framing, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(BadResponse("malformed response head")),
    }
    let code = resp.code.unwrap_or(0);
    if code == 101 {
        return Err(BadResponse("protocol switch on an http listener"));
    }
    if (100..200).contains(&code) || code == 204 || code == 304 || head_method {
        return Ok(Framing::Head);
    }
    let mut length = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                Framing::ChunkSize
            } else {
                Framing::UntilClose
            });
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(BadResponse("bad Content-Length"))?;
            if length.is_some_and(|l| l != v) {
                return Err(BadResponse("two different Content-Lengths"));
            }
            length = Some(v);
        }
    }
    Ok(match length {
        Some(0) => Framing::Head,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    const DENY: &[u8] = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";

    /// Feed `stream` split at every `split`-byte boundary.
    fn feed(s: &mut ResponseSequencer, stream: &[u8], split: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in stream.chunks(split) {
            s.upstream(part, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_local_answer_waits_for_the_responses_before_it() {
        for split in [1, 2, 3, 7, 1000] {
            let mut s = ResponseSequencer::new(8192);
            let mut out = Vec::new();
            s.forwarded(false);
            s.forwarded(false);
            s.local(DENY.to_vec(), &mut out);
            s.forwarded(true);
            s.forwarded(false);
            assert!(out.is_empty(), "two responses are owed first");
            let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
            let stream = [OK5, CHUNKED, head_resp, OK5].concat();
            out.extend(feed(&mut s, &stream, split));
            let want = [OK5, CHUNKED, DENY, head_resp, OK5].concat();
            assert_eq!(out, want, "split {split}");
            assert_eq!(s.outstanding(), 0);
        }
    }

    #[test]
    fn interim_and_bodiless_responses() {
        let mut s = ResponseSequencer::new(8192);
        let mut out = Vec::new();
        s.forwarded(false);
        s.forwarded(false);
        s.local(DENY.to_vec(), &mut out);
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        s.upstream(cont, &mut out).unwrap();
        assert_eq!(out, cont, "an interim response does not end the request");
        s.upstream(OK5, &mut out).unwrap();
        s.upstream(no_content, &mut out).unwrap();
        assert_eq!(out, [&cont[..], OK5, no_content, DENY].concat());
    }

    #[test]
    fn with_nothing_owed_a_local_answer_goes_at_once() {
        let mut s = ResponseSequencer::new(8192);
        let mut out = Vec::new();
        s.local(DENY.to_vec(), &mut out);
        assert_eq!(out, DENY);
        s.forwarded(false);
        s.upstream(OK5, &mut out).unwrap();
        s.local(DENY.to_vec(), &mut out);
        assert_eq!(out, [DENY, OK5, DENY].concat());
    }

    #[test]
    fn a_body_until_close_releases_at_the_close() {
        let mut s = ResponseSequencer::new(8192);
        let mut out = Vec::new();
        s.forwarded(false);
        s.local(DENY.to_vec(), &mut out);
        let resp = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        s.upstream(resp, &mut out).unwrap();
        assert_eq!(out, resp);
        s.upstream_closed(&mut out);
        assert_eq!(out, [&resp[..], DENY].concat());
    }

    #[test]
    fn bad_framing_is_an_error() {
        for (resp, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different Content-Lengths",
            ),
            (b"garbage\r\n\r\n", "malformed response head"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
        ] {
            let mut s = ResponseSequencer::new(8192);
            s.forwarded(false);
            assert_eq!(s.upstream(resp, &mut Vec::new()), Err(BadResponse(why)));
        }
        let mut s = ResponseSequencer::new(8192);
        assert_eq!(
            s.upstream(OK5, &mut Vec::new()),
            Err(BadResponse("a response to no request"))
        );
        let mut s = ResponseSequencer::new(16);
        s.forwarded(false);
        assert_eq!(
            s.upstream(OK5, &mut Vec::new()),
            Err(BadResponse("response head over the limit"))
        );
    }
}
