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
            Error::Truncated => write!(f, "VXLAN datagram shorter than the {HEADER_LEN}-byte header"),
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
        self.buffer.as_mut().get_mut(field::PAYLOAD).unwrap_or(&mut [])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags 0x08, VNI 4096: the header the kernel put in front of the ICMP
    /// echo captured by `testdata/capture-kernel-vxlan.sh`
    /// (see [`testdata::KERNEL_ICMP_DATAGRAM`], bytes 28..36).
    static HEADER_BYTES: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), FLAG_I);
        assert_eq!(packet.vni(), 4096);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 8];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(4096);
        assert_eq!(&packet.into_inner()[..], &HEADER_BYTES[..]);
    }

    #[test]
    fn test_parse() {
        let packet = Packet::new_unchecked(&HEADER_BYTES[..]);
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 4096 }));
    }

    #[test]
    fn test_emit() {
        let repr = Repr { vni: 4096 };
        let mut bytes = [0xffu8; 8];
        assert_eq!(repr.buffer_len(), 8);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, HEADER_BYTES);
    }
}
