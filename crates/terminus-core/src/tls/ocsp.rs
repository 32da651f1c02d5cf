//! ocsp: whether an OCSP response file may be stapled to a served certificate.
//!
//! Owns: [`check_staple`] (the response is a successful basic response, one of its
//! single responses is for this certificate — serial number and issuer name hash —
//! and says `good`, and now lies between its thisUpdate and nextUpdate) and the
//! process-wide count of responses refused.
//!
//! What it does not do: verify the responder's signature. The client does that
//! against its own trust store (stapling only saves it the round trip to the
//! responder), and a terminator has no better root to check it with than the
//! client has. A response refused here is not stapled: the handshake goes on
//! without one, as with no `ocsp` file, and the refusal is logged and counted.
//!
//! I/O contract: none; the caller reads the file (with the certificate, on start
//! and on reload).

use der::Decode;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicU64, Ordering};
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus};

/// Responses refused since start (all listeners): `terminus_ocsp_responses_refused_total`.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Why a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspRefusal {
    #[error("not a DER OCSP response ({0})")]
    Unparsable(String),
    #[error("the responder answered {0:?}, not successful")]
    NotSuccessful(String),
    #[error("not a basic OCSP response")]
    NotBasic,
    #[error("it is for another certificate (no single response matches serial {serial})")]
    OtherCertificate { serial: String },
    #[error("it says the certificate is {0}")]
    NotGood(&'static str),
    #[error("it expired: nextUpdate {next_update} is past")]
    Expired { next_update: String },
    #[error("it is not valid yet: thisUpdate {this_update} is ahead")]
    NotYetValid { this_update: String },
}

/// A response fit to staple: its nextUpdate (Unix seconds), if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staple {
    pub next_update: Option<i64>,
}

/// SHA-1 (RFC 6960's usual CertID hash) and SHA-256.
const SHA1: &str = "1.3.14.3.2.26";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";

/// Check `response` (DER) for `leaf` at `now` (Unix seconds).
pub fn check_staple(
    response: &[u8],
    leaf: &CertificateDer<'_>,
    now: i64,
) -> Result<Staple, OcspRefusal> {
    let unparsable = |e: &dyn std::fmt::Display| OcspRefusal::Unparsable(e.to_string());
    let resp = OcspResponse::from_der(response).map_err(|e| unparsable(&e))?;
    if resp.response_status != OcspResponseStatus::Successful {
        return Err(OcspRefusal::NotSuccessful(format!(
            "{:?}",
            resp.response_status
        )));
    }
    let bytes = resp.response_bytes.ok_or(OcspRefusal::NotBasic)?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|_| OcspRefusal::NotBasic)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| unparsable(&e))?;
    let serial = trim_zeros(cert.tbs_certificate.raw_serial());
    let issuer = cert.issuer().as_raw();
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| {
            let id = &r.cert_id;
            let name_hash = match id.hash_algorithm.oid.to_string().as_str() {
                SHA1 => digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, issuer),
                SHA256 => digest(&aws_lc_rs::digest::SHA256, issuer),
                _ => return false,
            };
            trim_zeros(id.serial_number.as_bytes()) == serial
                && id.issuer_name_hash.as_bytes() == name_hash.as_slice()
        })
        .ok_or_else(|| OcspRefusal::OtherCertificate {
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        })?;
    match single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(_) => return Err(OcspRefusal::NotGood("revoked")),
        CertStatus::Unknown(_) => return Err(OcspRefusal::NotGood("unknown to the responder")),
    }
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    let this_update = secs(&single.this_update);
    if this_update > now + 60 {
        return Err(OcspRefusal::NotYetValid {
            this_update: single.this_update.0.to_date_time().to_string(),
        });
    }
    let next_update = single.next_update.as_ref().map(secs);
    if let (Some(t), Some(raw)) = (next_update, &single.next_update) {
        if t <= now {
            return Err(OcspRefusal::Expired {
                next_update: raw.0.to_date_time().to_string(),
            });
        }
    }
    Ok(Staple { next_update })
}

/// Count a refusal (the caller logs it).
pub fn count_refusal() {
    REFUSED.fetch_add(1, Ordering::Relaxed);
}

fn digest(alg: &'static aws_lc_rs::digest::Algorithm, data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
}

/// DER INTEGER content without sign padding, so both encodings compare equal.
fn trim_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_unparsable_not_a_panic() {
        let leaf = CertificateDer::from(vec![0x30, 0x00]);
        assert!(matches!(
            check_staple(b"\x30\x03\x0a\x01\x00", &leaf, 0),
            Err(OcspRefusal::NotBasic) | Err(OcspRefusal::Unparsable(_))
        ));
        assert!(matches!(
            check_staple(b"nope", &leaf, 0),
            Err(OcspRefusal::Unparsable(_))
        ));
        // tryLater (3), no body.
        assert_eq!(
            check_staple(b"\x30\x03\x0a\x01\x03", &leaf, 0),
            Err(OcspRefusal::NotSuccessful("TryLater".into()))
        );
        assert_eq!(trim_zeros(&[0, 0, 5, 0]), &[5, 0]);
    }
}
