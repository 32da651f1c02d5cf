//! backend: which I/O driver a run uses — `[runtime] io` resolved against what this
//! host's kernel allows, by probing io_uring the way a worker would use it.
//!
//! I/O contract: sets up and tears down one small io_uring (the probe).
#![forbid(unsafe_code)]

use crate::config::IoSetting;
use crate::runtime::driver::{Backend, Driver};
use crate::runtime::uring::{Uring, UringConfig, UringError};
use std::time::Duration;

/// The backend a run uses, and why `auto` did not pick io_uring.
#[derive(Debug)]
pub struct IoChoice {
    pub backend: Backend,
    /// `auto` fell back to epoll: what stopped io_uring (its cause and fix).
    pub fallback: Option<UringError>,
}

/// Resolve the setting against this host. `auto` and `io_uring` probe io_uring
/// the way a worker uses it: a ring with the worker's setup flags, every data-path
/// opcode, a registered buffer ring and one `io_uring_enter` — so a filter that
/// allows `io_uring_setup` but blocks `io_uring_enter` or `io_uring_register` is
/// caught here too, not in the workers.
pub fn choose_backend(setting: IoSetting) -> Result<IoChoice, UringError> {
    let probe = || -> Result<(), UringError> {
        let mut ring = Uring::<()>::new(UringConfig {
            entries: 8,
            sqpoll: false,
            recv_buffers: 1,
            recv_buffer_size: 4096,
        })?;
        ring.submit_and_wait(Duration::ZERO)
            .map_err(UringError::Enter)
    };
    let (backend, fallback) = match setting {
        IoSetting::Epoll => (Backend::Epoll, None),
        IoSetting::IoUring => {
            probe()?;
            (Backend::IoUring, None)
        }
        IoSetting::Auto => match probe() {
            Ok(()) => (Backend::IoUring, None),
            Err(e) => (Backend::Epoll, Some(e)),
        },
    };
    Ok(IoChoice { backend, fallback })
}
