//! The wire format of encrypted networks. One UDP port carries both kinds
//! of traffic: a VXLAN datagram starts with its flags byte, which always
//! has the I bit (0x08) set (RFC 7348 section 5); the three message types
//! here never do, so the first byte tells them apart and a kernel `vxlan`
//! device drops ours as bad flags.
//!
//! All integers little-endian, as WireGuard's (whose layout this follows):
//!
//! ```text
//! initiation (113 B): type=1 | 0 0 0 | sender index u32 | Noise IK message 1 (105 B)
//! response    (61 B): type=2 | 0 0 0 | sender index u32 | receiver index u32 | Noise IK message 2 (49 B)
//! data  (32 B + VXLAN datagram):
//!                     type=4 | 0 0 0 | receiver index u32 | counter u64 | AEAD(VXLAN header + frame) | tag (16 B)
//! ```
//!
//! The data header (16 bytes) is the AEAD's associated data; the counter is
//! its nonce. The VXLAN header, and with it the VNI, travels sealed.

/// Noise IK message 1 with our 9-byte payload: e (32) + s (32 + 16) +
/// payload (9 + 16).
pub const NOISE_INIT_LEN: usize = 32 + 48 + INIT_PAYLOAD_LEN + 16;
/// Noise IK message 2 with our 1-byte payload: e (32) + payload (1 + 16).
pub const NOISE_RESP_LEN: usize = 32 + RESP_PAYLOAD_LEN + 16;
/// Initiation payload: timestamp (u64 nanoseconds, big-endian so it
/// compares as bytes) and the initiator's cipher preference.
pub const INIT_PAYLOAD_LEN: usize = 9;
/// Response payload: the cipher the responder chose.
pub const RESP_PAYLOAD_LEN: usize = 1;

pub const TYPE_INITIATION: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_DATA: u8 = 4;

pub const INITIATION_LEN: usize = 8 + NOISE_INIT_LEN;
pub const RESPONSE_LEN: usize = 12 + NOISE_RESP_LEN;
/// Type, reserved, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
pub const TAG_LEN: usize = 16;
/// What a sealed datagram carries beyond the plain VXLAN datagram.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// What an underlay datagram is, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A plain VXLAN datagram (or garbage the VXLAN parser refuses).
    Vxlan,
    Initiation,
    Response,
    Data,
}

pub fn kind(d: &[u8]) -> Kind {
    match d.first() {
        Some(&TYPE_INITIATION) => Kind::Initiation,
        Some(&TYPE_RESPONSE) => Kind::Response,
        Some(&TYPE_DATA) => Kind::Data,
        _ => Kind::Vxlan,
    }
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// A parsed data header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    pub receiver: u32,
    pub counter: u64,
}

impl DataHeader {
    /// The header of a data message long enough to hold a tag, with its
    /// reserved bytes zero.
    pub fn parse(d: &[u8]) -> Option<DataHeader> {
        if d.len() < DATA_OVERHEAD || d[0] != TYPE_DATA || d[1..4] != [0, 0, 0] {
            return None;
        }
        Some(DataHeader {
            receiver: u32_at(d, 4)?,
            counter: u64::from_le_bytes(d[8..16].try_into().ok()?),
        })
    }

    pub fn write(&self, out: &mut [u8]) {
        out[0] = TYPE_DATA;
        out[1..4].fill(0);
        out[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        out[8..16].copy_from_slice(&self.counter.to_le_bytes());
    }
}

/// A parsed initiation: the sender's index and the Noise message.
#[derive(Debug, PartialEq, Eq)]
pub struct Initiation<'a> {
    pub sender: u32,
    pub noise: &'a [u8],
}

impl<'a> Initiation<'a> {
    pub fn parse(d: &'a [u8]) -> Option<Initiation<'a>> {
        if d.len() != INITIATION_LEN || d[0] != TYPE_INITIATION || d[1..4] != [0, 0, 0] {
            return None;
        }
        Some(Initiation {
            sender: u32_at(d, 4)?,
            noise: &d[8..],
        })
    }

    /// Lays out the header in `out[..8]`; the Noise message goes after it.
    pub fn write_header(sender: u32, out: &mut [u8]) {
        out[0] = TYPE_INITIATION;
        out[1..4].fill(0);
        out[4..8].copy_from_slice(&sender.to_le_bytes());
    }
}

/// A parsed response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub sender: u32,
    pub receiver: u32,
    pub noise: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn parse(d: &'a [u8]) -> Option<Response<'a>> {
        if d.len() != RESPONSE_LEN || d[0] != TYPE_RESPONSE || d[1..4] != [0, 0, 0] {
            return None;
        }
        Some(Response {
            sender: u32_at(d, 4)?,
            receiver: u32_at(d, 8)?,
            noise: &d[12..],
        })
    }

    pub fn write_header(sender: u32, receiver: u32, out: &mut [u8]) {
        out[0] = TYPE_RESPONSE;
        out[1..4].fill(0);
        out[4..8].copy_from_slice(&sender.to_le_bytes());
        out[8..12].copy_from_slice(&receiver.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vxlan;

    #[test]
    fn no_message_type_can_be_read_as_vxlan() {
        for t in [TYPE_INITIATION, TYPE_RESPONSE, TYPE_DATA] {
            let mut d = [0u8; 64];
            d[0] = t;
            assert_eq!(
                vxlan::Packet::new_checked(&d[..]).err(),
                Some(vxlan::Error::MissingIFlag)
            );
        }
        let mut plain = [0u8; 64];
        vxlan::write_header(&mut plain[..8], 42);
        assert_eq!(kind(&plain), Kind::Vxlan);
    }

    #[test]
    fn data_headers_round_trip_and_bad_ones_are_refused() {
        let h = DataHeader {
            receiver: 0xdead_beef,
            counter: 1 << 40,
        };
        let mut d = [0u8; DATA_OVERHEAD];
        h.write(&mut d);
        assert_eq!(DataHeader::parse(&d), Some(h));
        assert_eq!(DataHeader::parse(&d[..DATA_OVERHEAD - 1]), None);
        d[2] = 1;
        assert_eq!(DataHeader::parse(&d), None);
    }

    #[test]
    fn handshake_messages_have_exact_lengths() {
        let mut d = vec![0u8; INITIATION_LEN];
        Initiation::write_header(7, &mut d);
        assert_eq!(Initiation::parse(&d).map(|i| i.sender), Some(7));
        assert!(Initiation::parse(&d[..INITIATION_LEN - 1]).is_none());
        let mut r = vec![0u8; RESPONSE_LEN];
        Response::write_header(8, 9, &mut r);
        let p = Response::parse(&r).unwrap();
        assert_eq!(
            (p.sender, p.receiver, p.noise.len()),
            (8, 9, NOISE_RESP_LEN)
        );
        r.push(0);
        assert!(Response::parse(&r).is_none());
    }
}
