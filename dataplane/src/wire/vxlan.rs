//! The 8-byte VXLAN header (RFC 7348 section 5), as a zero-copy view.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The header sits right after the outer UDP header; the inner Ethernet
//! frame (without FCS) follows it. On receive only the I flag is checked:
//! "the other reserved fields MUST be ignored on receipt" (RFC 7348 §5).
//! On transmit the flags are `0x08` and every reserved bit is zero, which is
//! also what the Linux `vxlan` driver sends (see the captured vectors below).
//!
//! Accessors never panic: on a buffer shorter than [`HEADER_LEN`] (possible
//! only through [`Packet::new_unchecked`]) readers return 0 or an empty
//! payload and setters do nothing. Use [`Packet::new_checked`] for untrusted
//! input.

use core::fmt;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// IANA-assigned UDP destination port (RFC 7348 §5).
pub const DEFAULT_PORT: u16 = 4789;
/// The "I" flag: the VNI field is valid. Must be set.
pub const FLAG_I: u8 = 0x08;
/// The largest 24-bit VNI.
pub const MAX_VNI: u32 = 0xff_ffff;

/// Why a datagram is not a VXLAN packet. `Copy`, so the hot path can count
/// it as a drop reason without allocating or logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 8-byte header.
    Truncated,
    /// The I flag (0x08) is clear, so the VNI is not valid (RFC 7348 §5).
    MissingIFlag,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(
                f,
                "VXLAN datagram shorter than the {HEADER_LEN}-byte header"
            ),
            Error::MissingIFlag => write!(f, "VXLAN header without the I flag (0x08)"),
        }
    }
}

impl std::error::Error for Error {}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
    pub const PAYLOAD: RangeFrom<usize> = super::HEADER_LEN..;
}

/// A read/write view of a VXLAN header followed by its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Packet::check`]: at least 8 bytes and the I
    /// flag set.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// `Truncated` when shorter than the header, `MissingIFlag` when the I
    /// flag is clear. Reserved bits and the other flags are ignored.
    pub fn check(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[field::FLAGS] & FLAG_I == 0 {
            return Err(Error::MissingIFlag);
        }
        Ok(())
    }

    /// The flags byte (0 on a truncated buffer).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref().get(field::FLAGS).copied().unwrap_or(0)
    }

    /// The 24-bit VNI (0 on a truncated buffer).
    pub fn vni(&self) -> u32 {
        match self.buffer.as_ref().get(field::VNI) {
            Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]),
            _ => 0,
        }
    }

    /// The inner Ethernet frame (empty on a truncated buffer).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD).unwrap_or(&[])
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::FLAGS) {
            *b = flags;
        }
    }

    /// Sets the VNI; bits above the low 24 are dropped.
    pub fn set_vni(&mut self, vni: u32) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::VNI) {
            b.copy_from_slice(&vni.to_be_bytes()[1..]);
        }
    }

    /// Zeroes both reserved fields (bytes 1..4 and 7).
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        if data.len() >= HEADER_LEN {
            data[field::RESERVED1].fill(0);
            data[field::RESERVED2] = 0;
        }
    }

    /// The inner Ethernet frame, mutable (empty on a truncated buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD)
            .unwrap_or(&mut [])
    }
}

/// The meaning of a VXLAN header: only the VNI carries information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// Parses a header, checking length and the I flag.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check()?;
        Ok(Repr { vni: packet.vni() })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes flags `0x08`, zero reserved bits and the VNI (low 24 bits).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

/// Writes the 8-byte header for `vni` into `buf[..8]`, as the kernel does
/// (flags 0x08, reserved zero). The TX path calls it on the headroom in
/// front of a frame. Does nothing if `buf` is shorter than [`HEADER_LEN`].
pub fn write_header(buf: &mut [u8], vni: u32) {
    if let Some(h) = buf.get_mut(..HEADER_LEN) {
        Repr { vni }.emit(&mut Packet::new_unchecked(h));
    }
}

/// Frames captured from the Linux kernel's own `vxlan` device, shared with
/// the integration tests of other crates. Not API.
///
/// Captured 2026-11-28 on Linux 6.18.44-fc-v669 (`uname -r`) by
/// `dataplane/src/wire/testdata/capture-kernel-vxlan.sh` (the pcap is kept
/// beside it as `kernel-vxlan.pcap`): node A (`vx0`, VNI 4096, 10.0.9.1,
/// 02:42:0a:00:09:01, underlay 198.18.0.1) and node B (10.0.9.3,
/// 02:42:0a:00:09:03, underlay 198.18.0.2), default device options
/// (`udpcsum`, `srcport 0 0`, `ttl auto`, no DF). Each constant is the
/// outer IPv4 + UDP + VXLAN headers and the inner frame, without the
/// underlay Ethernet header (whose MACs were random veth addresses).
///
/// Fields that differ from run to run: the outer IPv4 identification and
/// header checksum, the inner ICMP identifier, timestamp and checksum (and
/// the inner IPv4 id and checksum); the outer UDP checksum follows from
/// those. The UDP source port comes from the kernel's per-boot-keyed flow
/// hash: stable on one boot, different on another. The UDP checksum is
/// *not* zero: this kernel's default is `udpcsum` (captured with TX
/// checksum offload off on the veth, so the value is the complete one).
#[doc(hidden)]
pub mod testdata {
    /// Length of the outer IPv4 (no options) and UDP headers in front of the
    /// VXLAN header in these datagrams.
    pub const OUTER_LEN: usize = 20 + 8;

    /// A -> B: ICMP echo request 10.0.9.1 -> 10.0.9.2 (static neighbour entry,
    /// so no ARP first). Outer: 198.18.0.1:40174 -> 198.18.0.2:4789, id
    /// 0x7e28, UDP checksum 0x88a7. Inner: 98-byte frame, 02:42:0a:00:09:01 ->
    /// 02:42:0a:00:09:02, IPv4 with DF, ICMP id 0x213d seq 1.
    pub const KERNEL_ICMP_DATAGRAM: &[u8] = &[
        0x45, 0x00, 0x00, 0x86, 0x7e, 0x28, 0x00, 0x00, 0x40, 0x11, 0x70, 0x17, 0xc6, 0x12, 0x00,
        0x01, 0xc6, 0x12, 0x00, 0x02, 0x9c, 0xee, 0x12, 0xb5, 0x00, 0x72, 0x88, 0xa7, 0x08, 0x00,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x02, 0x42, 0x0a, 0x00, 0x09, 0x02, 0x02, 0x42, 0x0a,
        0x00, 0x09, 0x01, 0x08, 0x00, 0x45, 0x00, 0x00, 0x54, 0x25, 0x9c, 0x40, 0x00, 0x40, 0x01,
        0xef, 0x0a, 0x0a, 0x00, 0x09, 0x01, 0x0a, 0x00, 0x09, 0x02, 0x08, 0x00, 0xdc, 0x1d, 0x21,
        0x3d, 0x00, 0x01, 0x7b, 0x51, 0x0a, 0x6b, 0x00, 0x00, 0x00, 0x00, 0xa9, 0x14, 0x0d, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a,
        0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
        0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37,
    ];

    /// A -> B: ARP request "who has 10.0.9.3, tell 10.0.9.1" (no neighbour
    /// entry), flooded to B. Outer: 198.18.0.1:57589 -> 198.18.0.2:4789.
    /// The inner frame is 42 bytes: the kernel does not pad it to 60.
    pub const KERNEL_ARP_REQUEST_DATAGRAM: &[u8] = &[
        0x45, 0x00, 0x00, 0x4e, 0x7f, 0x03, 0x00, 0x00, 0x40, 0x11, 0x6f, 0x74, 0xc6, 0x12, 0x00,
        0x01, 0xc6, 0x12, 0x00, 0x02, 0xe0, 0xf5, 0x12, 0xb5, 0x00, 0x3a, 0x11, 0x01, 0x08, 0x00,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a,
        0x00, 0x09, 0x01, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42,
        0x0a, 0x00, 0x09, 0x01, 0x0a, 0x00, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a,
        0x00, 0x09, 0x03,
    ];

    /// B -> A: B's kernel answering that request, "10.0.9.3 is at
    /// 02:42:0a:00:09:03". Outer: 198.18.0.2:57589 -> 198.18.0.1:4789 (the
    /// same source port as the request: the kernel's flow hash is
    /// symmetric). Inner frame 42 bytes, unpadded.
    pub const KERNEL_ARP_REPLY_DATAGRAM: &[u8] = &[
        0x45, 0x00, 0x00, 0x4e, 0x14, 0xe9, 0x00, 0x00, 0x40, 0x11, 0xd9, 0x8e, 0xc6, 0x12, 0x00,
        0x02, 0xc6, 0x12, 0x00, 0x01, 0xe0, 0xf5, 0x12, 0xb5, 0x00, 0x3a, 0xe6, 0x75, 0x08, 0x00,
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x02, 0x42, 0x0a, 0x00, 0x09, 0x01, 0x02, 0x42, 0x0a,
        0x00, 0x09, 0x03, 0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x42,
        0x0a, 0x00, 0x09, 0x03, 0x0a, 0x00, 0x09, 0x03, 0x02, 0x42, 0x0a, 0x00, 0x09, 0x01, 0x0a,
        0x00, 0x09, 0x01,
    ];
}

#[cfg(test)]
mod tests {
    use super::testdata::{KERNEL_ICMP_DATAGRAM, OUTER_LEN};
    use super::*;
    use proptest::prelude::*;

    /// The VXLAN header and inner frame of the kernel-captured ICMP echo
    /// ([`testdata::KERNEL_ICMP_DATAGRAM`], captured by
    /// `testdata/capture-kernel-vxlan.sh`).
    fn kernel_vxlan() -> &'static [u8] {
        &KERNEL_ICMP_DATAGRAM[OUTER_LEN..]
    }

    /// Flags 0x08, reserved zero, VNI 4096: the first 8 bytes of
    /// `kernel_vxlan()`, i.e. what the kernel's vxlan device sends.
    static KERNEL_HEADER: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00];

    /// RFC 7348 §5: every reserved bit and the other seven flag bits set,
    /// VNI 0xabcdef. Receivers must ignore the reserved bits.
    static RESERVED_SET: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0xab, 0xcd, 0xef, 0xff];

    /// RFC 7348 §5: I flag clear ("MUST be set to 1 for a valid VNI").
    static NO_I_FLAG: [u8; 8] = [0xf7, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(kernel_vxlan()).unwrap();
        assert_eq!(packet.flags(), FLAG_I);
        assert_eq!(packet.vni(), 4096);
        let inner = packet.payload();
        assert_eq!(inner.len(), 98);
        assert_eq!(&inner[0..6], &[0x02, 0x42, 0x0a, 0x00, 0x09, 0x02]); // dst
        assert_eq!(&inner[6..12], &[0x02, 0x42, 0x0a, 0x00, 0x09, 0x01]); // src
        assert_eq!(&inner[12..14], &[0x08, 0x00]);

        let packet = Packet::new_checked(&RESERVED_SET[..]).unwrap();
        assert_eq!(packet.flags(), 0xff);
        assert_eq!(packet.vni(), 0xab_cdef);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn test_construct() {
        let inner = &kernel_vxlan()[HEADER_LEN..];
        let mut bytes = [0xa5u8; 8 + 98];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(4096);
        packet.payload_mut().copy_from_slice(inner);
        assert_eq!(&packet.into_inner()[..], kernel_vxlan());
    }

    #[test]
    fn test_parse() {
        let packet = Packet::new_unchecked(kernel_vxlan());
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 4096 }));
        let packet = Packet::new_unchecked(&RESERVED_SET[..]);
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 0xab_cdef }));
        let packet = Packet::new_unchecked(&NO_I_FLAG[..]);
        assert_eq!(Repr::parse(&packet), Err(Error::MissingIFlag));
        let packet = Packet::new_unchecked(&KERNEL_HEADER[..7]);
        assert_eq!(Repr::parse(&packet), Err(Error::Truncated));
    }

    #[test]
    fn test_emit() {
        let repr = Repr { vni: 4096 };
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        let mut bytes = RESERVED_SET;
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, KERNEL_HEADER);
        assert_eq!(&bytes[..], &kernel_vxlan()[..HEADER_LEN]);
    }

    #[test]
    fn write_header_matches_kernel() {
        let mut bytes = [0xffu8; 8];
        write_header(&mut bytes, 4096);
        assert_eq!(bytes, KERNEL_HEADER);
        // Too short: nothing written, no panic.
        let mut short = [0xffu8; 7];
        write_header(&mut short, 4096);
        assert_eq!(short, [0xff; 7]);
    }

    #[test]
    fn vni_is_24_bits() {
        let mut bytes = [0u8; 8];
        write_header(&mut bytes, 0xff12_3456);
        assert_eq!(bytes, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        write_header(&mut bytes, MAX_VNI);
        assert_eq!(Packet::new_checked(&bytes[..]).unwrap().vni(), MAX_VNI);
    }

    #[test]
    fn truncated_unchecked_packet_does_not_panic() {
        let mut short = [0x08u8, 0, 0];
        let mut packet = Packet::new_unchecked(&mut short[..]);
        assert_eq!(packet.vni(), 0);
        assert!(packet.payload().is_empty());
        assert!(packet.payload_mut().is_empty());
        packet.set_vni(7);
        packet.clear_reserved();
        packet.set_flags(0);
        assert_eq!(short, [0, 0, 0]);
        assert_eq!(Packet::new_checked(&[][..]), Err(Error::Truncated));
    }

    /// The captured datagram is what it claims: etherparse reads an IPv4/UDP
    /// packet to port 4789 whose (non-zero) checksum verifies, and whose
    /// payload is the VXLAN header tested above.
    #[test]
    fn kernel_datagram_outer_headers() {
        let sliced = etherparse::SlicedPacket::from_ip(KERNEL_ICMP_DATAGRAM).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4");
        };
        let Some(etherparse::TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP");
        };
        assert_eq!(udp.destination_port(), DEFAULT_PORT);
        assert_eq!(udp.source_port(), 40174);
        assert_ne!(udp.checksum(), 0);
        let h = ip.header();
        let sum = udp
            .to_header()
            .calc_checksum_ipv4_raw(h.source(), h.destination(), udp.payload())
            .unwrap();
        assert_eq!(sum, udp.checksum());
        assert_eq!(udp.payload(), kernel_vxlan());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match Packet::new_checked(&bytes[..]) {
                Ok(p) => {
                    prop_assert!(p.vni() <= MAX_VNI);
                    prop_assert_eq!(p.payload().len(), bytes.len() - HEADER_LEN);
                    prop_assert_eq!(Repr::parse(&p), Ok(Repr { vni: p.vni() }));
                }
                Err(Error::Truncated) => prop_assert!(bytes.len() < HEADER_LEN),
                Err(Error::MissingIFlag) => prop_assert_eq!(bytes[0] & FLAG_I, 0),
            }
            let u = Packet::new_unchecked(&bytes[..]);
            let _ = (u.flags(), u.vni(), u.payload());
        }

        #[test]
        fn emit_parse_roundtrip(vni in 0..=MAX_VNI, junk in any::<[u8; 8]>()) {
            let mut bytes = junk;
            Repr { vni }.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let p = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p), Ok(Repr { vni }));
            prop_assert_eq!(p.flags(), FLAG_I);
        }
    }
}
