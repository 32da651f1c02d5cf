//! A non-blocking (mio) TCP stream with optional rustls on top, for the bench client
//! and the built-in backend: application reads/writes return `WouldBlock` when the
//! socket does, so one event loop can drive thousands of them.
#![forbid(unsafe_code)]

use mio::net::TcpStream;
use std::io::{self, ErrorKind, Read, Write};

pub struct Stream {
    pub sock: TcpStream,
    pub tls: Option<rustls::Connection>,
    /// Ciphertext bytes read from the socket so far (TLS only).
    pub tls_bytes_in: u64,
    /// Application bytes read so far.
    pub plain_in: u64,
    /// Bench clients: TLS 1.3 session tickets received, and whether the server asked
    /// for a client certificate (see `proof.rs`).
    pub tickets: u64,
    pub cert_requested: bool,
}

/// An `io::Error` carrying the rustls error, so callers can classify it.
fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

/// The rustls error inside an `io::Error` made by this module, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

impl Stream {
    pub fn new(sock: TcpStream, tls: Option<rustls::Connection>) -> Stream {
        Stream {
            sock,
            tls,
            tls_bytes_in: 0,
            plain_in: 0,
            tickets: 0,
            cert_requested: false,
        }
    }

    /// Write out buffered TLS records. `Err(WouldBlock)` while some remain.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.sock) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// `process_new_packets`, noting the tickets and certificate requests it handled
    /// for this connection (the counters are this thread's; see `proof.rs`).
    fn process(&mut self) -> Result<(), rustls::Error> {
        let tls = self.tls.as_mut().expect("TLS stream");
        let before = super::proof::seen();
        let r = tls.process_new_packets().map(|_| ());
        let after = super::proof::seen();
        self.tickets += after.tickets - before.tickets;
        self.cert_requested |= after.cert_requests > before.cert_requests;
        r
    }

    /// Read ciphertext once and process it. `Ok(false)` at EOF.
    fn read_tls_once(&mut self) -> io::Result<bool> {
        loop {
            let tls = self.tls.as_mut().expect("TLS stream");
            match tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    // Let rustls note the EOF (close_notify vs truncation).
                    self.process().map_err(tls_err)?;
                    return Ok(false);
                }
                Ok(n) => {
                    self.tls_bytes_in += n as u64;
                    if let Err(e) = self.process() {
                        let tls = self.tls.as_mut().expect("TLS stream");
                        // Send our alert before giving up, so the peer learns why.
                        let _ = tls.write_tls(&mut self.sock);
                        return Err(tls_err(e));
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Drive the TLS handshake: `Ok(true)` once done (and the last flight written),
    /// `Err(WouldBlock)`-free: `Ok(false)` means wait for the socket.
    pub fn handshake(&mut self) -> io::Result<bool> {
        if self.tls.is_none() {
            return Ok(true);
        }
        loop {
            match self.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            if !self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                return Ok(true);
            }
            match self.read_tls_once() {
                Ok(true) => {}
                Ok(false) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "peer closed during the handshake",
                    ))
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Application data in. `Ok(0)` is a clean end (FIN, or close_notify over TLS);
    /// a TLS peer that closes without close_notify is `UnexpectedEof`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return loop {
                match self.sock.read(buf) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Ok(n) => {
                        self.plain_in += n as u64;
                        break Ok(n);
                    }
                    r => break r,
                }
            };
        }
        loop {
            let tls = self.tls.as_mut().expect("TLS stream");
            match tls.reader().read(buf) {
                Ok(n) => {
                    self.plain_in += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.read_tls_once()? {
                // EOF noted: the reader now reports Ok(0) or UnexpectedEof.
                let tls = self.tls.as_mut().expect("TLS stream");
                return match tls.reader().read(buf) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        Err(ErrorKind::UnexpectedEof.into())
                    }
                    Ok(n) => {
                        self.plain_in += n as u64;
                        Ok(n)
                    }
                    r => r,
                };
            }
            // Post-handshake messages (tickets, key updates) may need an answer.
            match self.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Application data out; `Err(WouldBlock)` when nothing could be taken.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tls.is_none() {
            return loop {
                match self.sock.write(data) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    r => break r,
                }
            };
        }
        loop {
            let tls = self.tls.as_mut().expect("TLS stream");
            // rustls buffers at most its buffer limit (64 KiB by default) and takes
            // what fits: backpressure without copying the whole request.
            let n = tls.writer().write(data)?;
            match self.flush() {
                Ok(()) if n == 0 => continue,
                Ok(()) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock && n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Best-effort close_notify (TLS) and close. `reset` closes with RST (SO_LINGER
    /// 0) so a connect/close loop does not fill the port range with TIME_WAIT.
    pub fn close(mut self, reset: bool) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = self.flush();
        }
        if reset {
            let _ = socket2::SockRef::from(&self.sock).set_linger(Some(std::time::Duration::ZERO));
        }
    }
}
