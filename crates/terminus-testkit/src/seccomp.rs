//! seccomp: the seccomp-bpf filters of the `terminus-seccomp-exec` test tool (the
//! binary in the root crate installs one and execs a program under it), the way a
//! container runtime would: the runtime's default profile as far as io_uring goes, or
//! an OCI/Docker JSON seccomp profile such as `deploy/seccomp-io_uring.json`.
//!
//! Owns: the command line ([`parse_args`]) and one seccomp-bpf filter ([`filter`]). It checks the architecture first (the filter is built
//! for the one this binary runs on, x86_64 or aarch64; a syscall made under any other
//! audit arch kills the process, as seccompiler compiles it), then:
//! - `--deny-io-uring`: makes `io_uring_setup`, `io_uring_enter` and
//!   `io_uring_register` return -1 with errno `EPERM` (what Docker's profile answers)
//!   or `ENOSYS` (what profiles that pretend the syscall does not exist answer), and
//!   allows every other syscall. On x86_64 the x32 numbers of the three syscalls (same
//!   audit arch, `__X32_SYSCALL_BIT` set) are denied too, so the filter cannot be
//!   sidestepped through the x32 ABI.
//! - `--profile FILE`: the profile's `defaultAction` for every syscall not named,
//!   and its entries' action for the named ones. Only what terminus' own profile uses
//!   is supported: `defaultAction` `SCMP_ACT_ERRNO` (errno `defaultErrnoRet`, EPERM
//!   when absent) or `SCMP_ACT_ALLOW`, and entries of `names` with action
//!   `SCMP_ACT_ALLOW` or `SCMP_ACT_ERRNO`, all entries that differ from the default
//!   sharing one action (one seccompiler filter has one match action). Conditions
//!   (`args`, `includes`, `excludes`) and other fields are rejected, not ignored, so a
//!   profile is never enforced more loosely than it reads. Names map to this arch's
//!   numbers through [`SYSCALLS`] (from `libc::SYS_*`); a name this arch lacks is
//!   skipped, as runtimes skip it; a name unknown on every arch is an error. Only
//!   native numbers are allowed: x32 syscalls on x86_64 get the default action.
//!   `--strict` turns the default action into killing the process (SIGSYS), so that a
//!   syscall missing from the profile fails a test loudly instead of as an error path.
//!
//! I/O contract: [`filter`] reads the profile FILE; nothing here installs a filter.
#![forbid(unsafe_code)]

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

/// The syscalls a container runtime's default profile denies for io_uring.
const IO_URING_SYSCALLS: [i64; 3] = [
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// x86_64's `__X32_SYSCALL_BIT`: x32 syscalls carry the x86_64 audit arch.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// What `--deny-io-uring` names: the errno the three syscalls return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    Eperm,
    Enosys,
}

impl Deny {
    pub fn parse(s: &str) -> Option<Deny> {
        match s {
            "eperm" => Some(Deny::Eperm),
            "enosys" => Some(Deny::Enosys),
            _ => None,
        }
    }

    /// How the command line names it (`--deny-io-uring NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Deny::Eperm => "eperm",
            Deny::Enosys => "enosys",
        }
    }

    pub fn errno(self) -> u32 {
        match self {
            Deny::Eperm => libc::EPERM as u32,
            Deny::Enosys => libc::ENOSYS as u32,
        }
    }
}

/// Which filter the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    DenyIoUring(Deny),
    Profile { path: PathBuf, strict: bool },
}

/// `--deny-io-uring MODE | --profile FILE [--strict]`, `--`, PROGRAM ARGS...; or the
/// usage error.
pub fn parse_args(
    mut args: impl Iterator<Item = OsString>,
) -> Result<(Mode, Vec<OsString>), String> {
    let flag = args.next().ok_or("missing --deny-io-uring or --profile")?;
    let mode = if flag == "--deny-io-uring" {
        let mode = args.next().ok_or("--deny-io-uring needs eperm or enosys")?;
        let deny = mode
            .to_str()
            .and_then(Deny::parse)
            .ok_or_else(|| format!("--deny-io-uring: {mode:?} is not eperm or enosys"))?;
        Mode::DenyIoUring(deny)
    } else if flag == "--profile" {
        let path = PathBuf::from(args.next().ok_or("--profile needs a FILE")?);
        let mut strict = false;
        let mut next = args.next();
        if next.as_deref() == Some("--strict".as_ref()) {
            strict = true;
            next = args.next();
        }
        match next {
            Some(sep) if sep == "--" => {}
            other => return Err(format!("expected `--` before PROGRAM, got {other:?}")),
        }
        return program(args).map(|p| (Mode::Profile { path, strict }, p));
    } else {
        return Err(format!("unknown option {flag:?}"));
    };
    match args.next() {
        Some(sep) if sep == "--" => {}
        other => return Err(format!("expected `--` before PROGRAM, got {other:?}")),
    }
    program(args).map(|p| (mode, p))
}

/// The rest of the command line: PROGRAM and its ARGS, at least PROGRAM.
fn program(args: impl Iterator<Item = OsString>) -> Result<Vec<OsString>, String> {
    let program: Vec<OsString> = args.collect();
    if program.is_empty() {
        return Err("missing PROGRAM after `--`".into());
    }
    Ok(program)
}

/// The `--deny-io-uring` filter: arch check, the io_uring syscalls → `Errno(deny)`,
/// everything else allowed.
fn deny_io_uring_filter(deny: Deny) -> Result<BpfProgram, BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in IO_URING_SYSCALLS {
        // An empty rule list matches the syscall whatever its arguments.
        rules.insert(nr, Vec::new());
        #[cfg(target_arch = "x86_64")]
        rules.insert(nr | X32_SYSCALL_BIT, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(deny.errno()),
        arch,
    )?;
    filter.try_into()
}

// ---------------------------------------------------------------------------------
// `--profile`: the OCI/Docker JSON format, the part of it terminus' profile uses
// ---------------------------------------------------------------------------------

/// A profile as the JSON spells it. Unknown fields are an error (`archMap`,
/// `flags`, `listenerPath`...): this tool would not enforce them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileJson {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    /// Informational here: the filter is built for the running arch only.
    #[serde(default)]
    #[allow(dead_code)]
    architectures: Vec<String>,
    #[serde(default)]
    syscalls: Vec<EntryJson>,
}

/// One `syscalls` entry. `args`, `includes` and `excludes` are read only to be
/// rejected when they say something (Docker writes `[]` and `{}` for "nothing").
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntryJson {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<serde_json::Value>,
    #[serde(default)]
    includes: Option<serde_json::Value>,
    #[serde(default)]
    excludes: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
}

/// What a profile's actions can be here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u32),
}

impl Action {
    /// `SCMP_ACT_ALLOW`, or `SCMP_ACT_ERRNO` with `errno` (EPERM when absent, as runc).
    fn parse(name: &str, errno: Option<u32>) -> Result<Action, String> {
        match name {
            "SCMP_ACT_ALLOW" => Ok(Action::Allow),
            "SCMP_ACT_ERRNO" => Ok(Action::Errno(errno.unwrap_or(libc::EPERM as u32))),
            other => Err(format!(
                "action {other:?} is not supported (only SCMP_ACT_ALLOW and SCMP_ACT_ERRNO)"
            )),
        }
    }

    fn seccomp(self) -> SeccompAction {
        match self {
            Action::Allow => SeccompAction::Allow,
            Action::Errno(e) => SeccompAction::Errno(e),
        }
    }
}

/// A profile reduced to one filter on this arch: `default` for every syscall not in
/// `listed`, `action` for those in it.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    default: Action,
    action: Action,
    /// This arch's numbers of the listed names that it has.
    listed: Vec<i64>,
    /// Listed names this arch does not have (skipped, as runtimes skip them).
    skipped: Vec<String>,
}

/// Whether a condition field says anything (absent, `null`, `[]` and `{}` do not).
fn is_empty(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// Parse a profile's JSON text into the one filter it means on this arch.
fn plan_profile(text: &str) -> Result<Plan, String> {
    let p: ProfileJson = serde_json::from_str(text).map_err(|e| format!("not a profile: {e}"))?;
    let default = Action::parse(&p.default_action, p.default_errno_ret)
        .map_err(|e| format!("defaultAction: {e}"))?;
    let mut action: Option<Action> = None;
    let mut by_name: BTreeMap<&str, Action> = BTreeMap::new();
    for (i, e) in p.syscalls.iter().enumerate() {
        for (field, v) in [
            ("args", &e.args),
            ("includes", &e.includes),
            ("excludes", &e.excludes),
        ] {
            if !is_empty(v) {
                return Err(format!(
                    "syscalls[{i}]: `{field}` conditions are not supported"
                ));
            }
        }
        let a =
            Action::parse(&e.action, e.errno_ret).map_err(|err| format!("syscalls[{i}]: {err}"))?;
        for name in &e.names {
            if let Some(prev) = by_name.insert(name, a) {
                if prev != a {
                    return Err(format!("{name:?} is listed with two different actions"));
                }
            }
        }
        if a == default {
            continue; // the same as not listing the names
        }
        match action {
            None => action = Some(a),
            Some(prev) if prev == a => {}
            Some(_) => {
                return Err(format!(
                    "syscalls[{i}]: entries with different actions are not supported"
                ))
            }
        }
    }
    let action = action.ok_or("no entry differs from defaultAction: nothing to filter")?;
    let mut listed = Vec::new();
    let mut skipped = Vec::new();
    for (name, a) in by_name {
        if a != action {
            continue;
        }
        match syscall_number(name) {
            Some(Some(nr)) => listed.push(nr),
            Some(None) => skipped.push(name.to_string()),
            None => return Err(format!("unknown syscall name {name:?}")),
        }
    }
    listed.sort_unstable();
    listed.dedup();
    Ok(Plan {
        default,
        action,
        listed,
        skipped,
    })
}

/// The `--profile` filter: arch check, `plan.listed` → `plan.action`, the rest →
/// `plan.default`, or with `strict` (when the default denies) → kill the process.
fn profile_filter(plan: &Plan, strict: bool) -> Result<BpfProgram, BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        plan.listed.iter().map(|&nr| (nr, Vec::new())).collect();
    let mismatch = match plan.default {
        Action::Errno(_) if strict => SeccompAction::KillProcess,
        other => other.seccomp(),
    };
    SeccompFilter::new(rules, mismatch, plan.action.seccomp(), arch)?.try_into()
}

// ---------------------------------------------------------------------------------
// Syscall names → numbers on this arch
// ---------------------------------------------------------------------------------

/// `Some(libc::SYS_x)` where x86_64 is the target; None elsewhere (aarch64 and the
/// other asm-generic arches never had these legacy syscalls).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_64_only {
    ($sys:ident) => {
        Some(libc::$sys as i64)
    };
}
#[cfg(not(target_arch = "x86_64"))]
macro_rules! x86_64_only {
    ($sys:ident) => {
        None
    };
}

/// The table: `generic` names exist on x86_64 and aarch64 alike (checked against
/// libc's aarch64 constants), `x86_64` names only there. Each entry is written as its
/// `libc::SYS_` constant, so a typo does not build.
macro_rules! syscall_table {
    (generic: [$($g:ident),* $(,)?], x86_64: [$($x:ident),* $(,)?] $(,)?) => {
        /// (name, this arch's number or None when this arch lacks it).
        const SYSCALLS: &[(&str, Option<i64>)] = &[
            $((stringify!($g), Some(libc::$g as i64)),)*
            $((stringify!($x), x86_64_only!($x)),)*
        ];
    };
}

// The names terminus' profile may use, and the dangerous ones it must not (so that a
// test can show they are refused). Kept to what a profile of ours needs: a name
// missing here is reported as unknown, never silently skipped.
syscall_table! {
    generic: [
        SYS_accept, SYS_accept4, SYS_bind, SYS_brk, SYS_capget, SYS_chdir, SYS_clock_getres,
        SYS_clock_gettime, SYS_clock_nanosleep, SYS_clone, SYS_clone3, SYS_close,
        SYS_close_range, SYS_connect, SYS_dup, SYS_dup3, SYS_epoll_create1, SYS_epoll_ctl,
        SYS_epoll_pwait, SYS_epoll_pwait2, SYS_eventfd2, SYS_execve, SYS_exit,
        SYS_exit_group, SYS_faccessat, SYS_faccessat2, SYS_fadvise64, SYS_fcntl, SYS_fstat,
        SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_getcwd, SYS_getdents64,
        SYS_getegid, SYS_geteuid, SYS_getgid, SYS_getgroups, SYS_getpeername, SYS_getpgid,
        SYS_getpid, SYS_getppid, SYS_getrandom, SYS_getresgid, SYS_getresuid,
        SYS_getrusage, SYS_getsockname, SYS_getsockopt, SYS_gettid,
        SYS_gettimeofday, SYS_getuid, SYS_get_robust_list, SYS_io_uring_enter,
        SYS_io_uring_register, SYS_io_uring_setup, SYS_ioctl, SYS_kill, SYS_listen,
        SYS_lseek, SYS_madvise, SYS_membarrier, SYS_mincore, SYS_mlock, SYS_mmap,
        SYS_mprotect, SYS_mremap, SYS_munlock, SYS_munmap, SYS_nanosleep, SYS_newfstatat,
        SYS_openat, SYS_pipe2, SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_prlimit64,
        SYS_pselect6, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_readlinkat, SYS_readv,
        SYS_recvfrom, SYS_recvmmsg, SYS_recvmsg, SYS_restart_syscall, SYS_rseq,
        SYS_rt_sigaction, SYS_rt_sigpending, SYS_rt_sigprocmask, SYS_rt_sigreturn,
        SYS_rt_sigsuspend, SYS_rt_sigtimedwait, SYS_sched_getaffinity,
        SYS_sched_getparam, SYS_sched_getscheduler, SYS_sched_setaffinity,
        SYS_sched_yield, SYS_sendmmsg, SYS_sendmsg, SYS_sendto, SYS_set_robust_list,
        SYS_set_tid_address, SYS_setitimer, SYS_getitimer, SYS_setsockopt,
        SYS_shutdown, SYS_sigaltstack, SYS_socket, SYS_socketpair, SYS_statfs, SYS_statx,
        SYS_sysinfo, SYS_tgkill, SYS_timerfd_create, SYS_timerfd_gettime,
        SYS_timerfd_settime, SYS_times, SYS_tkill, SYS_umask, SYS_uname, SYS_wait4,
        SYS_waitid, SYS_write, SYS_writev,
        // Dangerous: known so that profiles naming them parse; never in ours.
        SYS_bpf, SYS_init_module, SYS_kexec_load, SYS_keyctl, SYS_mount, SYS_ptrace,
        SYS_reboot, SYS_setns, SYS_umount2, SYS_unshare,
    ],
    // getrlimit/setrlimit exist on aarch64 too, but libc has no aarch64 constant for
    // them (glibc calls prlimit64 there): skipped on aarch64 like the legacy ones.
    x86_64: [
        SYS_getrlimit, SYS_setrlimit, SYS_access, SYS_arch_prctl, SYS_dup2,
        SYS_epoll_create, SYS_epoll_wait,
        SYS_eventfd, SYS_fork, SYS_getdents, SYS_getpgrp, SYS_lstat, SYS_open, SYS_pipe,
        SYS_poll, SYS_readlink, SYS_select, SYS_stat, SYS_time, SYS_vfork,
    ],
}

/// `Some(Some(nr))`: this arch's number; `Some(None)`: a name this arch lacks;
/// `None`: a name the table does not know.
fn syscall_number(name: &str) -> Option<Option<i64>> {
    SYSCALLS
        .iter()
        .find(|(sys, _)| sys.strip_prefix("SYS_") == Some(name))
        .map(|&(_, nr)| nr)
}

/// The filter `mode` asks for, compiled for this arch; or why it cannot be built.
pub fn filter(mode: &Mode) -> Result<BpfProgram, String> {
    match mode {
        Mode::DenyIoUring(deny) => deny_io_uring_filter(*deny).map_err(|e| e.to_string()),
        Mode::Profile { path, strict } => load_profile(path, *strict),
    }
}

/// Read, plan and compile `--profile FILE`.
fn load_profile(path: &PathBuf, strict: bool) -> Result<BpfProgram, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let plan = plan_profile(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    profile_filter(&plan, strict).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<(Mode, Vec<OsString>), String> {
        parse_args(a.iter().map(OsString::from))
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            args(&["--deny-io-uring", "enosys", "--", "true"]).unwrap(),
            (Mode::DenyIoUring(Deny::Enosys), vec!["true".into()])
        );
        assert_eq!(
            args(&["--profile", "p.json", "--strict", "--", "env", "-0"]).unwrap(),
            (
                Mode::Profile {
                    path: "p.json".into(),
                    strict: true
                },
                vec!["env".into(), "-0".into()]
            )
        );
        assert_eq!(
            args(&["--profile", "p.json", "--", "true"]).unwrap().0,
            Mode::Profile {
                path: "p.json".into(),
                strict: false
            }
        );
        for bad in [
            &[][..],
            &["--profile"][..],
            &["--profile", "p.json"][..],
            &["--profile", "p.json", "--strict"][..],
            &["--profile", "p.json", "--strict", "--"][..],
            &["--profile", "p.json", "true"][..],
            &["--strict", "--profile", "p.json", "--", "true"][..],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    fn profile(default: &str, entries: &str) -> String {
        format!(
            r#"{{"defaultAction": {default}, "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
                "syscalls": [{entries}]}}"#
        )
    }

    fn nr(name: &str) -> i64 {
        syscall_number(name).unwrap().unwrap()
    }

    #[test]
    fn an_allow_list_profile() {
        let text = profile(
            r#""SCMP_ACT_ERRNO""#,
            r#"{"names": ["read", "write", "open", "read"], "action": "SCMP_ACT_ALLOW",
                "args": [], "includes": {}, "comment": "why"}"#,
        );
        let plan = plan_profile(&text).unwrap();
        assert_eq!(plan.default, Action::Errno(1));
        assert_eq!(plan.action, Action::Allow);
        let mut want = vec![nr("read"), nr("write")];
        // `open` is x86_64's; aarch64 skips it, as runtimes do.
        if cfg!(target_arch = "x86_64") {
            want.push(nr("open"));
            assert!(plan.skipped.is_empty());
        } else {
            assert_eq!(plan.skipped, vec!["open".to_string()]);
        }
        want.sort_unstable();
        assert_eq!(plan.listed, want);
        assert!(profile_filter(&plan, true).is_ok());
        assert!(profile_filter(&plan, false).is_ok());
    }

    #[test]
    fn a_deny_list_profile_and_errno_defaults() {
        let text = r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]}"#;
        let plan = plan_profile(text).unwrap();
        assert_eq!(plan.default, Action::Allow);
        // SCMP_ACT_ERRNO without errnoRet is EPERM, as runc has it.
        assert_eq!(plan.action, Action::Errno(libc::EPERM as u32));
        assert_eq!(plan.listed, vec![nr("ptrace")]);
        let text = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#;
        assert_eq!(plan_profile(text).unwrap().default, Action::Errno(38));
    }

    #[test]
    fn what_is_not_supported_is_an_error_naming_it() {
        let cases: &[(String, &str)] = &[
            (
                profile(
                    r#""SCMP_ACT_ERRNO""#,
                    r#"{"names": ["frobnicate"], "action": "SCMP_ACT_ALLOW"}"#,
                ),
                "frobnicate",
            ),
            (
                profile(
                    r#""SCMP_ACT_KILL""#,
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW"}"#,
                ),
                "SCMP_ACT_KILL",
            ),
            (
                profile(
                    r#""SCMP_ACT_ERRNO""#,
                    r#"{"names": ["read"], "action": "SCMP_ACT_TRACE"}"#,
                ),
                "SCMP_ACT_TRACE",
            ),
            (
                profile(
                    r#""SCMP_ACT_ERRNO""#,
                    r#"{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}"#,
                ),
                "args",
            ),
            (
                profile(
                    r#""SCMP_ACT_ERRNO""#,
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}"#,
                ),
                "includes",
            ),
            (
                profile(
                    r#""SCMP_ACT_ERRNO""#,
                    r#"{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                       {"names": ["read"], "action": "SCMP_ACT_ERRNO"}"#,
                ),
                "two different actions",
            ),
            (
                profile(
                    r#""SCMP_ACT_ALLOW""#,
                    r#"{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                       {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}"#,
                ),
                "different actions",
            ),
            (profile(r#""SCMP_ACT_ERRNO""#, ""), "nothing to filter"),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "archMap": [], "syscalls": []}"#.into(),
                "archMap",
            ),
            ("[]".into(), "not a profile"),
        ];
        for (text, needle) in cases {
            let err = plan_profile(text).expect_err(text);
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn the_table_maps_names_to_this_arch() {
        assert_eq!(
            syscall_number("io_uring_setup"),
            Some(Some(libc::SYS_io_uring_setup))
        );
        assert_eq!(
            syscall_number("SYS_read"),
            None,
            "names carry no SYS_ prefix"
        );
        assert_eq!(syscall_number("nonesuch"), None);
        let names: Vec<&str> = SYSCALLS.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a name twice in the table");
    }

    #[test]
    fn the_shipped_profile_plans() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/seccomp-io_uring.json"
        );
        let plan = plan_profile(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(plan.default, Action::Errno(libc::EPERM as u32));
        assert_eq!(plan.action, Action::Allow);
        for sys in IO_URING_SYSCALLS {
            assert!(plan.listed.contains(&sys));
        }
        for danger in [
            "ptrace",
            "mount",
            "bpf",
            "kexec_load",
            "keyctl",
            "unshare",
            "setns",
        ] {
            assert!(!plan.listed.contains(&nr(danger)), "{danger} allowed");
        }
    }
}
