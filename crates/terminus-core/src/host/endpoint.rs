//! endpoint: a `listen` or `upstreams` entry as written: a literal socket address
//! (`10.0.0.7:8080`, `[::1]:9000`) or a host name and port
//! (`billing.prod.svc.cluster.local:8080`, `localhost:9000`).
//!
//! Owns the syntax and its errors ([`EndpointError`]); resolving a name is
//! `runtime::resolver`'s business. No I/O.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;

/// A `HOST:PORT` setting, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A literal IPv4 or bracketed IPv6 address with its port: used as is.
    Addr(SocketAddr),
    /// A host name, resolved at start (and, for upstreams, again every
    /// `resolve_interval_ms`).
    Name { host: String, port: u16 },
}

/// Why a `HOST:PORT` setting does not parse; `Display` is the text after `field: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("{0:?} has no port: write HOST:PORT, e.g. \"localhost:8080\" or \"10.0.0.7:8080\"")]
    MissingPort(String),
    #[error("{written:?}: {port:?} is not a port number (1 to 65535, or 0 for `listen`)")]
    BadPort { written: String, port: String },
    #[error("{0:?}: an IPv6 address needs brackets, e.g. \"[::1]:9000\"")]
    UnbracketedIpv6(String),
    #[error("{0:?}: not an IPv6 address in brackets, e.g. \"[::1]:9000\"")]
    BadIpv6(String),
    #[error(
        "{0:?}: the host is not an IP address or a DNS name (letters, digits, '-', '_' and \
         '.', at most 253 characters)"
    )]
    BadHost(String),
}

impl Endpoint {
    /// Parse `HOST:PORT`: a socket address when it is one, else a DNS name and port.
    pub fn parse(written: &str) -> Result<Endpoint, EndpointError> {
        if let Ok(addr) = written.parse::<SocketAddr>() {
            return Ok(Endpoint::Addr(addr));
        }
        if written.starts_with('[') {
            return Err(EndpointError::BadIpv6(written.to_owned()));
        }
        let Some((host, port)) = written.rsplit_once(':') else {
            return Err(EndpointError::MissingPort(written.to_owned()));
        };
        if host.contains(':') {
            return Err(EndpointError::UnbracketedIpv6(written.to_owned()));
        }
        let port = port.parse::<u16>().map_err(|_| EndpointError::BadPort {
            written: written.to_owned(),
            port: port.to_owned(),
        })?;
        if !is_host_name(host) {
            return Err(EndpointError::BadHost(written.to_owned()));
        }
        Ok(Endpoint::Name {
            host: host.to_owned(),
            port,
        })
    }

    /// The literal address, `None` for a name.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(a) => Some(*a),
            Endpoint::Name { .. } => None,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Addr(a) => a.port(),
            Endpoint::Name { port, .. } => *port,
        }
    }
}

/// Letters, digits, `-`, `_` and `.`, not empty, at most 253 bytes, no empty label.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .trim_end_matches('.')
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// As written (a literal address in its canonical form).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that the error is raised inside the value's own deserializer
        // and carries its span (the line of the entry, not of the whole array).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a HOST:PORT string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Endpoint, E> {
                Endpoint::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_and_names() {
        assert_eq!(
            Endpoint::parse("10.0.0.7:8080"),
            Ok(Endpoint::Addr("10.0.0.7:8080".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("[::1]:9000"),
            Ok(Endpoint::Addr("[::1]:9000".parse().unwrap()))
        );
        assert_eq!(
            Endpoint::parse("[::]:8443").unwrap().addr(),
            Some("[::]:8443".parse().unwrap())
        );
        let n = Endpoint::parse("billing.prod.svc.cluster.local:8080").unwrap();
        assert_eq!(
            n,
            Endpoint::Name {
                host: "billing.prod.svc.cluster.local".into(),
                port: 8080
            }
        );
        assert_eq!(n.to_string(), "billing.prod.svc.cluster.local:8080");
        assert_eq!(Endpoint::parse("localhost:0").unwrap().port(), 0);
    }

    #[test]
    fn every_malformed_kind_says_why() {
        let e = |s: &str| Endpoint::parse(s).unwrap_err().to_string();
        assert_eq!(
            e("localhost"),
            "\"localhost\" has no port: write HOST:PORT, e.g. \"localhost:8080\" or \
             \"10.0.0.7:8080\""
        );
        assert!(e("localhost:http").contains("\"http\" is not a port number"));
        assert!(e("localhost:70000").contains("is not a port number"));
        assert!(e("::1:9000").contains("needs brackets"));
        assert!(e("[::1:9000").contains("not an IPv6 address in brackets"));
        assert!(e("bad host:80").contains("not an IP address or a DNS name"));
        assert!(e(":80").contains("not an IP address or a DNS name"));
        assert!(e("a..b:80").contains("not an IP address or a DNS name"));
    }
}
