//! The PROXY protocol version 2 header (HAProxy's `doc/proxy-protocol.txt`,
//! section 2.2 "Binary header format (version 2)"), as a zero-copy view and
//! a [`Header`] with `parse`/`emit`.
//!
//! The ingress mesh prepends it to a connection it relays to a backend that
//! asked for the client's address; a listener that accepts it parses it off
//! the front of the stream.
//!
//! ```text
//!  0      12        13        14         16
//! +------+---------+---------+----------+---------------------+--------+
//! | sig  | ver|cmd | fam|prt | len (BE) | addresses (len ...) | TLVs   |
//! +------+---------+---------+----------+---------------------+--------+
//!   sig = 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A ("\r\n\r\n\0\r\nQUIT\n")
//!   ver = 2 (high nibble), cmd = 0 LOCAL / 1 PROXY (low nibble)
//!   fam = 0 UNSPEC / 1 INET / 2 INET6 / 3 UNIX, prt = 0 UNSPEC / 1 STREAM / 2 DGRAM
//!   INET:  src addr (4), dst addr (4), src port (2), dst port (2)    = 12
//!   INET6: src addr (16), dst addr (16), src port (2), dst port (2)  = 36
//!   UNIX:  src path (108), dst path (108)                            = 216
//! ```
//!
//! The whole header is always `16 + len` bytes; what follows the addresses
//! inside `len` is TLVs, which this module skips (spec: "A receiver may
//! choose to skip over and ignore those bytes").
//!
//! Receiving is lenient where the spec allows it and strict where it says
//! "must": a wrong signature, version, command, or a family/protocol nibble
//! outside the table is an error; a `len` too short for the announced family
//! is [`Error::BadLength`]. A LOCAL header's family is ignored ("discard the
//! protocol block including the family"), and so are addresses of the UNIX
//! family and of UNSPEC combinations (spec: fall back to UNSPEC for valid
//! combinations a receiver does not implement). Checks run on whatever
//! prefix is present, so a bad header is rejected before it is complete;
//! [`Error::Incomplete`] means "valid so far, read more". The length field
//! may announce up to 65535 bytes: a listener reading into a smaller buffer
//! learns the full size from [`Packet::header_len`] once 16 bytes are in, and
//! should reject a header that will not fit rather than wait for it.
//!
//! Test vectors: headers captured from HAProxy 2.6 (`send-proxy-v2`) by
//! `testdata/capture-haproxy-proxy-v2.sh`, and headers built by hand from the
//! §2.2 layout; each names its source.
//!
//! Nothing here panics: accessors on a buffer too short (possible only
//! through [`Packet::new_unchecked`]) return zeros or empty slices and
//! setters do nothing.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12-byte signature that opens every version 2 header (§2.2).
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Length of the fixed part: signature, version/command, family, length.
pub const HEADER_LEN: usize = 16;
/// The only version this module speaks (high nibble of byte 13).
pub const VERSION: u8 = 2;
/// Address block length for TCP/UDP over IPv4 (§2.2: `2*4 + 2*2`).
pub const ADDR_LEN_INET: usize = 12;
/// Address block length for TCP/UDP over IPv6 (§2.2: `2*16 + 2*2`).
pub const ADDR_LEN_INET6: usize = 36;
/// Address block length for AF_UNIX (§2.2: `2*108`).
pub const ADDR_LEN_UNIX: usize = 216;
/// The longest header [`Header::emit`] writes (IPv6 addresses, no TLVs).
pub const MAX_EMIT_LEN: usize = HEADER_LEN + ADDR_LEN_INET6;

const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAM_UNSPEC: u8 = 0x0;
const FAM_INET: u8 = 0x1;
const FAM_INET6: u8 = 0x2;
const FAM_UNIX: u8 = 0x3;
const PROTO_UNSPEC: u8 = 0x0;
const PROTO_STREAM: u8 = 0x1;
const PROTO_DGRAM: u8 = 0x2;

/// Why bytes are not (yet) a valid PROXY v2 header. `Copy`, so a listener
/// can count it as a reject reason without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Valid so far, but the header is not complete: read more bytes.
    Incomplete,
    /// The first bytes are not the 12-byte signature (this also rejects a
    /// version 1 text header, which starts with `PROXY`).
    BadSignature,
    /// The version nibble is not 2.
    BadVersion,
    /// The command nibble is neither LOCAL (0) nor PROXY (1).
    BadCommand,
    /// The address family nibble is above 3 or the protocol nibble above 2.
    BadFamily,
    /// The length field is shorter than the announced family's addresses.
    BadLength,
    /// The output buffer is too small for the header.
    NoRoom,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Incomplete => "PROXY v2 header incomplete",
            Error::BadSignature => "not a PROXY v2 header (bad signature)",
            Error::BadVersion => "PROXY header version is not 2",
            Error::BadCommand => "PROXY v2 header with an unknown command",
            Error::BadFamily => "PROXY v2 header with an unknown family or protocol",
            Error::BadLength => "PROXY v2 header length too short for its addresses",
            Error::NoRoom => "buffer too small for the PROXY v2 header",
        })
    }
}

impl std::error::Error for Error {}

mod field {
    use core::ops::Range;

    pub const SIGNATURE: Range<usize> = 0..12;
    pub const VER_CMD: usize = 12;
    pub const FAM: usize = 13;
    pub const LEN: Range<usize> = 14..16;

    pub const INET_SRC_ADDR: Range<usize> = 16..20;
    pub const INET_DST_ADDR: Range<usize> = 20..24;
    pub const INET_SRC_PORT: Range<usize> = 24..26;
    pub const INET_DST_PORT: Range<usize> = 26..28;

    pub const INET6_SRC_ADDR: Range<usize> = 16..32;
    pub const INET6_DST_ADDR: Range<usize> = 32..48;
    pub const INET6_SRC_PORT: Range<usize> = 48..50;
    pub const INET6_DST_PORT: Range<usize> = 50..52;
}

/// The command (low nibble of byte 13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The proxy's own connection (e.g. a health check): the receiver uses
    /// the real endpoints and ignores the address block.
    Local,
    /// Relayed on behalf of a client whose endpoints follow.
    Proxy,
}

/// The transport protocol (low nibble of byte 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `SOCK_STREAM` (TCP).
    Stream,
    /// `SOCK_DGRAM` (UDP).
    Dgram,
}

/// A read/write view of a PROXY v2 header at the start of a buffer (the
/// connection's first bytes may follow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(data: &[u8], range: core::ops::Range<usize>) -> u16 {
    match data.get(range) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without any check.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Packet::check`]: a complete, valid header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Validates the bytes present, in wire order, so that a bad header is
    /// rejected from its first wrong byte; returns [`Error::Incomplete`] only
    /// when everything present is valid and bytes are missing.
    pub fn check(&self) -> Result<(), Error> {
        let data = self.buffer.as_ref();
        let sig = data.len().min(SIGNATURE.len());
        if data[..sig] != SIGNATURE[..sig] {
            return Err(Error::BadSignature);
        }
        let Some(&ver_cmd) = data.get(field::VER_CMD) else {
            return Err(Error::Incomplete);
        };
        if ver_cmd >> 4 != VERSION {
            return Err(Error::BadVersion);
        }
        let command = ver_cmd & 0x0f;
        if command != CMD_LOCAL && command != CMD_PROXY {
            return Err(Error::BadCommand);
        }
        let Some(&fam) = data.get(field::FAM) else {
            return Err(Error::Incomplete);
        };
        // LOCAL: "discard the protocol block including the family".
        if command == CMD_PROXY && (fam >> 4 > FAM_UNIX || fam & 0x0f > PROTO_DGRAM) {
            return Err(Error::BadFamily);
        }
        if data.len() < HEADER_LEN {
            return Err(Error::Incomplete);
        }
        if usize::from(self.addr_len()) < self.required_addr_len() {
            return Err(Error::BadLength);
        }
        if data.len() < self.header_len() {
            return Err(Error::Incomplete);
        }
        Ok(())
    }

    /// The version nibble (2 for a valid header).
    pub fn version(&self) -> u8 {
        self.ver_cmd() >> 4
    }

    /// The raw command nibble (0 LOCAL, 1 PROXY).
    pub fn command(&self) -> u8 {
        self.ver_cmd() & 0x0f
    }

    /// The raw address family nibble (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX).
    pub fn family(&self) -> u8 {
        self.fam() >> 4
    }

    /// The raw transport protocol nibble (0 UNSPEC, 1 STREAM, 2 DGRAM).
    pub fn protocol(&self) -> u8 {
        self.fam() & 0x0f
    }

    /// The length field: bytes after the fixed 16 (addresses and TLVs).
    pub fn addr_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LEN)
    }

    /// Length of the whole header, `16 + len` (TLVs included).
    pub fn header_len(&self) -> usize {
        HEADER_LEN + usize::from(self.addr_len())
    }

    /// The address block the family requires: 12, 36, 216, or 0 for LOCAL
    /// and for UNSPEC family or protocol.
    fn required_addr_len(&self) -> usize {
        if self.command() != CMD_PROXY || self.protocol() == PROTO_UNSPEC {
            return 0;
        }
        match self.family() {
            FAM_INET => ADDR_LEN_INET,
            FAM_INET6 => ADDR_LEN_INET6,
            FAM_UNIX => ADDR_LEN_UNIX,
            _ => 0,
        }
    }

    /// The TLV vectors after the address block (empty when there are none or
    /// the buffer is short).
    pub fn tlvs(&self) -> &[u8] {
        let start = HEADER_LEN + self.required_addr_len();
        self.buffer
            .as_ref()
            .get(start..self.header_len())
            .unwrap_or(&[])
    }

    /// The connection's bytes after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }

    /// The (source, destination) addresses of an INET (12-byte) block.
    pub fn inet_addresses(&self) -> (SocketAddrV4, SocketAddrV4) {
        let data = self.buffer.as_ref();
        let ip = |r: core::ops::Range<usize>| match data.get(r) {
            Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
            _ => Ipv4Addr::UNSPECIFIED,
        };
        (
            SocketAddrV4::new(ip(field::INET_SRC_ADDR), be16(data, field::INET_SRC_PORT)),
            SocketAddrV4::new(ip(field::INET_DST_ADDR), be16(data, field::INET_DST_PORT)),
        )
    }

    /// The (source, destination) addresses of an INET6 (36-byte) block, with
    /// zero flow info and scope id (the header carries neither).
    pub fn inet6_addresses(&self) -> (SocketAddrV6, SocketAddrV6) {
        let data = self.buffer.as_ref();
        let ip = |r: core::ops::Range<usize>| match data.get(r).map(<[u8; 16]>::try_from) {
            Some(Ok(b)) => Ipv6Addr::from(b),
            _ => Ipv6Addr::UNSPECIFIED,
        };
        let port = |r| be16(data, r);
        (
            SocketAddrV6::new(ip(field::INET6_SRC_ADDR), port(field::INET6_SRC_PORT), 0, 0),
            SocketAddrV6::new(ip(field::INET6_DST_ADDR), port(field::INET6_DST_PORT), 0, 0),
        )
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_cmd(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::VER_CMD)
            .copied()
            .unwrap_or(0)
    }

    fn fam(&self) -> u8 {
        self.buffer.as_ref().get(field::FAM).copied().unwrap_or(0)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the 12-byte signature.
    pub fn set_signature(&mut self) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::SIGNATURE) {
            b.copy_from_slice(&SIGNATURE);
        }
    }

    /// Writes the version and command nibbles (each masked to 4 bits).
    pub fn set_version_command(&mut self, version: u8, command: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::VER_CMD) {
            *b = (version << 4) | (command & 0x0f);
        }
    }

    /// Writes the family and protocol nibbles (each masked to 4 bits).
    pub fn set_family_protocol(&mut self, family: u8, protocol: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::FAM) {
            *b = (family << 4) | (protocol & 0x0f);
        }
    }

    /// Writes the length field.
    pub fn set_addr_len(&mut self, len: u16) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::LEN) {
            b.copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Writes a 12-byte INET address block (the length field is not touched).
    pub fn set_inet_addresses(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        let data = self.buffer.as_mut();
        for (range, bytes) in [
            (field::INET_SRC_ADDR, &src.ip().octets()[..]),
            (field::INET_DST_ADDR, &dst.ip().octets()[..]),
            (field::INET_SRC_PORT, &src.port().to_be_bytes()[..]),
            (field::INET_DST_PORT, &dst.port().to_be_bytes()[..]),
        ] {
            if let Some(b) = data.get_mut(range) {
                b.copy_from_slice(bytes);
            }
        }
    }

    /// Writes a 36-byte INET6 address block (the length field is not
    /// touched; flow info and scope id are not carried).
    pub fn set_inet6_addresses(&mut self, src: SocketAddrV6, dst: SocketAddrV6) {
        let data = self.buffer.as_mut();
        for (range, bytes) in [
            (field::INET6_SRC_ADDR, &src.ip().octets()[..]),
            (field::INET6_DST_ADDR, &dst.ip().octets()[..]),
            (field::INET6_SRC_PORT, &src.port().to_be_bytes()[..]),
            (field::INET6_DST_PORT, &dst.port().to_be_bytes()[..]),
        ] {
            if let Some(b) = data.get_mut(range) {
                b.copy_from_slice(bytes);
            }
        }
    }
}

/// The meaning of a PROXY v2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub command: Command,
    /// The relayed connection's transport. A header without addresses
    /// (LOCAL, or UNSPEC protocol) parses as `Stream`, the transport the
    /// header itself arrived on.
    pub transport: Transport,
    /// (source, destination); `None` for LOCAL and for UNSPEC or UNIX
    /// headers. IPv6 addresses parse with zero flow info and scope id; a
    /// v4-mapped IPv6 address stays an IPv6 address.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

impl Header {
    /// What a proxy sends on its own connections (health checks): LOCAL,
    /// UNSPEC, no addresses; the 16 bytes HAProxy sends for a check.
    pub const LOCAL: Header = Header {
        command: Command::Local,
        transport: Transport::Stream,
        addresses: None,
    };

    /// Parses a header at the start of `buf`. Returns it and the number of
    /// bytes it occupies (`16 + len`, TLVs included and skipped); the
    /// connection's data starts there.
    pub fn parse(buf: &[u8]) -> Result<(Header, usize), Error> {
        let packet = Packet::new_checked(buf)?;
        let transport = if packet.protocol() == PROTO_DGRAM {
            Transport::Dgram
        } else {
            Transport::Stream
        };
        let (command, addresses) = match packet.command() {
            CMD_PROXY => {
                let addresses = match (packet.family(), packet.protocol()) {
                    (_, PROTO_UNSPEC) => None,
                    (FAM_INET, _) => {
                        let (s, d) = packet.inet_addresses();
                        Some((SocketAddr::V4(s), SocketAddr::V4(d)))
                    }
                    (FAM_INET6, _) => {
                        let (s, d) = packet.inet6_addresses();
                        Some((SocketAddr::V6(s), SocketAddr::V6(d)))
                    }
                    _ => None,
                };
                (Command::Proxy, addresses)
            }
            _ => (Command::Local, None),
        };
        let transport = if addresses.is_some() {
            transport
        } else {
            Transport::Stream
        };
        let header = Header {
            command,
            transport,
            addresses,
        };
        Ok((header, packet.header_len()))
    }

    /// Length of the emitted header: 16 without addresses, 28 for two IPv4
    /// addresses, 52 otherwise.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self.emitted_addresses() {
                None => 0,
                Some(Addrs::V4(..)) => ADDR_LEN_INET,
                Some(Addrs::V6(..)) => ADDR_LEN_INET6,
            }
    }

    /// Writes the header into `out[..self.buffer_len()]` and returns its
    /// length, or [`Error::NoRoom`] (nothing written) if `out` is shorter.
    ///
    /// LOCAL is written as HAProxy writes it: family/protocol `0x00`, length
    /// 0, `addresses` and `transport` ignored. PROXY without addresses is
    /// written with `0x00` too. An IPv4/IPv6 pair is written as IPv6 with
    /// the IPv4 side v4-mapped (`::ffff:a.b.c.d`), as HAProxy's
    /// `make_proxy_line_v2` does.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let out = out.get_mut(..len).ok_or(Error::NoRoom)?;
        let mut packet = Packet::new_unchecked(out);
        packet.set_signature();
        let command = match self.command {
            Command::Local => CMD_LOCAL,
            Command::Proxy => CMD_PROXY,
        };
        packet.set_version_command(VERSION, command);
        let protocol = match self.transport {
            Transport::Stream => PROTO_STREAM,
            Transport::Dgram => PROTO_DGRAM,
        };
        match self.emitted_addresses() {
            None => {
                packet.set_family_protocol(FAM_UNSPEC, PROTO_UNSPEC);
                packet.set_addr_len(0);
            }
            Some(Addrs::V4(src, dst)) => {
                packet.set_family_protocol(FAM_INET, protocol);
                packet.set_addr_len(ADDR_LEN_INET as u16);
                packet.set_inet_addresses(src, dst);
            }
            Some(Addrs::V6(src, dst)) => {
                packet.set_family_protocol(FAM_INET6, protocol);
                packet.set_addr_len(ADDR_LEN_INET6 as u16);
                packet.set_inet6_addresses(src, dst);
            }
        }
        Ok(len)
    }

    fn emitted_addresses(&self) -> Option<Addrs> {
        if self.command == Command::Local {
            return None;
        }
        let (src, dst) = self.addresses?;
        Some(match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => Addrs::V4(s, d),
            _ => Addrs::V6(to_v6(src), to_v6(dst)),
        })
    }
}

enum Addrs {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

fn to_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => a,
    }
}

/// The PROXY header for a relayed connection from `src` to `dst`, in a
/// stack buffer: send `buf[..len]` before the client's first byte.
pub fn encode(src: SocketAddr, dst: SocketAddr, transport: Transport) -> ([u8; 52], usize) {
    let mut buf = [0u8; MAX_EMIT_LEN];
    let header = Header {
        command: Command::Proxy,
        transport,
        addresses: Some((src, dst)),
    };
    // Cannot fail: 52 bytes is the longest header `emit` writes.
    let len = header.emit(&mut buf).unwrap_or(0);
    (buf, len)
}

#[cfg(test)]
mod tests;
