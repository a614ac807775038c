//! Tests of [`super`] (kept apart from the logic).

use super::*;
use proptest::prelude::*;

// Vectors captured from HAProxy 2.6.12 (`send-proxy-v2`) on loopback by
// `wire/testdata/capture-haproxy-proxy-v2.sh` with
// `wire/testdata/haproxy-send-proxy-v2.cfg`; the raw output is kept as
// `wire/testdata/haproxy-proxy-v2.txt`. Each relayed one ends with the
// client's first byte, `x` (0x78), which is not part of the header.

/// HAProxy, TCP over IPv4: client 127.0.0.1:47001 -> frontend
/// 127.0.0.1:47101 (line `v4`).
static HAPROXY_V4: [u8; 29] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c,
    0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0xb7, 0x99, 0xb7, 0xfd, 0x78,
];

/// HAProxy, TCP over IPv6: client [::1]:47002 -> frontend [::1]:47102
/// (line `v6`).
static HAPROXY_V6: [u8; 53] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 0x24,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0xb7, 0x9a, 0xb7, 0xfe, 0x78,
];

/// HAProxy, TCP over IPv4 with `proxy-v2-options crc32c,unique-id`:
/// client 127.0.0.1:47003 -> 127.0.0.1:47103, then the TLVs
/// PP2_TYPE_CRC32C (§2.2.3) `07785f29` and PP2_TYPE_UNIQUE_ID (§2.2.5)
/// `vxmesh-unique-id` (line `tlv`).
static HAPROXY_TLV: [u8; 55] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x26,
    0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0xb7, 0x9b, 0xb7, 0xff, 0x03, 0x00, 0x04, 0x07,
    0x78, 0x5f, 0x29, 0x05, 0x00, 0x10, 0x76, 0x78, 0x6d, 0x65, 0x73, 0x68, 0x2d, 0x75, 0x6e, 0x69,
    0x71, 0x75, 0x65, 0x2d, 0x69, 0x64, 0x78,
];

/// HAProxy's health check connection: LOCAL, UNSPEC, length 0 (line
/// `check`).
static HAPROXY_CHECK: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];

/// Built from the §2.2 byte layout: PROXY (`\x21`), UDP over IPv4
/// (`\x12`), length 12, 192.0.2.1:56324 -> 198.51.100.7:53 (RFC 5737
/// documentation addresses).
static SPEC_UDP4: [u8; 28] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x12, 0x00, 0x0c,
    0xc0, 0x00, 0x02, 0x01, 0xc6, 0x33, 0x64, 0x07, 0xdc, 0x04, 0x00, 0x35,
];

/// Built from the §2.2 byte layout: PROXY, TCP over IPv6 (`\x21`),
/// length 36, source 192.0.2.1:40000 v4-mapped (`::ffff:c000:201`, as
/// HAProxy's `make_proxy_line_v2` writes a mixed pair) -> destination
/// [2001:db8::7]:443 (RFC 3849).
static SPEC_MIXED: [u8; 52] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0x00, 0x24,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xc0, 0x00, 0x02, 0x01,
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07,
    0x9c, 0x40, 0x01, 0xbb,
];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// §2.2 header with the given version/command, family and length bytes.
fn fixed(ver_cmd: u8, fam: u8, len: u16) -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.extend_from_slice(&[ver_cmd, fam]);
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// CRC-32C (Castagnoli, reflected, poly 0x82f63b78), bitwise: the
/// checksum §2.2.3 puts in PP2_TYPE_CRC32C.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn test_deconstruct() {
    let p = Packet::new_checked(&HAPROXY_V4[..]).unwrap();
    assert_eq!(p.version(), 2);
    assert_eq!(p.command(), 1);
    assert_eq!((p.family(), p.protocol()), (1, 1));
    assert_eq!(p.addr_len(), 12);
    assert_eq!(p.header_len(), 28);
    let (s, d) = p.inet_addresses();
    assert_eq!(
        (s.to_string(), d.to_string()),
        ("127.0.0.1:47001".into(), "127.0.0.1:47101".into())
    );
    assert!(p.tlvs().is_empty());
    assert_eq!(p.payload(), b"x");

    let p = Packet::new_checked(&HAPROXY_V6[..]).unwrap();
    assert_eq!((p.family(), p.protocol(), p.addr_len()), (2, 1, 36));
    let (s, d) = p.inet6_addresses();
    assert_eq!(
        (s.to_string(), d.to_string()),
        ("[::1]:47002".into(), "[::1]:47102".into())
    );
    assert_eq!(p.payload(), b"x");

    let p = Packet::new_checked(&HAPROXY_TLV[..]).unwrap();
    assert_eq!((p.addr_len(), p.header_len()), (38, 54));
    assert_eq!(&p.tlvs()[..7], &[0x03, 0x00, 0x04, 0x07, 0x78, 0x5f, 0x29]);
    assert_eq!(&p.tlvs()[7..10], &[0x05, 0x00, 0x10]);
    assert_eq!(&p.tlvs()[10..], b"vxmesh-unique-id");
    assert_eq!(p.payload(), b"x");

    let p = Packet::new_checked(&HAPROXY_CHECK[..]).unwrap();
    assert_eq!(
        (p.command(), p.family(), p.protocol(), p.addr_len()),
        (0, 0, 0, 0)
    );
    assert!(p.payload().is_empty());
}

#[test]
fn test_construct() {
    let mut bytes = [0xa5u8; 28];
    let mut p = Packet::new_unchecked(&mut bytes[..]);
    p.set_signature();
    p.set_version_command(2, 1);
    p.set_family_protocol(1, 1);
    p.set_addr_len(12);
    p.set_inet_addresses(
        "127.0.0.1:47001".parse().unwrap(),
        "127.0.0.1:47101".parse().unwrap(),
    );
    assert_eq!(bytes[..], HAPROXY_V4[..28]);

    let mut bytes = [0xa5u8; 52];
    let mut p = Packet::new_unchecked(&mut bytes[..]);
    p.set_signature();
    p.set_version_command(2, 1);
    p.set_family_protocol(2, 1);
    p.set_addr_len(36);
    p.set_inet6_addresses(
        "[::1]:47002".parse().unwrap(),
        "[::1]:47102".parse().unwrap(),
    );
    assert_eq!(bytes[..], HAPROXY_V6[..52]);

    let mut bytes = [0xa5u8; 16];
    let mut p = Packet::new_unchecked(&mut bytes[..]);
    p.set_signature();
    p.set_version_command(2, 0);
    p.set_family_protocol(0, 0);
    p.set_addr_len(0);
    assert_eq!(bytes, HAPROXY_CHECK);
}

#[test]
fn test_parse() {
    let tcp = |s, d| Header {
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Some((sa(s), sa(d))),
    };
    let cases: &[(&str, &[u8], Header, usize)] = &[
        (
            "haproxy v4",
            &HAPROXY_V4,
            tcp("127.0.0.1:47001", "127.0.0.1:47101"),
            28,
        ),
        (
            "haproxy v6",
            &HAPROXY_V6,
            tcp("[::1]:47002", "[::1]:47102"),
            52,
        ),
        (
            "haproxy tlv",
            &HAPROXY_TLV,
            tcp("127.0.0.1:47003", "127.0.0.1:47103"),
            54,
        ),
        ("haproxy check", &HAPROXY_CHECK, Header::LOCAL, 16),
        (
            "spec udp4",
            &SPEC_UDP4,
            Header {
                command: Command::Proxy,
                transport: Transport::Dgram,
                addresses: Some((sa("192.0.2.1:56324"), sa("198.51.100.7:53"))),
            },
            28,
        ),
        (
            "spec mixed",
            &SPEC_MIXED,
            tcp("[::ffff:192.0.2.1]:40000", "[2001:db8::7]:443"),
            52,
        ),
    ];
    for (name, bytes, header, len) in cases {
        assert_eq!(Header::parse(bytes), Ok((*header, *len)), "{name}");
    }
}

#[test]
fn test_emit() {
    let emit = |h: Header| {
        let mut buf = [0xa5u8; 64];
        let n = h.emit(&mut buf).unwrap();
        assert_eq!(n, h.buffer_len());
        buf[..n].to_vec()
    };
    for (bytes, len) in [
        (&HAPROXY_V4[..], 28),
        (&HAPROXY_V6[..], 52),
        (&SPEC_UDP4[..], 28),
        (&SPEC_MIXED[..], 52),
    ] {
        let (h, n) = Header::parse(bytes).unwrap();
        assert_eq!(n, len);
        assert_eq!(emit(h), bytes[..len]);
    }
    assert_eq!(emit(Header::LOCAL), HAPROXY_CHECK);
    // LOCAL ignores addresses; the mixed pair is mapped like HAProxy does.
    let local = Header {
        command: Command::Local,
        transport: Transport::Dgram,
        addresses: Some((sa("192.0.2.1:1"), sa("192.0.2.2:2"))),
    };
    assert_eq!(emit(local), HAPROXY_CHECK);
    let mixed = Header {
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Some((sa("192.0.2.1:40000"), sa("[2001:db8::7]:443"))),
    };
    assert_eq!(emit(mixed), SPEC_MIXED);
    // The TLV vector re-emits without its TLVs.
    let (h, _) = Header::parse(&HAPROXY_TLV).unwrap();
    assert_eq!(emit(h)[..14], HAPROXY_TLV[..14]);
}

#[test]
fn encode_matches_haproxy() {
    let (buf, n) = encode(
        sa("127.0.0.1:47001"),
        sa("127.0.0.1:47101"),
        Transport::Stream,
    );
    assert_eq!(buf[..n], HAPROXY_V4[..28]);
    let (buf, n) = encode(sa("[::1]:47002"), sa("[::1]:47102"), Transport::Stream);
    assert_eq!(buf[..n], HAPROXY_V6[..52]);
    let (buf, n) = encode(
        sa("192.0.2.1:56324"),
        sa("198.51.100.7:53"),
        Transport::Dgram,
    );
    assert_eq!(buf[..n], SPEC_UDP4);
}

#[test]
fn emit_without_room_writes_nothing() {
    let h = Header::parse(&HAPROXY_V6).unwrap().0;
    let mut buf = [0u8; 51];
    assert_eq!(h.emit(&mut buf), Err(Error::NoRoom));
    assert_eq!(buf, [0; 51]);
    assert_eq!(Header::LOCAL.emit(&mut [0u8; 15]), Err(Error::NoRoom));
}

/// The captured TLV vector carries a valid §2.2.3 checksum: CRC-32C of
/// the whole header with the checksum's four bytes zeroed.
#[test]
fn haproxy_tlv_vector_checksum_verifies() {
    let mut header = HAPROXY_TLV[..54].to_vec();
    let sum = u32::from_be_bytes([header[31], header[32], header[33], header[34]]);
    header[31..35].fill(0);
    assert_eq!(crc32c(&header), sum);
}

/// The arrays above are the bytes in `wire/testdata/haproxy-proxy-v2.txt`,
/// so a transcription slip cannot go unnoticed.
#[test]
fn vectors_match_capture_file() {
    let file = include_str!("../testdata/haproxy-proxy-v2.txt");
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut seen = 0;
    for line in file.lines().filter(|l| !l.starts_with('#')) {
        let (name, bytes) = line.split_once(' ').unwrap();
        let vector: &[u8] = match name {
            "v4" => &HAPROXY_V4,
            "v6" => &HAPROXY_V6,
            "tlv" => &HAPROXY_TLV,
            "check" => &HAPROXY_CHECK,
            other => panic!("unknown capture {other}"),
        };
        assert_eq!(hex(bytes), vector, "{name}");
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn every_prefix_is_incomplete() {
    for v in [
        &HAPROXY_V4[..28],
        &HAPROXY_V6[..52],
        &HAPROXY_TLV[..54],
        &HAPROXY_CHECK[..],
    ] {
        for n in 0..v.len() {
            assert_eq!(Header::parse(&v[..n]), Err(Error::Incomplete), "{n}");
        }
    }
}

/// Each "must be rejected" of §2.2, detected from the first bad byte.
#[test]
fn rejects() {
    let mut bad_sig = HAPROXY_V4;
    bad_sig[4] = 0x20;
    assert_eq!(Header::parse(&bad_sig), Err(Error::BadSignature));
    assert_eq!(Header::parse(&bad_sig[..5]), Err(Error::BadSignature));
    // A version 1 header (§2.1) is not a version 2 one.
    assert_eq!(
        Header::parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        Err(Error::BadSignature)
    );
    assert_eq!(
        Header::parse(&fixed(0x11, 0x11, 12)[..13]),
        Err(Error::BadVersion)
    );
    assert_eq!(
        Header::parse(&fixed(0x22, 0x11, 12)[..13]),
        Err(Error::BadCommand)
    );
    assert_eq!(
        Header::parse(&fixed(0x2f, 0x11, 12)),
        Err(Error::BadCommand)
    );
    assert_eq!(
        Header::parse(&fixed(0x21, 0x41, 12)[..14]),
        Err(Error::BadFamily)
    );
    assert_eq!(Header::parse(&fixed(0x21, 0x13, 12)), Err(Error::BadFamily));
    assert_eq!(Header::parse(&fixed(0x21, 0x11, 11)), Err(Error::BadLength));
    assert_eq!(Header::parse(&fixed(0x21, 0x21, 12)), Err(Error::BadLength));
    assert_eq!(Header::parse(&fixed(0x21, 0x31, 36)), Err(Error::BadLength));
}

/// §2.2: LOCAL's family is ignored; UNSPEC and UNIX fall back to "no
/// addresses"; the length always says how much to skip.
#[test]
fn lenient_cases() {
    let mut local_v4 = fixed(0x20, 0x11, 12);
    local_v4.extend_from_slice(&HAPROXY_V4[16..28]);
    assert_eq!(Header::parse(&local_v4), Ok((Header::LOCAL, 28)));
    assert_eq!(
        Header::parse(&fixed(0x20, 0xff, 0)),
        Ok((Header::LOCAL, 16))
    );

    let unspec = Header {
        command: Command::Proxy,
        ..Header::LOCAL
    };
    assert_eq!(Header::parse(&fixed(0x21, 0x00, 0)), Ok((unspec, 16)));
    let mut unix = fixed(0x21, 0x32, 216);
    unix.resize(16 + 216, b'/');
    assert_eq!(Header::parse(&unix), Ok((unspec, 232)));
    let mut inet_unspec = fixed(0x21, 0x10, 12);
    inet_unspec.resize(28, 7);
    assert_eq!(Header::parse(&inet_unspec), Ok((unspec, 28)));
    assert_eq!(emit_vec(unspec), fixed(0x21, 0x00, 0));
}

fn is_v4(addr: &SocketAddr) -> bool {
    addr.is_ipv4()
}

fn emit_vec(h: Header) -> Vec<u8> {
    let mut buf = [0u8; MAX_EMIT_LEN];
    let n = h.emit(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn short_unchecked_packet_does_not_panic() {
    let mut short = [0x0du8, 0x0a, 0x0d];
    let mut p = Packet::new_unchecked(&mut short[..]);
    assert_eq!(
        (p.version(), p.command(), p.family(), p.addr_len()),
        (0, 0, 0, 0)
    );
    assert!(p.tlvs().is_empty() && p.payload().is_empty());
    assert_eq!(
        p.inet_addresses().0,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
    );
    assert_eq!(p.inet6_addresses().1.port(), 0);
    p.set_signature();
    p.set_version_command(2, 1);
    p.set_family_protocol(1, 1);
    p.set_addr_len(12);
    p.set_inet_addresses(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2),
    );
    assert_eq!(short, [0x0d, 0x0a, 0x0d]);
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Header::parse(&bytes);
    }

    /// Past the signature, so the family and length logic is exercised.
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&body);
        if let Ok((h, n)) = Header::parse(&bytes) {
            prop_assert!((HEADER_LEN..=bytes.len()).contains(&n));
            prop_assert!(h.buffer_len() <= n);
        }
    }

    #[test]
    fn emit_parse_round_trip(
        src in socket_addr(),
        dst in socket_addr(),
        dgram in any::<bool>(),
    ) {
        let transport = if dgram { Transport::Dgram } else { Transport::Stream };
        let (buf, n) = encode(src, dst, transport);
        let (h, consumed) = Header::parse(&buf[..n]).unwrap();
        prop_assert_eq!(consumed, n);
        let expected = if is_v4(&src) && is_v4(&dst) {
            (src, dst)
        } else {
            (SocketAddr::V6(to_v6(src)), SocketAddr::V6(to_v6(dst)))
        };
        let want = Header { command: Command::Proxy, transport, addresses: Some(expected) };
        prop_assert_eq!(h, want);
        prop_assert_eq!(n, if is_v4(&src) && is_v4(&dst) { 28 } else { 52 });
    }
}
