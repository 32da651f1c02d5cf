//! One bench worker: a pinned thread with its own mio Poll driving its share of the
//! connections through a per-connection state machine.
//!
//! Phases (every worker and the coordinating thread meet at barriers, so the
//! measured window and the target's CPU samples line up):
//! setup (persistent connections are opened and handshaken) -> `start` barrier ->
//! measured window -> `end` barrier (connections still open: the coordinator samples
//! CPU and memory) -> `release` barrier -> close everything.
#![forbid(unsafe_code)]

mod steps;

use super::proof;
use super::stream::{rustls_error, Stream};
use super::{BenchOpts, ErrorCounts, Workload};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use std::collections::BTreeMap;
use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// State shared by the workers and the coordinator.
pub(super) struct Shared {
    pub opts: BenchOpts,
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Ops (or bytes for bulk) done in the window so far, for the progress line.
    pub progress: AtomicU64,
    pub stop: AtomicBool,
    pub start: Barrier,
    pub end: Barrier,
    pub release: Barrier,
}

impl Shared {
    /// Wait at the next of the three barriers; `passed` counts them for [`guarded`].
    fn barrier(&self, passed: &std::cell::Cell<usize>) {
        [&self.start, &self.end, &self.release][passed.get()].wait();
        passed.set(passed.get() + 1);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self
                .opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// What one worker measured.
pub(super) struct WorkerResult {
    pub hist: Histogram<u64>,
    pub ops: u64,
    pub bytes: u64,
    pub errors: ErrorCounts,
    pub resumed: u64,
    pub full: u64,
    /// Connections up when the window started (persistent workloads).
    pub established: u64,
    /// The first error message of each kind.
    pub samples: BTreeMap<&'static str, String>,
}

pub(super) fn new_hist() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum St {
    /// Not connected (handshake workload: waiting to start the next connection).
    Free,
    Connecting,
    Handshaking,
    /// Handshake done on the client's side: read until the server shows it accepted
    /// the connection (a session ticket or data, see `proof.rs`), and with --resume
    /// (handshake workload) until its session ticket arrived.
    Confirm,
    ReqSend,
    ReqRecv,
    /// Persistent connection between requests (rr), or waiting for the window (bulk).
    Ready,
    Streaming,
    /// Idle workload: holding the connection open.
    Holding,
    /// Failed persistent connection: not reopened.
    Dead,
}

struct Slot {
    stream: Option<Stream>,
    st: St,
    /// When the current operation started (or was due, for rate-limited rr).
    t_op: Instant,
    /// When it actually started: timeouts count from here.
    t_act: Instant,
    sent: usize,
    got: usize,
    /// The server has shown that it accepted this connection (see `proof.rs`).
    proven: bool,
    /// Rate-limited rr: when this connection's next request is due.
    due: Option<Instant>,
    /// Bulk: bytes sent and received on this connection.
    up: u64,
    down: u64,
}

enum Fail {
    Connect,
    Handshake,
    Verify,
    /// The server refused the client (its certificate) after the client's handshake.
    Refused,
    Io,
    Timeout,
    Closed,
}

struct Worker<'a> {
    sh: &'a Shared,
    tls: Option<Arc<rustls::ClientConfig>>,
    poll: Poll,
    slots: Vec<Slot>,
    /// Index of this worker's first connection among all workers' connections.
    first: usize,
    measuring: bool,
    hist: Histogram<u64>,
    ops: u64,
    bytes: u64,
    errors: ErrorCounts,
    samples: BTreeMap<&'static str, String>,
    resumed: u64,
    full: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
    requeue: Vec<usize>,
    /// Setup: next slot to open, and how many are connecting/handshaking.
    next_open: usize,
    opening: usize,
    interval: Option<Duration>,
}

/// [`run`], but a panic (a bug) still meets the barriers the worker had not passed,
/// so the coordinator cannot hang; the run is stopped and the panic reported.
pub(super) fn guarded(
    sh: &Shared,
    index: usize,
    first: usize,
    conns: usize,
    cpu: Option<usize>,
) -> WorkerResult {
    let passed = std::cell::Cell::new(0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(sh, index, first, conns, cpu, &passed)
    }));
    let r = r.unwrap_or_else(|_| {
        sh.stop.store(true, Ordering::Relaxed);
        eprintln!("terminus: bench: worker {index} panicked; the run is stopped");
        WorkerResult::empty()
    });
    while passed.get() < 3 {
        sh.barrier(&passed);
    }
    r
}

impl WorkerResult {
    pub(super) fn empty() -> WorkerResult {
        WorkerResult {
            hist: new_hist(),
            ops: 0,
            bytes: 0,
            errors: ErrorCounts::default(),
            resumed: 0,
            full: 0,
            established: 0,
            samples: BTreeMap::new(),
        }
    }
}

fn run(
    sh: &Shared,
    index: usize,
    first: usize,
    conns: usize,
    cpu: Option<usize>,
    passed: &std::cell::Cell<usize>,
) -> WorkerResult {
    if let Some(c) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    let mut w = match Worker::new(sh, first, conns) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("terminus: bench: worker {index}: cannot create a poller: {e}");
            sh.stop.store(true, Ordering::Relaxed);
            return WorkerResult::empty();
        }
    };
    let mut events = Events::with_capacity(1024);
    w.open_persistent(&mut events);
    let established = w
        .slots
        .iter()
        .filter(|s| matches!(s.st, St::Ready | St::Holding))
        .count() as u64;

    sh.barrier(passed);
    let t0 = Instant::now();
    w.measuring = true;
    w.start_window(t0);
    w.measure(&mut events, t0);
    w.measuring = false;
    sh.barrier(passed);
    sh.barrier(passed);
    w.finish(established)
}

impl<'a> Worker<'a> {
    /// `conns` free slots, the first being connection `first` of the whole run.
    fn new(sh: &'a Shared, first: usize, conns: usize) -> io::Result<Worker<'a>> {
        let o = &sh.opts;
        // --resume: each worker keeps its own session store (no cross-thread locking).
        // Its tickets and certificate requests are counted to tell acceptance.
        let tls = sh.tls.as_ref().map(|(cfg, _)| {
            let mut c = (**cfg).clone();
            proof::instrument(&mut c, o.resume.then(|| conns.max(1) * 4));
            Arc::new(c)
        });
        let now = Instant::now();
        Ok(Worker {
            sh,
            tls,
            poll: Poll::new()?,
            slots: (0..conns)
                .map(|_| Slot {
                    stream: None,
                    st: St::Free,
                    t_op: now,
                    t_act: now,
                    sent: 0,
                    got: 0,
                    proven: false,
                    due: None,
                    up: 0,
                    down: 0,
                })
                .collect(),
            first,
            measuring: false,
            hist: new_hist(),
            ops: 0,
            bytes: 0,
            errors: ErrorCounts::default(),
            samples: BTreeMap::new(),
            resumed: 0,
            full: 0,
            buf: vec![0u8; 64 * 1024],
            payload: (0..o.size.max(1)).map(|i| (i % 251) as u8).collect(),
            requeue: Vec::new(),
            next_open: 0,
            opening: 0,
            interval: o
                .rate
                .map(|r| Duration::from_secs_f64(o.connections as f64 / r)),
        })
    }

    /// Setup: persistent connections are opened (at most `ramp` at a time) before the
    /// window, so the window measures the steady state, not the ramp.
    fn open_persistent(&mut self, events: &mut Events) {
        let o = &self.sh.opts;
        if o.workload == Workload::Handshake {
            return;
        }
        let conns = self.slots.len();
        // The idle workload's latency histogram is its handshake latencies.
        self.measuring = o.workload == Workload::Idle;
        while !self.sh.stopped() {
            while self.next_open < conns && self.opening < o.ramp {
                let i = self.next_open;
                self.next_open += 1;
                self.opening += 1;
                self.start_connect(i);
            }
            if self.next_open >= conns && self.opening == 0 {
                break;
            }
            self.turn(events, Duration::from_millis(50));
            self.check_timeouts();
        }
        self.measuring = false;
    }

    /// The window opens at `t0`: start the workload's first operations.
    fn start_window(&mut self, t0: Instant) {
        let o = &self.sh.opts;
        let conns = self.slots.len();
        match o.workload {
            Workload::Handshake => {
                for i in 0..conns {
                    self.start_connect(i);
                }
            }
            Workload::Bulk => {
                for i in 0..conns {
                    if self.slots[i].st == St::Ready {
                        self.slots[i].st = St::Streaming;
                        self.requeue.push(i);
                    }
                }
            }
            Workload::Rr => {
                for i in 0..conns {
                    if self.slots[i].st != St::Ready {
                        continue;
                    }
                    match self.interval {
                        // Spread the intended send times evenly over all connections.
                        Some(iv) => {
                            let g = (self.first + i) as f64 / o.connections as f64;
                            self.slots[i].due = Some(t0 + iv.mul_f64(g));
                        }
                        None => {
                            self.begin_request(i, t0);
                            self.drive(i);
                        }
                    }
                }
            }
            Workload::Idle => {}
        }
    }

    /// Poll until the window (from `t0`) ends or the run stops; with `--rate`, send
    /// what is due.
    fn measure(&mut self, events: &mut Events, t0: Instant) {
        let deadline = t0 + self.sh.opts.duration;
        let conns = self.slots.len();
        let mut last_check = t0;
        while !self.sh.stopped() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let mut wait = (deadline - now).min(Duration::from_millis(50));
            if self.interval.is_some() {
                // Send what is due; sleep until the next due time.
                for i in 0..conns {
                    if let (St::Ready, Some(due)) = (self.slots[i].st, self.slots[i].due) {
                        if due <= now {
                            self.begin_request(i, due);
                            self.drive(i);
                        } else {
                            wait = wait.min(due - now);
                        }
                    }
                }
            }
            self.turn(events, wait);
            if now.duration_since(last_check) >= Duration::from_millis(50) {
                last_check = now;
                self.check_timeouts();
            }
        }
    }

    /// Close every connection (no close_notify) and hand over the counts.
    fn finish(mut self, established: u64) -> WorkerResult {
        for s in &mut self.slots {
            if let Some(st) = s.stream.take() {
                st.close(false);
            }
        }
        WorkerResult {
            hist: self.hist,
            ops: self.ops,
            bytes: self.bytes,
            errors: self.errors,
            resumed: self.resumed,
            full: self.full,
            established,
            samples: self.samples,
        }
    }
}

impl Worker<'_> {
    /// One poll and the work it reveals (plus connections that yielded last time).
    fn turn(&mut self, events: &mut Events, wait: Duration) {
        let wait = if self.requeue.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        if let Err(e) = self.poll.poll(events, Some(wait)) {
            if e.kind() != ErrorKind::Interrupted {
                eprintln!("terminus: bench: poll failed: {e}");
                self.sh.stop.store(true, Ordering::Relaxed);
            }
            return;
        }
        let mut todo = std::mem::take(&mut self.requeue);
        todo.extend(events.iter().map(|e| e.token().0));
        todo.sort_unstable();
        todo.dedup();
        for i in todo {
            self.drive(i);
        }
    }

    fn start_connect(&mut self, i: usize) {
        let now = Instant::now();
        let s = &mut self.slots[i];
        s.t_op = now;
        s.t_act = now;
        s.sent = 0;
        s.got = 0;
        s.proven = false;
        match TcpStream::connect(self.sh.opts.target) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail(
                        i,
                        Fail::Connect,
                        &format_args!("cannot register a socket: {e}"),
                    );
                    return;
                }
                s.stream = Some(Stream::new(sock, None));
                s.st = St::Connecting;
            }
            Err(e) => {
                s.st = St::Connecting;
                self.fail(i, Fail::Connect, &e);
            }
        }
    }

    fn begin_request(&mut self, i: usize, intended: Instant) {
        let s = &mut self.slots[i];
        s.t_op = intended;
        s.t_act = Instant::now();
        s.sent = 0;
        s.got = 0;
        s.st = St::ReqSend;
        if let Some(iv) = self.interval {
            s.due = Some(intended + iv);
        }
        // No requeue: callers drive the slot (a requeued slot makes the next poll
        // non-blocking, and a closed loop would then spin the CPU it shares).
    }

    fn record(&mut self, since: Instant) {
        if self.measuring {
            let us = since.elapsed().as_micros() as u64;
            self.hist.saturating_record(us.max(1));
            self.ops += 1;
            self.sh.progress.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count a failure (keeping the first message of each kind) and close the slot.
    fn fail(&mut self, i: usize, why: Fail, detail: &dyn std::fmt::Display) {
        let e = &mut self.errors;
        let (count, kind) = match why {
            Fail::Connect => (&mut e.connect, "connect"),
            Fail::Handshake => (&mut e.handshake, "handshake"),
            Fail::Verify => (&mut e.verify, "verify"),
            Fail::Refused => (&mut e.refused, "refused"),
            Fail::Io => (&mut e.io, "io"),
            Fail::Timeout => (&mut e.timeout, "timeout"),
            Fail::Closed => (&mut e.closed, "closed"),
        };
        *count += 1;
        self.samples
            .entry(kind)
            .or_insert_with(|| detail.to_string());
        let s = &mut self.slots[i];
        let was = s.st;
        if let Some(mut st) = s.stream.take() {
            let _ = self.poll.registry().deregister(&mut st.sock);
            st.close(true);
        }
        if self.sh.opts.workload == Workload::Handshake {
            // Closed loop: the slot goes on with a new connection, through the
            // requeue so that an error loop cannot recurse.
            s.st = St::Free;
            if self.measuring {
                self.requeue.push(i);
            }
        } else {
            // Setup tracks the connections being opened.
            if matches!(was, St::Connecting | St::Handshaking | St::Confirm) {
                self.opening = self.opening.saturating_sub(1);
            }
            s.st = St::Dead;
        }
    }

    /// What kind of failure `e` (met in state `st`) is for slot `i`.
    fn classify(&self, i: usize, e: &io::Error, st: St) -> Fail {
        // Handshake done on the client's side, acceptance not shown yet: an alert or a
        // close now is the server's verdict on the client (see `proof.rs`).
        let awaiting = !self.slots[i].proven && !matches!(st, St::Connecting | St::Handshaking);
        let closed = matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        );
        match rustls_error(e) {
            Some(rustls::Error::AlertReceived(a)) if awaiting || proof::is_refusal(*a) => {
                Fail::Refused
            }
            Some(rustls::Error::InvalidCertificate(_)) => Fail::Verify,
            Some(_) => Fail::Handshake,
            None if st == St::Connecting => Fail::Connect,
            None if st == St::Handshaking => Fail::Handshake,
            None if closed && awaiting => Fail::Refused,
            None if closed => Fail::Closed,
            None => Fail::Io,
        }
    }

    fn check_timeouts(&mut self) {
        let limit = self.sh.opts.timeout;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if matches!(
                s.st,
                St::Connecting | St::Handshaking | St::Confirm | St::ReqSend | St::ReqRecv
            ) && s.t_act.elapsed() > limit
            {
                let st = s.st;
                if st == St::Confirm && !s.proven {
                    self.fail(
                        i,
                        Fail::Timeout,
                        &format_args!(
                            "Confirm: no session ticket or data from the server within \
                             {limit:?} to show it accepted the client"
                        ),
                    );
                } else {
                    self.fail(
                        i,
                        Fail::Timeout,
                        &format_args!("{st:?} took longer than {limit:?}"),
                    );
                }
            }
        }
    }

    /// The client's side of the handshake finished on slot `i`.
    fn handshaken(&mut self, i: usize) {
        let sh = self.sh;
        let o = &sh.opts;
        let s = &mut self.slots[i];
        let stream = s.stream.as_ref().expect("stream");
        let tls13 = stream
            .tls
            .as_ref()
            .is_some_and(|t| t.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
        // See `proof.rs`: only a TLS 1.3 server that asked for a client certificate
        // still has a verdict to give.
        if !(tls13 && stream.cert_requested) {
            self.accept(i);
        }
        let s = &mut self.slots[i];
        let proven = s.proven;
        match o.workload {
            // The echoed request shows acceptance.
            Workload::Handshake if o.size > 0 => s.st = St::ReqSend,
            Workload::Handshake => {
                let t = s.t_op;
                // --resume: TLS 1.3 tickets come after the handshake; wait for one.
                if !proven || (o.resume && tls13) {
                    s.st = St::Confirm;
                    s.t_act = Instant::now();
                }
                if proven {
                    self.record(t);
                    if self.slots[i].st != St::Confirm {
                        self.recycle(i);
                    }
                }
            }
            Workload::Idle | Workload::Bulk if !proven => {
                s.st = St::Confirm;
                s.t_act = Instant::now();
            }
            Workload::Idle | Workload::Bulk => {
                if o.workload == Workload::Idle {
                    let t = s.t_op;
                    self.record(t);
                }
                self.confirmed(i);
            }
            // The first echoed request shows acceptance.
            Workload::Rr => {
                s.st = St::Ready;
                self.opening -= 1;
            }
        }
    }

    /// The server has shown that it accepted slot `i`'s connection: count its
    /// handshake (once).
    fn accept(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.proven {
            return;
        }
        s.proven = true;
        let kind = s
            .stream
            .as_ref()
            .and_then(|x| x.tls.as_ref())
            .and_then(|t| t.handshake_kind());
        match kind {
            Some(rustls::HandshakeKind::Resumed) => self.resumed += 1,
            Some(_) => self.full += 1,
            None => {}
        }
    }

    /// Slot `i` is past its handshake and acceptance is not shown yet: did what it
    /// just read show it (a ticket or data)?
    fn observe(&mut self, i: usize) {
        let s = &self.slots[i];
        if s.proven
            || matches!(
                s.st,
                St::Free | St::Dead | St::Connecting | St::Handshaking | St::Confirm
            )
        {
            return;
        }
        if s.stream
            .as_ref()
            .is_some_and(|x| x.tickets > 0 || x.plain_in > 0)
        {
            self.accept(i);
        }
    }

    /// Slot `i` is accepted (and has its ticket if it waited for one): go on.
    fn confirmed(&mut self, i: usize) {
        match self.sh.opts.workload {
            Workload::Handshake => self.recycle(i),
            Workload::Idle => {
                self.slots[i].st = St::Holding;
                self.opening -= 1;
            }
            Workload::Bulk | Workload::Rr => {
                self.slots[i].st = St::Ready;
                self.opening -= 1;
            }
        }
    }

    /// Handshake workload: close this connection and start the next one.
    fn recycle(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if let Some(mut st) = s.stream.take() {
            let _ = self.poll.registry().deregister(&mut st.sock);
            // RST after close_notify: a FIN close would leave a TIME_WAIT port per
            // handshake here, and at thousands per second connect() slows to a crawl
            // searching the port range long before it runs out.
            st.close(true);
        }
        s.st = St::Free;
        if self.measuring {
            self.requeue.push(i);
        }
    }
}
