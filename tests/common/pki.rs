//! Temporary folders, the test PKI (`terminus::tools::certs`, written to files) and
//! the upstream PKI of the re-encryption tests.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use terminus::tools::certs::{LeafSpec, TestCa};

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

/// The two callers of the identity tests (rules, per-caller limits, gRPC).
pub const CHECKOUT: &str = "spiffe://example.org/ns/prod/sa/checkout";
pub const BATCH: &str = "spiffe://example.org/ns/prod/sa/batch";

impl Pki {
    /// A new CA for callers' certificates, written as `client-ca.pem` next to the
    /// configs.
    pub fn client_ca(&self, name: &str) -> TestCa {
        let ca = TestCa::root(name).unwrap();
        std::fs::write(self.dir().join("client-ca.pem"), &ca.pem).unwrap();
        ca
    }

    /// [`Pki::client_ca`] and the callers' files for clients that read files (curl,
    /// Python): `checkout.pem`/`.key` for [`CHECKOUT`], `batch.pem`/`.key` for [`BATCH`].
    pub fn write_callers(&self, ca_name: &str) -> TestCa {
        let ca = self.client_ca(ca_name);
        for (name, id) in [("checkout", CHECKOUT), ("batch", BATCH)] {
            let leaf = ca.leaf(&LeafSpec::client(name, Some(id))).unwrap();
            std::fs::write(self.dir().join(format!("{name}.pem")), &leaf.chain_pem).unwrap();
            std::fs::write(self.dir().join(format!("{name}.key")), &leaf.key_pem).unwrap();
        }
        ca
    }
}

/// Certificates for re-encryption to a TLS upstream, written into `dir` (next to the
/// configs): `upstream-ca.pem` (what terminus trusts upstream), `backend.pem`/`.key`
/// (the upstream's certificate for backend.internal), `rogue.pem`/`.key` (the same
/// name from a CA terminus does not trust), `edge.pem`/`.key` (terminus' client
/// certificate towards the upstream, CN terminus-edge, from `client_ca`; None: from a
/// new CA written as `client-ca.pem`, the file the upstream verifies it with).
pub fn write_upstream_pki(dir: &Path, client_ca: Option<&TestCa>) {
    let write = |name: &str, data: &str| std::fs::write(dir.join(name), data).unwrap();
    let own_ca;
    let client_ca = match client_ca {
        Some(ca) => ca,
        None => {
            own_ca = TestCa::root("edge client CA").unwrap();
            write("client-ca.pem", &own_ca.pem);
            &own_ca
        }
    };
    // The same name from the trusted CA and from one terminus does not trust.
    for (ca_name, leaf_name) in [("upstream CA", "backend"), ("rogue upstream CA", "rogue")] {
        let ca = TestCa::root(ca_name).unwrap();
        let leaf = ca.leaf(&LeafSpec::server(&["backend.internal"])).unwrap();
        if leaf_name == "backend" {
            write("upstream-ca.pem", &ca.pem);
        }
        write(&format!("{leaf_name}.pem"), &leaf.chain_pem);
        write(&format!("{leaf_name}.key"), &leaf.key_pem);
    }
    let edge = client_ca
        .leaf(&LeafSpec::client("terminus-edge", None))
        .unwrap();
    write("edge.pem", &edge.chain_pem);
    write("edge.key", &edge.key_pem);
}
