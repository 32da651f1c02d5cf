//! log: JSON lines written by a logging thread, fed through a bounded channel; and
//! the operational lines on stderr (startup, warnings, reload, drain).
//!
//! Owns: the access log thread and its output (stderr or a file it reopens on
//! request: SIGUSR1, for logrotate's rename-then-signal); the format of operational
//! lines (`[log] format`: text `TS LEVEL terminus: msg`, or one JSON object), set
//! once at start by `terminus run`, and the RFC 3339 timestamps both logs carry.
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
                                    Err(e) => crate::op_error!("access log: cannot reopen: {e}; still writing to the old file"),
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

/// Now as RFC 3339 UTC with microseconds (`2026-12-02T08:10:11.123456Z`), the `ts`
/// of both logs. Formatted by hand from the calendar fields: it runs on the worker
/// once per access line, and `time`'s formatting feature would be a second parser.
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

pub fn rfc3339(at: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Severity of an operational line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn text(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }

    fn json(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// 0: text (the default), 1: JSON. A process-wide setting because the lines come
/// from every thread (signals, reload, resolver, workers) and are rare.
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether operational lines are JSON (`[log] format = "json"`); an atomic load, so
/// a signal handler may ask (runtime::confine's SIGSYS line).
pub fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Set the operational line format (`[log] format`); called by `run` before its
/// first line.
pub fn set_format(format: crate::config::LogFormat) {
    JSON.store(
        format == crate::config::LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// One operational line as it is printed: `TS LEVEL terminus: msg`, or a JSON
/// object with `ts`, `level`, `msg` and the `fields` given (an object, or null).
pub fn format_line(
    json: bool,
    ts: &str,
    level: Level,
    msg: &str,
    fields: serde_json::Value,
) -> String {
    if !json {
        return format!("{ts} {} terminus: {msg}", level.text());
    }
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), ts.into());
    obj.insert("level".into(), level.json().into());
    obj.insert("msg".into(), msg.into());
    if let serde_json::Value::Object(extra) = fields {
        obj.extend(extra);
    }
    serde_json::Value::Object(obj).to_string()
}

/// Print one operational line on stderr in the configured format. One `write` per
/// line (stderr is unbuffered), so lines from several threads never interleave.
pub fn emit(level: Level, msg: std::fmt::Arguments<'_>, fields: serde_json::Value) {
    let json = JSON.load(std::sync::atomic::Ordering::Relaxed);
    let mut line = format_line(json, &now_rfc3339(), level, &msg.to_string(), fields);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `op_info!("...", args)`: an operational line at INFO (see [`emit`]).
#[macro_export]
macro_rules! op_info {
    ($($arg:tt)*) => {
        $crate::telemetry::log::emit($crate::telemetry::log::Level::Info, format_args!($($arg)*), serde_json::Value::Null)
    };
}

/// `op_warn!("...", args)`: an operational line at WARN.
#[macro_export]
macro_rules! op_warn {
    ($($arg:tt)*) => {
        $crate::telemetry::log::emit($crate::telemetry::log::Level::Warn, format_args!($($arg)*), serde_json::Value::Null)
    };
}

/// `op_error!("...", args)`: an operational line at ERROR.
#[macro_export]
macro_rules! op_error {
    ($($arg:tt)*) => {
        $crate::telemetry::log::emit($crate::telemetry::log::Level::Error, format_args!($($arg)*), serde_json::Value::Null)
    };
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
    fn rfc3339_has_microseconds_and_utc() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_161_097_416_472);
        assert_eq!(rfc3339(at), "2026-12-01T21:38:17.416472Z");
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
        let now = now_rfc3339();
        assert_eq!(now.len(), 27, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }

    #[test]
    fn operational_lines_as_text_and_json() {
        let ts = "2026-12-02T08:00:00.000001Z";
        assert_eq!(
            format_line(
                false,
                ts,
                Level::Warn,
                "disk \"x\" full",
                serde_json::Value::Null
            ),
            "2026-12-02T08:00:00.000001Z WARN terminus: disk \"x\" full"
        );
        let j = format_line(
            true,
            ts,
            Level::Info,
            "starting",
            serde_json::json!({"workers": 2}),
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": ts, "level": "info", "msg": "starting", "workers": 2})
        );
        assert!(!j.contains('\n'));
    }

    #[test]
    fn off_sends_nothing() {
        let sink = LogSink::start(&AccessLog::Off).unwrap();
        assert!(!sink.enabled());
        sink.send_line("{}".into());
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    }
}
