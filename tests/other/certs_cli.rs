//! `terminus certs` as a user runs it: a `--days` no certificate can hold is a usage
//! error (exit 2, one line saying the largest value), not a panic.

use crate::common::{bin, TempDir};
use std::process::Command;

#[test]
fn days_beyond_year_9999_are_a_usage_error() {
    let tmp = TempDir::new("certs-days");
    let out_dir = tmp.path().join("pki");
    let out = Command::new(bin())
        .args(["certs", "--days", "4294967295", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ends after 9999-12-31") && err.contains("use at most"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out_dir.exists(), "nothing written on a usage error");

    // The largest value it suggests works.
    let max: String = err.rsplit("use at most ").next().unwrap().trim().into();
    let ok = Command::new(bin())
        .args(["certs", "--days", &max, "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out_dir.join("server.pem").is_file());
}
