//! notify: the systemd readiness protocol (`sd_notify`), without libsystemd.
//!
//! Owns: [`notify`], which sends one datagram (`READY=1`, `STOPPING=1`, `STATUS=…`)
//! to the socket named by `NOTIFY_SOCKET`: a path, or an abstract address written
//! `@name`. Unset or empty: nothing is sent.
//! I/O contract: one unbound unix datagram socket per message, on the caller's
//! thread (startup and the signal thread, never a worker).
#![forbid(unsafe_code)]

use std::os::unix::net::UnixDatagram;

/// The environment variable systemd (`Type=notify`) sets for the service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("{NOTIFY_SOCKET}={socket}: {source}")]
    Send {
        socket: String,
        source: std::io::Error,
    },
}

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A filesystem path.
    Path(std::path::PathBuf),
    /// A Linux abstract socket name (the value's leading `@` stripped).
    Abstract(Vec<u8>),
}

/// Parse a `NOTIFY_SOCKET` value; None when empty.
pub fn parse_target(value: &str) -> Option<NotifyTarget> {
    if value.is_empty() {
        return None;
    }
    Some(match value.strip_prefix('@') {
        Some(name) => NotifyTarget::Abstract(name.as_bytes().to_vec()),
        None => NotifyTarget::Path(value.into()),
    })
}

/// Send `state` (newline-separated `KEY=value` lines) when `NOTIFY_SOCKET` is set.
/// Ok(false): not under a notify-aware supervisor.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Ok(value) = std::env::var(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let Some(target) = parse_target(&value) else {
        return Ok(false);
    };
    let err = |source| NotifyError::Send {
        socket: value.clone(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    match target {
        NotifyTarget::Path(p) => sock.send_to(state.as_bytes(), p),
        NotifyTarget::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(err)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        }
    }
    .map_err(err)?;
    Ok(true)
}

/// [`notify`], with a failure reported on stderr (the service keeps running: systemd
/// then times out the start, which names the cause better than an exit would).
pub fn notify_or_warn(state: &str) {
    if let Err(e) = notify(state) {
        crate::op_warn!("sd_notify: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_paths_or_abstract_names() {
        assert_eq!(parse_target(""), None);
        assert_eq!(
            parse_target("/run/systemd/notify"),
            Some(NotifyTarget::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target("@sd-notify"),
            Some(NotifyTarget::Abstract(b"sd-notify".to_vec()))
        );
    }

    #[test]
    fn abstract_address_receives_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("terminus-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        let Some(NotifyTarget::Abstract(n)) = parse_target(&format!("@{name}")) else {
            panic!("not abstract")
        };
        let to = std::os::unix::net::SocketAddr::from_abstract_name(n).unwrap();
        tx.send_to_addr(b"READY=1", &to).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
