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
//! upstreams (their names resolved again: one that does not resolve fails the reload
//! like a bad file; addresses that stay keep their passive health and entries their
//! resolve-error counts), `[resolver]`, timeouts and limits apply live (all listeners
//! or none); what needs a
//! restart (listen addresses, listeners added or removed, `[runtime]`, `[admin]`,
//! `[log] access`) is reported as such and left as it runs; `[log] format` applies
//! at once, and `reuse_port_with_other_instances` only matters at start.
#![forbid(unsafe_code)]

use crate::config::{Config, Listener};
use crate::runtime::listener::{ListenerLive, ListenerShared};
use crate::runtime::settings::ListenerSettings;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default, Debug)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub error: AtomicU64,
    /// The last reload attempt failed (a bad file is still in place).
    pub last_failed: AtomicBool,
    /// Unix time (ms) of the last successful load: startup, then each good reload.
    pub last_success_unix_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ReloadStats {
    /// Stats of a process that just loaded its files (a successful load, now).
    pub fn started_now() -> ReloadStats {
        let s = ReloadStats::default();
        s.last_success_unix_ms.store(unix_ms(), Ordering::Relaxed);
        s
    }

    fn record_ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(false, Ordering::Relaxed);
        self.last_success_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
    }

    fn record_error(&self) {
        self.error.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(true, Ordering::Relaxed);
    }
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
    let tls = l.tls();
    // Workload API material counts as one more file, changed at each update.
    if tls.uses_workload_api() {
        crate::tls::workload::generation().hash(&mut h);
    }
    for path in crate::tls::listener_files(&tls) {
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
            match ListenerLive::build(ListenerSettings::from_config(
                &self.cfg.listeners[i],
                &self.cfg.resolver,
            )) {
                Ok(live) => {
                    // The config was resolved earlier: keep what the resolver found since.
                    live.upstreams
                        .adopt(&self.listeners[i].live.load().upstreams, true);
                    for w in &live.tls.warnings {
                        crate::op_warn!("reload: listener {name}: {w}");
                    }
                    live.tls
                        .adopt_chain_cache_counts(&self.listeners[i].live.load().tls);
                    self.listeners[i].live.store(Arc::new(live));
                    self.stats.record_ok();
                    crate::op_info!("reload: listener {name}: new certificates and keys in use");
                }
                Err(e) => {
                    self.stats.record_error();
                    crate::op_error!("reload: listener {name}: {e}; keeping the material in use");
                }
            }
        }
    }

    /// SIGHUP: re-read the config file and every file it names.
    pub fn reload_config(&mut self) {
        crate::runtime::confine::test_violation();
        let new = match Config::load(&self.cfg.source) {
            Ok(c) => c,
            Err(e) => {
                self.stats.record_error();
                crate::op_error!("reload: {e}; keeping the running configuration");
                return;
            }
        };
        crate::telemetry::log::set_format(new.log.format);
        for msg in restart_needed(&self.cfg, &new) {
            crate::op_warn!("reload: {msg} needs a restart; still running with the old value");
        }
        // Listeners are matched by name; added or removed ones need a restart.
        let mut built = Vec::new();
        for (i, shared) in self.listeners.iter().enumerate() {
            let l = new
                .listeners
                .iter()
                .find(|l| l.name == shared.name)
                .unwrap_or(&self.cfg.listeners[i]);
            match ListenerLive::build(ListenerSettings::from_config(l, &new.resolver)) {
                Ok(live) => built.push((l.clone(), live)),
                Err(e) => {
                    self.stats.record_error();
                    crate::op_error!(
                        "reload: listener {}: {e}; keeping the running configuration",
                        shared.name
                    );
                    return;
                }
            }
        }
        let mut kept = self.cfg.clone();
        for (i, (l, live)) in built.into_iter().enumerate() {
            for w in &live.tls.warnings {
                crate::op_warn!("reload: listener {}: {w}", l.name);
            }
            self.prints[i] = fingerprint(&l).unwrap_or(0);
            live.tls
                .adopt_chain_cache_counts(&self.listeners[i].live.load().tls);
            // Just resolved: new addresses, but the health and error counts of what stays.
            live.upstreams
                .adopt(&self.listeners[i].live.load().upstreams, false);
            self.listeners[i].live.store(Arc::new(live));
            kept.listeners[i] = l;
        }
        kept.resolver = new.resolver.clone();
        kept.log.format = new.log.format;
        self.cfg = kept;
        self.stats.record_ok();
        crate::op_info!(
            "reload: configuration {} applied",
            self.cfg.source.display()
        );
    }
}

/// What differs between the running and the new config but cannot change live.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // Only read at start, so a change is no reason to warn (the next start uses it).
    let start_only = crate::config::Runtime {
        reuse_port_with_other_instances: old.runtime.reuse_port_with_other_instances,
        ..new.runtime.clone()
    };
    if old.runtime != start_only {
        out.push("[runtime]".to_string());
    }
    if old.admin != new.admin {
        out.push("[admin]".to_string());
    }
    // `format` applies at once (reload_config sets it); the access log target needs
    // a restart.
    if old.log.access != new.log.access {
        out.push("[log] access".to_string());
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

/// What the reloader is asked to do besides its periodic poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: re-read the config file.
    Config,
    /// New Workload API material (`ops::spiffe`): poll now, so the listeners built
    /// from it are rebuilt at once, the way a changed file is.
    Poll,
}

/// Run the reloader on its own thread: poll every `interval`, and on each message.
/// Returns the trigger.
pub fn spawn(
    mut r: Reloader,
    interval: Duration,
) -> std::io::Result<crossbeam_channel::Sender<Trigger>> {
    let (tx, rx) = crossbeam_channel::unbounded::<Trigger>();
    std::thread::Builder::new()
        .name("terminus-reload".into())
        .spawn(move || loop {
            match rx.recv_timeout(interval) {
                Ok(Trigger::Config) => r.reload_config(),
                Ok(Trigger::Poll) => r.poll(),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => r.poll(),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every key written out, so each case changes exactly one line.
    const BASE: &str = r#"
[runtime]
workers = 1
pin_cpus = true
ring_entries = 4096
sqpoll = false
drain_timeout_ms = 30000
reload_interval_ms = 5000
recv_buffers = 1024
recv_buffer_size = 16384
max_buffered_bytes_per_worker = 536870912

[admin]
listen = "127.0.0.1:9100"
max_connections = 64
timeout_ms = 5000
snapshot_interval_ms = 250

[log]
access = "stderr"

[[listeners]]
name = "edge"
listen = "127.0.0.1:8443"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:8080"]
alpn = ["h2"]
handshake_timeout_ms = 10000
idle_timeout_ms = 300000
connect_timeout_ms = 5000
max_connections = 100000
backlog = 4096
max_buffered_bytes = 262144
session_cache = 16384
tls13_tickets = 1
ticket_lifetime_s = 21600
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/terminus/config.toml")).unwrap()
    }

    /// What `restart_needed` says when `from` in BASE becomes `to`.
    fn after(from: &str, to: &str) -> Vec<String> {
        assert_eq!(
            BASE.matches(from).count(),
            1,
            "{from:?} must be in BASE once"
        );
        restart_needed(&parse(BASE), &parse(&BASE.replace(from, to)))
    }

    #[test]
    fn the_same_config_needs_nothing() {
        assert!(restart_needed(&parse(BASE), &parse(BASE)).is_empty());
    }

    #[test]
    fn runtime_admin_and_log_need_a_restart() {
        for (from, to, want) in [
            ("\nworkers = 1", "\nworkers = 2", "[runtime]"),
            ("\npin_cpus = true", "\npin_cpus = false", "[runtime]"),
            (
                "\npin_cpus = true",
                "\npin_cpus = true\ncpus = [0]",
                "[runtime]",
            ),
            (
                "\nring_entries = 4096",
                "\nring_entries = 1024",
                "[runtime]",
            ),
            ("\nsqpoll = false", "\nsqpoll = true", "[runtime]"),
            (
                "\ndrain_timeout_ms = 30000",
                "\ndrain_timeout_ms = 1",
                "[runtime]",
            ),
            (
                "\nreload_interval_ms = 5000",
                "\nreload_interval_ms = 1",
                "[runtime]",
            ),
            ("\nrecv_buffers = 1024", "\nrecv_buffers = 512", "[runtime]"),
            (
                "\nrecv_buffer_size = 16384",
                "\nrecv_buffer_size = 8192",
                "[runtime]",
            ),
            (
                "\nmax_buffered_bytes_per_worker = 536870912",
                "\nmax_buffered_bytes_per_worker = 1048576",
                "[runtime]",
            ),
            ("\"127.0.0.1:9100\"", "\"127.0.0.1:9101\"", "[admin]"),
            (
                "\nmax_connections = 64\n",
                "\nmax_connections = 1\n",
                "[admin]",
            ),
            ("\ntimeout_ms = 5000", "\ntimeout_ms = 1", "[admin]"),
            (
                "\nsnapshot_interval_ms = 250",
                "\nsnapshot_interval_ms = 1",
                "[admin]",
            ),
            (
                "[admin]\nlisten = \"127.0.0.1:9100\"\nmax_connections = 64\ntimeout_ms = 5000\n\
                 snapshot_interval_ms = 250\n",
                "",
                "[admin]",
            ),
            ("\"stderr\"", "\"off\"", "[log] access"),
            ("\"stderr\"", "\"access.log\"", "[log] access"),
        ] {
            assert_eq!(after(from, to), [want], "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn log_format_and_the_handover_switch_need_no_restart() {
        assert!(after(
            "access = \"stderr\"",
            "access = \"stderr\"\nformat = \"json\""
        )
        .is_empty());
        assert!(after(
            "\nsqpoll = false",
            "\nsqpoll = false\nreuse_port_with_other_instances = true"
        )
        .is_empty());
    }

    #[test]
    fn listen_address_backlog_and_the_listener_set_need_a_restart() {
        let moved = "listener edge: listen/backlog";
        assert_eq!(after("\"127.0.0.1:8443\"", "\"127.0.0.1:9443\""), [moved]);
        assert_eq!(after("\nbacklog = 4096", "\nbacklog = 16"), [moved]);
        assert_eq!(
            after("\"edge\"", "\"edge2\""),
            ["removing listener edge", "adding listener edge2"]
        );
        let second = BASE[BASE.find("[[listeners]]").unwrap()..]
            .replace("\"edge\"", "\"second\"")
            .replace("8443", "8444");
        let two = format!("{BASE}{second}");
        assert_eq!(
            restart_needed(&parse(BASE), &parse(&two)),
            ["adding listener second"]
        );
        assert_eq!(
            restart_needed(&parse(&two), &parse(BASE)),
            ["removing listener second"]
        );
    }

    /// Everything a listener serves with is rebuilt live (`ListenerLive`).
    #[test]
    fn listener_material_and_limits_reload_hot() {
        for (from, to) in [
            ("\"server.pem\"", "\"new.pem\""),
            ("\"server.key\"", "\"new.key\""),
            (
                "[\"127.0.0.1:8080\"]",
                "[\"127.0.0.1:8081\", \"127.0.0.1:8082\"]",
            ),
            ("[\"h2\"]", "[\"http/1.1\"]"),
            (
                "\nhandshake_timeout_ms = 10000",
                "\nhandshake_timeout_ms = 1",
            ),
            ("\nidle_timeout_ms = 300000", "\nidle_timeout_ms = 1"),
            ("\nconnect_timeout_ms = 5000", "\nconnect_timeout_ms = 1"),
            (
                "[\"127.0.0.1:8080\"]",
                "[\"localhost:8080\", \"[::1]:8080\"]",
            ),
            (
                "\nconnect_timeout_ms = 5000",
                "\nconnect_timeout_ms = 5000\nresolve_interval_ms = 100",
            ),
            (
                "\nconnect_timeout_ms = 5000",
                "\nconnect_timeout_ms = 5000\nupstream_backoff_ms = 0",
            ),
            (
                "\nconnect_timeout_ms = 5000",
                "\nconnect_timeout_ms = 5000\nupstream_backoff_max_ms = 60000",
            ),
            ("[log]", "[resolver]\nhosts_file = \"hosts\"\n\n[log]"),
            ("\nmax_connections = 100000", "\nmax_connections = 1"),
            (
                "\nmax_buffered_bytes = 262144",
                "\nmax_buffered_bytes = 16384",
            ),
            ("\nsession_cache = 16384", "\nsession_cache = 0"),
            ("\ntls13_tickets = 1", "\ntls13_tickets = 0"),
            ("\nticket_lifetime_s = 21600", "\nticket_lifetime_s = 60"),
            (
                "\ntls13_tickets = 1",
                "\ntls13_tickets = 1\nproxy_protocol = \"v2\"",
            ),
            (
                "\ntls13_tickets = 1",
                "\ntls13_tickets = 1\nticket_key_file = \"t.key\"",
            ),
            (
                "ticket_lifetime_s = 21600\n",
                "ticket_lifetime_s = 21600\n[[listeners.sni]]\nserver_names = [\"a.example\"]\n\
                 cert = \"a.pem\"\nkey = \"a.key\"\n",
            ),
            (
                "ticket_lifetime_s = 21600\n",
                "ticket_lifetime_s = 21600\n[listeners.client_auth]\nmode = \"require\"\n\
                 ca = [\"ca.pem\"]\nallow = [\"cn:billing\"]\n",
            ),
            (
                "ticket_lifetime_s = 21600\n",
                "ticket_lifetime_s = 21600\n[listeners.upstream_tls]\nca = [\"up.pem\"]\n\
                 server_name = \"backend.internal\"\n",
            ),
        ] {
            assert_eq!(after(from, to), Vec::<String>::new(), "{from:?} -> {to:?}");
        }
    }
}
