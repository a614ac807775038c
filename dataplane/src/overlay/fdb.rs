//! Learned forwarding entries (MAC -> VTEP), used only when a network turns
//! learning on. Static entries from the control plane live in the snapshot
//! ([`super::tables::NetworkTable::fdb`]) and always win.
//!
//! Written by the underlay receive path, read by the TAP path on other
//! threads, so it is a sharded concurrent map with a hard size cap: a flood
//! of forged source MACs fills it to the cap and no further, and every
//! refused entry is counted. Entries age out (the daemon calls
//! [`LearnedFdb::expire`] from a timer), and a full table makes room by
//! itself, at most once per [`SWEEP_EVERY`]: aged entries go first, then
//! the stalest eighth, so one burst of forged MACs cannot stop learning for
//! good, and the entries live traffic refreshes are the last to go.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use std::sync::Mutex;

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
    /// A new entry was added after the full table dropped this many of its
    /// stalest entries to make room.
    AddedEvicting(u64),
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
    /// When a full table last made room (see [`LearnedFdb::learn`]).
    last_sweep: Mutex<Option<Instant>>,
}

/// A full table makes room at most this often; between sweeps new MACs
/// are refused (and counted), which bounds the work a flood can cause.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Refresh an entry's age at most this often, so a steady flow does not take
/// a shard's write lock on every packet.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl LearnedFdb {
    pub fn new(cap: usize, ageing: Duration) -> LearnedFdb {
        LearnedFdb {
            map: DashMap::new(),
            cap,
            ageing,
            last_sweep: Mutex::new(None),
        }
    }

    /// Records that `mac` was seen behind `vtep` at `now`.
    pub fn learn(&self, mac: MacAddr, vtep: Ipv4Addr, now: Instant) -> Learn {
        let known = match self.map.get(&mac) {
            Some(e) if e.vtep == vtep && now.saturating_duration_since(e.seen) < REFRESH_EVERY => {
                return Learn::Refreshed;
            }
            Some(_) => true,
            None => false,
        };
        let mut len = self.map.len();
        let mut evicted = 0;
        if !known && len >= self.cap && self.sweep_due(now) {
            evicted = self.make_room(now);
            len = self.map.len();
        }
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
                if evicted > 0 {
                    Learn::AddedEvicting(evicted)
                } else {
                    Learn::Added
                }
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

    /// True (once) when a full table may sweep again at `now`.
    fn sweep_due(&self, now: Instant) -> bool {
        // Another thread sweeping: this one refuses its MAC and moves on.
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return false;
        };
        match *last {
            Some(t) if now.saturating_duration_since(t) < SWEEP_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Drops aged entries and, if the table is still full, the stalest
    /// eighth of it (at least one); returns how many live entries went.
    fn make_room(&self, now: Instant) -> u64 {
        self.expire(now);
        if self.map.len() < self.cap {
            return 0;
        }
        let mut by_age: Vec<(Instant, MacAddr)> =
            self.map.iter().map(|e| (e.seen, *e.key())).collect();
        if by_age.is_empty() {
            return 0;
        }
        let k = (by_age.len() / 8).max(1);
        by_age.select_nth_unstable_by_key(k - 1, |(seen, _)| *seen);
        let mut gone = 0;
        for (_, mac) in &by_age[..k] {
            gone += u64::from(self.map.remove(mac).is_some());
        }
        gone
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
        // The first MAC over the cap makes room (one entry); the next waits
        // for the next sweep.
        assert_eq!(fdb.learn(mac(3), a, t0), Learn::AddedEvicting(1));
        assert_eq!(fdb.learn(mac(4), a, t0), Learn::Full);
        assert_eq!(fdb.len(), 2);
        let kept = if fdb.lookup(mac(1), t0).is_some() {
            1
        } else {
            2
        };
        assert_eq!(fdb.learn(mac(kept), a, t0), Learn::Refreshed);
        assert_eq!(fdb.lookup(mac(kept), t0), Some(a));
        let later = t0 + Duration::from_secs(31);
        assert_eq!(fdb.lookup(mac(1), later), None);
        assert_eq!(fdb.expire(later), 2);
        assert_eq!(fdb.learn(mac(3), a, later), Learn::Added);
    }

    #[test]
    fn a_full_table_makes_room_for_new_macs_stalest_first_once_a_second() {
        let t0 = Instant::now();
        let a = Ipv4Addr::new(198, 18, 0, 2);
        let fdb = LearnedFdb::new(16, Duration::from_secs(300));
        // A burst of forged MACs fills the table...
        for i in 0..16 {
            assert_eq!(fdb.learn(mac(i), a, t0), Learn::Added);
        }
        // ... while one live MAC keeps being refreshed.
        let t1 = t0 + SWEEP_EVERY;
        assert_eq!(fdb.learn(mac(0), a, t1), Learn::Refreshed);
        // A new MAC gets room: the stalest eighth (2 of 16) goes, never
        // the refreshed one.
        assert_eq!(fdb.learn(mac(100), a, t1), Learn::AddedEvicting(2));
        assert_eq!(fdb.lookup(mac(0), t1), Some(a));
        assert_eq!(fdb.learn(mac(101), a, t1), Learn::Added);
        // Full again: nothing more until a second has passed.
        assert_eq!(fdb.learn(mac(102), a, t1), Learn::Full);
        assert_eq!(fdb.len(), 16);
        let t2 = t1 + SWEEP_EVERY;
        assert!(matches!(
            fdb.learn(mac(102), a, t2),
            Learn::AddedEvicting(_)
        ));
        assert!(fdb.len() <= 16);
        // Aged entries go before any live one.
        let fdb = LearnedFdb::new(4, Duration::from_secs(10));
        for i in 0..4 {
            fdb.learn(mac(i), a, t0);
        }
        let t3 = t0 + Duration::from_secs(20);
        fdb.learn(mac(0), a, t3 - Duration::from_secs(1));
        assert_eq!(fdb.learn(mac(9), a, t3), Learn::Added);
        assert_eq!(fdb.len(), 2);
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
