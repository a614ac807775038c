//! Floods for the hostile-traffic tests: up to millions of UDP datagrams
//! from inside a namespace, sent in `sendmmsg(2)` batches and paced by what
//! the receiver has read (a window of datagrams in flight), so that none is
//! lost to a full queue on the way (a veth backlog holds 1000 packets, a
//! socket buffer a few hundred small datagrams): what the receiver never
//! counted is its own doing. Bounded in count and in time.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};

use crate::{Error, Testbed};

/// Datagrams per `sendmmsg(2)` call.
const BATCH: usize = 64;
/// How long the sender waits before asking the pacer again.
const PACE_WAIT: Duration = Duration::from_micros(200);

/// What a flood did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    /// Datagrams the kernel accepted from the sender.
    pub sent: u64,
    /// Time from the first to the last batch.
    pub elapsed: Duration,
    /// Times the sender held back because the pacer said the receiver was
    /// behind.
    pub held_back: u64,
}

impl Flood {
    /// Datagrams per second over the whole flood.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A flood of `count` datagrams of `len` bytes from `from` to `to`,
/// stopped after `limit` whatever was sent (a timeout is not an error:
/// [`Flood::sent`] says how far it got).
#[derive(Debug, Clone, Copy)]
pub struct UdpFlood {
    /// Source address, bound inside the namespace.
    pub from: SocketAddrV4,
    /// Destination.
    pub to: SocketAddrV4,
    /// Datagrams to send.
    pub count: u64,
    /// Bytes per datagram.
    pub len: usize,
    /// Longest the flood may run.
    pub limit: Duration,
}

impl UdpFlood {
    /// Runs the flood inside namespace `ns`. `fill(i, buf)` writes datagram
    /// `i` (the buffer keeps what the previous datagram of its slot left).
    /// Before every batch the sender asks `ready(sent)`; while it says false
    /// the sender waits (200 µs between questions). [`udp_stats`] of the
    /// receiver makes a window: `sent - (read now - read before) < W`.
    pub fn run(
        self,
        tb: &Testbed,
        ns: &str,
        fill: impl Fn(u64, &mut [u8]) + Send + 'static,
        mut ready: impl FnMut(u64) -> bool + Send + 'static,
    ) -> Result<Flood, Error> {
        let UdpFlood {
            from,
            to,
            count,
            len,
            limit,
        } = self;
        let what = format!("UDP flood {from} -> {to} in {ns}");
        tb.in_ns(ns, move || -> std::io::Result<Flood> {
            let s = UdpSocket::bind(from)?;
            s.connect(to)?;
            let mut bufs = vec![vec![0u8; len]; BATCH];
            let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
            let addrs: Vec<Option<SockaddrIn>> = vec![None; BATCH];
            let t0 = Instant::now();
            let (mut sent, mut held_back) = (0u64, 0u64);
            while sent < count && t0.elapsed() < limit {
                if !ready(sent) {
                    held_back += 1;
                    std::thread::sleep(PACE_WAIT);
                    continue;
                }
                let n = (count - sent).min(BATCH as u64) as usize;
                for (k, b) in bufs[..n].iter_mut().enumerate() {
                    fill(sent + k as u64, b);
                }
                let slices: Vec<[std::io::IoSlice<'_>; 1]> = bufs[..n]
                    .iter()
                    .map(|b| [std::io::IoSlice::new(b)])
                    .collect();
                match sendmmsg(
                    s.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs[..n],
                    [],
                    MsgFlags::empty(),
                ) {
                    Ok(r) => sent += r.count() as u64,
                    // A full send queue: ask the pacer again.
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOBUFS) => {
                        std::thread::sleep(PACE_WAIT)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Flood {
                sent,
                elapsed: t0.elapsed(),
                held_back,
            })
        })?
        .map_err(|e| Error::io(what, e))
    }
}

/// UDP counters of one network namespace (`/proc/net/snmp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams read by the sockets' owners (counted by `recvmsg`).
    pub in_datagrams: u64,
    /// Datagrams dropped because a socket's receive buffer was full.
    pub rcvbuf_errors: u64,
}

/// The UDP counters of the network namespace of process `pid`, from
/// `/proc/<pid>/net/snmp`.
pub fn udp_stats(pid: u32) -> Result<UdpStats, Error> {
    let path = format!("/proc/{pid}/net/snmp");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    parse_snmp_udp(&text).ok_or_else(|| Error::Parse {
        what: "/proc/net/snmp",
        reason: "no Udp: InDatagrams .. RcvbufErrors lines".into(),
        output: text,
    })
}

/// The `Udp:` counters of a `/proc/net/snmp` text: a line of names, then a
/// line of values.
fn parse_snmp_udp(text: &str) -> Option<UdpStats> {
    let mut udp = text.lines().filter_map(|l| l.strip_prefix("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let get = |key: &str| {
        let i = names.split_whitespace().position(|n| n == key)?;
        values.split_whitespace().nth(i)?.parse().ok()
    };
    Some(UdpStats {
        in_datagrams: get("InDatagrams")?,
        rcvbuf_errors: get("RcvbufErrors")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_udp_counters() {
        // The lines of /proc/net/snmp around UDP (Linux 6.x).
        let t = "Tcp: RtoAlgorithm RtoMin\nTcp: 1 200\n\
                 Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                 Udp: 993046 0 7 118 6954 0 0 0 0\n\
                 UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(
            parse_snmp_udp(t),
            Some(UdpStats {
                in_datagrams: 993046,
                rcvbuf_errors: 6954
            })
        );
        assert_eq!(parse_snmp_udp("Tcp: A\nTcp: 1\n"), None);
    }
}
