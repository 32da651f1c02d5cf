//! PROXY protocol version 2 (haproxy.org `proxy-protocol.txt`, section 2.2): the
//! binary header terminus sends to an upstream before the client's bytes when a
//! listener has `proxy_protocol = "v2"` (the tests' parser for it is
//! `terminus_testkit::proxy_v2`).
//!
//! What the header carries:
//!
//! | TLV | type | value |
//! |---|---|---|
//! | `PP2_TYPE_ALPN` | `0x01` | the negotiated ALPN protocol |
//! | `PP2_TYPE_AUTHORITY` | `0x02` | the client's SNI server name (UTF-8) |
//! | `PP2_TYPE_UNIQUE_ID` | `0x05` | an opaque connection ID, at most 128 bytes |
//! | `PP2_TYPE_SSL` | `0x20` | `client` bits, `verify` (u32, 0 = a client certificate was presented and verified), then sub-TLVs |
//! | `PP2_SUBTYPE_SSL_VERSION` | `0x21` | `TLSv1.3`, `TLSv1.2` |
//! | `PP2_SUBTYPE_SSL_CN` | `0x22` | the client certificate's subject CN |
//! | `PP2_SUBTYPE_SSL_CIPHER` | `0x23` | OpenSSL name, e.g. `TLS_AES_128_GCM_SHA256`, `ECDHE-ECDSA-AES128-GCM-SHA256` |
//! | `PP2_SUBTYPE_SSL_SIG_ALG` | `0x24` | signature algorithm of terminus' certificate, e.g. `ecdsa-with-SHA256` |
//! | `PP2_SUBTYPE_SSL_KEY_ALG` | `0x25` | key algorithm of terminus' certificate, e.g. `EC256`, `RSA2048` |
//! | `PP2_SUBTYPE_SSL_CLIENT_CERT` | `0x28` | the verified client's leaf certificate, DER (`proxy_protocol_client_cert = true`) |
//! | **`PP2_TYPE_TERMINUS_SPIFFE_ID`** | **`0xE0`** | the verified client's SPIFFE ID (UTF-8), e.g. `spiffe://example.org/ns/prod/sa/billing` |
//!
//! `0xE0` is the first type of the range the specification reserves for custom,
//! application-specific TLVs (`PP2_TYPE_MIN_CUSTOM` … `PP2_TYPE_MAX_CUSTOM`,
//! `0xE0`…`0xEF`); consumers that do not know it skip it (HAProxy ≥ 2.9 can read it
//! with `fc_pp_tlv(0xE0)`). It is only sent for a client whose certificate was
//! verified. `client` bits of `PP2_TYPE_SSL`: `PP2_CLIENT_SSL` (`0x01`, always),
//! `PP2_CLIENT_CERT_CONN` (`0x02`, a certificate was presented on this connection),
//! `PP2_CLIENT_CERT_SESS` (`0x04`, a certificate was presented in this TLS session,
//! possibly on an earlier connection the session resumed).
//!
//! Addresses: `TCP4` when both ends are IPv4 (IPv4-mapped IPv6 addresses count as
//! IPv4), otherwise `TCP6` with IPv4 addresses mapped.
//!
//! I/O contract: pure; encodes into a byte vector.
#![forbid(unsafe_code)]

use crate::tls::identity::{CertAlgorithms, PeerIdentity};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
pub const VERSION_COMMAND_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (health checks; no addresses).
pub const VERSION_COMMAND_LOCAL: u8 = 0x20;
pub const FAMILY_UNSPEC: u8 = 0x00;
pub const FAMILY_TCP4: u8 = 0x11;
pub const FAMILY_TCP6: u8 = 0x21;

pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
pub const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
pub const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;
/// The client's leaf certificate, DER (HAProxy's `PP2_SUBTYPE_SSL_CLIENT_CERT`).
pub const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;
/// terminus' custom TLV (`PP2_TYPE_MIN_CUSTOM`): the client's SPIFFE ID.
pub const PP2_TYPE_TERMINUS_SPIFFE_ID: u8 = 0xE0;

pub const PP2_CLIENT_SSL: u8 = 0x01;
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// The longest `PP2_TYPE_UNIQUE_ID` the specification allows.
pub const MAX_UNIQUE_ID: usize = 128;
/// The longest `PP2_TYPE_AUTHORITY` HAProxy accepts (`HA_PP2_AUTHORITY_MAX`; a
/// longer one fails the header).
pub const MAX_AUTHORITY: usize = 255;
/// The longest TLV value HAProxy accepts (`HA_PP2_MAX_ALLOC`, HAProxy 2.9+: a longer
/// one drops the connection); the `PP2_TYPE_SSL` value with its sub-TLVs counts whole.
pub const MAX_TLV_VALUE: usize = 1024;

/// Fixed part: signature, version/command, family, length.
const FIXED_LEN: usize = 16;

/// A PROXY v2 header for one proxied TCP connection (command PROXY).
///
/// A TLV that HAProxy would refuse (a unique ID over 128 bytes, an authority over
/// 255, any value over 1024 — a SPIFFE ID may be 2048 — or an SSL sub-TLV that
/// would make the SSL TLV so long, such as a huge CN) is left out, never truncated
/// (found by the `proxy_v2` fuzz target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The client's address.
    pub src: SocketAddr,
    /// The address the client connected to (terminus' listener).
    pub dst: SocketAddr,
    pub alpn: Option<Vec<u8>>,
    /// The client's SNI.
    pub authority: Option<String>,
    pub ssl: Option<Ssl>,
    /// The verified client's SPIFFE ID (custom TLV `0xE0`).
    pub spiffe: Option<String>,
    pub unique_id: Option<Vec<u8>>,
}

impl Header {
    /// A header with `src` and `dst` and no TLVs.
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Header {
        Header {
            src,
            dst,
            alpn: None,
            authority: None,
            ssl: None,
            spiffe: None,
            unique_id: None,
        }
    }

    /// The header terminus sends for an established client connection: its
    /// addresses (`src` the client, `dst` the address it connected to), ALPN, SNI,
    /// the client-side TLS facts, the certificate terminus served (`served`) and the
    /// verified identity (`peer`: the chain the enforced policy verified; a
    /// certificate asked for only by a candidate policy, or admitted as anonymous,
    /// is not one, and the header reads as if none was presented). Add the leaf
    /// certificate itself with [`Header::with_client_cert`].
    pub fn for_client(
        tls: &rustls::CommonState,
        peer: Option<&[rustls_pki_types::CertificateDer<'_>]>,
        server_name: Option<&str>,
        served: &CertAlgorithms,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Header {
        // Parsed here, not after every handshake: only PROXY v2 needs it (for now).
        let identity = peer
            .and_then(|c| c.first())
            .and_then(|der| PeerIdentity::from_der(der).ok());
        let identity = identity.as_ref();
        Header {
            src,
            dst,
            alpn: tls.alpn_protocol().map(|p| p.to_vec()),
            authority: server_name.map(str::to_owned),
            ssl: Some(Ssl {
                client_cert_presented: peer.is_some_and(|c| !c.is_empty()),
                verified: peer.is_some_and(|c| !c.is_empty()),
                ..Ssl::from_tls(tls, Some(served), identity)
            }),
            spiffe: identity.and_then(|i| i.spiffe.clone()),
            unique_id: None,
        }
    }

    /// Carry the verified client's leaf (`peer`'s first certificate) in
    /// `PP2_SUBTYPE_SSL_CLIENT_CERT`.
    pub fn with_client_cert(
        mut self,
        peer: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    ) -> Self {
        if let (Some(ssl), Some(leaf)) = (self.ssl.as_mut(), peer.and_then(|c| c.first())) {
            ssl.client_cert = Some(leaf.as_ref().to_vec());
        }
        self
    }
}

/// The `PP2_TYPE_SSL` TLV: what the client-facing TLS connection was like.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ssl {
    /// The client presented a certificate (in this TLS session).
    pub client_cert_presented: bool,
    /// The session was resumed, so the certificate (if any) was presented on an
    /// earlier connection: `PP2_CLIENT_CERT_SESS` without `PP2_CLIENT_CERT_CONN`.
    pub resumed: bool,
    /// The presented certificate was verified (`verify` = 0).
    pub verified: bool,
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: Option<String>,
    /// The client certificate's subject CN.
    pub cn: Option<String>,
    /// OpenSSL cipher name.
    pub cipher: Option<String>,
    /// Signature algorithm of the certificate terminus served.
    pub sig_alg: Option<String>,
    /// Key algorithm of the certificate terminus served.
    pub key_alg: Option<String>,
    /// The verified client's leaf certificate, DER (last of the sub-TLVs).
    pub client_cert: Option<Vec<u8>>,
}

impl Ssl {
    /// Describe an established client connection: its version and cipher, the
    /// verified client certificate's CN (`peer`), and the algorithms of the
    /// certificate terminus served (`served`, see `tls::SniResolver::choose`).
    pub fn from_tls(
        conn: &rustls::CommonState,
        served: Option<&CertAlgorithms>,
        peer: Option<&PeerIdentity>,
    ) -> Ssl {
        let presented = conn.peer_certificates().is_some_and(|c| !c.is_empty());
        Ssl {
            client_cert_presented: presented,
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            // terminus never completes a handshake with a certificate it did not verify.
            verified: presented,
            version: conn.protocol_version().map(|v| version_name(v).to_owned()),
            cn: peer.and_then(|p| p.cn.clone()),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| cipher_name(s.suite())),
            sig_alg: served.map(|a| a.sig_alg.clone()),
            key_alg: served.map(|a| a.key_alg.clone()),
            client_cert: None,
        }
    }

    fn client_bits(&self) -> u8 {
        let mut bits = PP2_CLIENT_SSL;
        if self.client_cert_presented {
            bits |= PP2_CLIENT_CERT_SESS;
            if !self.resumed {
                bits |= PP2_CLIENT_CERT_CONN;
            }
        }
        bits
    }
}

/// OpenSSL's (and HAProxy's) name of a protocol version; also the access log's
/// `tls_version`. rustls negotiates nothing but these two.
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// OpenSSL's name of a cipher suite (what HAProxy puts in `PP2_SUBTYPE_SSL_CIPHER`).
pub fn cipher_name(s: rustls::CipherSuite) -> String {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => return format!("{other:?}"),
    }
    .into()
}

impl Header {
    /// Append the header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&SIGNATURE);
        out.push(VERSION_COMMAND_PROXY);
        match (as_v4(self.src), as_v4(self.dst)) {
            (Some(src), Some(dst)) => {
                out.push(FAMILY_TCP4);
                out.extend_from_slice(&[0, 12]);
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            _ => {
                out.push(FAMILY_TCP6);
                out.extend_from_slice(&[0, 36]);
                out.extend_from_slice(&as_v6(self.src.ip()).octets());
                out.extend_from_slice(&as_v6(self.dst.ip()).octets());
                out.extend_from_slice(&self.src.port().to_be_bytes());
                out.extend_from_slice(&self.dst.port().to_be_bytes());
            }
        }
        let mut w = TlvWriter { out, start };
        if let Some(alpn) = &self.alpn {
            w.tlv(PP2_TYPE_ALPN, alpn);
        }
        if let Some(authority) = self.authority.as_ref().filter(|a| a.len() <= MAX_AUTHORITY) {
            w.tlv(PP2_TYPE_AUTHORITY, authority.as_bytes());
        }
        if let Some(id) = self
            .unique_id
            .as_ref()
            .filter(|id| id.len() <= MAX_UNIQUE_ID)
        {
            w.tlv(PP2_TYPE_UNIQUE_ID, id);
        }
        if let Some(ssl) = &self.ssl {
            let mut value = Vec::with_capacity(64);
            value.push(ssl.client_bits());
            let verify: u32 = if ssl.client_cert_presented && ssl.verified {
                0
            } else {
                1
            };
            value.extend_from_slice(&verify.to_be_bytes());
            for (kind, v) in [
                (PP2_SUBTYPE_SSL_VERSION, &ssl.version),
                (PP2_SUBTYPE_SSL_CN, &ssl.cn),
                (PP2_SUBTYPE_SSL_CIPHER, &ssl.cipher),
                (PP2_SUBTYPE_SSL_SIG_ALG, &ssl.sig_alg),
                (PP2_SUBTYPE_SSL_KEY_ALG, &ssl.key_alg),
            ] {
                if let Some(v) = v
                    .as_ref()
                    .filter(|v| value.len() + 3 + v.len() <= MAX_TLV_VALUE)
                {
                    push_tlv(&mut value, kind, v.as_bytes());
                }
            }
            // The certificate is asked for explicitly (`proxy_protocol_client_cert`),
            // for a consumer that reads it: it is bound by the header's 16-bit
            // length only, not by HAProxy's 1024-byte cap (HAProxy ≥ 2.9 refuses
            // such a header, and no HAProxy reads 0x28). Only if the whole SSL TLV
            // still fits (see `Header::encode_checked`).
            let room = w.room().saturating_sub(3 + value.len());
            match &ssl.client_cert {
                Some(cert) if cert.len() + 3 <= room => {
                    push_tlv(&mut value, PP2_SUBTYPE_SSL_CLIENT_CERT, cert);
                    push_tlv(w.out, PP2_TYPE_SSL, &value);
                }
                _ => w.tlv(PP2_TYPE_SSL, &value),
            }
        }
        if let Some(spiffe) = &self.spiffe {
            w.tlv(PP2_TYPE_TERMINUS_SPIFFE_ID, spiffe.as_bytes());
        }
        let len = out.len() - start - FIXED_LEN;
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        out[start + 14..start + 16].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded header as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }

    /// The encoded header, or why the client certificate it should carry does not
    /// fit within the 16-bit length of a v2 header (the caller must not send a
    /// header without it: the upstream would take the client for one without a
    /// certificate).
    pub fn encode_checked(&self) -> Result<Vec<u8>, CertTooLarge> {
        let mut out = Vec::with_capacity(
            128 + self
                .ssl
                .as_ref()
                .and_then(|s| s.client_cert.as_ref())
                .map_or(0, Vec::len),
        );
        self.encode(&mut out);
        let Some(cert) = self.ssl.as_ref().and_then(|s| s.client_cert.as_ref()) else {
            return Ok(out);
        };
        let mut without = self.clone();
        if let Some(ssl) = without.ssl.as_mut() {
            ssl.client_cert = None;
        }
        let rest = without.to_bytes().len() - FIXED_LEN;
        if out.len() - FIXED_LEN >= rest + 3 + cert.len() {
            return Ok(out);
        }
        Err(CertTooLarge {
            cert: cert.len(),
            room: usize::from(u16::MAX).saturating_sub(rest + 3),
        })
    }
}

/// A client certificate too large for a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate ({cert} bytes) does not fit in a PROXY v2 header (room for {room} bytes): proxy_protocol_client_cert")]
pub struct CertTooLarge {
    pub cert: usize,
    pub room: usize,
}

/// Appends TLVs while the header stays within the 16-bit length field.
struct TlvWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl TlvWriter<'_> {
    /// Bytes left before the header's length field overflows.
    fn room(&self) -> usize {
        usize::from(u16::MAX).saturating_sub(self.out.len() - self.start - FIXED_LEN)
    }

    fn tlv(&mut self, kind: u8, value: &[u8]) {
        let after = self.out.len() - self.start - FIXED_LEN + 3 + value.len();
        if value.len() <= MAX_TLV_VALUE && after <= usize::from(u16::MAX) {
            push_tlv(self.out, kind, value);
        }
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
}

fn as_v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, a.port())),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Header {
        let (src, dst) = ("[2001:db8::1]:40000", "[2001:db8::2]:8443");
        Header::new(src.parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn tcp4_bytes_are_exactly_as_specified() {
        let h = Header {
            src: "10.0.0.1:1000".parse().unwrap(),
            dst: "10.0.0.2:443".parse().unwrap(),
            authority: Some("a.b".into()),
            ..minimal()
        };
        let bytes = h.to_bytes();
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 18]);
        want.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x03, 0xe8, 0x01, 0xbb]);
        want.extend_from_slice(&[0x02, 0, 3, b'a', b'.', b'b']);
        assert_eq!(bytes, want);
    }

    #[test]
    fn ssl_tlv_bytes() {
        let h = Header {
            ssl: Some(Ssl {
                client_cert_presented: true,
                verified: true,
                version: Some("TLSv1.3".into()),
                ..Ssl::default()
            }),
            ..minimal()
        };
        let bytes = h.to_bytes();
        let tlvs = &bytes[16 + 36..];
        let mut want = vec![0x20, 0, 15, 0x07, 0, 0, 0, 0];
        want.extend_from_slice(&[0x21, 0, 7]);
        want.extend_from_slice(b"TLSv1.3");
        assert_eq!(tlvs, &want[..]);
        // No certificate: only PP2_CLIENT_SSL, verify non-zero.
        let h = Header {
            ssl: Some(Ssl::default()),
            ..minimal()
        };
        assert_eq!(&h.to_bytes()[16 + 36..], &[0x20, 0, 5, 0x01, 0, 0, 0, 1]);
        // Resumed session with a certificate: CERT_SESS only.
        let h = Header {
            ssl: Some(Ssl {
                client_cert_presented: true,
                resumed: true,
                verified: true,
                ..Ssl::default()
            }),
            ..minimal()
        };
        assert_eq!(&h.to_bytes()[16 + 36..], &[0x20, 0, 5, 0x05, 0, 0, 0, 0]);
    }

    #[test]
    fn names_for_versions_and_ciphers() {
        assert_eq!(version_name(rustls::ProtocolVersion::TLSv1_3), "TLSv1.3");
        assert_eq!(version_name(rustls::ProtocolVersion::TLSv1_2), "TLSv1.2");
        assert_eq!(
            cipher_name(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "TLS_AES_128_GCM_SHA256"
        );
        assert_eq!(
            cipher_name(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
            "ECDHE-ECDSA-AES128-GCM-SHA256"
        );
    }

    #[test]
    fn the_client_cert_is_the_last_ssl_sub_tlv_or_a_clear_error_when_it_cannot_fit() {
        let with = |n: usize| Header {
            ssl: Some(Ssl {
                client_cert_presented: true,
                verified: true,
                version: Some("TLSv1.3".into()),
                client_cert: Some(vec![0xAB; n]),
                ..Ssl::default()
            }),
            ..minimal()
        };
        let bytes = with(3).encode_checked().unwrap();
        // SSL TLV: client bits, verify, VERSION, then CLIENT_CERT.
        let ssl = &bytes[16 + 36..];
        assert_eq!(&ssl[..3], &[0x20, 0, 5 + 3 + 7 + 3 + 3]);
        assert_eq!(&ssl[3 + 5 + 3 + 7..], &[0x28, 0, 3, 0xAB, 0xAB, 0xAB]);
        // The largest certificate that fits: the header's length field is full.
        let fixed = 36 + 3 + 5 + 3 + 7 + 3;
        let max = usize::from(u16::MAX) - fixed;
        let bytes = with(max).encode_checked().unwrap();
        assert_eq!(&bytes[14..16], &[0xff, 0xff]);
        assert_eq!(bytes.len(), 16 + usize::from(u16::MAX));
        let err = with(max + 1).encode_checked().unwrap_err();
        assert_eq!(
            err,
            CertTooLarge {
                cert: max + 1,
                room: max
            }
        );
        assert!(
            err.to_string()
                .contains("does not fit in a PROXY v2 header"),
            "{err}"
        );
        // Past HAProxy's 1024-byte TLV cap: asked for, so sent.
        let bytes = with(4000).encode_checked().unwrap();
        assert_eq!(bytes.len(), 16 + 36 + 3 + 5 + 3 + 7 + 3 + 4000);
        // Without a certificate to carry there is nothing to check.
        assert!(minimal().encode_checked().is_ok());
    }
}
