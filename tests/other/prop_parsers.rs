//! Property tests (proptest) of every parser that reads peer or operator input:
//! PROXY v2 headers, client certificates (identity), allow-list entries and config
//! files. Each property says "an error or a value, never a panic", and where a
//! round trip or a model exists, that the value is the right one.
//!
//! | property | cases |
//! |---|---|
//! | `proxy_v2_round_trip_with_random_tlvs` | 256 |
//! | `proxy_v2_oversized_values_are_left_out_not_truncated` | 32 |
//! | `proxy_v2_random_and_mutated_bytes` | 1024 |
//! | `identity_of_random_certificates` | 256 |
//! | `identity_of_mutated_der_never_panics` | 1024 |
//! | `spiffe_id_parse_random_strings` | 512 |
//! | `allow_rule_parse_random_strings_round_trips` | 512 |
//! | `allow_list_reports_the_first_bad_entry` | 256 |
//! | `allow_rules_match_what_they_say` | 256 |
//! | `config_parse_random_text` | 256 |
//! | `config_parse_mutated_valid_config` | 512 |
//! | `config_errors_quoting_random_values` | 256 |
//!
//! Ignored (a finding, not a panic; see its doc): `config_errors_stay_one_line_whatever_the_value`.
//!
//! Counts are fixed (`ProptestConfig::with_cases`), failures are not persisted to
//! files (`failure_persistence: None`): a failure prints its minimal input.
//! The whole file runs in about a second in `cargo test --release`.

use crate::common::proxy_v2::{self, to_ssl, Command, Header, ParseError, Ssl};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use proxy_v2::{MAX_AUTHORITY, MAX_TLV_VALUE, MAX_UNIQUE_ID};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::OnceLock;
use terminus::config::Config;
use terminus::tls::identity::{CertAlgorithms, PeerIdentity, SpiffeId};
use terminus::tls::policy::{AllowList, AllowRule};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(n)
    }
}

// ---- PROXY v2 ---------------------------------------------------------------

/// Types [`proxy_v2::parse`] decodes itself (everything else lands in `other`).
const KNOWN_TLVS: [u8; 5] = [0x01, 0x02, 0x05, 0x20, 0xE0];

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
            |(ip, p, flow, scope)| SocketAddr::V6(SocketAddrV6::new(ip.into(), p, flow, scope))
        ),
        // IPv4-mapped IPv6 (a dual-stack listener).
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| {
            SocketAddr::V6(SocketAddrV6::new(
                Ipv4Addr::from(ip).to_ipv6_mapped(),
                p,
                0,
                0,
            ))
        }),
    ]
}

fn opt_string(max: usize) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::string::string_regex(&format!("\\PC{{0,{max}}}")).unwrap())
}

prop_compose! {
    fn ssl()(
        (client_cert_presented, resumed, verified) in any::<(bool, bool, bool)>(),
        version in opt_string(12),
        cn in opt_string(40),
        cipher in opt_string(40),
        sig_alg in opt_string(24),
        key_alg in opt_string(12),
        client_cert in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
    ) -> Ssl {
        Ssl {
            client_cert_presented, resumed, verified, version, cn, cipher, sig_alg, key_alg,
            client_cert,
        }
    }
}

prop_compose! {
    fn header()(
        src in socket_addr(),
        dst in socket_addr(),
        alpn in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        authority in opt_string(80),
        ssl in proptest::option::of(ssl()),
        spiffe in opt_string(120),
        // Up to 160 bytes: over 128 the unique ID must be left out.
        unique_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..160)),
    ) -> Header {
        Header { src, dst, alpn, authority, ssl, spiffe, unique_id }
    }
}

/// TLVs of types the parser does not decode: random type and value.
fn unknown_tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (
            any::<u8>().prop_filter("known type", |t| !KNOWN_TLVS.contains(t)),
            proptest::collection::vec(any::<u8>(), 0..48),
        ),
        0..6,
    )
}

/// What the addresses must read back as: TCP4 when both are IPv4 (mapped counts),
/// else TCP6 with IPv4 mapped; flow info and scope are not carried.
fn expected_addresses(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canonical(src), canonical(dst));
    if src.is_ipv4() && dst.is_ipv4() {
        return (src, dst);
    }
    let mapped = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(ip) => SocketAddr::new(ip.into(), a.port()),
    };
    (mapped(src), mapped(dst))
}

/// What an `Ssl` reads back as: `resumed` and `verified` only mean something when a
/// certificate was presented.
fn expected_ssl(s: &Ssl) -> Ssl {
    Ssl {
        resumed: s.client_cert_presented && s.resumed,
        verified: s.client_cert_presented && s.verified,
        ..s.clone()
    }
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
}

/// Invariants of any parse result of any buffer.
fn check_parse_invariants(buf: &[u8]) -> Result<(), TestCaseError> {
    match proxy_v2::parse(buf) {
        Ok((h, used)) => {
            prop_assert!(
                (16..=buf.len()).contains(&used),
                "used {used} of {}",
                buf.len()
            );
            // The header alone parses the same: nothing after it was looked at.
            prop_assert_eq!(proxy_v2::parse(&buf[..used]), Ok((h.clone(), used)));
            // Every strict prefix is incomplete, asking for more than it has.
            for n in [0, 1, 11, 12, 15, 16, used / 2, used - 1] {
                let n = n.min(used - 1);
                match proxy_v2::parse(&buf[..n]) {
                    Err(ParseError::Incomplete { needed }) => {
                        prop_assert!(needed > n && needed <= used, "{n}: needed {needed}")
                    }
                    other => prop_assert!(false, "prefix of {n}: {other:?}"),
                }
            }
            if h.command == Command::Local {
                prop_assert_eq!(h.addresses, None);
            }
            prop_assert!(h.unique_id.as_ref().map_or(0, Vec::len) <= 128);
            prop_assert!(h.other.iter().all(|(t, _)| !KNOWN_TLVS.contains(t)));
        }
        Err(ParseError::Incomplete { needed }) => {
            prop_assert!(needed > buf.len(), "needed {needed} of {}", buf.len());
            prop_assert!(needed <= 16 + 65535);
        }
        Err(ParseError::Invalid(why)) => prop_assert!(!why.is_empty()),
    }
    Ok(())
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Xor(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Xor(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1..8usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut b: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for m in edits {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Xor(i, x) => {
                let i = i.index(b.len());
                b[i] ^= x;
            }
            Mutation::Set(i, x) => {
                let i = i.index(b.len());
                b[i] = *x;
            }
            Mutation::Insert(i, v) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(i) => {
                let i = i.index(b.len());
                b.truncate(i);
            }
        }
    }
    b
}

/// Buffers that reach past the signature check: the right 12 bytes, a random
/// version/command and family (mostly valid ones), a length field that is right or
/// random, then random or TLV-shaped bodies.
fn signed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x21u8), Just(0x20u8), any::<u8>()],
        prop_oneof![
            Just(0x00u8),
            Just(0x11u8),
            Just(0x12u8),
            Just(0x21u8),
            Just(0x22u8),
            Just(0x31u8),
            Just(0x32u8),
            any::<u8>()
        ],
        prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..300),
            // Addresses then TLVs with random lengths (some lie).
            3 => (
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(
                    (
                        prop_oneof![proptest::sample::select(KNOWN_TLVS.to_vec()), any::<u8>()],
                        any::<bool>(),
                        any::<u16>(),
                        proptest::collection::vec(any::<u8>(), 0..40),
                    ),
                    0..6,
                ),
            )
                .prop_map(|(addr, tlvs)| {
                    let mut b = addr;
                    for (kind, honest, len, value) in tlvs {
                        let len = if honest { value.len() as u16 } else { len % 64 };
                        b.push(kind);
                        b.extend_from_slice(&len.to_be_bytes());
                        b.extend_from_slice(&value);
                    }
                    b
                }),
        ],
        any::<Option<u16>>(),
    )
        .prop_map(|(vc, family, body, lie)| {
            let mut b = proxy_v2::SIGNATURE.to_vec();
            b.push(vc);
            b.push(family);
            let len = lie.unwrap_or(body.len() as u16);
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&body);
            b
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Encode a random header, add random unknown TLVs and trailing client bytes:
    /// parsing gives back every field (as the spec maps it), the unknown TLVs in
    /// order, and the header's exact length; every cut of it is `Incomplete`.
    #[test]
    fn proxy_v2_round_trip_with_random_tlvs(
        h in header(),
        extra in unknown_tlvs(),
        trailing in proptest::collection::vec(any::<u8>(), 0..64),
        cut in any::<Index>(),
    ) {
        let mut bytes = h.to_bytes();
        for (kind, value) in &extra {
            tlv(&mut bytes, *kind, value);
        }
        let len = u16::try_from(bytes.len() - 16).unwrap();
        bytes[14..16].copy_from_slice(&len.to_be_bytes());
        let header_len = bytes.len();
        bytes.extend_from_slice(&trailing);

        let (p, used) = proxy_v2::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(used, header_len);
        prop_assert_eq!(p.command, Command::Proxy);
        prop_assert_eq!(p.addresses, Some(expected_addresses(h.src, h.dst)));
        prop_assert_eq!(&p.alpn, &h.alpn);
        prop_assert_eq!(&p.authority, &h.authority);
        prop_assert_eq!(p.ssl.as_ref().map(to_ssl), h.ssl.as_ref().map(expected_ssl));
        prop_assert_eq!(&p.spiffe, &h.spiffe);
        prop_assert_eq!(&p.unique_id, &h.unique_id.clone().filter(|u| u.len() <= 128));
        prop_assert_eq!(&p.other, &extra);

        let n = cut.index(header_len);
        match proxy_v2::parse(&bytes[..n]) {
            Err(ParseError::Incomplete { needed }) => {
                prop_assert!(needed > n && needed <= header_len, "{n}: {needed}")
            }
            other => prop_assert!(false, "prefix of {n} bytes: {other:?}"),
        }
        check_parse_invariants(&bytes)?;
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// Values near and over the 16-bit length: the header stays within 65535 bytes,
    /// still parses, and a value is either carried whole or left out; when all fit,
    /// none is left out.
    #[test]
    fn proxy_v2_oversized_values_are_left_out_not_truncated(
        src in socket_addr(),
        dst in socket_addr(),
        sizes in proptest::collection::vec(
            prop_oneof![0..300usize, 20_000..22_000usize, 65_400..65_536usize, 65_536..70_000usize],
            5,
        ),
        cn_size in prop_oneof![0..300usize, 65_000..66_000usize],
        with_ssl in any::<bool>(),
    ) {
        let s = |n: usize, c: char| c.to_string().repeat(n);
        let h = Header {
            src,
            dst,
            alpn: Some(vec![b'a'; sizes[0]]),
            authority: Some(s(sizes[1], 'b')),
            ssl: with_ssl.then(|| Ssl {
                client_cert_presented: true,
                verified: true,
                cn: Some(s(cn_size, 'c')),
                version: Some("TLSv1.3".into()),
                ..Ssl::default()
            }),
            spiffe: Some(s(sizes[2], 'd')),
            unique_id: Some(vec![b'e'; sizes[3] % 200]),
        };
        let bytes = h.to_bytes();
        prop_assert!(bytes.len() <= 16 + 65535);
        let (p, used) = proxy_v2::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(used, bytes.len());
        prop_assert!(p.alpn.is_none() || p.alpn == h.alpn);
        prop_assert!(p.authority.is_none() || p.authority == h.authority);
        prop_assert!(p.spiffe.is_none() || p.spiffe == h.spiffe);
        prop_assert!(p.unique_id.is_none() || p.unique_id == h.unique_id);
        // Each value is carried whole exactly when HAProxy would take it (authority
        // <= 255, unique ID <= 128, any value <= 1024, the SSL TLV with its
        // sub-TLVs counted whole); within those the header always fits 16 bits.
        let kept = |v: usize, max: usize| v <= max.min(MAX_TLV_VALUE);
        let ssl_in = h.ssl.as_ref().map(|s| {
            let mut s = expected_ssl(s);
            s.cn = s.cn.filter(|cn| 5 + 3 + 7 + 3 + cn.len() <= MAX_TLV_VALUE);
            s
        });
        prop_assert_eq!(p.alpn.is_some(), kept(sizes[0], usize::MAX));
        prop_assert_eq!(p.authority.is_some(), kept(sizes[1], MAX_AUTHORITY));
        prop_assert_eq!(p.spiffe.is_some(), kept(sizes[2], usize::MAX));
        prop_assert_eq!(p.unique_id.is_some(), kept(sizes[3] % 200, MAX_UNIQUE_ID));
        prop_assert_eq!(p.ssl.as_ref().map(to_ssl), ssl_in);
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Random bytes, signature-prefixed garbage and mutated valid headers: an error
    /// or a header, never a panic, and the result is consistent with its prefixes.
    #[test]
    fn proxy_v2_random_and_mutated_bytes(
        buf in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100),
            signed_garbage(),
            (header(), unknown_tlvs(), proptest::collection::vec(mutation(), 1..6)).prop_map(
                |(h, extra, edits)| {
                    let mut b = h.to_bytes();
                    for (kind, value) in &extra {
                        tlv(&mut b, *kind, value);
                    }
                    let len = u16::try_from(b.len() - 16).unwrap();
                    b[14..16].copy_from_slice(&len.to_be_bytes());
                    mutate(b, &edits)
                }
            ),
        ],
    ) {
        check_parse_invariants(&buf)?;
    }
}

// ---- identity ---------------------------------------------------------------

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        terminus::tls::install_provider();
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    })
}

/// A SAN as generated, with what it should read back as.
#[derive(Debug, Clone)]
enum San {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

fn san() -> impl Strategy<Value = San> {
    prop_oneof![
        3 => "[a-zA-Z0-9*][a-zA-Z0-9.-]{0,30}".prop_map(San::Dns),
        2 => "(spiffe|SPIFFE|Spiffe|spiffe:)://[ -~]{0,40}".prop_map(San::Uri),
        2 => "(https|urn|spiff|spiffe:/)[:/][ -~]{0,30}".prop_map(San::Uri),
        1 => any::<[u8; 4]>().prop_map(|ip| San::Ip(Ipv4Addr::from(ip).into())),
        1 => any::<[u8; 16]>().prop_map(|ip| San::Ip(Ipv6Addr::from(ip).into())),
        1 => "[a-z]{1,8}@[a-z]{1,8}\\.org".prop_map(San::Email),
    ]
}

fn to_rcgen(s: &San) -> SanType {
    match s {
        San::Dns(d) => SanType::DnsName(d.as_str().try_into().unwrap()),
        San::Uri(u) => SanType::URI(u.as_str().try_into().unwrap()),
        San::Ip(ip) => SanType::IpAddress(*ip),
        San::Email(e) => SanType::Rfc822Name(e.as_str().try_into().unwrap()),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn make_cert(
    sans: &[San],
    cn: Option<&str>,
    org: Option<&str>,
    serial: &[u8],
) -> CertificateDer<'static> {
    let mut p = CertificateParams::default();
    p.subject_alt_names = sans.iter().map(to_rcgen).collect();
    p.distinguished_name = DistinguishedName::new();
    if let Some(org) = org {
        p.distinguished_name.push(DnType::OrganizationName, org);
    }
    if let Some(cn) = cn {
        p.distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(cn.to_owned()));
    }
    p.serial_number = Some(serial.to_vec().into());
    p.self_signed(key()).unwrap().der().clone()
}

/// A few real certificates to mutate, made once.
fn base_certs() -> &'static [CertificateDer<'static>] {
    static CERTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    CERTS.get_or_init(|| {
        let spiffe = San::Uri("spiffe://example.org/ns/prod/sa/billing".into());
        let dns = San::Dns("billing.internal".into());
        let ed = {
            let k = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let mut p = CertificateParams::new(vec!["ed.internal".into()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, "ed");
            p.self_signed(&k).unwrap().der().clone()
        };
        vec![
            make_cert(
                &[spiffe.clone(), dns.clone()],
                Some("billing"),
                Some("Example"),
                &[0x8f, 1],
            ),
            make_cert(&[], None, None, &[1]),
            make_cert(
                &[
                    dns,
                    San::Ip("10.0.0.1".parse().unwrap()),
                    spiffe,
                    San::Email("a@b.org".into()),
                ],
                Some("ünïcødé"),
                None,
                &[0x7f; 20],
            ),
            ed,
        ]
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// A certificate with random SANs (DNS, URI — some `spiffe://` in any case —
    /// IP, email), a random Unicode CN and a random serial reads back exactly; two
    /// SPIFFE IDs are refused.
    #[test]
    fn identity_of_random_certificates(
        sans in proptest::collection::vec(san(), 0..6),
        cn in proptest::option::of("\\PC{0,40}"),
        org in proptest::option::of("[A-Za-z ]{1,20}"),
        serial in (1..=255u8, proptest::collection::vec(any::<u8>(), 0..19))
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
    ) {
        let der = make_cert(&sans, cn.as_deref(), org.as_deref(), &serial);
        let spiffe: Vec<&String> = sans
            .iter()
            .filter_map(|s| match s {
                San::Uri(u) if u.get(..9).is_some_and(|p| p.eq_ignore_ascii_case("spiffe://")) => Some(u),
                _ => None,
            })
            .collect();
        let got = PeerIdentity::from_der(&der);
        if spiffe.len() > 1 {
            let e = got.expect_err("two SPIFFE IDs must be refused").to_string();
            prop_assert!(e.contains("more than one SPIFFE ID"), "{e}");
            return Ok(());
        }
        let id = got.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(id.spiffe.as_ref(), spiffe.first().copied());
        let dns: Vec<&String> = sans
            .iter()
            .filter_map(|s| match s {
                San::Dns(d) => Some(d),
                _ => None,
            })
            .collect();
        prop_assert_eq!(id.dns.iter().collect::<Vec<_>>(), dns);
        prop_assert_eq!(&id.cn, &cn);
        prop_assert_eq!(&id.serial, &hex(&serial));
        prop_assert_eq!(&id.sha256, &hex(&Sha256::digest(der.as_ref())));
        if cn.is_some() || org.is_some() {
            prop_assert!(!id.subject.is_empty());
        }
        let alg = CertAlgorithms::from_der(&der).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(alg.sig_alg, "ecdsa-with-SHA256");
        prop_assert_eq!(alg.key_alg, "EC256");
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    /// Mutated real certificates, DER-shaped garbage and random bytes: the identity
    /// and algorithm readers return an error or a value, never panic.
    #[test]
    fn identity_of_mutated_der_never_panics(
        der in prop_oneof![
            3 => (any::<Index>(), proptest::collection::vec(mutation(), 1..8)).prop_map(|(i, edits)| {
                let base = &base_certs()[i.index(base_certs().len())];
                mutate(base.to_vec(), &edits)
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(len, body)| {
                let mut b = vec![0x30, 0x82];
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&body);
                b
            }),
        ],
    ) {
        let der = CertificateDer::from(der);
        if let Ok(id) = PeerIdentity::from_der(&der) {
            prop_assert_eq!(id.sha256.len(), 64);
            prop_assert!(id.serial.len() % 2 == 0);
        }
        let _ = CertAlgorithms::from_der(&der);
    }
}

// ---- SPIFFE IDs and allow-lists ---------------------------------------------

/// Strings biased towards what these parsers look at.
fn entry_like() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        4 => "(spiffe://|SPIFFE://|spiffe:/|dns:|cn:|DNS:|)[a-zA-Z0-9./*_:%?#@é-]{0,40}",
        2 => "spiffe://[a-z0-9.*-]{0,12}(/[a-zA-Z0-9._*-]{0,6}){0,5}",
    ]
}

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,20}"
}

fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,10}".prop_filter("dot segment", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(cases(512))]

    /// Any string: an error or an ID that splits back into trust domain and path.
    #[test]
    fn spiffe_id_parse_random_strings(s in entry_like()) {
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s.clone());
            prop_assert_eq!(id.to_string(), s);
            prop_assert!(!id.trust_domain().is_empty());
            prop_assert!(id.path().is_empty() || (id.path().starts_with('/') && !id.path().ends_with('/')));
        }
    }

    /// Any string: an error or a rule whose printed form parses to the same rule.
    #[test]
    fn allow_rule_parse_random_strings_round_trips(s in entry_like()) {
        if let Ok(rule) = AllowRule::parse(&s) {
            let printed = rule.to_string();
            prop_assert_eq!(AllowRule::parse(&printed), Ok(rule), "printed as {}", printed);
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// A list parses iff every entry does; otherwise the error names the first bad one.
    #[test]
    fn allow_list_reports_the_first_bad_entry(entries in proptest::collection::vec(entry_like(), 0..6)) {
        let first_bad = entries.iter().position(|e| AllowRule::parse(e).is_err());
        match (AllowList::parse(&entries), first_bad) {
            (Ok(list), None) => prop_assert_eq!(list.rules().len(), entries.len()),
            (Err(e), Some(i)) => {
                prop_assert_eq!(e.index, i);
                let prefix = format!("allow[{i}]: ");
                prop_assert!(e.to_string().starts_with(&prefix), "{}", e)
            }
            (got, want) => prop_assert!(false, "{got:?}, first bad entry {want:?}"),
        }
    }

    /// Rules built from a valid SPIFFE ID match what they say and nothing more: the
    /// exact ID, any strict prefix of whole segments + `/*`, never another trust
    /// domain, never the prefix itself; `dns:` ignores ASCII case.
    #[test]
    fn allow_rules_match_what_they_say(
        td in trust_domain(),
        other_td in trust_domain(),
        path in proptest::collection::vec(segment(), 1..5),
        k in any::<Index>(),
        dns in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
    ) {
        let id = format!("spiffe://{td}/{}", path.join("/"));
        prop_assert!(SpiffeId::parse(&id).is_ok(), "{}", id);
        let peer = PeerIdentity {
            spiffe: Some(id.clone()),
            dns: vec![dns.to_ascii_uppercase()],
            ..PeerIdentity::default()
        };
        let rule = |s: String| AllowRule::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()));
        let matches = |s: String| rule(s).map(|r| r.matches(&peer));
        let k = k.index(path.len());
        let prefix = path[..k].iter().map(|s| format!("{s}/")).collect::<String>();
        let full = path.join("/");
        prop_assert!(matches(id.clone())?, "exact");
        prop_assert!(matches(format!("spiffe://{td}/{prefix}*"))?, "prefix {}", prefix);
        prop_assert!(!matches(format!("spiffe://{td}/{full}/*"))?, "itself as a prefix");
        if other_td != td {
            prop_assert!(!matches(format!("spiffe://{other_td}/{prefix}*"))?, "other td prefix");
            prop_assert!(!matches(format!("spiffe://{other_td}/{full}"))?, "other td exact");
        }
        prop_assert!(matches(format!("dns:{dns}"))?, "dns");
        prop_assert!(AllowList::parse(&[]).unwrap().allows(&peer));
    }
}

// ---- config -----------------------------------------------------------------

const SOURCE: &str = "/etc/terminus/config.toml";

/// A config using every section, valid as it stands.
const FULL: &str = r#"[runtime]
workers = 2
pin_cpus = false
cpus = [0, 1]
ring_entries = 256
recv_buffers = 64
recv_buffer_size = 16384
drain_timeout_ms = 1000

[admin]
listen = "127.0.0.1:9901"
timeout_ms = 100

[log]
access = "access.log"

[[listeners]]
name = "edge"
listen = "127.0.0.1:8443"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:8080", "[::1]:8081"]
alpn = ["h2", "http/1.1"]
max_buffered_bytes = 65536
proxy_protocol = "v2"
ticket_lifetime_s = 3600

[[listeners.sni]]
server_names = ["api.internal", "*.example.org"]
cert = "api.pem"
key = "api.key"

[listeners.client_auth]
mode = "require"
ca = ["clients-ca.pem"]
crl = ["clients.crl"]
allow = ["spiffe://example.org/ns/prod/*", "dns:billing.internal", "cn:billing"]

[listeners.upstream_tls]
ca = ["up-ca.pem"]
server_name = "backend.internal"

[[listeners]]
name = "second"
listen = "127.0.0.1:0"
cert = "b.pem"
key = "b.key"
upstreams = ["10.0.0.1:80"]
"#;

/// TOML values of every type, some right for a key and most wrong.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("1.5".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("[1, \"a\", [2]]".to_owned()),
        Just("{ a = 1, listen = \"x\" }".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"spiffe://*\"".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("\"\"\"\nmulti\nline\"\"\"".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        // A basic string with escapes TOML accepts.
        "\\PC{0,20}".prop_map(|s| format!("{:?}", s)),
        "\\PC{0,20}".prop_map(|s| format!("'{}'", s.replace(['\'', '\n', '\r'], ""))),
        "[a-z_]{1,10}".prop_map(|s| s),
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "name",
            "listen",
            "cert",
            "key",
            "upstreams",
            "alpn",
            "workers",
            "cpus",
            "ring_entries",
            "mode",
            "ca",
            "allow",
            "server_names",
            "server_name",
            "access",
            "proxy_protocol",
            "max_buffered_bytes",
            "idle_timeout_ms",
            "listeners",
            "runtime",
            "sni",
            "client_auth",
            "\"quoted key\"",
            "a.b",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,12}",
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index, Index),
    SetValue(Index, String),
    SetKey(Index, String),
    InsertLine(Index, String),
    InsertChar(Index, char),
    DeleteChar(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::DuplicateLine(a, b)),
        4 => (any::<Index>(), toml_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        2 => (any::<Index>(), toml_key()).prop_map(|(i, k)| Edit::SetKey(i, k)),
        2 => (
            any::<Index>(),
            prop_oneof![
                (toml_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
                toml_key().prop_map(|k| format!("[{k}]")),
                proptest::sample::select(vec![
                    "[[listeners]]", "[[listeners.sni]]", "[listeners.client_auth]",
                    "[listeners.upstream_tls]", "[runtime]", "[admin]", "[log]",
                    "[[runtime]]", "[listeners]", "listeners = []",
                ])
                .prop_map(str::to_owned),
            ],
        )
            .prop_map(|(i, l)| Edit::InsertLine(i, l)),
        1 => (any::<Index>(), prop_oneof![
            proptest::sample::select(vec!['"', '\'', '[', ']', '{', '}', '=', '\n', '\\', '#', ',', '.', ' ', '\0', 'é']),
            any::<char>(),
        ]).prop_map(|(i, c)| Edit::InsertChar(i, c)),
        1 => any::<Index>().prop_map(Edit::DeleteChar),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            Edit::DeleteLine(i) => {
                lines.remove(i.index(n));
            }
            Edit::DuplicateLine(from, to) => {
                let l = lines[from.index(n)].clone();
                lines.insert(to.index(n + 1), l);
            }
            Edit::SetValue(i, v) => {
                let l = &mut lines[i.index(n)];
                if let Some(eq) = l.find('=') {
                    *l = format!("{}= {v}", &l[..eq]);
                }
            }
            Edit::SetKey(i, k) => {
                let l = &mut lines[i.index(n)];
                if let Some(eq) = l.find('=') {
                    *l = format!("{k} {}", &l[eq..]);
                }
            }
            Edit::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
            Edit::InsertChar(i, c) => {
                let l = &mut lines[i.index(n)];
                let at = l
                    .char_indices()
                    .map(|(j, _)| j)
                    .chain([l.len()])
                    .collect::<Vec<_>>();
                let at = at[i.index(at.len())];
                l.insert(at, *c);
            }
            Edit::DeleteChar(i) => {
                let l = &mut lines[i.index(n)];
                let at: Vec<usize> = l.char_indices().map(|(j, _)| j).collect();
                if !at.is_empty() {
                    l.remove(at[i.index(at.len())]);
                }
            }
        }
    }
    lines.join("\n")
}

/// An error or a config, never a panic: every error names the file, and `parse`
/// (first problem only) agrees with `parse_all`. (Not checked: that each error is
/// one line, as `config`'s docs promise; see
/// `config_errors_stay_one_line_whatever_the_value`.)
fn check_config(text: &str) -> Result<(), TestCaseError> {
    let source = Path::new(SOURCE);
    let all = Config::parse_all(text, source);
    let first = Config::parse(text, source);
    match (all, first) {
        (Ok(cfg), Ok(_)) => {
            prop_assert!(!cfg.listeners.is_empty());
            prop_assert!(cfg
                .listeners
                .iter()
                .all(|l| l.cert.is_absolute() && l.key.is_absolute()));
        }
        (Err(errors), Err(first)) => {
            let first = first.to_string();
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            prop_assert!(!errors.is_empty());
            prop_assert!(first.starts_with(&errors[0]), "{} vs {}", first, errors[0]);
            for e in &errors {
                prop_assert!(e.starts_with(SOURCE), "{}", e);
            }
        }
        (all, first) => prop_assert!(
            false,
            "parse_all {:?} but parse {:?}",
            all.is_ok(),
            first.is_ok()
        ),
    }
    Ok(())
}

#[test]
fn config_base_is_valid() {
    let cfg = Config::parse_all(FULL, Path::new(SOURCE)).unwrap();
    assert_eq!(cfg.listeners.len(), 2);
}

proptest! {
    #![proptest_config(cases(256))]

    /// Random text and TOML-shaped random text.
    #[test]
    fn config_parse_random_text(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                prop_oneof![
                    (toml_key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
                    toml_key().prop_map(|k| format!("[{k}]")),
                    toml_key().prop_map(|k| format!("[[{k}]]")),
                ],
                0..12,
            )
            .prop_map(|l| l.join("\n")),
        ],
    ) {
        check_config(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// The full config with random line and character edits: wrong types, unknown
    /// keys, duplicates, broken syntax, misplaced tables.
    #[test]
    fn config_parse_mutated_valid_config(edits in proptest::collection::vec(edit(), 1..5)) {
        check_config(&apply(FULL, &edits))?;
    }
}

/// TOML basic-string escaping of any string (control characters included).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(cases(256))]

    /// Validation messages quote what the operator wrote: any string, control
    /// characters included, in a field that is echoed back.
    #[test]
    fn config_errors_quoting_random_values(
        key in proptest::sample::select(vec!["name", "proxy_protocol", "server_name", "allow", "server_names", "alpn"]),
        value in "(\\PC|[\\n\\r\\t\\x00\\x1b]){0,20}",
    ) {
        let v = toml_string(&value);
        let text: Vec<String> = FULL
            .lines()
            .map(|l| match l.strip_prefix(key).and_then(|r| r.strip_prefix(" = ")) {
                Some(rest) if rest.starts_with('[') => format!("{key} = [{v}, {}", &rest[1..]),
                Some(_) => format!("{key} = {v}"),
                None => l.to_owned(),
            })
            .collect();
        let text = text.join("\n");
        check_config(&text)?;
    }
}

/// Found by `config_errors_quoting_random_values` (reported, not fixed here: it is
/// not a panic). `config`'s docs promise one line per error, but validation
/// messages quote the operator's value as `"{value}"`, so a value with a newline
/// (e.g. `name = "\n"` in two listeners: "duplicate listener name") spreads one
/// error over several lines. Quoting with `{value:?}` would keep plain values
/// unchanged and escape the rest.
#[test]
fn config_errors_stay_one_line_whatever_the_value() {
    let text = FULL
        .replace("name = \"edge\"", "name = \"\\n\"")
        .replace("name = \"second\"", "name = \"\\n\"");
    let errors = Config::parse_all(&text, Path::new(SOURCE)).unwrap_err();
    for e in errors {
        let e = e.to_string();
        assert!(!e.contains('\n'), "not one line: {e:?}");
    }
}

/// Hand-made PROXY v2 cases: exact round trips, prefixes, corruptions.
mod proxy_v2_cases {
    use super::proxy_v2::*;

    fn full() -> Header {
        verified_client_header(b"h2", b"conn-42")
    }

    fn minimal() -> Header {
        let (src, dst) = ("[2001:db8::1]:40000", "[2001:db8::2]:8443");
        Header::new(src.parse().unwrap(), dst.parse().unwrap())
    }

    #[test]
    fn round_trip_full_and_minimal() {
        for h in [full(), minimal()] {
            let mut bytes = h.to_bytes();
            let header_len = bytes.len();
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let (p, used) = parse(&bytes).unwrap();
            assert_eq!(used, header_len);
            assert_eq!(p.command, Command::Proxy);
            assert_eq!(p.addresses, Some((h.src, h.dst)));
            assert_eq!(p.alpn, h.alpn);
            assert_eq!(p.authority, h.authority);
            assert_eq!(p.ssl.as_ref().map(to_ssl), h.ssl);
            assert_eq!(p.spiffe, h.spiffe);
            assert_eq!(p.unique_id, h.unique_id);
            assert!(p.other.is_empty());
        }
        let (p, _) = parse(&full().to_bytes()).unwrap();
        let ssl = p.ssl.unwrap();
        assert_eq!(
            ssl.client,
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        );
        assert_eq!(ssl.verify, 0);
    }

    #[test]
    fn address_families() {
        // (src, dst, the family sent, the addresses parsed): mixed is IPv6 with the
        // IPv4 side mapped; IPv4-mapped on both sides (a dual-stack listener) is IPv4.
        let v6 = "[2001:db8::2]:8443";
        for (src, dst, family, parsed) in [
            ("192.0.2.1:1", v6, FAMILY_TCP6, ("[::ffff:192.0.2.1]:1", v6)),
            (
                "[::ffff:192.0.2.1]:1",
                "[::ffff:192.0.2.2]:2",
                FAMILY_TCP4,
                ("192.0.2.1:1", "192.0.2.2:2"),
            ),
        ] {
            let bytes = Header::new(src.parse().unwrap(), dst.parse().unwrap()).to_bytes();
            assert_eq!(bytes[13], family, "{src} {dst}");
            let (p, _) = parse(&bytes).unwrap();
            let want = (parsed.0.parse().unwrap(), parsed.1.parse().unwrap());
            assert_eq!(p.addresses, Some(want), "{src} {dst}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete_never_a_panic() {
        for h in [full(), minimal()] {
            let bytes = h.to_bytes();
            for n in 0..bytes.len() {
                match parse(&bytes[..n]) {
                    Err(ParseError::Incomplete { needed }) => {
                        assert!(needed > n && needed <= bytes.len(), "{n}: {needed}")
                    }
                    other => panic!("prefix of {n} bytes: {other:?}"),
                }
            }
            assert!(parse(&bytes).is_ok());
        }
    }

    #[test]
    fn corrupted_headers_are_invalid_not_panics() {
        let good = full().to_bytes();
        // Every single-byte corruption parses or fails cleanly.
        for i in 0..good.len() {
            for x in [0x00, 0xff, 0x80, 0x01] {
                let mut b = good.clone();
                b[i] ^= x;
                let _ = parse(&b);
            }
        }
        let cases: [(&[u8], &str); 4] = [
            (b"GET / HTTP/1.1\r\n", "no PROXY v2 signature"),
            (b"PROXY TCP4 1.2.3.4", "no PROXY v2 signature"),
            (b"\r\n\r\n\0\r\nQUIT\n\x11\x11\0\0", "version 1 is not 2"),
            (b"\r\n\r\n\0\r\nQUIT\n\x22\x11\0\0", "unknown command 2"),
        ];
        for (bytes, why) in cases {
            match parse(bytes) {
                Err(ParseError::Invalid(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(
            matches!(parse(&short), Err(ParseError::Invalid(e)) if e.contains("shorter than the addresses"))
        );
        let mut stray = minimal().to_bytes();
        stray.extend_from_slice(&[0x02, 0]);
        stray[15] += 2;
        assert!(matches!(parse(&stray), Err(ParseError::Invalid(e)) if e.contains("stray")));
        let mut over = minimal().to_bytes();
        over.extend_from_slice(&[0x02, 0, 9, b'x']);
        over[15] += 4;
        assert!(
            matches!(parse(&over), Err(ParseError::Invalid(e)) if e.contains("claims 9 bytes"))
        );
    }

    #[test]
    fn local_command_and_unknown_tlvs() {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0x20, 0x00, 0, 4, 0x04, 0, 1, 0]);
        let (p, used) = parse(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(p.command, Command::Local);
        assert_eq!(p.addresses, None);
        assert_eq!(p.other, [(0x04, vec![0])]);
    }

    #[test]
    fn unrepresentable_values_are_left_out() {
        let h = Header {
            unique_id: Some(vec![7; MAX_UNIQUE_ID + 1]),
            spiffe: Some("x".repeat(70_000)),
            authority: Some("a".into()),
            ..minimal()
        };
        let bytes = h.to_bytes();
        let (p, used) = parse(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(p.unique_id, None);
        assert_eq!(p.spiffe, None);
        assert_eq!(p.authority.as_deref(), Some("a"));
        // The largest value HAProxy takes is kept, one byte more is left out.
        for (n, kept) in [(MAX_TLV_VALUE, true), (MAX_TLV_VALUE + 1, false)] {
            let h = Header {
                spiffe: Some("y".repeat(n)),
                ..minimal()
            };
            let (p, _) = parse(&h.to_bytes()).unwrap();
            assert_eq!(p.spiffe.is_some(), kept, "{n}");
        }
    }
}
