//! The source tree as the structural tests (layers.rs, sizes.rs) read it.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The crates' source folders: src/ and every member crate's src/.
pub fn crate_sources() -> Vec<PathBuf> {
    let mut out = vec![root().join("src")];
    if let Ok(crates) = std::fs::read_dir(root().join("crates")) {
        for c in crates.flatten() {
            out.push(c.path().join("src"));
        }
    }
    out
}

/// Every `.rs` file below `dir`, appended to `out`.
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}
