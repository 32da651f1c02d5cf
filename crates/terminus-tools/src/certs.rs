//! certs: `terminus certs`, the test PKI of [`terminus_testkit::certs`] written to
//! a folder, with the trust domain checked by the rule the verifier enforces.
#![forbid(unsafe_code)]

use anyhow::bail;
use std::path::Path;
pub use terminus_testkit::certs::*;

/// `terminus certs --out DIR --days N --trust-domain TD`.
pub fn generate(out: &Path, days: u32, trust_domain: &str) -> anyhow::Result<()> {
    check_trust_domain(trust_domain)?;
    terminus_testkit::certs::generate(out, days, trust_domain)
}

/// SPIFFE trust domain names, by the rule the verifier enforces
/// (`tls::identity::check_trust_domain`); the CLI keeps its own one-line hint.
fn check_trust_domain(td: &str) -> anyhow::Result<()> {
    if terminus_core::tls::identity::check_trust_domain(td).is_err() {
        bail!(
            "invalid trust domain {td:?}: use lowercase letters, digits, '.', '-' and '_' \
             (e.g. example.org)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_trust_domains() {
        let dir = std::env::temp_dir().join(format!("terminus-certs-td-{}", std::process::id()));
        let e = generate(&dir, 1, "Example.org/x").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid trust domain \"Example.org/x\": use lowercase letters, digits, '.', '-' \
             and '_' (e.g. example.org)"
        );
        for bad in ["", "example.org:443", "*.example.org", "user@example.org"] {
            assert!(generate(&dir, 1, bad).is_err(), "{bad:?}");
        }
        for good in ["example.org", "prod.example", "a-b_c.1"] {
            check_trust_domain(good).unwrap();
        }
        assert!(!dir.exists());
    }
}
