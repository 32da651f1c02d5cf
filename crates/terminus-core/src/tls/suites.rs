//! tls_policy: the names a listener's `min_version`, `cipher_suites` and `groups`
//! accept, and what they select from the aws-lc-rs provider.
//!
//! Owns: the name tables (rustls' names for suites and groups, as IANA writes them:
//! `TLS13_AES_128_GCM_SHA256`, `X25519MLKEM768`), their lookup (case-insensitive),
//! and the one-line lists `check` prints when a name is unknown.
//! I/O contract: none.
#![forbid(unsafe_code)]

use rustls::crypto::aws_lc_rs::{kx_group, ALL_CIPHER_SUITES};
use rustls::crypto::SupportedKxGroup;
use rustls::SupportedCipherSuite;

/// Every key exchange group the provider has, in the order `groups` lists them in
/// the docs: the defaults first, then the post-quantum variants.
fn all_groups() -> [&'static dyn SupportedKxGroup; 7] {
    [
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
        kx_group::X25519MLKEM768,
        kx_group::SECP256R1MLKEM768,
        kx_group::MLKEM768,
        kx_group::MLKEM1024,
    ]
}

pub fn suite_name(s: &SupportedCipherSuite) -> String {
    format!("{:?}", s.suite())
}

pub fn group_name(g: &dyn SupportedKxGroup) -> String {
    format!("{:?}", g.name())
}

/// The suite called `name` (any case).
pub fn suite(name: &str) -> Option<SupportedCipherSuite> {
    ALL_CIPHER_SUITES
        .iter()
        .find(|s| suite_name(s).eq_ignore_ascii_case(name))
        .copied()
}

/// The group called `name` (any case).
pub fn group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    all_groups()
        .into_iter()
        .find(|g| group_name(*g).eq_ignore_ascii_case(name))
}

/// `"A", "B", ...`: what an unknown name's error lists.
pub fn suite_names() -> String {
    quoted(ALL_CIPHER_SUITES.iter().map(suite_name))
}

pub fn group_names() -> String {
    quoted(all_groups().into_iter().map(group_name))
}

fn quoted(names: impl Iterator<Item = String>) -> String {
    names
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `min_version`: TLS 1.3 only (`"1.3"`) or 1.2 and 1.3 (`"1.2"`, the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl MinVersion {
    pub fn parse(s: &str) -> Result<MinVersion, String> {
        match s {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            _ => Err(format!("must be \"1.2\" or \"1.3\", got {s:?}")),
        }
    }

    /// The protocol versions a server with this minimum offers.
    pub fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &TLS13,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_any_case() {
        let s = suite("tls13_aes_128_gcm_sha256").unwrap();
        assert_eq!(suite_name(&s), "TLS13_AES_128_GCM_SHA256");
        assert!(suite("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256").is_some());
        assert!(suite("TLS_RSA_WITH_RC4_128_SHA").is_none());
        assert_eq!(
            group_name(group("x25519mlkem768").unwrap()),
            "X25519MLKEM768"
        );
        assert_eq!(group_name(group("secp256r1").unwrap()), "secp256r1");
        assert!(group("ffdhe2048").is_none());
        assert!(suite_names().contains("\"TLS13_CHACHA20_POLY1305_SHA256\""));
        assert!(group_names().starts_with("\"X25519\", \"secp256r1\""));
    }

    #[test]
    fn min_version() {
        assert_eq!(MinVersion::parse("1.3").unwrap().versions().len(), 1);
        assert_eq!(MinVersion::parse("1.2").unwrap().versions().len(), 2);
        assert_eq!(
            MinVersion::parse("1.1").unwrap_err(),
            "must be \"1.2\" or \"1.3\", got \"1.1\""
        );
    }
}
