//! `terminus check`: validate config, certs and keys; print every problem.
//! `--host` (src/ops/hostcheck.rs) checks the machine instead or as well.
//!
//! One pass finds everything `run` would refuse: every config problem (a `listen` or
//! `upstreams` name that does not resolve among them, placed at its line by config
//! loading), the files of
//! every listener (also of a listener whose config has problems), `runtime.cpus`
//! against the affinity mask, `log.access`, and whether each listen address and the
//! admin address can be bound, and with `[runtime] user`, whether that user can open
//! every file `run` reads again after switching to it. Certificates that peers refuse now (expired, not yet
//! valid) are problems here, though `run` only warns about them (it serves them, so
//! that a renewal picked up by hot reload fixes a running instance).
//!
//! Addresses are tried the way `run` binds them: listeners with SO_REUSEADDR and
//! SO_REUSEPORT, the admin address with SO_REUSEADDR only. A socket is bound and
//! closed, never listened on, so a running instance sharing the port (SO_REUSEPORT)
//! is never handed a connection. Who holds a busy port is looked up through
//! /proc/net/tcp{,6} and the socket inodes in /proc/PID/fd (all processes as root,
//! the user's own otherwise). A port held or shared by another terminus process is a
//! warning, not a problem: it is most likely the running instance this config is
//! meant to replace, and `systemctl restart` stops it before starting the new one
//! (a new listener would share connections with it until then; a new admin port
//! waits for it to exit). A port held, or shared through SO_REUSEPORT, by any other
//! process is a problem.
//!
//! I/O contract: reads the config file, the files it names, and /proc; binds and
//! closes the sockets above; writes nothing. Problems and warnings go to stderr, one
//! line each, prefixed `terminus: ` (warnings `terminus: warning: `); success prints
//! `config OK: N listener(s)` to stdout. Exit 0 when there is no problem (warnings
//! do not fail), 2 otherwise.
#![forbid(unsafe_code)]

use crate::config::{AccessLog, Checked, Config};
use crate::host::listens::{
    describe, holders, holders_of, listening_inodes, unknown_holder, Holder,
};
use crate::host::users::{open_as, Access};
use crate::tls;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Number of listeners in a config that parsed (0 if it did not).
    pub listeners: usize,
    /// Each makes the config unusable; one line each.
    pub problems: Vec<String>,
    /// Worth knowing, not fatal (e.g. a certificate expiring soon).
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Load the config and every listener's TLS material, collecting all problems.
pub fn check(path: &Path) -> Report {
    check_loaded(Config::load_checked(path))
}

/// Where `check` reads the config from: a file, or the one-command mode's flags.
pub enum Input<'a> {
    File(&'a Path),
    Flags(&'a crate::config::flags::ListenerFlags),
}

/// [`check`] on config text that came from somewhere else than a file (`source`
/// names it in errors).
pub fn check_text(text: &str, source: &Path) -> Report {
    check_loaded(Config::parse_checked(text, source))
}

fn check_loaded(checked: crate::config::Checked) -> Report {
    let mut report = Report {
        problems: checked.problems.iter().map(|e| e.to_string()).collect(),
        ..Report::default()
    };
    let Some(cfg) = &checked.config else {
        return report;
    };
    report.listeners = cfg.listeners.len();
    check_cpus(
        &checked,
        cfg,
        &crate::host::cpus::allowed_cpus(),
        &mut report,
    );
    check_access_log(&checked, &cfg.log.access, &mut report);
    check_run_as(&checked, cfg, &mut report);
    if let Some(admin) = &cfg.admin {
        let mut out = Findings::default();
        check_bind(
            admin.listen,
            cfg.runtime.reuse_port_with_other_instances,
            &mut out,
        );
        report.add(&checked, "admin.listen", out);
    }
    // As `run` would: wait for the Workload API (each attempt logged), and report its
    // answer when nothing came; the listeners that need it are then not built.
    let mut workload_ok = true;
    if cfg.uses_workload_api() && checked.problems.is_empty() {
        if let Err(e) = crate::ops::spiffe::start(&cfg.spiffe) {
            report.problems.push(e.to_string());
            workload_ok = false;
        }
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let mut out = Findings::default();
        check_bind(
            l.listen,
            cfg.runtime.reuse_port_with_other_instances,
            &mut out,
        );
        report.add(&checked, &format!("listeners[{i}].listen"), out);
        if l.offers_h2() && !l.upstream_h2() {
            let warnings = vec![format!(
                "listener \"{}\" terminates HTTP/2 towards an HTTP/1.1 upstream \
                 (upstream_protocol = \"http1\"): gRPC requests on it will be refused \
                 (UNAVAILABLE), gRPC needs HTTP/2 end to end (upstream_protocol = \"h2\")",
                l.name
            )];
            let f = Findings {
                warnings,
                ..Findings::default()
            };
            report.add(&checked, &format!("listeners[{i}].alpn"), f);
        }
        // A listener whose config has problems gets its files checked one by one;
        // building it whole would only repeat those problems.
        let problems = if !workload_ok && l.tls().uses_workload_api() {
            Vec::new()
        } else if checked.listeners_with_problems.contains(&i) {
            tls::listener_file_problems(&l.tls())
        } else {
            tls::listener_problems(&l.tls())
        };
        let dates = tls::cert_dates(&l.tls());
        let at = |e: String| format!("listener \"{}\": {e}", l.name);
        report.problems.extend(
            problems
                .into_iter()
                .map(|e| e.to_string())
                .chain(dates.problems)
                .map(at),
        );
        report.warnings.extend(dates.warnings.into_iter().map(at));
    }
    report
}

/// Problems and warnings about one field, before they are placed in the file.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn add(&mut self, at: &Checked, field: &str, f: Findings) {
        let place = |msg: String| at.error(field, &msg).to_string();
        self.problems.extend(f.problems.into_iter().map(place));
        self.warnings.extend(f.warnings.into_iter().map(place));
    }
}

/// `runtime.cpus`: `run` refuses to pin a worker to a CPU outside its affinity
/// mask. CPUs no worker would use only get a warning.
fn check_cpus(at: &Checked, cfg: &Config, allowed: &[usize], report: &mut Report) {
    let rt = &cfg.runtime;
    let Some(list) = rt.cpus.as_ref().filter(|_| rt.pin_cpus) else {
        return;
    };
    if allowed.is_empty() || list.is_empty() {
        return;
    }
    let (workers, _) =
        crate::host::cpus::worker_count(rt.workers, allowed.len(), crate::host::cpus::quota_cpus());
    let mask = cpu_list(allowed);
    for (j, cpu) in list.iter().enumerate() {
        if allowed.contains(cpu) {
            continue;
        }
        let field = format!("runtime.cpus[{j}]");
        let why = format!(
            "CPU {cpu} is not in this process's affinity mask ({mask}; set by taskset, \
             cpusets or systemd CPUAffinity=)"
        );
        if j < workers {
            report.problems.push(
                at.error(
                    &field,
                    &format!(
                        "{why}: run would refuse to pin a worker to it; list only allowed \
                         CPUs, or leave `cpus` out to use the mask"
                    ),
                )
                .to_string(),
            );
        } else {
            report.warnings.push(
                at.error(
                    &field,
                    &format!("{why}: unused with {workers} worker(s), refused with more"),
                )
                .to_string(),
            );
        }
    }
}

/// [0, 1, 2, 5] -> "0-2,5".
fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// `log.access`: `run` opens the file for appending, creating it. Checked without
/// creating it: an existing file must open for appending, a new one needs its folder.
fn check_access_log(at: &Checked, access: &AccessLog, report: &mut Report) {
    let AccessLog::File(path) = access else {
        return;
    };
    let access = path.display();
    let why = if path.exists() {
        match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => return,
            Err(e) => format!("cannot open {access} for appending: {e}"),
        }
    } else {
        match path.parent() {
            Some(dir) if dir.is_dir() => return,
            Some(dir) => format!(
                "cannot create {access}: the folder {} does not exist",
                dir.display()
            ),
            None => format!("cannot create {access}"),
        }
    };
    report
        .problems
        .push(at.error("log.access", &why).to_string());
}

/// Every file `run` opens again after start-up, so after `[runtime] user` has taken
/// effect: the config file (SIGHUP), each listener's files (polled, SIGHUP), the
/// `[resolver]` hosts file, and the access log (opened after the switch, and
/// reopened for appending on SIGUSR1; a new one is created in its folder).
pub fn reloaded_files(cfg: &Config) -> Vec<(std::path::PathBuf, Access)> {
    let mut out = vec![(cfg.source.clone(), Access::Read)];
    for l in &cfg.listeners {
        out.extend(
            tls::listener_files(&l.tls())
                .into_iter()
                .map(|p| (p, Access::Read)),
        );
    }
    out.extend(
        cfg.resolver
            .hosts_file
            .iter()
            .map(|p| (p.clone(), Access::Read)),
    );
    if let AccessLog::File(p) = &cfg.log.access {
        let how = if p.exists() {
            Access::Append
        } else {
            Access::Create
        };
        out.push((p.clone(), how));
    }
    out.sort();
    out.dedup();
    out
}

/// `[runtime] user`: every file `run` reopens after switching to the user must open
/// as that user, or the reload that reads it fails. A problem per file, at
/// `runtime.user`; a warning when this process cannot tell (neither root nor the user).
fn check_run_as(at: &Checked, cfg: &Config, report: &mut Report) {
    let Some(who) = &cfg.runtime.run_as else {
        return;
    };
    match open_as(&who.user, (who.uid, who.gid), &reloaded_files(cfg)) {
        Ok(bad) => report.problems.extend(bad.into_iter().map(|(path, e)| {
            let log = matches!(&cfg.log.access, AccessLog::File(p) if *p == path);
            at.error(
                if log { "log.access" } else { "runtime.user" },
                &format!(
                    "user {} (group {}) cannot open {}: {e}; terminus opens it again after \
                     switching to that user (reloads, the access log), so give the user or \
                     the group access",
                    who.user,
                    who.group,
                    path.display()
                ),
            )
            .to_string()
        })),
        Err(why) => report
            .warnings
            .push(at.error("runtime.user", &why).to_string()),
    }
}

/// Bind as `run` does, listeners and admin alike: SO_REUSEADDR + SO_REUSEPORT,
/// IPV6_V6ONLY for IPv6.
fn try_bind(addr: SocketAddr) -> std::io::Result<()> {
    // Bound, never listened on: closed on drop.
    crate::runtime::sock::bind_only(addr, false).map(drop)
}

/// Bind `addr` as `run` would; say why it fails, or who it would be shared with.
/// `handover`: `[runtime] reuse_port_with_other_instances`.
fn check_bind(addr: SocketAddr, handover: bool, out: &mut Findings) {
    match try_bind(addr) {
        Ok(()) => {
            if addr.port() != 0 {
                check_shared(addr, handover, out);
            }
        }
        Err(e) => match e.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                let holders = holders(addr, true);
                let text = describe(&holders);
                if !holders.is_empty() && holders.iter().all(Holder::is_terminus) {
                    out.warnings.push(format!(
                        "{addr} is in use by {text}, presumably the running instance: a new \
                         one cannot bind it until that one has stopped (as `systemctl \
                         restart` does)"
                    ));
                } else {
                    out.problems.push(format!(
                        "{addr} is already in use, held by {}: stop it or choose another \
                         address",
                        if holders.is_empty() {
                            unknown_holder()
                        } else {
                            text
                        }
                    ));
                }
            }
            Some(libc::EACCES) => out.problems.push(permission_denied(
                addr,
                unprivileged_port_start(),
                std::env::current_exe().ok().as_deref(),
            )),
            Some(libc::EADDRNOTAVAIL) => out.problems.push(format!(
                "cannot bind {addr}: no network interface of this host has the address {}",
                addr.ip()
            )),
            _ => out.problems.push(format!("cannot bind {addr}: {e}")),
        },
    }
}

/// A socket bound next to another SO_REUSEPORT socket of the same user shares its
/// incoming connections with it: `run` refuses that unless `handover`.
fn check_shared(addr: SocketAddr, handover: bool, out: &mut Findings) {
    let inodes = listening_inodes(addr, false);
    if inodes.is_empty() {
        return;
    }
    let holders = holders_of(&inodes);
    if holders.is_empty() {
        out.warnings.push(format!(
            "another socket already listens on {addr} with SO_REUSEPORT ({}): terminus \
             would share incoming connections with it",
            unknown_holder()
        ));
    } else if holders.iter().all(Holder::is_terminus) && handover {
        out.warnings.push(format!(
            "{addr} is also served by {}, presumably the running instance: with \
             reuse_port_with_other_instances = true a new one joins it and shares its \
             incoming connections (SO_REUSEPORT) until it stops, as in a restart handover",
            describe(&holders)
        ));
    } else if holders.iter().all(Holder::is_terminus) {
        out.warnings.push(format!(
            "{addr} is also served by {}, presumably the running instance: a new one \
             refuses to start beside it until it has stopped (as `systemctl restart` \
             does), unless [runtime] reuse_port_with_other_instances = true (a handover)",
            describe(&holders)
        ));
    } else {
        out.problems.push(format!(
            "{addr} is already listened on by {} with SO_REUSEPORT: terminus would bind \
             too and the kernel would split incoming connections between them; stop it \
             or choose another address",
            describe(&holders)
        ));
    }
}

/// Why binding `addr` was refused, and how to grant it.
fn permission_denied(addr: SocketAddr, unprivileged_start: u16, exe: Option<&Path>) -> String {
    if addr.port() >= unprivileged_start {
        return format!(
            "cannot bind {addr}: permission denied, though port {} is not privileged \
             (net.ipv4.ip_unprivileged_port_start = {unprivileged_start}): a security \
             policy (SELinux, AppArmor, seccomp) forbids it",
            addr.port()
        );
    }
    let exe = exe.map_or_else(
        || "/path/to/terminus".to_owned(),
        |p| p.display().to_string(),
    );
    format!(
        "cannot bind {addr}: permission denied: ports below {unprivileged_start} need \
         CAP_NET_BIND_SERVICE; grant it with `setcap cap_net_bind_service=+ep {exe}`, or \
         under systemd with AmbientCapabilities=CAP_NET_BIND_SERVICE, or listen on a port \
         >= {unprivileged_start}"
    )
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// `terminus check [--config FILE] [--host]`. Exit 2 if the config is invalid, else 1
/// if the host can't run terminus, else 0. With a valid config the host is checked
/// against its runtime settings and connection limits.
pub fn run_cli(config: Option<Input<'_>>, host: bool, host_timeout: Duration) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let mut params = crate::ops::hostcheck::HostParams::default();
    let loaded = match config {
        None => None,
        Some(Input::File(path)) => Some((check(path), Config::load(path).ok())),
        Some(Input::Flags(flags)) => match flags.to_toml() {
            Ok(text) => {
                let source = Path::new(crate::config::flags::SOURCE);
                Some((check_text(&text, source), Config::parse(&text, source).ok()))
            }
            Err(e) => {
                eprintln!("terminus: check: {e} (see --help)");
                return ExitCode::from(2);
            }
        },
    };
    if let Some((report, cfg)) = loaded {
        if !config_cli(&report) {
            code = ExitCode::from(2);
        } else if let Some(cfg) = cfg {
            params = crate::ops::hostcheck::HostParams::from_config(&cfg);
        }
    }
    params.selftest_timeout = host_timeout;
    if host
        && !crate::ops::hostcheck::print(&crate::ops::hostcheck::check(&params))
        && code == ExitCode::SUCCESS
    {
        code = ExitCode::from(1);
    }
    code
}

/// The config half: print the report, true when the config is usable.
fn config_cli(report: &Report) -> bool {
    for w in &report.warnings {
        eprintln!("terminus: warning: {w}");
    }
    for p in &report.problems {
        eprintln!("terminus: {p}");
    }
    if report.is_ok() {
        println!("config OK: {} listener(s)", report.listeners);
    }
    report.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_message_says_how_to_grant_the_capability() {
        let addr: SocketAddr = "0.0.0.0:443".parse().unwrap();
        assert_eq!(
            permission_denied(addr, 1024, Some(Path::new("/usr/bin/terminus"))),
            "cannot bind 0.0.0.0:443: permission denied: ports below 1024 need \
             CAP_NET_BIND_SERVICE; grant it with `setcap cap_net_bind_service=+ep \
             /usr/bin/terminus`, or under systemd with \
             AmbientCapabilities=CAP_NET_BIND_SERVICE, or listen on a port >= 1024"
        );
        let e = permission_denied(addr, 80, None);
        assert!(e.contains("port 443 is not privileged"), "{e}");
        assert!(permission_denied("[::]:80".parse().unwrap(), 1024, None)
            .contains("setcap cap_net_bind_service=+ep /path/to/terminus`"));
    }

    #[test]
    fn a_busy_port_names_its_holder() {
        // The holder is this test process, which `holders` leaves out (it is the
        // checking process in real use); a child holding the port is tested in
        // tests/other/config_errors.rs. Here: the inode is found and the bind refused.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(!listening_inodes(addr, false).is_empty());
        let e = try_bind(addr).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        drop(held);
        assert!(try_bind(addr).is_ok());
    }

    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_list(&[3]), "3");
    }
}
