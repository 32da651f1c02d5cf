//! The steps of one connection's state machine: [`Worker::drive`] advances a slot as
//! far as its socket allows, one function per state that does I/O (connect,
//! confirm, request/response, discard, bulk stream). Accounting (ops, failures,
//! timeouts, acceptance) stays with the worker (`worker.rs`).
#![forbid(unsafe_code)]

use super::super::{Direction, Workload};
use super::{St, Worker};
use std::io::{self, ErrorKind};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Bytes moved per event before a busy bulk connection yields to the others.
const BULK_BUDGET: usize = 4 << 20;

impl Worker<'_> {
    /// Advance slot `i` as far as its socket allows.
    pub(super) fn drive(&mut self, i: usize) {
        let mut budget = BULK_BUDGET;
        loop {
            let st = self.slots[i].st;
            let res: io::Result<bool> = match st {
                St::Free => {
                    // One new connection per call: a connect that completes at once
                    // must not turn this into a loop that never polls.
                    if self.measuring && self.sh.opts.workload == Workload::Handshake {
                        self.start_connect(i);
                    }
                    return;
                }
                St::Dead => return,
                St::Connecting => self.connecting(i),
                St::Handshaking => self.slots[i].stream.as_mut().expect("stream").handshake(),
                St::Confirm => self.confirm(i),
                St::ReqSend => self.req_send(i),
                St::ReqRecv => self.req_recv(i),
                St::Ready | St::Holding => self.discard(i),
                St::Streaming => match self.stream(i, &mut budget) {
                    Ok(true) if budget == 0 => {
                        self.requeue.push(i);
                        return;
                    }
                    r => r,
                },
            };
            // Before classifying an error: was the connection accepted first?
            self.observe(i);
            match res {
                // Progress: the state changed; keep going in the new state.
                Ok(true) if self.slots[i].st != st => continue,
                Ok(true) if st == St::Handshaking => self.handshaken(i),
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    let why = self.classify(i, &e, st);
                    self.fail(i, why, &format_args!("{st:?}: {e}"));
                    return;
                }
            }
            if self.slots[i].st == st {
                return;
            }
        }
    }

    fn connecting(&mut self, i: usize) -> io::Result<bool> {
        let s = &mut self.slots[i];
        let stream = s.stream.as_mut().expect("stream");
        if let Some(e) = stream.sock.take_error()? {
            return Err(e);
        }
        match stream.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(e),
        }
        let _ = stream.sock.set_nodelay(true);
        if let (Some(cfg), Some((_, name))) = (&self.tls, &self.sh.tls) {
            let c = rustls::ClientConnection::new(cfg.clone(), name.clone())
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            stream.tls = Some(c.into());
            s.st = St::Handshaking;
            Ok(true)
        } else {
            s.st = St::Handshaking;
            // Plaintext: connected is "handshaken".
            self.handshaken(i);
            Ok(true)
        }
    }

    /// Read until the server shows it accepted the connection (and, handshake
    /// workload with --resume, until a ticket arrived), then go on.
    fn confirm(&mut self, i: usize) -> io::Result<bool> {
        let sh = self.sh;
        let o = &sh.opts;
        let want_ticket = o.workload == Workload::Handshake && o.resume;
        let counts_op = matches!(o.workload, Workload::Handshake | Workload::Idle);
        loop {
            let s = &mut self.slots[i];
            let stream = s.stream.as_mut().expect("stream");
            // A read that ends in WouldBlock may still have processed tickets.
            let r = stream.read(&mut self.buf);
            let tickets = stream.tickets;
            if !s.proven && (tickets > 0 || stream.plain_in > 0) {
                let t = s.t_op;
                self.accept(i);
                if counts_op {
                    self.record(t);
                }
            }
            let proven = self.slots[i].proven;
            if proven && (!want_ticket || tickets > 0) {
                break;
            }
            match r {
                // Closed before its tickets: nothing left to wait for.
                Ok(0) if proven => break,
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "closed before showing it accepted the client",
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        self.confirmed(i);
        Ok(true)
    }

    fn req_send(&mut self, i: usize) -> io::Result<bool> {
        let size = self.sh.opts.size;
        let s = &mut self.slots[i];
        let stream = s.stream.as_mut().expect("stream");
        while s.sent < size {
            s.sent += stream.write(&self.payload[s.sent..size])?;
        }
        s.st = St::ReqRecv;
        Ok(true)
    }

    fn req_recv(&mut self, i: usize) -> io::Result<bool> {
        let size = self.sh.opts.size;
        let s = &mut self.slots[i];
        let stream = s.stream.as_mut().expect("stream");
        while s.got < size {
            let want = (size - s.got).min(self.buf.len());
            match stream.read(&mut self.buf[..want])? {
                0 => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "closed mid-response",
                    ))
                }
                n => s.got += n,
            }
        }
        let t = s.t_op;
        // The echo shows that the server accepted the connection.
        self.accept(i);
        self.record(t);
        if self.measuring {
            self.bytes += 2 * size as u64;
        }
        match self.sh.opts.workload {
            Workload::Handshake => {
                self.recycle(i);
            }
            _ => {
                let s = &mut self.slots[i];
                match s.due {
                    // Closed loop: the next request goes at once.
                    None if self.measuring => self.begin_request(i, Instant::now()),
                    None => s.st = St::Ready,
                    // Open loop: a request already due is sent now, its latency
                    // still counted from when it was due.
                    Some(due) if self.measuring && due <= Instant::now() => {
                        self.begin_request(i, due)
                    }
                    Some(_) => s.st = St::Ready,
                }
            }
        }
        Ok(true)
    }

    /// Idle/ready connections: read and drop whatever comes (tickets); EOF is an error.
    fn discard(&mut self, i: usize) -> io::Result<bool> {
        let stream = self.slots[i].stream.as_mut().expect("stream");
        loop {
            match stream.read(&mut self.buf)? {
                0 => return Err(io::Error::new(ErrorKind::UnexpectedEof, "peer closed")),
                _ => continue,
            }
        }
    }

    /// Bulk transfer; `Ok(true)` when the budget ran out before the socket blocked.
    fn stream(&mut self, i: usize, budget: &mut usize) -> io::Result<bool> {
        let dir = self.sh.opts.direction;
        let size = self.sh.opts.size;
        // Echo: keep at most this much in flight so neither side's buffers balloon.
        let window = (4 * size as u64).max(256 * 1024);
        let s = &mut self.slots[i];
        let stream = s.stream.as_mut().expect("stream");
        let mut moved_total = 0u64;
        let res = loop {
            if *budget == 0 {
                break Ok(true);
            }
            let mut blocked = 0;
            let mut moved = 0usize;
            if matches!(dir, Direction::Up | Direction::Echo)
                && (dir == Direction::Up || s.up - s.down < window)
            {
                let off = (s.up % size as u64) as usize;
                match stream.write(&self.payload[off..size]) {
                    Ok(n) => {
                        s.up += n as u64;
                        moved += n;
                        if dir == Direction::Up {
                            moved_total += n as u64;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
                    Err(e) => break Err(e),
                }
            } else {
                blocked += 1;
            }
            if matches!(dir, Direction::Down | Direction::Echo) {
                match stream.read(&mut self.buf) {
                    Ok(0) => {
                        break Err(io::Error::new(ErrorKind::UnexpectedEof, "peer closed"));
                    }
                    Ok(n) => {
                        s.down += n as u64;
                        moved += n;
                        moved_total += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
                    Err(e) => break Err(e),
                }
            } else {
                // Up only: still notice a peer that closes or sends.
                match stream.read(&mut self.buf) {
                    Ok(0) => break Err(io::Error::new(ErrorKind::UnexpectedEof, "peer closed")),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
                    Err(e) => break Err(e),
                }
            }
            *budget = budget.saturating_sub(moved.max(1));
            if blocked == 2 || moved == 0 {
                break Ok(false);
            }
        };
        if self.measuring && moved_total > 0 {
            self.bytes += moved_total;
            self.sh.progress.fetch_add(moved_total, Ordering::Relaxed);
        }
        res
    }
}
