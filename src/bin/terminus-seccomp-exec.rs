//! `terminus-seccomp-exec`: run a program under a seccomp filter, the way a container
//! runtime would. Two filters: the runtime's default profile as far as io_uring goes
//! (Docker ≥ 25, containerd ≥ 1.7, Kubernetes `RuntimeDefault`: the three io_uring
//! syscalls fail, everything else is allowed), or an OCI/Docker JSON seccomp profile
//! such as `deploy/seccomp-io_uring.json`. A test tool (tests/other/seccomp.rs), built with
//! the package so that tests find it as `env!("CARGO_BIN_EXE_terminus-seccomp-exec")`.
//!
//! ```text
//! terminus-seccomp-exec --deny-io-uring eperm|enosys -- PROGRAM [ARGS...]
//! terminus-seccomp-exec --profile FILE [--strict] -- PROGRAM [ARGS...]
//! ```
//!
//! The filters are [`terminus_testkit::seccomp`]'s (what each allows and denies is
//! documented there).
//!
//! I/O contract: reads FILE; sets `PR_SET_NO_NEW_PRIVS`, installs the filter on the
//! calling (only) thread, then `execvp`s PROGRAM with ARGS, the environment and stdio
//! unchanged. The filter is inherited across exec and by every thread and child PROGRAM
//! makes, and can never be removed (so under `--profile`, `execve` and whatever this
//! process does between the filter and the exec must be in the profile, as for a
//! container's entrypoint). The filter is installed by the `seccompiler` crate
//! (Firecracker's), whose `apply_filter` calls `prctl(PR_SET_NO_NEW_PRIVS, 1)` and then
//! `seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)`; the kernel documents that call as
//! equivalent to `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)`, and using the crate
//! keeps this file free of `unsafe`.
//!
//! Exit status: PROGRAM's own (this process becomes PROGRAM); 2 for a usage error; 125
//! when the profile cannot be read or parsed or the filter cannot be built or
//! installed; 127 when PROGRAM cannot be executed.
#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use terminus_testkit::seccomp::{filter, parse_args};

const USAGE: &str = "usage: terminus-seccomp-exec --deny-io-uring eperm|enosys -- PROGRAM [ARGS...]\n\
                     \x20      terminus-seccomp-exec --profile FILE [--strict] -- PROGRAM [ARGS...]";

fn main() -> ExitCode {
    let (mode, program) = match parse_args(std::env::args_os().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("terminus-seccomp-exec: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let installed = filter(&mode)
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))
        .and_then(|prog| {
            seccompiler::apply_filter(&prog)
                .map_err(|e| format!("cannot install the seccomp filter: {e}"))
        });
    if let Err(e) = installed {
        eprintln!("terminus-seccomp-exec: {e}");
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
