//! `terminus-seccomp-exec`: run a program the way a container runtime's default seccomp
//! profile would (Docker ≥ 25, containerd ≥ 1.7, Kubernetes `RuntimeDefault`): the three
//! io_uring syscalls fail, everything else is allowed. A test tool (tests/seccomp.rs),
//! built with the package so that tests find it as
//! `env!("CARGO_BIN_EXE_terminus-seccomp-exec")`.
//!
//! ```text
//! terminus-seccomp-exec --deny-io-uring eperm|enosys -- PROGRAM [ARGS...]
//! ```
//!
//! Owns: one seccomp-bpf filter. It checks the architecture first (the filter is built
//! for the one this binary runs on, x86_64 or aarch64; a syscall made under any other
//! audit arch kills the process, as seccompiler compiles it), then makes
//! `io_uring_setup`, `io_uring_enter` and `io_uring_register` return -1 with errno
//! `EPERM` (what Docker's profile answers) or `ENOSYS` (what profiles that pretend the
//! syscall does not exist answer), and allows every other syscall. On x86_64 the x32
//! numbers of the three syscalls (same audit arch, `__X32_SYSCALL_BIT` set) are denied
//! too, so the filter cannot be sidestepped through the x32 ABI.
//!
//! I/O contract: sets `PR_SET_NO_NEW_PRIVS`, installs the filter on the calling (only)
//! thread, then `execvp`s PROGRAM with ARGS, the environment and stdio unchanged. The
//! filter is inherited across exec and by every thread and child PROGRAM makes, and can
//! never be removed. The filter is installed by the `seccompiler` crate (Firecracker's),
//! whose `apply_filter` calls `prctl(PR_SET_NO_NEW_PRIVS, 1)` and then
//! `seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)`; the kernel documents that call as
//! equivalent to `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`, and using the crate
//! keeps this file free of `unsafe`.
//!
//! Exit status: PROGRAM's own (this process becomes PROGRAM); 2 for a usage error; 125
//! when the filter cannot be built or installed; 127 when PROGRAM cannot be executed.
#![forbid(unsafe_code)]

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const USAGE: &str =
    "usage: terminus-seccomp-exec --deny-io-uring eperm|enosys -- PROGRAM [ARGS...]";

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
#[derive(Debug, Clone, Copy)]
enum Deny {
    Eperm,
    Enosys,
}

impl Deny {
    fn parse(s: &str) -> Option<Deny> {
        match s {
            "eperm" => Some(Deny::Eperm),
            "enosys" => Some(Deny::Enosys),
            _ => None,
        }
    }

    fn errno(self) -> u32 {
        match self {
            Deny::Eperm => libc::EPERM as u32,
            Deny::Enosys => libc::ENOSYS as u32,
        }
    }
}

/// `--deny-io-uring MODE -- PROGRAM ARGS...`, or the usage error.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<(Deny, Vec<OsString>), String> {
    let flag = args.next().ok_or("missing --deny-io-uring")?;
    if flag != "--deny-io-uring" {
        return Err(format!("unknown option {flag:?}"));
    }
    let mode = args.next().ok_or("--deny-io-uring needs eperm or enosys")?;
    let deny = mode
        .to_str()
        .and_then(Deny::parse)
        .ok_or_else(|| format!("--deny-io-uring: {mode:?} is not eperm or enosys"))?;
    match args.next() {
        Some(sep) if sep == "--" => {}
        other => return Err(format!("expected `--` before PROGRAM, got {other:?}")),
    }
    let program: Vec<OsString> = args.collect();
    if program.is_empty() {
        return Err("missing PROGRAM after `--`".into());
    }
    Ok((deny, program))
}

/// The filter: arch check, the io_uring syscalls → `Errno(deny)`, everything else allowed.
fn build_filter(deny: Deny) -> Result<BpfProgram, BackendError> {
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

fn main() -> ExitCode {
    let (deny, program) = match parse_args(std::env::args_os().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("terminus-seccomp-exec: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let installed = build_filter(deny)
        .map_err(seccompiler::Error::Backend)
        .and_then(|prog| seccompiler::apply_filter(&prog));
    if let Err(e) = installed {
        eprintln!("terminus-seccomp-exec: cannot install the seccomp filter: {e}");
        return ExitCode::from(125);
    }
    // `exec` only returns on failure.
    let e = Command::new(&program[0]).args(&program[1..]).exec();
    eprintln!(
        "terminus-seccomp-exec: cannot execute {:?}: {e}",
        program[0]
    );
    ExitCode::from(127)
}
