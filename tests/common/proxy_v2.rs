//! PROXY v2 in the tests under one name: the writer's types and constants
//! (`terminus::proxy::proxy_v2`), the test kit's parser (`terminus_testkit::proxy_v2`),
//! and a header as terminus sends it for a verified mTLS client.

pub use terminus::proxy::proxy_v2::*;
#[allow(unused_imports)] // each test binary uses a different subset
pub use terminus_testkit::proxy_v2::{parse, Command, ParseError, ParsedHeader, ParsedSsl};

/// What an [`Ssl`] with the parsed bits and strings would have said.
pub fn to_ssl(p: &ParsedSsl) -> Ssl {
    Ssl {
        client_cert_presented: p.client_cert_presented(),
        resumed: p.resumed(),
        verified: p.verified(),
        version: p.version.clone(),
        cn: p.cn.clone(),
        cipher: p.cipher.clone(),
        sig_alg: p.sig_alg.clone(),
        key_alg: p.key_alg.clone(),
        client_cert: p.client_cert.clone(),
    }
}

/// A header with every TLV terminus writes, for a verified mTLS client.
pub fn verified_client_header(alpn: &[u8], unique_id: &[u8]) -> Header {
    Header {
        src: "192.0.2.10:51234".parse().unwrap(),
        dst: "198.51.100.1:443".parse().unwrap(),
        alpn: Some(alpn.to_vec()),
        authority: Some("api.example.org".into()),
        ssl: Some(verified_tls13_ssl("billing")),
        spiffe: Some("spiffe://example.org/ns/prod/sa/billing".into()),
        unique_id: Some(unique_id.to_vec()),
    }
}

/// What a verified client certificate (ECDSA P-256, CN `cn`) on a new TLS 1.3
/// connection with rustls' first cipher suite reads as: the test PKI's defaults.
pub fn verified_tls13_ssl(cn: &str) -> Ssl {
    Ssl {
        client_cert_presented: true,
        resumed: false,
        verified: true,
        version: Some("TLSv1.3".into()),
        cn: Some(cn.into()),
        cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        sig_alg: Some("ecdsa-with-SHA256".into()),
        key_alg: Some("EC256".into()),
        client_cert: None,
    }
}

/// Why [`read_header`] found no header.
#[derive(Debug)]
pub enum HeaderError {
    /// The peer closed (or the read failed) after this many bytes.
    Closed(usize),
    /// What the parser said, and the bytes it saw.
    Invalid(String),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Closed(n) => {
                write!(
                    f,
                    "closed after {n} bytes, before a complete PROXY v2 header"
                )
            }
            HeaderError::Invalid(why) => f.write_str(why),
        }
    }
}

/// Read the PROXY v2 header a stream starts with (what a backend behind terminus
/// does): the header and the bytes read after it.
pub fn read_header(s: &mut impl std::io::Read) -> Result<(ParsedHeader, Vec<u8>), HeaderError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse(&buf) {
            Ok((header, used)) => return Ok((header, buf[used..].to_vec())),
            Err(ParseError::Incomplete { .. }) => {}
            Err(e) => return Err(HeaderError::Invalid(format!("{e}; got {buf:02x?}"))),
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(HeaderError::Closed(buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
