//! gRPC peers in Python (grpcio from `.ci/run`'s venv): the upstream of
//! tests/e2e/grpc.rs and tests/e2e/h2_attacks.rs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The Python of `.ci/run`'s venv (grpcio), or `TERMINUS_GRPC_PYTHON`.
pub fn grpc_python() -> PathBuf {
    let path = std::env::var_os("TERMINUS_GRPC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/ci-venv/bin/python"));
    let ok = Command::new(&path)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import grpc: `.ci/run` installs it (target/ci-venv/bin/pip install grpcio)",
        path.display()
    );
    path
}

/// tests/grpc/upstream.py (cleartext h2), killed on drop.
pub struct GrpcUpstream {
    child: Child,
    pub addr: SocketAddr,
}

impl GrpcUpstream {
    /// In cleartext (h2 prior knowledge).
    pub fn start() -> GrpcUpstream {
        GrpcUpstream::spawn(&[])
    }

    /// Over TLS (ALPN h2) with `cert`/`key`, requiring a client certificate from `ca`.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> GrpcUpstream {
        GrpcUpstream::spawn(&[cert, key, ca])
    }

    fn spawn(args: &[&Path]) -> GrpcUpstream {
        let mut child = Command::new(grpc_python())
            .arg(Path::new(ROOT).join("tests/grpc/upstream.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn upstream.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("port: {line:?}"));
        GrpcUpstream {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
