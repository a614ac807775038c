//! ICMP echo done in Rust, on a raw socket inside a namespace, so the lab
//! needs no `ping` binary (a fresh machine may not have iputils). Tests and
//! benchmarks that want `ping -i 0.001` use [`crate::ping`] instead.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, PingStats, Testbed};

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn request(id: u16, seq: u16) -> [u8; 64] {
    let mut p = [0u8; 64];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Sends `count` echo requests to `dst` from namespace `ns`, one every
/// `interval`, each waiting at most 1 s for its reply; the whole run stops
/// after `timeout`. Lost replies are counted, not an error.
pub fn echo(
    tb: &Testbed,
    ns: &str,
    dst: Ipv4Addr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> Result<PingStats, Error> {
    let id = (std::process::id() as u16) ^ 0x5678;
    tb.in_ns(ns, move || -> std::io::Result<PingStats> {
        let mut s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        let to = SocketAddrV4::new(dst, 0).into();
        let end = Instant::now() + timeout;
        let mut stats = PingStats {
            sent: 0,
            received: 0,
            rtt_us: Vec::new(),
        };
        let mut buf = [0u8; 1500];
        for seq in 0..count as u16 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let sent_at = Instant::now();
            s.send_to(&request(id, seq), &to)?;
            stats.sent += 1;
            let wait_until = (sent_at + Duration::from_secs(1)).min(end);
            loop {
                let left = wait_until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                s.set_read_timeout(Some(left))?;
                let n = match s.read(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    Err(e) => return Err(e),
                };
                // A raw socket hands over the IP header too.
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if n < ihl + 8 || buf[12..16] != dst.octets() {
                    continue;
                }
                let icmp = &buf[ihl..n];
                let (rid, rseq) = (
                    u16::from_be_bytes([icmp[4], icmp[5]]),
                    u16::from_be_bytes([icmp[6], icmp[7]]),
                );
                if icmp[0] == 0 && rid == id && rseq == seq {
                    stats.received += 1;
                    stats.rtt_us.push(sent_at.elapsed().as_secs_f64() * 1e6);
                    break;
                }
            }
            // Pacing between requests, not synchronisation.
            let next = sent_at + interval;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d.min(end.saturating_duration_since(Instant::now())));
            }
        }
        Ok(stats)
    })?
    .map_err(|e| Error::Io {
        what: format!("ICMP echo to {dst} in {ns}"),
        source: e,
    })
}
