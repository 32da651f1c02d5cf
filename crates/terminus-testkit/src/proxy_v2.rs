//! proxy_v2: a PROXY protocol v2 parser, what an upstream reads from terminus'
//! header (terminus-core's `proxy::proxy_v2` writes it; production never parses one).
//!
//! Written from the specification (haproxy's proxy-protocol.txt), with the wire
//! numbers spelled out here rather than taken from the writer's constants, so that
//! a wrong constant in the writer fails the round trips instead of agreeing with
//! itself. Tests compare against the writer's types; HAProxy's own encoder is
//! parsed with it too (tests/other/trust_haproxy.rs).
//!
//! I/O contract: pure.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The 12 bytes every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family, length.
const FIXED_LEN: usize = 16;
/// The longest `PP2_TYPE_UNIQUE_ID` the specification allows.
const MAX_UNIQUE_ID: usize = 128;

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
    /// `PP2_SUBTYPE_SSL_CLIENT_CERT` (0x28): the client's leaf, DER.
    pub client_cert: Option<Vec<u8>>,
}

impl ParsedSsl {
    /// `PP2_CLIENT_CERT_CONN` (0x02): a certificate was presented on this connection.
    fn cert_conn(&self) -> bool {
        self.client & 0x02 != 0
    }

    /// `PP2_CLIENT_CERT_SESS` (0x04): a certificate was presented in this TLS session.
    fn cert_sess(&self) -> bool {
        self.client & 0x04 != 0
    }

    /// A client certificate was presented, in this handshake or the resumed session's.
    pub fn client_cert_presented(&self) -> bool {
        self.cert_sess() || self.cert_conn()
    }

    /// The session was resumed: its certificate came with the session, not now.
    pub fn resumed(&self) -> bool {
        self.cert_sess() && !self.cert_conn()
    }

    /// A client certificate was presented and verified (`verify` 0).
    pub fn verified(&self) -> bool {
        self.client_cert_presented() && self.verify == 0
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
        0x21 => Command::Proxy, // version 2, command PROXY
        0x20 => Command::Local, // version 2, command LOCAL
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
        0x00 => 0,          // UNSPEC
        0x11 | 0x12 => 12,  // TCP4, UDP4
        0x21 | 0x22 => 36,  // TCP6, UDP6
        0x31 | 0x32 => 216, // UNIX stream, datagram
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
            0x01 => h.alpn = Some(value.to_vec()), // PP2_TYPE_ALPN
            0x02 => h.authority = Some(utf8("AUTHORITY", value)?), // PP2_TYPE_AUTHORITY
            0x05 if value.len() > MAX_UNIQUE_ID => {
                return invalid(format!(
                    "UNIQUE_ID is {} bytes (at most {MAX_UNIQUE_ID})",
                    value.len()
                ))
            }
            0x05 => h.unique_id = Some(value.to_vec()), // PP2_TYPE_UNIQUE_ID
            0x20 => h.ssl = Some(parse_ssl(value)?),    // PP2_TYPE_SSL
            // terminus' custom TLV (the first of PP2_TYPE_MIN_CUSTOM): the SPIFFE ID.
            0xE0 => h.spiffe = Some(utf8("SPIFFE ID", value)?),
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
        if kind == 0x28 {
            // PP2_SUBTYPE_SSL_CLIENT_CERT: DER, not text.
            ssl.client_cert = Some(v.to_vec());
            continue;
        }
        let slot = match kind {
            0x21 => &mut ssl.version, // PP2_SUBTYPE_SSL_VERSION
            0x22 => &mut ssl.cn,      // PP2_SUBTYPE_SSL_CN
            0x23 => &mut ssl.cipher,  // PP2_SUBTYPE_SSL_CIPHER
            0x24 => &mut ssl.sig_alg, // PP2_SUBTYPE_SSL_SIG_ALG
            0x25 => &mut ssl.key_alg, // PP2_SUBTYPE_SSL_KEY_ALG
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
