//! Extra local IPv4 addresses on a TAP (service VIPs, the DNS responder's
//! address), through two rtnetlink messages: `RTM_NEWADDR` and
//! `RTM_DELADDR`. Written here rather than pulled in (the `rtnetlink` stack
//! or tun-rs's netlink feature) because these two fixed 40-byte requests and
//! their acknowledgement are all the daemon needs; the socket is an ordinary
//! `socket2` socket, so no `unsafe` is involved.
//!
//! Why addresses at all: traffic from the node's workloads to a VIP or to
//! the DNS address must be delivered to local sockets, and the kernel does
//! that only for its own addresses. A `/32` with host scope adds a local
//! route and nothing else (no prefix route, never chosen as a source for
//! traffic that leaves the node), and it disappears with the TAP.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_HOST: u8 = 254;

/// The request: `nlmsghdr` (16), `ifaddrmsg` (8), `IFA_LOCAL` and
/// `IFA_ADDRESS` attributes (8 each), in host byte order except the
/// address itself (network order, as the kernel stores it).
fn request(kind: u16, flags: u16, seq: u32, ifindex: u32, ip: Ipv4Addr, prefix: u8) -> [u8; 40] {
    let mut m = [0u8; 40];
    m[0..4].copy_from_slice(&40u32.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope, interface index.
    m[16] = libc::AF_INET as u8;
    m[17] = prefix;
    m[19] = RT_SCOPE_HOST;
    m[20..24].copy_from_slice(&ifindex.to_ne_bytes());
    for (i, attr) in [IFA_LOCAL, IFA_ADDRESS].into_iter().enumerate() {
        let at = 24 + i * 8;
        m[at..at + 2].copy_from_slice(&8u16.to_ne_bytes());
        m[at + 2..at + 4].copy_from_slice(&attr.to_ne_bytes());
        m[at + 4..at + 8].copy_from_slice(&ip.octets());
    }
    m
}

/// Reads the kernel's acknowledgement: `Ok` for error code 0, the OS error
/// otherwise.
fn ack(reply: &[u8], seq: u32) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    if reply.len() < 20 {
        return Err(bad());
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let rseq = u32::from_ne_bytes([reply[8], reply[9], reply[10], reply[11]]);
    if kind != NLMSG_ERROR || rseq != seq {
        return Err(bad());
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

fn call(kind: u16, flags: u16, ifindex: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let seq = 1;
    // Unaddressed netlink sends go to the kernel (port 0).
    sock.send(&request(kind, flags, seq, ifindex, ip, prefix))?;
    let mut buf = [0u8; 256];
    let n = (&sock).read(&mut buf)?;
    ack(&buf[..n], seq)
}

/// Adds `ip/prefix` (host scope) to interface `ifindex`; adding an address
/// that is already there succeeds.
pub fn add_v4(ifindex: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    call(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ifindex,
        ip,
        prefix,
    )
    .map_err(|e| io::Error::new(e.kind(), format!("adding {ip}/{prefix}: {e}")))
}

/// Removes `ip/prefix` from interface `ifindex`; removing an address that
/// is not there succeeds.
pub fn del_v4(ifindex: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    match call(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, ifindex, ip, prefix) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("removing {ip}/{prefix}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = request(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            3,
            Ipv4Addr::new(10, 0, 9, 254),
            32,
        );
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 32, 0, RT_SCOPE_HOST]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(&m[28..32], &[10, 0, 9, 254]);
        assert_eq!(&m[36..40], &[10, 0, 9, 254]);
    }

    #[test]
    fn ack_codes() {
        let mut r = [0u8; 36];
        r[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        r[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert!(ack(&r, 5).is_ok());
        assert!(ack(&r, 6).is_err());
        r[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack(&r, 5).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert!(ack(&r[..10], 5).is_err());
    }
}
