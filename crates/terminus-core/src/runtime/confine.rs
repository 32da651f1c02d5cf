//! confine: what `[runtime] user`/`group` and `[runtime] seccomp = "builtin"` do to
//! the process once every listener and the admin socket are bound, before any
//! worker serves a byte (the app layer calls [`drop_privileges`], then
//! [`install_builtin_filter`]).
//!
//! Privileges: `setgroups([gid])`, `setgid(gid)`, `setuid(uid)`, in that order (the
//! group calls need root). From root, `setuid` to another uid sets the real,
//! effective and saved uids and clears the permitted, effective and ambient
//! capability sets (no `SECBIT_KEEP_CAPS`); glibc applies the calls to every thread.
//! Then the result is checked rather than trusted: all three uids and gids are the
//! target's and `/proc/self/status` shows `CapPrm`, `CapEff` and `CapAmb` zero, or
//! the start fails. Supplementary groups are not kept: access to files is granted
//! through `group`.
//!
//! Seccomp: an allow-list, [`ALLOWED`], the syscalls that `deploy/seccomp-io_uring.json`
//! allows (proved by tests/other/seccomp.rs under `--strict` on both backends: start,
//! workers, admin, reload, log reopen, sd_notify, name resolution, drain) less
//! `execve` (nothing after start-up executes a program); a unit test keeps the two
//! lists equal. Any other syscall, and any syscall of another ABI (x32, i386: the
//! filter checks the architecture first), traps: `SECCOMP_RET_TRAP` raises SIGSYS in
//! the calling thread, whose handler writes one static line (the syscall number) to
//! stderr with `write(2)` only and re-raises SIGSYS with its default action, so the
//! whole process dies of SIGSYS (status 159 in a shell, `status=31/SYS` in systemd).
//! TRAP rather than `SECCOMP_RET_KILL_PROCESS`: a killed process says nothing, and the
//! kernel's audit line is not in terminus's log; the price is that a thread could
//! catch SIGSYS itself, which terminus never does. The filter is installed with
//! `SECCOMP_FILTER_FLAG_TSYNC` on every thread there is (seccompiler
//! `apply_filter_all_threads`, after `PR_SET_NO_NEW_PRIVS`) and is inherited by every
//! thread started later. io_uring requests are executed by the kernel and are not
//! seen by seccomp (the opcodes terminus submits are the socket ones it makes
//! anyway).
//!
//! The only `unsafe` here installs the SIGSYS handler and is the handler (the one
//! module with `unsafe` besides the I/O drivers: a signal handler cannot be written
//! without it); each block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

use crate::config::RunAs;
use nix::unistd::{Gid, Uid};
use seccompiler::{SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;

/// Switch to `who` (see the module doc). Already `who` (systemd `User=`): nothing
/// to switch, but the capability check still applies. Not root and not `who`: an
/// error, as only root can switch.
pub fn drop_privileges(who: &RunAs) -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(who.uid), Gid::from_raw(who.gid));
    let target = format!(
        "user {} (uid {}), group {} (gid {})",
        who.user, who.uid, who.group, who.gid
    );
    let current = ids();
    if current != Ok(([who.uid; 3], [who.gid; 3])) {
        if !nix::unistd::geteuid().is_root() {
            return Err(format!(
                "[runtime] user: switching to {target} needs root; terminus runs as uid {}",
                nix::unistd::geteuid()
            ));
        }
        nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups([{gid}]): {e}"))?;
        nix::unistd::setgid(gid).map_err(|e| format!("setgid({gid}): {e}"))?;
        nix::unistd::setuid(uid).map_err(|e| format!("setuid({uid}): {e}"))?;
    }
    match ids() {
        Ok((uids, gids)) if uids == [who.uid; 3] && gids == [who.gid; 3] => {}
        Ok((uids, gids)) => {
            return Err(format!(
                "switching to {target} left uids {uids:?} and gids {gids:?}"
            ))
        }
        Err(e) => return Err(e),
    }
    let caps = capabilities()?;
    if caps.iter().any(|(_, v)| *v != 0) {
        return Err(format!(
            "still holds capabilities as {target} ({}): started with ambient or file \
             capabilities? Start as root, or without [runtime] user",
            caps.iter()
                .map(|(k, v)| format!("{k}={v:016x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(())
}

/// (real, effective, saved) uids and gids.
fn ids() -> Result<([u32; 3], [u32; 3]), String> {
    let u = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    let g = nix::unistd::getresgid().map_err(|e| format!("getresgid: {e}"))?;
    Ok((
        [u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()],
        [g.real.as_raw(), g.effective.as_raw(), g.saved.as_raw()],
    ))
}

/// `CapPrm`, `CapEff`, `CapAmb` of this process, from /proc/self/status.
pub fn capabilities() -> Result<Vec<(&'static str, u64)>, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    ["CapPrm", "CapEff", "CapAmb"]
        .into_iter()
        .map(|key| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .map(|v| (key, v))
                .ok_or_else(|| format!("/proc/self/status has no {key} line"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The builtin seccomp filter
// ---------------------------------------------------------------------------------

/// `(name, number)`: names as in the profile, numbers from `libc::SYS_*` (a typo
/// does not build). `generic` names exist on x86_64 and aarch64; `x86_64` only there.
macro_rules! allowed {
    (generic: [$($g:ident),* $(,)?], x86_64: [$($x:ident),* $(,)?] $(,)?) => {
        /// The syscalls the builtin filter allows on this arch.
        pub const ALLOWED: &[(&str, i64)] = &[
            $((stringify!($g), libc::$g as i64),)*
            $(#[cfg(target_arch = "x86_64")] (stringify!($x), libc::$x as i64),)*
        ];
    };
}

// deploy/seccomp-io_uring.json's list without execve (`SYS_` is stripped from the
// names when they are compared with the profile's).
allowed! {
    generic: [
        SYS_accept, SYS_accept4, SYS_bind, SYS_brk, SYS_clock_getres, SYS_clock_gettime,
        SYS_clock_nanosleep, SYS_clone, SYS_clone3, SYS_close, SYS_connect, SYS_dup,
        SYS_dup3, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2,
        SYS_eventfd2, SYS_exit, SYS_exit_group, SYS_faccessat, SYS_faccessat2, SYS_fcntl,
        SYS_fstat, SYS_futex, SYS_getcwd, SYS_getdents64, SYS_getegid, SYS_geteuid,
        SYS_getgid, SYS_getpeername, SYS_getpid, SYS_getrandom, SYS_getsockname,
        SYS_getsockopt, SYS_gettid, SYS_gettimeofday, SYS_getuid, SYS_io_uring_enter,
        SYS_io_uring_register, SYS_io_uring_setup, SYS_ioctl, SYS_listen, SYS_lseek,
        SYS_madvise, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap, SYS_nanosleep,
        SYS_newfstatat, SYS_openat, SYS_pipe2, SYS_ppoll, SYS_prctl, SYS_pread64,
        SYS_prlimit64, SYS_read, SYS_readlinkat, SYS_readv, SYS_recvfrom, SYS_recvmmsg,
        SYS_recvmsg, SYS_restart_syscall, SYS_rseq, SYS_rt_sigaction, SYS_rt_sigprocmask,
        SYS_rt_sigreturn, SYS_sched_getaffinity, SYS_sched_setaffinity, SYS_sched_yield,
        SYS_sendmmsg, SYS_sendmsg, SYS_sendto, SYS_set_robust_list, SYS_set_tid_address,
        SYS_setsockopt, SYS_shutdown, SYS_sigaltstack, SYS_socket, SYS_socketpair,
        SYS_statx, SYS_sysinfo, SYS_tgkill, SYS_tkill, SYS_uname, SYS_write, SYS_writev,
    ],
    x86_64: [
        SYS_access, SYS_arch_prctl, SYS_dup2, SYS_epoll_create, SYS_epoll_wait,
        SYS_getdents, SYS_getrlimit, SYS_lstat, SYS_open, SYS_poll, SYS_readlink,
        SYS_setrlimit, SYS_stat, SYS_time,
    ],
}

/// Install the SIGSYS handler, then the filter on every thread (see the module doc).
pub fn install_builtin_filter() -> Result<(), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("[runtime] seccomp = \"builtin\": {e}"))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let prog: seccompiler::BpfProgram =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .and_then(TryInto::try_into)
            .map_err(|e| format!("cannot build the builtin seccomp filter: {e}"))?;
    sigsys::install()?;
    seccompiler::apply_filter_all_threads(&prog)
        .map_err(|e| format!("cannot install the builtin seccomp filter: {e}"))
}

/// Test hook, honoured only when `TERMINUS_TEST_SECCOMP_VIOLATION=1` was set when the
/// filter was installed: make one syscall the filter does not allow (getppid, which
/// has no arguments and no effect), so that a test can watch the process die with
/// the message. Called by the reloader before each config reload.
pub fn test_violation() {
    use std::sync::atomic::Ordering;
    if sigsys::TEST_VIOLATION.load(Ordering::Relaxed) {
        let _ = std::os::unix::process::parent_id();
    }
}

mod sigsys {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// See [`super::test_violation`].
    pub(super) static TEST_VIOLATION: AtomicBool = AtomicBool::new(false);

    /// Where the kernel puts the syscall number in a seccomp SIGSYS siginfo_t on
    /// 64-bit Linux: the union after si_signo, si_errno, si_code (and padding) is at
    /// 16, and its `_sigsys` is { void *_call_addr; int _syscall; unsigned _arch }.
    #[cfg(target_pointer_width = "64")]
    const SYSCALL_OFFSET: usize = 24;

    const PREFIX: &[u8] = b"seccomp: syscall ";
    const SUFFIX: &[u8] = b" is not allowed by the builtin filter ([runtime] seccomp = \
                            \\\"builtin\\\"): terminus is killed (SIGSYS)";

    pub(super) fn install() -> Result<(), String> {
        TEST_VIOLATION.store(
            std::env::var_os("TERMINUS_TEST_SECCOMP_VIOLATION").is_some_and(|v| v == "1"),
            Ordering::Relaxed,
        );
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags); the
        // handler only calls async-signal-safe functions (write, raise) and reads
        // an atomic; SA_RESETHAND restores the default action on entry, so the
        // raise in it kills the process once the handler returns.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "cannot install the SIGSYS handler: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Append `b` to `buf` at `*n`, as far as it fits.
    fn put(buf: &mut [u8], n: &mut usize, b: &[u8]) {
        let take = b.len().min(buf.len() - *n);
        buf[*n..*n + take].copy_from_slice(&b[..take]);
        *n += take;
    }

    /// The one line, in the log's format: `terminus: fatal: ...` or a JSON object.
    /// No allocation, no lock: a signal handler may run anywhere.
    pub(super) fn line(json: bool, nr: i32, buf: &mut [u8]) -> usize {
        let mut digits = [0u8; 12];
        let mut d = digits.len();
        let mut v = i64::from(nr).unsigned_abs();
        loop {
            d -= 1;
            digits[d] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if nr < 0 {
            d -= 1;
            digits[d] = b'-';
        }
        let mut n = 0;
        if json {
            put(buf, &mut n, b"{\"level\":\"fatal\",\"msg\":\"");
        } else {
            put(buf, &mut n, b"FATAL terminus: ");
        }
        put(buf, &mut n, PREFIX);
        put(buf, &mut n, &digits[d..]);
        if json {
            put(buf, &mut n, SUFFIX);
            put(buf, &mut n, b"\",\"syscall\":");
            put(buf, &mut n, &digits[d..]);
            put(buf, &mut n, b"}\n");
        } else {
            // The JSON escapes are for the JSON line only.
            for &c in SUFFIX {
                if c != b'\\' {
                    put(buf, &mut n, &[c]);
                }
            }
            put(buf, &mut n, b"\n");
        }
        n
    }

    extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        #[cfg(target_pointer_width = "64")]
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, and for a
        // seccomp SIGSYS its `_sigsys` member holds the syscall number at this offset.
        let nr = unsafe {
            info.cast::<u8>()
                .add(SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        };
        #[cfg(not(target_pointer_width = "64"))]
        let nr = {
            let _ = info;
            -1
        };
        let mut buf = [0u8; 320];
        let n = line(crate::telemetry::log::json(), nr, &mut buf);
        // SAFETY: write(2) and raise(3) are async-signal-safe; `buf` holds `n` bytes.
        // SIGSYS is blocked while this runs and back at its default action
        // (SA_RESETHAND), so the raised one kills the process when this returns.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), n);
            libc::raise(libc::SIGSYS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builtin list is deploy/seccomp-io_uring.json's (the one tests/other/seccomp.rs
    /// proves under `--strict`), less execve, as far as this arch has the names.
    #[test]
    fn allowed_is_the_shipped_profile_less_execve() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/seccomp-io_uring.json"
        );
        let profile: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut want: Vec<String> = profile["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .filter(|n| n != "execve")
            .collect();
        let mut have: Vec<String> = ALLOWED
            .iter()
            .map(|(n, _)| n.strip_prefix("SYS_").unwrap().to_string())
            .collect();
        want.sort();
        have.sort();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(have, want);
        #[cfg(not(target_arch = "x86_64"))]
        assert!(have.iter().all(|h| want.contains(h)), "{have:?} ⊄ {want:?}");
    }

    #[test]
    fn the_sigsys_line() {
        let mut buf = [0u8; 320];
        let n = sigsys::line(false, 110, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "FATAL terminus: seccomp: syscall 110 is not allowed by the builtin filter \
             ([runtime] seccomp = \"builtin\"): terminus is killed (SIGSYS)\n"
        );
        let n = sigsys::line(true, -7, &mut buf);
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["level"], "fatal");
        assert_eq!(v["syscall"], -7);
        assert!(v["msg"]
            .as_str()
            .unwrap()
            .starts_with("seccomp: syscall -7 is not allowed by the builtin filter ([runtime] seccomp = \"builtin\")"));
    }

    #[test]
    fn capabilities_parse() {
        let caps = capabilities().unwrap();
        assert_eq!(
            caps.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["CapPrm", "CapEff", "CapAmb"]
        );
    }
}
