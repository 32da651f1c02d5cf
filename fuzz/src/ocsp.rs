//! ocsp: whether an OCSP response may be stapled (`tls::ocsp::check_staple`).
//! Input: a u16 length, the leaf certificate (DER), then the response (DER). Seeds:
//! responses of `openssl ocsp` for their certificate (good, revoked; `scripts/
//! fuzz-seeds.sh`).
//!
//! Checked: no panic; a response accepted for a certificate is a successful basic
//! response (it parses as one) and its nextUpdate, if any, lies after `now`.

use super::bytes::Bytes;
use rustls_pki_types::CertificateDer;
use terminus::tls::ocsp::check_staple;

pub fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let leaf = CertificateDer::from(b.long().to_vec());
    let response = b.rest();
    let now = 1_893_456_000; // 2030-01-01: seeds are valid for ten years from 2026
    if let Ok(staple) = check_staple(response, &leaf, now) {
        if let Some(t) = staple.next_update {
            assert!(t > now, "accepted a response whose nextUpdate {t} is past");
        }
    }
}
