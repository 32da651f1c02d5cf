//! The PROXY v2 parser of the tests: what an upstream reads from terminus'
//! header (`terminus::proxy::proxy_v2` writes it; production never parses one).
//! Included by path (`#[path = "common/proxy_v2.rs"] mod proxy_v2;`) by the tests
//! that need it, until the test kit has a crate of its own; re-exports the
//! writer's types and constants so `proxy_v2::X` names both.
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
pub use terminus::proxy::proxy_v2::*;

/// Signature, version/command, family, length.
const FIXED_LEN: usize = 16;

/// The command of a parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sent by the proxy itself (health checks): use the real connection addresses.
    Local,
    Proxy,
}

/// A parsed v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    pub command: Command,
    /// (source, destination) for TCP/UDP over IPv4/IPv6; `None` for UNSPEC and UNIX.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    pub alpn: Option<Vec<u8>>,
    pub authority: Option<String>,
    pub ssl: Option<ParsedSsl>,
    pub spiffe: Option<String>,
    pub unique_id: Option<Vec<u8>>,
    /// TLVs this parser does not decode, in order: (type, value).
    pub other: Vec<(u8, Vec<u8>)>,
}

/// A parsed `PP2_TYPE_SSL` TLV.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedSsl {
    /// `PP2_CLIENT_*` bits.
    pub client: u8,
    /// 0: a client certificate was presented and verified.
    pub verify: u32,
    pub version: Option<String>,
    pub cn: Option<String>,
    pub cipher: Option<String>,
    pub sig_alg: Option<String>,
    pub key_alg: Option<String>,
    /// `PP2_SUBTYPE_SSL_CLIENT_CERT`: the client's leaf, DER.
    pub client_cert: Option<Vec<u8>>,
}

impl ParsedSsl {
    /// What an [`Ssl`] with these bits would have said.
    pub fn to_ssl(&self) -> Ssl {
        let sess = self.client & PP2_CLIENT_CERT_SESS != 0;
        let conn = self.client & PP2_CLIENT_CERT_CONN != 0;
        Ssl {
            client_cert_presented: sess || conn,
            resumed: sess && !conn,
            verified: (sess || conn) && self.verify == 0,
            version: self.version.clone(),
            cn: self.cn.clone(),
            cipher: self.cipher.clone(),
            sig_alg: self.sig_alg.clone(),
            key_alg: self.key_alg.clone(),
            client_cert: self.client_cert.clone(),
        }
    }
}

/// Why [`parse`] returned no header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes so far are a valid beginning; at least `needed` bytes in total are
    /// required before the header can be parsed.
    Incomplete { needed: usize },
    /// Not a valid PROXY v2 header.
    Invalid(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Incomplete { needed } => {
                write!(
                    f,
                    "incomplete PROXY v2 header: need at least {needed} bytes"
                )
            }
            ParseError::Invalid(why) => write!(f, "invalid PROXY v2 header: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn invalid<T>(why: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Invalid(why.into()))
}

/// Parse a header at the start of `buf`; on success also returns its length (the
/// client's bytes follow it).
pub fn parse(buf: &[u8]) -> Result<(ParsedHeader, usize), ParseError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return invalid("no PROXY v2 signature");
    }
    if buf.len() < FIXED_LEN {
        return Err(ParseError::Incomplete { needed: FIXED_LEN });
    }
    let command = match buf[12] {
        VERSION_COMMAND_PROXY => Command::Proxy,
        VERSION_COMMAND_LOCAL => Command::Local,
        b if b >> 4 != 2 => return invalid(format!("version {} is not 2", b >> 4)),
        b => return invalid(format!("unknown command {}", b & 15)),
    };
    let family = buf[13];
    let total = FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < total {
        return Err(ParseError::Incomplete { needed: total });
    }
    let body = &buf[FIXED_LEN..total];
    let addr_len = match family {
        FAMILY_UNSPEC => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        f => return invalid(format!("unknown address family/protocol 0x{f:02x}")),
    };
    if body.len() < addr_len {
        return invalid(format!(
            "length {} is shorter than the addresses of family 0x{family:02x} ({addr_len} bytes)",
            body.len()
        ));
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addresses = match addr_len {
        12 => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            Some((
                SocketAddr::from((ip(0), port(8))),
                SocketAddr::from((ip(4), port(10))),
            ))
        }
        36 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(o)
            };
            Some((
                SocketAddr::V6(SocketAddrV6::new(ip(0), port(32), 0, 0)),
                SocketAddr::V6(SocketAddrV6::new(ip(16), port(34), 0, 0)),
            ))
        }
        _ => None,
    };
    let mut h = ParsedHeader {
        command,
        addresses: if command == Command::Local {
            None
        } else {
            addresses
        },
        alpn: None,
        authority: None,
        ssl: None,
        spiffe: None,
        unique_id: None,
        other: Vec::new(),
    };
    for tlv in Tlvs(&body[addr_len..]) {
        let (kind, value) = tlv?;
        match kind {
            PP2_TYPE_ALPN => h.alpn = Some(value.to_vec()),
            PP2_TYPE_AUTHORITY => h.authority = Some(utf8("AUTHORITY", value)?),
            PP2_TYPE_UNIQUE_ID if value.len() > MAX_UNIQUE_ID => {
                return invalid(format!(
                    "UNIQUE_ID is {} bytes (at most {MAX_UNIQUE_ID})",
                    value.len()
                ))
            }
            PP2_TYPE_UNIQUE_ID => h.unique_id = Some(value.to_vec()),
            PP2_TYPE_SSL => h.ssl = Some(parse_ssl(value)?),
            PP2_TYPE_TERMINUS_SPIFFE_ID => h.spiffe = Some(utf8("SPIFFE ID", value)?),
            _ => h.other.push((kind, value.to_vec())),
        }
    }
    Ok((h, total))
}

fn parse_ssl(value: &[u8]) -> Result<ParsedSsl, ParseError> {
    if value.len() < 5 {
        return invalid(format!("SSL TLV is {} bytes (at least 5)", value.len()));
    }
    let mut ssl = ParsedSsl {
        client: value[0],
        verify: u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
        ..ParsedSsl::default()
    };
    for tlv in Tlvs(&value[5..]) {
        let (kind, v) = tlv?;
        if kind == PP2_SUBTYPE_SSL_CLIENT_CERT {
            ssl.client_cert = Some(v.to_vec());
            continue;
        }
        let slot = match kind {
            PP2_SUBTYPE_SSL_VERSION => &mut ssl.version,
            PP2_SUBTYPE_SSL_CN => &mut ssl.cn,
            PP2_SUBTYPE_SSL_CIPHER => &mut ssl.cipher,
            PP2_SUBTYPE_SSL_SIG_ALG => &mut ssl.sig_alg,
            PP2_SUBTYPE_SSL_KEY_ALG => &mut ssl.key_alg,
            _ => continue,
        };
        *slot = Some(utf8("SSL sub-TLV", v)?);
    }
    Ok(ssl)
}

fn utf8(what: &str, v: &[u8]) -> Result<String, ParseError> {
    match std::str::from_utf8(v) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => invalid(format!("{what} is not UTF-8")),
    }
}

/// Iterates over `type, length, value` triples filling a byte range exactly.
struct Tlvs<'a>(&'a [u8]);

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<(u8, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0;
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 3 {
            self.0 = &[];
            return Some(invalid(format!(
                "{} stray bytes after the last TLV",
                rest.len()
            )));
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            self.0 = &[];
            return Some(invalid(format!(
                "TLV 0x{:02x} claims {len} bytes, only {} remain",
                rest[0],
                rest.len() - 3
            )));
        }
        self.0 = &rest[3 + len..];
        Some(Ok((rest[0], &rest[3..3 + len])))
    }
}
