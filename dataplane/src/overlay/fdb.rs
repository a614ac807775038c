//! Learned forwarding entries (MAC -> VTEP), used only when a network turns
//! learning on. Static entries from the control plane live in the snapshot
//! ([`super::tables::NetworkTable::fdb`]) and always win.
//!
//! Written by the underlay receive path, read by the TAP path on other
//! threads, so it is a sharded concurrent map with a hard size cap: a flood
//! of forged source MACs fills it to the cap and no further, and every
//! refused entry is counted.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::wire::MacAddr;

#[derive(Clone, Copy, Debug)]
struct Learned {
    vtep: Ipv4Addr,
    seen: Instant,
}

/// Outcome of [`LearnedFdb::learn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learn {
    /// A new entry was added.
    Added,
    /// The entry existed (its age was refreshed or its VTEP moved).
    Refreshed,
    /// The table is at its cap; nothing was added.
    Full,
}

/// The learned part of one network's forwarding table.
#[derive(Debug)]
pub struct LearnedFdb {
    map: DashMap<MacAddr, Learned>,
    cap: usize,
    ageing: Duration,
}

/// Refresh an entry's age at most this often, so a steady flow does not take
/// a shard's write lock on every packet.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl LearnedFdb {
    pub fn new(cap: usize, ageing: Duration) -> LearnedFdb {
        LearnedFdb {
            map: DashMap::new(),
            cap,
            ageing,
        }
    }

    /// Records that `mac` was seen behind `vtep` at `now`.
    pub fn learn(&self, mac: MacAddr, vtep: Ipv4Addr, now: Instant) -> Learn {
        if let Some(e) = self.map.get(&mac) {
            if e.vtep == vtep && now.saturating_duration_since(e.seen) < REFRESH_EVERY {
                return Learn::Refreshed;
            }
        }
        let len = self.map.len();
        match self.map.entry(mac) {
            dashmap::Entry::Occupied(mut o) => {
                *o.get_mut() = Learned { vtep, seen: now };
                Learn::Refreshed
            }
            dashmap::Entry::Vacant(v) => {
                if len >= self.cap {
                    return Learn::Full;
                }
                v.insert(Learned { vtep, seen: now });
                Learn::Added
            }
        }
    }

    /// The VTEP behind `mac`, if learned and not aged out.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<Ipv4Addr> {
        let e = self.map.get(&mac)?;
        (now.saturating_duration_since(e.seen) < self.ageing).then_some(e.vtep)
    }

    /// Removes aged-out entries; returns how many went. Called from a timer
    /// (see [`LearnedFdb::next_deadline`]), never per packet.
    pub fn expire(&self, now: Instant) -> usize {
        let before = self.map.len();
        self.map
            .retain(|_, e| now.saturating_duration_since(e.seen) < self.ageing);
        before - self.map.len()
    }

    /// When [`LearnedFdb::expire`] should run next.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        now + self.ageing.min(Duration::from_secs(10)) / 2
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A copy of the live entries, for the admin API.
    pub fn entries(&self, now: Instant) -> Vec<(MacAddr, Ipv4Addr, Duration)> {
        self.map
            .iter()
            .map(|e| (*e.key(), e.vtep, now.saturating_duration_since(e.seen)))
            .filter(|(_, _, age)| *age < self.ageing)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn cap_is_hard_and_ageing_expires() {
        let t0 = Instant::now();
        let fdb = LearnedFdb::new(2, Duration::from_secs(30));
        let a = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(fdb.learn(mac(1), a, t0), Learn::Added);
        assert_eq!(fdb.learn(mac(2), a, t0), Learn::Added);
        assert_eq!(fdb.learn(mac(3), a, t0), Learn::Full);
        assert_eq!(fdb.len(), 2);
        assert_eq!(fdb.learn(mac(1), a, t0), Learn::Refreshed);
        assert_eq!(fdb.lookup(mac(1), t0), Some(a));
        let later = t0 + Duration::from_secs(31);
        assert_eq!(fdb.lookup(mac(1), later), None);
        assert_eq!(fdb.expire(later), 2);
        assert_eq!(fdb.learn(mac(3), a, later), Learn::Added);
    }

    #[test]
    fn a_moved_mac_follows_its_new_vtep() {
        let t0 = Instant::now();
        let fdb = LearnedFdb::new(8, Duration::from_secs(30));
        let a = Ipv4Addr::new(198, 18, 0, 2);
        let b = Ipv4Addr::new(198, 18, 0, 3);
        fdb.learn(mac(1), a, t0);
        fdb.learn(mac(1), b, t0);
        assert_eq!(fdb.lookup(mac(1), t0), Some(b));
    }
}
