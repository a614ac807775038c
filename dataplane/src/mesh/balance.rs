//! Picking a backend for a new connection.
//!
//! A [`Balancer`] is built off the hot path (by the reconciler, whenever a
//! service's backends or their health change) from the list of ELIGIBLE
//! backends only: healthy and not draining. It is then published whole and
//! shared read-only by the workers; [`Balancer::pick`] and
//! [`Balancer::candidates`] allocate nothing and never panic. Indices they
//! return index [`Balancer::keys`].
//!
//! # Weights (not implemented yet)
//!
//! Slow start will give a newly healthy backend a weight that grows from
//! small to 1 over its ramp. It would enter each algorithm so:
//! - [`Algorithm::Maglev`]: build the table with [`Maglev::new_weighted`]
//!   (already there: a backend takes turns in proportion to its weight).
//!   Each weight change rebuilds the table, so ramp in a few coarse steps.
//! - [`Algorithm::RoundRobin`]: smooth weighted round robin (nginx's
//!   `ngx_http_upstream_get_peer`): each pick adds every backend's weight to
//!   its credit, takes the largest credit and subtracts the total. That
//!   needs per-backend state updated per pick; with one atomic counter, an
//!   alternative is a precomputed interleaved schedule indexed by it.
//! - [`Algorithm::LeastConn`]: compare `active / weight` instead of
//!   `active`, as cross products (`a_i * w_j < a_j * w_i`) to stay integer.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::maglev::Maglev;

/// How a service spreads connections over its backends. Config strings:
/// `"maglev"`, `"round-robin"`, `"least-conn"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Consistent hashing on the client's address ([`super::maglev`]): a
    /// client lands on the same backend from every node. The default.
    #[default]
    Maglev,
    /// Each backend in turn.
    RoundRobin,
    /// The backend with the fewest active connections.
    LeastConn,
}

impl Algorithm {
    /// The config string, also used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Maglev => "maglev",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConn => "least-conn",
        }
    }
}

/// The backend picker of one published port: an algorithm over a fixed
/// list of eligible backends.
#[derive(Debug)]
pub struct Balancer {
    algo: Algorithm,
    keys: Vec<String>,
    /// The table, for [`Algorithm::Maglev`] only.
    maglev: Option<Maglev>,
    /// Round robin position, or least-conn's rotating tie-break start.
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer over `keys` (e.g. `"10.0.9.2:80"`), which must be the
    /// eligible backends only. Builds the Maglev table when `algo` needs it
    /// (a few milliseconds: call it off the hot path).
    pub fn new(algo: Algorithm, keys: Vec<String>) -> Balancer {
        let maglev = (algo == Algorithm::Maglev).then(|| Maglev::new(&keys));
        Balancer {
            algo,
            keys,
            maglev,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend for a new connection from `client` (its
    /// [`client_hash`](super::maglev::client_hash); used by Maglev only).
    /// `active(i)` is backend `i`'s current number of active connections
    /// (used by least-conn only). `None` when there is no backend.
    pub fn pick(&self, client: u32, active: &dyn Fn(usize) -> u64) -> Option<usize> {
        let n = self.keys.len();
        if n == 0 {
            return None;
        }
        match self.algo {
            Algorithm::Maglev => self.maglev.as_ref()?.lookup(client),
            Algorithm::RoundRobin => Some(self.advance() % n),
            Algorithm::LeastConn => least(n, self.advance() % n, active, &[]),
        }
    }

    /// Fills `out` with up to `out.len()` distinct backends in order of
    /// preference, for retrying on connect failure; returns how many were
    /// written (fewer only when there are fewer backends). Call it instead
    /// of [`pick`](Self::pick), not as well: the first entry is what `pick`
    /// would have returned and the round-robin position moves once.
    /// - Maglev: [`Maglev::candidates`], the same list on every node.
    /// - Round robin: the next backends in order after the pick.
    /// - Least-conn: ascending by `active`, ties in rotating order.
    ///
    /// Allocates nothing.
    pub fn candidates(
        &self,
        client: u32,
        active: &dyn Fn(usize) -> u64,
        out: &mut [usize],
    ) -> usize {
        let n = self.keys.len();
        if n == 0 || out.is_empty() {
            return 0;
        }
        let want = out.len().min(n);
        match self.algo {
            Algorithm::Maglev => match &self.maglev {
                Some(m) => m.candidates(client, out),
                None => 0,
            },
            Algorithm::RoundRobin => {
                let start = self.advance() % n;
                for (j, slot) in out[..want].iter_mut().enumerate() {
                    *slot = (start + j) % n;
                }
                want
            }
            Algorithm::LeastConn => {
                let start = self.advance() % n;
                for j in 0..want {
                    let (chosen, rest) = out.split_at_mut(j);
                    match least(n, start, active, chosen) {
                        Some(b) => rest[0] = b,
                        None => return j,
                    }
                }
                want
            }
        }
    }

    /// The algorithm this balancer was built with.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// The eligible backends, as given; picks index this slice.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// How many backends there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no backend to pick.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Moves the shared position one step (wrapping) and returns the old
    /// one. Relaxed: picks only need to spread, not to be ordered.
    fn advance(&self) -> usize {
        self.next.fetch_add(1, Relaxed)
    }
}

/// The backend of `0..n` with the fewest active connections, not in `skip`,
/// scanning from `start` and wrapping so that the first of equal loads in
/// rotation order wins. `None` when every backend is in `skip`.
fn least(n: usize, start: usize, active: &dyn Fn(usize) -> u64, skip: &[usize]) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for step in 0..n {
        let i = (start + step) % n;
        if skip.contains(&i) {
            continue;
        }
        let a = active(i);
        if best.is_none_or(|(b, _)| a < b) {
            best = Some((a, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::maglev::client_hash;
    use serde::de::value::{Error, StrDeserializer};
    use serde::Deserialize;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.9.{}:80", i + 2)).collect()
    }

    fn idle(_: usize) -> u64 {
        0
    }

    #[test]
    fn config_strings() {
        for (s, a) in [
            ("maglev", Algorithm::Maglev),
            ("round-robin", Algorithm::RoundRobin),
            ("least-conn", Algorithm::LeastConn),
        ] {
            let parsed = Algorithm::deserialize(StrDeserializer::<Error>::new(s));
            assert_eq!(parsed, Ok(a));
            assert_eq!(a.as_str(), s);
        }
        let bad = Algorithm::deserialize(StrDeserializer::<Error>::new("round_robin"));
        assert!(bad.is_err());
        assert_eq!(Algorithm::default(), Algorithm::Maglev);
    }

    #[test]
    fn empty_balancer_picks_nothing() {
        for algo in [
            Algorithm::Maglev,
            Algorithm::RoundRobin,
            Algorithm::LeastConn,
        ] {
            let b = Balancer::new(algo, Vec::new());
            assert!(b.is_empty());
            assert_eq!(b.pick(7, &idle), None);
            let mut out = [0; 3];
            assert_eq!(b.candidates(7, &idle, &mut out), 0);
        }
    }

    #[test]
    fn round_robin_cycles_evenly() {
        let b = Balancer::new(Algorithm::RoundRobin, keys(4));
        let picks: Vec<usize> = (0..12).map(|c| b.pick(c, &idle).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);
        let mut out = [usize::MAX; 6];
        assert_eq!(b.candidates(0, &idle, &mut out), 4);
        assert_eq!(out[..4], [0, 1, 2, 3]);
        assert_eq!(b.candidates(0, &idle, &mut out[..2]), 2);
        assert_eq!(out[..2], [1, 2], "the position moved once per call");
        assert_eq!(b.pick(0, &idle), Some(2));
    }

    #[test]
    fn round_robin_survives_counter_wrap() {
        let b = Balancer::new(Algorithm::RoundRobin, keys(3));
        b.next.store(usize::MAX, Relaxed);
        let p = b.pick(0, &idle).unwrap();
        assert!(p < 3);
        assert_eq!(b.pick(0, &idle), Some(0));
    }

    #[test]
    fn least_conn_follows_the_callback() {
        let b = Balancer::new(Algorithm::LeastConn, keys(4));
        let load = [5u64, 1, 3, 2];
        let active = |i: usize| load[i];
        for _ in 0..5 {
            assert_eq!(b.pick(0, &active), Some(1));
        }
        let mut out = [usize::MAX; 8];
        assert_eq!(b.candidates(0, &active, &mut out), 4);
        assert_eq!(out[..4], [1, 3, 2, 0]);
        // Out of range indices never reach the callback.
        let checked = |i: usize| *load.get(i).expect("index in range");
        assert!(b.pick(0, &checked).is_some());
    }

    #[test]
    fn least_conn_spreads_equal_loads() {
        let b = Balancer::new(Algorithm::LeastConn, keys(5));
        let mut counts = [0; 5];
        for _ in 0..50 {
            counts[b.pick(0, &idle).unwrap()] += 1;
        }
        assert_eq!(counts, [10; 5]);
        // Ties in candidates come in rotating order, distinct.
        let load = [2u64, 0, 2, 0, 2];
        let mut out = [usize::MAX; 5];
        assert_eq!(b.candidates(0, &|i| load[i], &mut out), 5);
        assert_eq!(out[..2].iter().filter(|&&i| load[i] == 0).count(), 2);
        let mut sorted = out;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn maglev_is_stable_and_agrees_with_the_table() {
        let k = keys(6);
        let b = Balancer::new(Algorithm::Maglev, k.clone());
        let table = Maglev::new(&k);
        for last in 0..=255u8 {
            let client = client_hash([198, 19, 0, last].into());
            let first = b.pick(client, &idle);
            assert!(first.is_some());
            assert_eq!(first, table.lookup(client));
            assert_eq!(b.pick(client, &|i| i as u64 * 1000), first, "ignores load");
            let mut out = [usize::MAX; 3];
            let mut want = [usize::MAX; 3];
            assert_eq!(b.candidates(client, &idle, &mut out), 3);
            table.candidates(client, &mut want);
            assert_eq!(out, want);
            assert_eq!(Some(out[0]), first);
        }
    }

    #[test]
    fn candidates_are_distinct_for_every_algorithm() {
        for algo in [
            Algorithm::Maglev,
            Algorithm::RoundRobin,
            Algorithm::LeastConn,
        ] {
            let b = Balancer::new(algo, keys(7));
            assert_eq!(b.len(), 7);
            assert_eq!(b.algorithm(), algo);
            for c in 0..50u32 {
                let load = move |i: usize| u64::from(c % 3) * i as u64 % 4;
                let mut out = [usize::MAX; 10];
                let n = b.candidates(c.wrapping_mul(0x9e37_79b9), &load, &mut out);
                assert_eq!(n, 7, "{algo:?}");
                for i in 0..n {
                    assert!(out[i] < 7 && !out[..i].contains(&out[i]), "{algo:?}");
                }
                assert_eq!(b.candidates(c, &load, &mut []), 0);
            }
        }
    }
}
