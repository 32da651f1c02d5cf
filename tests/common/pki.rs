//! Temporary folders and the test PKI (`terminus::tools::certs`, written to files).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "terminus-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The test PKI of `terminus certs` (`terminus::tools::certs::generate`, the same
/// defaults: 365 days, trust domain `example.org`) written into its own temp dir.
/// Configs are written into the same dir so that `cert = "server.pem"` resolves next
/// to them.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = TempDir::new("pki");
        terminus::tools::certs::generate(dir.path(), 365, "example.org")
            .unwrap_or_else(|e| panic!("test PKI in {}: {e:#}", dir.path().display()));
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca_pem()).expect("open ca.pem") {
            roots
                .add(cert.expect("parse ca.pem"))
                .expect("add CA to root store");
        }
        assert!(!roots.is_empty(), "ca.pem holds no certificate");
        roots
    }
}
