//! The virtio-net header that a TAP opened with `IFF_VNET_HDR` puts in
//! front of every frame (struct virtio_net_hdr, 10 bytes, little-endian on
//! x86; see include/uapi/linux/virtio_net.h). It is how the kernel hands
//! userspace a TCP super-frame (TSO) with its checksum left to finish, and
//! how userspace hands one back.

use super::csum::{fold, sum};

pub const LEN: usize = 10;
/// The checksum from `csum_start` to the end must be computed and stored at
/// `csum_start + csum_offset` (the field holds the pseudo-header sum).
pub const F_NEEDS_CSUM: u8 = 1;
/// The checksum is known good.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Header {
    /// Reads the header at the start of `buf`; `None` if shorter than 10 bytes.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let b = buf.get(..LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Header {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into `buf[..10]`; false if `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> bool {
        let Some(b) = buf.get_mut(..LEN) else {
            return false;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        true
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

/// Finishes a checksum the sender left partial (`F_NEEDS_CSUM`): the sum from
/// `start` to the end of `frame`, seeded with what the field holds, folded
/// and inverted into the field. False if the offsets do not fit the frame.
pub fn finish_csum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if start >= frame.len() || field + 2 > frame.len() {
        return false;
    }
    let c = !fold(sum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn parse_emit_round_trip() {
        // Bytes a TAP gave for a TSO frame (flags NEEDS_CSUM, TCPV4,
        // hdr_len 66, gso_size 1398, csum_start 34, csum_offset 16).
        let raw = [0x01, 0x01, 0x42, 0x00, 0x76, 0x05, 0x22, 0x00, 0x10, 0x00];
        let h = Header::parse(&raw).unwrap();
        assert_eq!(
            h,
            Header {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1398,
                csum_start: 34,
                csum_offset: 16
            }
        );
        let mut out = [0u8; 10];
        assert!(h.emit(&mut out));
        assert_eq!(out, raw);
        assert!(Header::parse(&raw[..9]).is_none());
        assert!(!h.emit(&mut [0u8; 9]));
    }

    #[test]
    fn finishing_a_partial_checksum_gives_the_real_one() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 9, 1], [10, 0, 9, 2], 64)
            .tcp(1, 2, 3, 4);
        let mut good = Vec::new();
        b.write(&mut good, b"payload bytes").unwrap();
        // What the kernel leaves: the pseudo-header sum, not inverted.
        let mut f = good.clone();
        let tcp_len = (f.len() - 34) as u32;
        let pseudo = fold(sum(&f[26..34], 6 + tcp_len));
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        assert!(finish_csum(&mut f, 34, 16));
        assert_eq!(f, good);
        assert!(!finish_csum(&mut f, 200, 16));
    }
}
