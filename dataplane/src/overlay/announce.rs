//! Local workload addresses seen on a TAP, for endpoint announcement (a
//! network with `announce = true`, on the etcd store).
//!
//! The TAP path ([`super::Core::handle_frame`]) reads the source of each
//! frame a local workload sends: the sender of an ARP packet, or the source
//! address of an IPv4 packet, with the frame's source MAC. An address
//! inside the network's subnet that is not the TAP's own, not already an
//! endpoint of the network and not yet seen is recorded here; one already
//! here has its age refreshed (at most once a second). The control plane
//! reads the table every few hundred milliseconds, publishes what is new
//! under the node's lease and withdraws what aged out: the hot path never
//! waits for it and never allocates beyond the table.
//!
//! Bounds: at most `cap` addresses per network and node, and at most
//! [`NEW_PER_SECOND`] new ones a second (a token bucket); what is refused
//! is counted (`announce_refused`), never logged per frame.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::limit::FloodLimiter;
use crate::wire::MacAddr;

/// New addresses taken per second and network (also the burst).
pub const NEW_PER_SECOND: u32 = 100;
/// Refresh an address's age at most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Seen {
    mac: MacAddr,
    seen: Instant,
}

/// What [`Announcements::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Add {
    Added,
    /// At the cap: refused.
    Full,
    /// Over [`NEW_PER_SECOND`]: refused.
    RateLimited,
}

/// The addresses one node's workloads use in one network.
#[derive(Debug)]
pub struct Announcements {
    network: u32,
    mask: u32,
    /// The TAP's own address, never announced.
    own: Option<Ipv4Addr>,
    map: DashMap<Ipv4Addr, Seen>,
    cap: usize,
    ageing: Duration,
    limit: FloodLimiter,
}

impl Announcements {
    /// For subnet `network/prefix`, the TAP's address `own`, at most `cap`
    /// addresses, each kept `ageing` after it was last seen.
    pub fn new(
        network: Ipv4Addr,
        prefix: u8,
        own: Option<Ipv4Addr>,
        cap: usize,
        ageing: Duration,
    ) -> Announcements {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0);
        Announcements {
            network: u32::from(network) & mask,
            mask,
            own,
            map: DashMap::new(),
            cap,
            ageing,
            limit: FloodLimiter::new(NEW_PER_SECOND, NEW_PER_SECOND),
        }
    }

    /// A host address of the subnet (not its network or broadcast address)
    /// that is not the TAP's own.
    pub fn candidate(&self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        a & self.mask == self.network
            && a != self.network
            && a != self.network | !self.mask
            && Some(ip) != self.own
    }

    /// If `ip` is here, notes it was seen at `now` from `mac` (a changed MAC
    /// replaces the old one) and returns true.
    pub fn refresh(&self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> bool {
        match self.map.get(&ip) {
            None => return false,
            Some(e) if e.mac == mac && now.saturating_duration_since(e.seen) < REFRESH_EVERY => {
                return true
            }
            Some(_) => {}
        }
        if let Some(mut e) = self.map.get_mut(&ip) {
            *e = Seen { mac, seen: now };
        }
        true
    }

    /// Records a new address, within the cap and the rate.
    pub fn add(&self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> Add {
        if self.map.len() >= self.cap {
            return Add::Full;
        }
        if !self.limit.allow(now) {
            return Add::RateLimited;
        }
        self.map.insert(ip, Seen { mac, seen: now });
        Add::Added
    }

    /// Forgets addresses not seen for the ageing time; returns them.
    pub fn expire(&self, now: Instant) -> Vec<Ipv4Addr> {
        let mut gone = Vec::new();
        self.map.retain(|ip, e| {
            let keep = now.saturating_duration_since(e.seen) < self.ageing;
            if !keep {
                gone.push(*ip);
            }
            keep
        });
        gone
    }

    /// The live addresses and their MACs, in address order.
    pub fn entries(&self, now: Instant) -> Vec<(Ipv4Addr, MacAddr)> {
        let mut v: Vec<(Ipv4Addr, MacAddr)> = self
            .map
            .iter()
            .filter(|e| now.saturating_duration_since(e.seen) < self.ageing)
            .map(|e| (*e.key(), e.mac))
            .collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when built with these settings (the reconciler keeps the table
    /// across snapshots only then).
    pub fn same_settings(&self, other: &Announcements) -> bool {
        (self.network, self.mask, self.own, self.cap, self.ageing)
            == (
                other.network,
                other.mask,
                other.own,
                other.cap,
                other.ageing,
            )
    }
}

/// The source a local workload announces with `frame` (Ethernet header of
/// `hlen` bytes): the sender of an Ethernet/IPv4 ARP packet whose sender
/// MAC is the frame's source, or the source of an IPv4 packet; with the
/// frame's source MAC. `None` for anything else.
pub fn source(frame: &[u8], hlen: usize) -> Option<(Ipv4Addr, MacAddr)> {
    let smac = MacAddr::from_slice(frame.get(6..12)?);
    let ethertype = u16::from_be_bytes(frame.get(hlen - 2..hlen)?.try_into().ok()?);
    let body = frame.get(hlen..)?;
    let ip = match ethertype {
        0x0800 if body.len() >= 20 && body[0] >> 4 == 4 => &body[12..16],
        // htype 1, ptype 0x0800, hlen 6, plen 4; sender MAC = source MAC.
        0x0806
            if body.len() >= 28
                && body[0..6] == [0, 1, 8, 0, 6, 4]
                && body[8..14] == frame[6..12] =>
        {
            &body[14..18]
        }
        _ => return None,
    };
    let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    Some((ip, smac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WL: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x32]);

    fn table(cap: usize) -> Announcements {
        Announcements::new(
            Ipv4Addr::new(10, 0, 9, 0),
            24,
            Some(Ipv4Addr::new(10, 0, 9, 1)),
            cap,
            Duration::from_secs(30),
        )
    }

    #[test]
    fn only_host_addresses_of_the_subnet_other_than_the_taps() {
        let t = table(8);
        assert!(t.candidate(Ipv4Addr::new(10, 0, 9, 50)));
        for no in [
            [10, 0, 9, 1],
            [10, 0, 9, 0],
            [10, 0, 9, 255],
            [10, 0, 8, 50],
        ] {
            assert!(!t.candidate(Ipv4Addr::from(no)), "{no:?}");
        }
    }

    #[test]
    fn cap_rate_refresh_and_ageing() {
        let t0 = Instant::now();
        let t = table(2);
        let ip = |n| Ipv4Addr::new(10, 0, 9, n);
        assert!(!t.refresh(ip(50), WL, t0));
        assert_eq!(t.add(ip(50), WL, t0), Add::Added);
        assert_eq!(t.add(ip(51), WL, t0), Add::Added);
        assert_eq!(t.add(ip(52), WL, t0), Add::Full);
        assert!(t.refresh(ip(50), WL, t0 + Duration::from_secs(20)));
        let later = t0 + Duration::from_secs(31);
        assert_eq!(t.entries(later), vec![(ip(50), WL)]);
        assert_eq!(t.expire(later), vec![ip(51)]);
        // The bucket: NEW_PER_SECOND at once, then none in the same instant.
        let big = table(1000);
        let added = (0..=NEW_PER_SECOND)
            .filter(|i| big.add(Ipv4Addr::from(0x0a00_0000 + i), WL, t0) == Add::Added)
            .count();
        assert_eq!(added, NEW_PER_SECOND as usize);
    }

    #[test]
    fn sources_of_arp_and_ipv4_frames() {
        // ARP request from 10.0.9.50 at WL for 10.0.9.3.
        let mut arp = vec![0xff; 6];
        arp.extend(WL.0);
        arp.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend(WL.0);
        arp.extend([10, 0, 9, 50, 0, 0, 0, 0, 0, 0, 10, 0, 9, 3]);
        assert_eq!(source(&arp, 14), Some((Ipv4Addr::new(10, 0, 9, 50), WL)));
        // An ARP packet whose sender MAC is not the frame's: ignored.
        let mut spoof = arp.clone();
        spoof[22] ^= 1;
        assert_eq!(source(&spoof, 14), None);
        // IPv4 from 10.0.9.50.
        let mut ip = vec![0x02, 0x42, 10, 0, 9, 3];
        ip.extend(WL.0);
        ip.extend([0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0]);
        ip.extend([10, 0, 9, 50, 10, 0, 9, 3]);
        assert_eq!(source(&ip, 14), Some((Ipv4Addr::new(10, 0, 9, 50), WL)));
        // IPv6 and truncated frames: nothing.
        ip[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(source(&ip, 14), None);
        assert_eq!(source(&arp[..30], 14), None);
    }
}
