//! reload: hot reload of certificates, keys, CA bundles, CRLs and ticket keys, and of
//! the config file on SIGHUP.
//!
//! Files are polled every `reload_interval_ms`: each listener's files are hashed by
//! content (paths are followed through symlinks at every poll, so the atomic `..data`
//! symlink swap of Kubernetes secret volumes and cert-manager is seen like a plain
//! rewrite, and an mtime-preserving copy is not missed). A change rebuilds the
//! listener's whole [`ListenerLive`] off the data path and swaps it in: new
//! connections use it at once, live connections keep the material they started with.
//! Invalid new material (unparsable, key not matching the cert, missing file) keeps
//! the old material serving, counts `terminus_config_reloads_total{result="error"}`
//! and logs the file and reason; the same content is not retried until it changes.
//!
//! SIGHUP re-reads the config file too: certificates, CAs, CRLs, allow-lists,
//! upstreams, timeouts and limits apply live (all listeners or none); what needs a
//! restart (listen addresses, listeners added or removed, `[runtime]`, `[admin]`,
//! `[log]`) is reported as such and left as it runs.
#![forbid(unsafe_code)]

use crate::config::{Config, Listener};
use crate::runtime::worker::{ListenerLive, ListenerShared};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default, Debug)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub error: AtomicU64,
}

pub struct Reloader {
    cfg: Config,
    listeners: Vec<Arc<ListenerShared>>,
    /// Content fingerprint per listener, as last attempted.
    prints: Vec<u64>,
    stats: Arc<ReloadStats>,
}

/// Hash of every file the listener is built from (content, or the read error).
/// None when the process is out of descriptors: that says nothing about the files,
/// so the poll is skipped rather than counted as a broken reload.
fn fingerprint(l: &Listener) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in crate::tls::listener_files(l) {
        path.hash(&mut h);
        match std::fs::read(&path) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => return None,
            Err(e) => e.kind().hash(&mut h),
        }
    }
    Some(h.finish())
}

impl Reloader {
    pub fn new(cfg: Config, listeners: Vec<Arc<ListenerShared>>, stats: Arc<ReloadStats>) -> Self {
        let prints = cfg
            .listeners
            .iter()
            .map(|l| fingerprint(l).unwrap_or(0))
            .collect();
        Reloader {
            cfg,
            listeners,
            prints,
            stats,
        }
    }

    /// Rebuild the listeners whose files changed since the last attempt.
    pub fn poll(&mut self) {
        for i in 0..self.listeners.len() {
            let Some(fp) = fingerprint(&self.cfg.listeners[i]) else {
                continue;
            };
            if fp == self.prints[i] {
                continue;
            }
            self.prints[i] = fp;
            let name = &self.listeners[i].name;
            match ListenerLive::build(&self.cfg.listeners[i]) {
                Ok(live) => {
                    for w in &live.tls.warnings {
                        eprintln!("terminus: reload: listener {name}: warning: {w}");
                    }
                    self.listeners[i].live.store(Arc::new(live));
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "terminus: reload: listener {name}: new certificates and keys in use"
                    );
                }
                Err(e) => {
                    self.stats.error.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "terminus: reload: listener {name}: {e}; keeping the material in use"
                    );
                }
            }
        }
    }

    /// SIGHUP: re-read the config file and every file it names.
    pub fn reload_config(&mut self) {
        let new = match Config::load(&self.cfg.source) {
            Ok(c) => c,
            Err(e) => {
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                eprintln!("terminus: reload: {e}; keeping the running configuration");
                return;
            }
        };
        for msg in restart_needed(&self.cfg, &new) {
            eprintln!("terminus: reload: {msg} needs a restart; still running with the old value");
        }
        // Listeners are matched by name; added or removed ones need a restart.
        let mut built = Vec::new();
        for (i, shared) in self.listeners.iter().enumerate() {
            let l = new
                .listeners
                .iter()
                .find(|l| l.name == shared.name)
                .unwrap_or(&self.cfg.listeners[i]);
            match ListenerLive::build(l) {
                Ok(live) => built.push((l.clone(), live)),
                Err(e) => {
                    self.stats.error.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "terminus: reload: listener {}: {e}; keeping the running configuration",
                        shared.name
                    );
                    return;
                }
            }
        }
        let mut kept = self.cfg.clone();
        for (i, (l, live)) in built.into_iter().enumerate() {
            for w in &live.tls.warnings {
                eprintln!("terminus: reload: listener {}: warning: {w}", l.name);
            }
            self.prints[i] = fingerprint(&l).unwrap_or(0);
            self.listeners[i].live.store(Arc::new(live));
            kept.listeners[i] = l;
        }
        self.cfg = kept;
        self.stats.ok.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "terminus: reload: configuration {} applied",
            self.cfg.source.display()
        );
    }
}

/// What differs between the running and the new config but cannot change live.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.runtime != new.runtime {
        out.push("[runtime]".to_string());
    }
    if old.admin != new.admin {
        out.push("[admin]".to_string());
    }
    if old.log != new.log {
        out.push("[log]".to_string());
    }
    for l in &old.listeners {
        match new.listeners.iter().find(|n| n.name == l.name) {
            None => out.push(format!("removing listener {}", l.name)),
            Some(n) if n.listen != l.listen || n.backlog != l.backlog => {
                out.push(format!("listener {}: listen/backlog", l.name))
            }
            Some(_) => {}
        }
    }
    for n in &new.listeners {
        if !old.listeners.iter().any(|l| l.name == n.name) {
            out.push(format!("adding listener {}", n.name));
        }
    }
    out
}

/// Run the reloader on its own thread: poll every `interval`, reload the config on
/// each message (SIGHUP). Returns the trigger.
pub fn spawn(
    mut r: Reloader,
    interval: Duration,
) -> std::io::Result<crossbeam_channel::Sender<()>> {
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    std::thread::Builder::new()
        .name("terminus-reload".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Ok(()) => r.reload_config(),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => r.poll(),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        })?;
    Ok(tx)
}
