//! log: JSON lines written by a logging thread, fed through a bounded channel.
//!
//! Workers never wait on it: when the channel is full the line is dropped and
//! counted. `access = "off"` builds no channel and no thread, so `enabled()` is false
//! and callers skip even formatting the line.
#![forbid(unsafe_code)]

use crate::config::AccessLog;
use crossbeam_channel::{Sender, TrySendError};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Lines waiting for the logging thread before new ones are dropped.
const CAPACITY: usize = 64 * 1024;

/// Lines reach the file at most this long after they were queued. Flushing on every
/// idle moment instead cost one write(2) per connection at a few thousand
/// connections/s (measured: most of the access log's CPU).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone, Default)]
pub struct LogSink {
    tx: Option<Sender<String>>,
    pub dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A file target is appended to (created if missing); the error names it.
    pub fn start(target: &AccessLog) -> std::io::Result<LogSink> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(LogSink::default()),
            AccessLog::Stderr => Box::new(std::io::stderr()),
            AccessLog::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                    })?,
            ),
        };
        let (tx, rx) = crossbeam_channel::bounded::<String>(CAPACITY);
        std::thread::Builder::new()
            .name("terminus-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut due: Option<std::time::Instant> = None;
                loop {
                    let got = match due {
                        None => rx.recv().map_err(|_| true),
                        Some(t) => rx
                            .recv_deadline(t)
                            .map_err(|e| e == crossbeam_channel::RecvTimeoutError::Disconnected),
                    };
                    match got {
                        Ok(line) => {
                            let _ = w.write_all(line.as_bytes());
                            let _ = w.write_all(b"\n");
                            due.get_or_insert_with(|| std::time::Instant::now() + FLUSH_EVERY);
                        }
                        // Deadline passed: write out what is buffered.
                        Err(false) => {
                            let _ = w.flush();
                            due = None;
                        }
                        Err(true) => break,
                    }
                }
                let _ = w.flush();
            })?;
        Ok(LogSink {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue one already formatted line (no newline); never blocks.
    pub fn send_line(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Seconds since the Unix epoch, for the `ts` field.
pub fn now_ts() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_as_json() {
        let p = std::env::temp_dir().join(format!("terminus-log-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let sink = LogSink::start(&AccessLog::File(p.clone())).unwrap();
        assert!(sink.enabled());
        sink.send_line(serde_json::json!({"event": "x", "n": 1}).to_string());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let text = loop {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            if t.ends_with('\n') || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::yield_now();
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "x");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn off_sends_nothing() {
        let sink = LogSink::start(&AccessLog::Off).unwrap();
        assert!(!sink.enabled());
        sink.send_line("{}".into());
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    }
}
