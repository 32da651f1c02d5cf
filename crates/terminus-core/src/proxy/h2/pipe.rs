//! pipe: the in-memory transport the `h2` codec runs over, and the waker it is
//! polled with.
//!
//! Owns [`Pipe`] (one side's bytes in and out, shared between the codec, which owns
//! its [`PipeIo`] end, and the connection, which holds the other) and [`noop_cx`].
//! The codec reads what the `Conn` decrypted and writes what the `Conn` will seal:
//! reads return `Pending` when nothing waits (the `Conn` polls again when bytes
//! arrive), writes return `Pending` once `limit` bytes wait to be sealed (the codec
//! then stops reading too, so a peer that does not read what it is sent, pongs and
//! SETTINGS acks included, stops being read: its memory is bounded here).
//!
//! I/O contract: none; no clock. The waker wakes nothing: the `Conn` polls every
//! future of the codec after each input, so no wake-up is ever needed.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes between one peer and its codec.
#[derive(Debug, Default)]
pub struct PipeBufs {
    /// From the peer, not read by the codec yet (from `rx_at` on).
    pub rx: Vec<u8>,
    rx_at: usize,
    /// The peer finished sending.
    pub eof: bool,
    /// From the codec, for the peer.
    pub tx: Vec<u8>,
    /// `tx` accepts no more once it holds this many bytes.
    limit: usize,
}

impl PipeBufs {
    /// Move `input` in (emptying it): the codec reads it at its next poll.
    pub fn feed(&mut self, input: &mut Vec<u8>) {
        if self.rx_at == self.rx.len() {
            self.rx.clear();
            self.rx_at = 0;
            std::mem::swap(&mut self.rx, input);
        } else {
            self.rx.append(input);
        }
        if self.rx.is_empty() {
            // Idle = no memory.
            self.rx = Vec::new();
        }
    }

    /// Whether the codec's writes wait for room.
    pub fn tx_full(&self) -> bool {
        self.tx.len() >= self.limit
    }

    /// Bytes not read by the codec yet.
    pub fn unread(&self) -> usize {
        self.rx.len() - self.rx_at
    }
}

/// One side's shared buffers (the codec's I/O is the other handle).
#[derive(Debug, Clone)]
pub struct Pipe(Arc<Mutex<PipeBufs>>);

impl Pipe {
    pub fn new(limit: usize) -> Pipe {
        Pipe(Arc::new(Mutex::new(PipeBufs {
            limit,
            ..PipeBufs::default()
        })))
    }

    /// The codec's end.
    pub fn io(&self) -> PipeIo {
        PipeIo(self.0.clone())
    }

    pub fn lock(&self) -> MutexGuard<'_, PipeBufs> {
        // Only this thread ever holds it; a panic elsewhere cannot poison it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The codec's end of a [`Pipe`].
#[derive(Debug)]
pub struct PipeIo(Arc<Mutex<PipeBufs>>);

impl PipeIo {
    fn bufs(&self) -> MutexGuard<'_, PipeBufs> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PipeBufs {
    /// Hand up to `max` unread bytes to `put` and consume them. Ready(()) with
    /// nothing put is EOF; Pending: nothing waits (the `Conn` polls again when
    /// bytes arrive).
    fn read_with(&mut self, max: usize, put: impl FnOnce(&[u8])) -> Poll<std::io::Result<()>> {
        let n = self.unread().min(max);
        if n == 0 {
            return if self.eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let at = self.rx_at;
        put(&self.rx[at..at + n]);
        self.rx_at += n;
        if self.rx_at == self.rx.len() {
            self.rx = Vec::new();
            self.rx_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Take what fits of `buf` for the peer; Pending once `limit` bytes wait.
    fn write(&mut self, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let room = self.limit.saturating_sub(self.tx.len());
        if room == 0 {
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        self.tx.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
}

// tokio's I/O traits for the h2 codec, hyper's for its HTTP/1 client: the same pipe.
impl AsyncRead for PipeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let max = buf.remaining();
        self.bufs().read_with(max, |b| buf.put_slice(b))
    }
}

impl hyper::rt::Read for PipeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let max = buf.remaining();
        self.bufs().read_with(max, |b| buf.put_slice(b))
    }
}

// tokio's AsyncWrite and hyper's Write declare the same three methods.
macro_rules! pipe_write {
    ($($io_trait:path),+) => {$(
        impl $io_trait for PipeIo {
            fn poll_write(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                self.bufs().write(buf)
            }

            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
    )+};
}
pipe_write!(AsyncWrite, hyper::rt::Write);

struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// A context whose waker does nothing (see the module doc).
pub fn noop_waker() -> Waker {
    Waker::from(Arc::new(Noop))
}
