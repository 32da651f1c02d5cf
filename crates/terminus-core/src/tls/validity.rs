//! validity: what certificate and CRL dates say, for `check`, startup and reload.
//!
//! Owns [`cert_dates`] / [`cert_warnings`] (expired, not yet valid, expiring within
//! [`EXPIRY_WARNING_DAYS`], CRLs past their nextUpdate), the per-chain
//! [`validity_findings`] and [`leaf_not_after`] (the expiry gauge).
//!
//! I/O contract: [`cert_dates`] reads the listener's certificate and CRL files; the
//! rest works on bytes already loaded and a `now` given by the caller.

use super::pem::{describe, load_certs, load_crls};
use super::settings::{ClientAuthMode, ListenerTls};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use std::path::Path;

/// Which end of a TLS connection a certificate identifies terminus as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Served to clients (`cert`, `[[listeners.sni]]`).
    Server,
    /// Presented to the upstream (`upstream_tls.cert`).
    Client,
}

/// A served certificate expiring sooner than this many days is worth a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// What the certificates' dates say, for `check`: `problems` are certificates that
/// peers refuse now (expired, not yet valid); `warnings` are certificates expiring
/// within [`EXPIRY_WARNING_DAYS`] and CRLs past their nextUpdate. Covers every
/// certificate of the served chains (`cert`, `[[listeners.sni]]`) and of
/// `upstream_tls.cert`. Unreadable files give nothing (they are errors, reported by
/// [`super::listener_problems`]).
#[derive(Debug, Default)]
pub struct DateFindings {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn cert_dates(l: &ListenerTls) -> DateFindings {
    let now = unix_now();
    let mut out = DateFindings::default();
    let mut chains: Vec<(&Path, Role)> = std::iter::once(&l.cert)
        .chain(l.sni.iter().map(|s| &s.cert))
        .map(|p| (p.as_path(), Role::Server))
        .collect();
    if let Some(cert) = l.upstream_tls.as_ref().and_then(|u| u.cert.as_ref()) {
        chains.push((cert, Role::Client));
    }
    for (path, role) in chains {
        if let Ok(certs) = load_certs(path) {
            for f in validity_findings(path, &certs, role, now) {
                if f.refused {
                    out.problems.push(f.message);
                } else {
                    out.warnings.push(f.message);
                }
            }
        }
    }
    if let Some(ca) = l
        .client_auth
        .as_ref()
        .filter(|c| c.mode != ClientAuthMode::None)
    {
        for path in &ca.crl {
            if let Ok(crls) = load_crls(path) {
                out.warnings
                    .extend(crls.iter().filter_map(|crl| crl_warning(path, crl, now)));
            }
        }
    }
    out
}

/// Warnings that do not stop the listener from starting (what `run` prints): every
/// finding of [`cert_dates`]. An expired or not yet valid certificate is served
/// anyway, so that a late renewal picked up by hot reload fixes a running instance.
pub fn cert_warnings(l: &ListenerTls) -> Vec<String> {
    let d = cert_dates(l);
    d.problems.into_iter().chain(d.warnings).collect()
}

pub(super) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A CRL past its nextUpdate is still used (what it revokes stays revoked), but the
/// operator should know revocations newer than it are not seen.
pub(super) fn crl_warning(
    path: &Path,
    crl: &CertificateRevocationListDer<'_>,
    now: i64,
) -> Option<String> {
    let (_, crl) = x509_parser::parse_x509_crl(crl).ok()?;
    let next = crl.next_update()?;
    (next.timestamp() < now).then(|| {
        format!(
            "{}: CRL of \"{}\" is past its nextUpdate ({next}): still enforced, but newer \
             revocations are not seen; install a fresh CRL",
            path.display(),
            crl.issuer()
        )
    })
}

/// One date finding about a certificate file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DateFinding {
    /// Peers refuse the certificate now (expired or not yet valid).
    pub(super) refused: bool,
    pub(super) message: String,
}

/// Date findings for each certificate of a chain file (leaf first): expired, not
/// yet valid, expiring within [`EXPIRY_WARNING_DAYS`]. The leaf is "certificate",
/// the others "certificate #N (\"SUBJECT\")".
pub(super) fn validity_findings(
    path: &Path,
    chain: &[CertificateDer<'_>],
    role: Role,
    now: i64,
) -> Vec<DateFinding> {
    let who = match role {
        Role::Server => "clients",
        Role::Client => "the upstream",
    };
    let mut out = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        let Some((refused, why)) = date_problem(&cert, who, now) else {
            continue;
        };
        let what = if i == 0 {
            "certificate".to_owned()
        } else {
            format!("certificate #{} ({})", i + 1, describe(&cert))
        };
        out.push(DateFinding {
            refused,
            message: format!("{}: {what} {why}", path.display()),
        });
    }
    out
}

/// What one certificate's dates say at `now`, if anything: (refused by `who`, why).
fn date_problem(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    who: &str,
    now: i64,
) -> Option<(bool, String)> {
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    let left = not_after.timestamp() - now;
    if left < 0 {
        let why = format!("expired: notAfter {not_after} ({who} will reject it)");
        Some((true, why))
    } else if not_before.timestamp() > now {
        let dates = format!("notBefore {not_before}, notAfter {not_after}");
        Some((
            true,
            format!("not yet valid: {dates} ({who} will reject it)"),
        ))
    } else if left < EXPIRY_WARNING_DAYS * 86400 {
        let when = time_left(left);
        let why = format!("expires in {when}: notAfter {not_after}; renew it");
        Some((false, why))
    } else {
        None
    }
}

/// `5 days`, `1 day`, `2 hours`: rounded to the nearest day, or up to the hour under
/// a day.
fn time_left(seconds: i64) -> String {
    let plural = |n: i64| if n == 1 { "" } else { "s" };
    if seconds < 86400 {
        let hours = (seconds + 3599) / 3600;
        format!("{hours} hour{}", plural(hours))
    } else {
        let days = (seconds + 43200) / 86400;
        format!("{days} day{}", plural(days))
    }
}

/// The leaf certificate's notAfter as a Unix timestamp (for the expiry gauge).
pub fn leaf_not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(cert.validity().not_after.timestamp())
}
