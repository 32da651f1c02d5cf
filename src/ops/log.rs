//! log: JSON lines written by a logging thread, fed through a bounded channel.
//!
//! Owns: the access log thread and its output (stderr or a file it reopens on
//! request: SIGUSR1, for logrotate's rename-then-signal).
//! I/O contract: workers never wait on it: when the channel is full the line is
//! dropped and counted. `access = "off"` builds no channel and no thread, so
//! `enabled()` is false and callers skip even formatting the line. A reopen travels
//! the same channel as the lines, so every line queued before it lands in the old
//! file and every line after it in the new one, whole.
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

/// What the logging thread receives.
enum Msg {
    Line(String),
    /// Flush, close the file and open its path again (after logrotate renamed it).
    Reopen,
}

#[derive(Clone, Default)]
pub struct LogSink {
    tx: Option<Sender<Msg>>,
    pub dropped: Arc<AtomicU64>,
}

/// Open an access log file for appending (created if missing); the error names it.
fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl LogSink {
    /// A file target is appended to (created if missing); the error names it.
    pub fn start(target: &AccessLog) -> std::io::Result<LogSink> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(LogSink::default()),
            AccessLog::Stderr => Box::new(std::io::stderr()),
            AccessLog::File(path) => Box::new(open_file(path)?),
        };
        let path = match target {
            AccessLog::File(p) => Some(p.clone()),
            _ => None,
        };
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(CAPACITY);
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
                        Ok(Msg::Line(line)) => {
                            let _ = w.write_all(line.as_bytes());
                            let _ = w.write_all(b"\n");
                            due.get_or_insert_with(|| std::time::Instant::now() + FLUSH_EVERY);
                        }
                        Ok(Msg::Reopen) => {
                            let _ = w.flush();
                            due = None;
                            if let Some(p) = &path {
                                match open_file(p) {
                                    Ok(f) => {
                                        w = std::io::BufWriter::with_capacity(
                                            64 * 1024,
                                            Box::new(f),
                                        )
                                    }
                                    // Keep writing to the old file rather than lose lines.
                                    Err(e) => eprintln!("terminus: access log: cannot reopen: {e}"),
                                }
                            }
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

    /// Ask the logging thread to reopen its file (SIGUSR1); lines queued before this
    /// call go to the old file. Waits for room in the channel (it never drops the
    /// request); a no-op for `off` and `stderr`.
    pub fn reopen(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Reopen);
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue one already formatted line (no newline); never blocks.
    pub fn send_line(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(Msg::Line(line)) {
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

    /// Poll (bounded) until `p` holds `lines` complete lines.
    fn wait_lines(p: &std::path::Path, lines: usize) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let t = std::fs::read_to_string(p).unwrap_or_default();
            if t.lines().count() >= lines && t.ends_with('\n')
                || std::time::Instant::now() > deadline
            {
                return t;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn reopen_after_rename_writes_a_fresh_file() {
        let dir = std::env::temp_dir().join(format!("terminus-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("access.log");
        let sink = LogSink::start(&AccessLog::File(p.clone())).unwrap();
        sink.send_line("{\"n\":1}".into());
        sink.send_line("{\"n\":2}".into());
        // Rename while the thread may still hold lines: they follow the open file.
        std::fs::rename(&p, dir.join("access.log.1")).unwrap();
        sink.send_line("{\"n\":3}".into());
        sink.reopen();
        sink.send_line("{\"n\":4}".into());
        let new = wait_lines(&p, 1);
        let old = wait_lines(&dir.join("access.log.1"), 3);
        assert_eq!(old, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n");
        assert_eq!(new, "{\"n\":4}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn off_sends_nothing() {
        let sink = LogSink::start(&AccessLog::Off).unwrap();
        assert!(!sink.enabled());
        sink.send_line("{}".into());
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    }
}
