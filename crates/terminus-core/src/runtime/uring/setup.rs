//! Ring construction: setup flags, the opcode probe, and why a host cannot run us.
//!
//! Owns: [`UringError`] (the cause and the fix, for `run` and `check --host`).
//! I/O contract: creates rings and asks the kernel which opcodes it has.

use io_uring::{opcode, IoUring};
use std::io;

/// Why io_uring cannot be used on this host, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring is disabled by sysctl kernel.io_uring_disabled={0}; run `sysctl -w kernel.io_uring_disabled=0` (or add this process's group to kernel.io_uring_group)")]
    DisabledBySysctl(String),
    #[error("io_uring_setup is not permitted ({0}): a seccomp profile (e.g. a container runtime's default) blocks it; run with a profile that allows io_uring_setup/io_uring_enter/io_uring_register, such as deploy/seccomp-io_uring.json")]
    NotPermitted(io::Error),
    #[error("io_uring is not supported by this kernel ({0}); terminus needs Linux >= 6.0 (multishot accept, provided buffer rings)")]
    NotSupported(io::Error),
    /// ENOSYS from a kernel that has io_uring: a seccomp filter answers for it.
    #[error("io_uring_setup is filtered ({source}): Linux {release} has io_uring, so a seccomp filter (e.g. a container runtime's default profile) answers ENOSYS for it; run with a profile that allows io_uring_setup/io_uring_enter/io_uring_register, such as deploy/seccomp-io_uring.json")]
    Filtered { source: io::Error, release: String },
    #[error("io_uring_enter failed ({0}): a seccomp profile may allow io_uring_setup but not io_uring_enter; allow io_uring_enter/io_uring_register too")]
    Enter(io::Error),
    #[error("io_uring ring memory could not be allocated ({0}): raise RLIMIT_MEMLOCK (`ulimit -l`, systemd LimitMEMLOCK=) or lower runtime.ring_entries / recv_buffers")]
    NoMemory(io::Error),
    #[error("io_uring opcode {0} is not supported by this kernel; terminus needs Linux >= 6.0")]
    MissingOpcode(&'static str),
    #[error("io_uring setup failed: {0}")]
    Other(io::Error),
}

fn classify_setup_error(e: io::Error) -> UringError {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match e.raw_os_error() {
        Some(libc::EPERM) if !sysctl.is_empty() && sysctl != "0" => {
            UringError::DisabledBySysctl(sysctl)
        }
        Some(libc::EPERM) | Some(libc::EACCES) => UringError::NotPermitted(e),
        Some(libc::ENOSYS) => match kernel_release() {
            Some((release, version)) if version >= (5, 1) => {
                UringError::Filtered { source: e, release }
            }
            _ => UringError::NotSupported(e),
        },
        Some(libc::ENOMEM) => UringError::NoMemory(e),
        _ => UringError::Other(e),
    }
}

/// The running kernel's release (`uname -r`) and (major, minor) version; io_uring
/// exists from 5.1 on.
fn kernel_release() -> Option<(String, (u32, u32))> {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let r = r.trim().to_string();
    let mut v = r.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    let version = (v.next()??, v.next()??);
    Some((r, version))
}

/// Every opcode the data path submits: (opcode, name in errors, what it is used for).
/// [`super::Uring::new`] refuses a kernel that lacks any; `terminus check --host`
/// lists them.
pub const DATA_PATH_OPCODES: [(u8, &str, &str); 7] = [
    (opcode::AcceptMulti::CODE, "ACCEPT", "multishot accept"),
    (opcode::RecvMulti::CODE, "RECV", "recv with buffer select"),
    (opcode::Send::CODE, "SEND", "send"),
    (opcode::Connect::CODE, "CONNECT", "upstream connect"),
    (opcode::Shutdown::CODE, "SHUTDOWN", "half-close"),
    (opcode::Close::CODE, "CLOSE", "close"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL", "cancel"),
];

/// Ring construction parameters.
#[derive(Debug, Clone, Copy)]
pub struct UringConfig {
    pub entries: u32,
    pub sqpoll: bool,
    pub recv_buffers: u16,
    pub recv_buffer_size: u32,
}

/// Create a ring with the setup flags a worker uses (SQPOLL, or DEFER_TASKRUN +
/// SINGLE_ISSUER falling back to a plain ring on kernels without them).
pub fn build_ring(cfg: &UringConfig) -> Result<IoUring, UringError> {
    let mut b = IoUring::builder();
    if cfg.sqpoll {
        b.setup_sqpoll(1000);
    } else {
        // Completions are processed only when we ask for them: fewer interrupts.
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    b.setup_cqsize(cfg.entries.saturating_mul(4));
    match b.build(cfg.entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !cfg.sqpoll => {
            // Older kernels lack DEFER_TASKRUN; try the plain setup.
            IoUring::builder()
                .setup_cqsize(cfg.entries.saturating_mul(4))
                .build(cfg.entries)
                .map_err(classify_setup_error)
        }
        Err(e) => Err(classify_setup_error(e)),
    }
}

/// Ask the kernel (IORING_REGISTER_PROBE) which of [`DATA_PATH_OPCODES`] it supports.
pub fn probe_opcodes(ring: &IoUring) -> Result<Vec<(u8, &'static str, bool)>, UringError> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringError::Other)?;
    Ok(DATA_PATH_OPCODES
        .iter()
        .map(|&(code, name, _)| (code, name, probe.is_supported(code)))
        .collect())
}
