//! `terminus check`: validate config, certs and keys; print every problem.
//! `--host` (src/ops/hostcheck.rs) checks the machine instead or as well.
//!
//! One pass finds everything `run` would refuse: every config problem (a `listen` or
//! `upstreams` name that does not resolve among them, placed at its line by config
//! loading), the files of
//! every listener (also of a listener whose config has problems), `runtime.cpus`
//! against the affinity mask, `log.access`, and whether each listen address and the
//! admin address can be bound. Certificates that peers refuse now (expired, not yet
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
use crate::tls;
use std::net::{IpAddr, SocketAddr};
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
        &crate::runtime::server::allowed_cpus(),
        &mut report,
    );
    check_access_log(&checked, &cfg.log.access, &mut report);
    if let Some(admin) = &cfg.admin {
        let mut out = Findings::default();
        check_bind(
            admin.listen,
            cfg.runtime.reuse_port_with_other_instances,
            &mut out,
        );
        report.add(&checked, "admin.listen", out);
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        let mut out = Findings::default();
        check_bind(
            l.listen,
            cfg.runtime.reuse_port_with_other_instances,
            &mut out,
        );
        report.add(&checked, &format!("listeners[{i}].listen"), out);
        // A listener whose config has problems gets its files checked one by one;
        // building it whole would only repeat those problems.
        let problems = if checked.listeners_with_problems.contains(&i) {
            tls::listener_file_problems(l)
        } else {
            tls::listener_problems(l)
        };
        let dates = tls::cert_dates(l);
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
    let (workers, _) = crate::runtime::cgroup::worker_count(
        rt.workers,
        allowed.len(),
        crate::runtime::cgroup::quota_cpus(),
    );
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

/// Bind as `run` does, listeners and admin alike: SO_REUSEADDR + SO_REUSEPORT,
/// IPV6_V6ONLY for IPv6.
fn try_bind(addr: SocketAddr) -> std::io::Result<()> {
    // Bound, never listened on: closed on drop.
    crate::runtime::server::bind_only(addr, false).map(drop)
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

/// Who listens on `addr` ("pid 12 (terminus)"), for `run`'s overlap refusal.
pub fn who_listens(addr: SocketAddr) -> String {
    let h = holders(addr, false);
    if h.is_empty() {
        unknown_holder()
    } else {
        describe(&h)
    }
}

fn unknown_holder() -> String {
    if is_root() {
        "a socket no process was found for".to_owned()
    } else {
        "another user's process (run check as root to see which)".to_owned()
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    comm: String,
}

impl Holder {
    fn is_terminus(&self) -> bool {
        self.comm == "terminus"
    }
}

fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(|h| format!("pid {} ({})", h.pid, h.comm))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Processes owning a LISTEN socket that overlaps `addr`.
fn holders(addr: SocketAddr, cross_family: bool) -> Vec<Holder> {
    holders_of(&listening_inodes(addr, cross_family))
}

/// Inodes of the LISTEN sockets on `addr`'s port whose address is `addr`'s or a
/// wildcard overlapping it (`cross_family`: also an IPv6 wildcard or IPv4-mapped
/// socket for an IPv4 address, and the reverse).
fn listening_inodes(addr: SocketAddr, cross_family: bool) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for (ip, port, inode) in parse_listeners(&text) {
            if port == addr.port() && overlaps(ip, addr.ip(), cross_family) && inode != 0 {
                out.push(inode);
            }
        }
    }
    out
}

/// The LISTEN rows (state 0A) of a /proc/net/tcp or tcp6 table: (address, port, inode).
fn parse_listeners(text: &str) -> Vec<(IpAddr, u16, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            Some((
                parse_proc_ip(ip)?,
                u16::from_str_radix(port, 16).ok()?,
                f[9].parse().ok()?,
            ))
        })
        .collect()
}

/// The kernel prints each 32-bit word of the address as a native-endian number.
fn parse_proc_ip(hex: &str) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::from(word(hex)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

fn overlaps(held: IpAddr, want: IpAddr, cross_family: bool) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (held, want) = (canon(held), canon(want));
    if held.is_ipv4() != want.is_ipv4() {
        return cross_family && (held.is_unspecified() || want.is_unspecified());
    }
    held == want || held.is_unspecified() || want.is_unspecified()
}

/// Processes with a descriptor on one of `inodes` (sockets), in pid order.
fn holders_of(inodes: &[u64]) -> Vec<Holder> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_else(|_| "?".into());
            out.push(Holder { pid, comm });
        }
    }
    out.sort_by_key(|h| h.pid);
    out
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
    use std::net::{Ipv4Addr, Ipv6Addr};

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
    fn proc_net_tcp_rows() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                  \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
                  \x20  1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n";
        let rows = parse_listeners(v4);
        let lo = if cfg!(target_endian = "little") {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::new(1, 0, 0, 127)
        };
        assert_eq!(rows, [(IpAddr::V4(lo), 8080, 4242)]);
        let v6 = "header\n   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        assert_eq!(
            parse_listeners(v6),
            [(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 443, 77)]
        );
    }

    #[test]
    fn address_overlap() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlaps(ip("127.0.0.1"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("0.0.0.0"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("127.0.0.1"), ip("0.0.0.0"), false));
        assert!(!overlaps(ip("127.0.0.2"), ip("127.0.0.1"), false));
        assert!(!overlaps(ip("::"), ip("127.0.0.1"), false));
        assert!(overlaps(ip("::"), ip("127.0.0.1"), true));
        assert!(overlaps(ip("::ffff:127.0.0.1"), ip("127.0.0.1"), false));
        assert!(!overlaps(ip("::1"), ip("127.0.0.1"), true));
    }

    #[test]
    fn a_busy_port_names_its_holder() {
        // The holder is this test process, which `holders` leaves out (it is the
        // checking process in real use); a child holding the port is tested in
        // tests/config_errors.rs. Here: the inode is found and the bind refused.
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
