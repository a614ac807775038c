//! What keeps one client (or a flood of forged ones) from exhausting the
//! node: a node-wide [`Budget`] of descriptors and memory that every relayed
//! connection and UDP session takes its share of, a per-source cap
//! ([`PerSource`]) on what one client address may hold of a service, an
//! accept loop that backs off when the process is out of descriptors or
//! memory instead of spinning ([`accept`], [`Backoff`]), and the raise of
//! `RLIMIT_NOFILE` at start ([`raise_nofile`]).
//!
//! Every refusal is counted where it happens; guards give back what they
//! took when they drop, so nothing leaks on any exit path. Shared by the
//! TCP and UDP relays and open to the DNS responder.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde::Serialize;

/// What one connection or session holds while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub fds: u64,
    pub bytes: u64,
}

impl Cost {
    /// A relayed TCP connection: the client's socket and the one to the
    /// task, and the two 16 KiB copy buffers with the task's state.
    pub const TCP: Cost = Cost {
        fds: 2,
        bytes: 36 * 1024,
    };
    /// The two pipes a direction takes once it moves to splice(2).
    pub const SPLICE: Cost = Cost { fds: 2, bytes: 0 };
    /// A UDP session: its connected socket and its state (no buffer of its
    /// own: replies are read into the worker thread's buffer).
    pub const UDP: Cost = Cost {
        fds: 1,
        bytes: 2 * 1024,
    };
}

/// Descriptors never given to the mesh's clients: health probes, the DNS
/// responders and their forwarded queries, TAP queues, underlay sockets,
/// listeners, the admin API and the store. The larger of this and an
/// eighth of the limit is kept back (half of it under very low limits).
pub const RESERVED_FDS: u64 = 512;
/// Memory the mesh's connections and sessions may hold, node-wide.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// The node-wide budget of descriptors and memory for the mesh's client
/// connections and sessions, shared by every service.
#[derive(Debug)]
pub struct Budget {
    fds_limit: u64,
    bytes_limit: u64,
    fds_used: AtomicU64,
    bytes_used: AtomicU64,
    /// Connections and sessions refused because the budget was spent.
    pub refused: AtomicU64,
    /// The budget is spent now (for one log line per change).
    full: AtomicBool,
}

/// A copy of a [`Budget`]'s counters.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct BudgetStatus {
    pub fds_limit: u64,
    pub fds_used: u64,
    pub bytes_limit: u64,
    pub bytes_used: u64,
    pub refused: u64,
}

/// The share of descriptors the mesh may use under a `nofile` limit.
pub fn fds_for(nofile: u64) -> u64 {
    let reserve = RESERVED_FDS.max(nofile / 8);
    if nofile <= 2 * reserve {
        nofile / 2
    } else {
        nofile - reserve
    }
}

impl Budget {
    pub fn new(fds_limit: u64, bytes_limit: u64) -> Budget {
        Budget {
            fds_limit,
            bytes_limit,
            fds_used: AtomicU64::new(0),
            bytes_used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            full: AtomicBool::new(false),
        }
    }

    /// The budget under this process's current `RLIMIT_NOFILE` soft limit.
    pub fn for_this_process() -> Budget {
        let nofile = getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Budget::new(fds_for(nofile), DEFAULT_MEMORY_BUDGET)
    }

    /// Takes `cost` for a new connection or session; `None` (counted, and
    /// logged once per change) when it does not fit.
    pub fn take(self: &Arc<Self>, cost: Cost) -> Option<BudgetGuard> {
        let Some(g) = self.grow(cost) else {
            return self.refuse();
        };
        if self.full.load(Relaxed) && self.fds_used.load(Relaxed) < self.fds_limit / 2 {
            self.note(false);
        }
        Some(g)
    }

    /// Takes `cost` more for something already admitted (a relay's pipes);
    /// `None`, not counted as a refusal, when it does not fit.
    pub fn grow(self: &Arc<Self>, cost: Cost) -> Option<BudgetGuard> {
        if !reserve(&self.fds_used, cost.fds, self.fds_limit) {
            return None;
        }
        if !reserve(&self.bytes_used, cost.bytes, self.bytes_limit) {
            self.fds_used.fetch_sub(cost.fds, Relaxed);
            return None;
        }
        Some(BudgetGuard {
            budget: self.clone(),
            cost,
        })
    }

    fn refuse(&self) -> Option<BudgetGuard> {
        self.refused.fetch_add(1, Relaxed);
        self.note(true);
        None
    }

    /// One log line when the budget runs out, one when it is back.
    fn note(&self, full: bool) {
        if self.full.swap(full, Relaxed) != full {
            let s = self.status();
            if full {
                tracing::warn!(
                    fds_used = s.fds_used,
                    fds_limit = s.fds_limit,
                    bytes_used = s.bytes_used,
                    bytes_limit = s.bytes_limit,
                    "mesh budget spent: refusing new connections and sessions"
                );
            } else {
                tracing::info!(fds_used = s.fds_used, "mesh budget available again");
            }
        }
    }

    pub fn status(&self) -> BudgetStatus {
        BudgetStatus {
            fds_limit: self.fds_limit,
            fds_used: self.fds_used.load(Relaxed),
            bytes_limit: self.bytes_limit,
            bytes_used: self.bytes_used.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// Adds `n` to `used` if the sum stays within `limit`.
fn reserve(used: &AtomicU64, n: u64, limit: u64) -> bool {
    used.fetch_update(Relaxed, Relaxed, |u| {
        u.checked_add(n).filter(|sum| *sum <= limit)
    })
    .is_ok()
}

/// A share of the [`Budget`], given back on drop.
#[derive(Debug)]
pub struct BudgetGuard {
    budget: Arc<Budget>,
    cost: Cost,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        self.budget.fds_used.fetch_sub(self.cost.fds, Relaxed);
        self.budget.bytes_used.fetch_sub(self.cost.bytes, Relaxed);
    }
}

/// How many connections (or sessions) each client address holds of one
/// service. An address has an entry only while it holds something, so the
/// map is never larger than what the budget lets in.
#[derive(Debug, Default)]
pub struct PerSource {
    held: DashMap<IpAddr, u32>,
}

impl PerSource {
    /// Takes one place for `ip` under `cap` (0: no cap); `None` when `ip`
    /// already holds `cap`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, cap: u32) -> Option<SourceGuard> {
        if cap == 0 {
            return Some(SourceGuard(None));
        }
        let mut n = self.held.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        drop(n);
        Some(SourceGuard(Some((self.clone(), ip))))
    }

    /// What `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> u32 {
        self.held.get(&ip).map(|n| *n).unwrap_or(0)
    }

    /// Client addresses holding something now.
    pub fn sources(&self) -> usize {
        self.held.len()
    }
}

/// One place of a [`PerSource`], given back on drop.
#[derive(Debug)]
pub struct SourceGuard(Option<(Arc<PerSource>, IpAddr)>);

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((map, ip)) = self.0.take() {
            map.held.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// Counters of an accept loop's errors.
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM):
    /// each one paused the loop.
    pub exhausted: AtomicU64,
    /// Any other error (most are about one connection that went away).
    pub other: AtomicU64,
}

/// Whether an error says the process or the system is out of descriptors
/// or memory: retrying at once would fail the same way.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Errors about one connection only (it was reset or aborted before it
/// was taken): the next accept may succeed at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// The pause schedule of an accept loop: 10 ms after the first failure,
/// doubling to 1 s while failures go on, back to the start after a
/// success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    /// The pause after `e`: none for an error of one connection, the next
    /// step of the schedule for any other.
    pub fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        if is_per_connection(e) {
            return None;
        }
        let d = self.next;
        self.next = (self.next * 2).min(Backoff::MAX);
        Some(d)
    }

    /// A call succeeded: the next failure pauses from the start again.
    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    /// Whether the loop is pausing now (a failure since the last success).
    pub fn failing(&self) -> bool {
        self.next != Backoff::FIRST
    }
}

/// Runs `accept` until it succeeds: errors are counted in `stats`, and
/// those that would repeat (out of descriptors or memory, or anything
/// unknown) pause the loop as `backoff` says instead of spinning on them.
/// One log line when the loop starts pausing and one when it recovers.
/// `what` names the loop in the log. Cancel-safe: drop the future to stop.
pub async fn accept<T, F, Fut>(
    what: &str,
    backoff: &mut Backoff,
    stats: &AcceptStats,
    mut accept: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(v) => {
                if backoff.failing() {
                    tracing::info!(listener = what, "accepting again");
                }
                backoff.reset();
                return v;
            }
            Err(e) => {
                let counter = if is_exhaustion(&e) {
                    &stats.exhausted
                } else {
                    &stats.other
                };
                counter.fetch_add(1, Relaxed);
                if let Some(pause) = backoff.on_error(&e) {
                    if pause == Backoff::FIRST {
                        tracing::warn!(listener = what, error = %e,
                            "accept failed: pausing new connections (10 ms doubling to 1 s)");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit.
/// Returns the soft limits before and after.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}

/// The node-wide limits of the mesh: its budget and its accept loops'
/// error counters.
#[derive(Debug)]
pub struct Resources {
    pub budget: Arc<Budget>,
    pub accept: AcceptStats,
    /// Idle connections to other nodes' relays, for the next request.
    pub relay_pool: super::framed::Pool,
}

impl Resources {
    pub fn new(budget: Budget) -> Resources {
        Resources {
            budget: Arc::new(budget),
            accept: AcceptStats::default(),
            relay_pool: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_back_on_drop() {
        let b = Arc::new(Budget::new(5, 1 << 20));
        let g1 = b.take(Cost::TCP).expect("2 of 5");
        let g2 = b.take(Cost::TCP).expect("4 of 5");
        assert!(b.take(Cost::TCP).is_none(), "6 > 5");
        let g3 = b.take(Cost::UDP).expect("5 of 5");
        assert!(b.take(Cost::UDP).is_none());
        assert_eq!(b.status().refused, 2);
        assert_eq!(b.status().fds_used, 5);
        drop((g1, g2, g3));
        let s = b.status();
        assert_eq!((s.fds_used, s.bytes_used), (0, 0), "all given back");
        // Memory runs out before descriptors: the descriptors are given back too.
        let m = Arc::new(Budget::new(100, Cost::TCP.bytes));
        let _g = m.take(Cost::TCP).unwrap();
        assert!(m.take(Cost::TCP).is_none());
        assert_eq!(m.status().fds_used, 2);
    }

    #[test]
    fn the_share_keeps_headroom_at_every_limit() {
        assert_eq!(fds_for(1024), 512);
        assert_eq!(fds_for(600), 300);
        assert_eq!(fds_for(524_288), 524_288 - 65_536);
        for n in [64, 1024, 4096, 1 << 20] {
            assert!(fds_for(n) < n && fds_for(n) >= n / 2);
        }
    }

    #[test]
    fn one_source_is_capped_and_its_entry_goes_when_it_holds_nothing() {
        let m = Arc::new(PerSource::default());
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        let b: IpAddr = "198.18.0.101".parse().unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| m.take(a, 3).expect("under the cap"))
            .collect();
        assert!(m.take(a, 3).is_none(), "the fourth from a is refused");
        let _other = m.take(b, 3).expect("another source is not affected");
        assert_eq!((m.held(a), m.held(b)), (3, 1));
        drop(held);
        assert_eq!(m.held(a), 0);
        assert_eq!(m.sources(), 1, "a's entry is gone");
        // Cap 0: no cap and no entry.
        let many: Vec<_> = (0..1000).map(|_| m.take(a, 0).unwrap()).collect();
        assert_eq!(m.held(a), 0);
        drop(many);
    }

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn backoff_doubles_to_a_second_and_skips_per_connection_errors() {
        let mut b = Backoff::default();
        let steps: Vec<_> = (0..9).map(|_| b.on_error(&os(libc::EMFILE))).collect();
        let ms: Vec<u64> = steps
            .iter()
            .map(|d| d.unwrap().as_millis() as u64)
            .collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert!(b.failing());
        b.reset();
        assert_eq!(b.on_error(&os(libc::ENFILE)), Some(Backoff::FIRST));
        assert_eq!(b.on_error(&os(libc::ECONNABORTED)), None);
        assert!(is_exhaustion(&os(libc::ENOBUFS)) && is_exhaustion(&os(libc::ENOMEM)));
        assert!(!is_exhaustion(&os(libc::ECONNABORTED)));
    }

    #[tokio::test(start_paused = true)]
    async fn accept_pauses_on_exhaustion_instead_of_spinning() {
        let stats = AcceptStats::default();
        let mut backoff = Backoff::default();
        let mut calls = 0u32;
        let t0 = tokio::time::Instant::now();
        let wall = Instant::now();
        let v = accept("test", &mut backoff, &stats, || {
            calls += 1;
            let r = match calls {
                1..=3 => Err(os(libc::EMFILE)),
                4 => Err(os(libc::ECONNABORTED)),
                _ => Ok(calls),
            };
            async move { r }
        })
        .await;
        assert_eq!(v, 5);
        assert_eq!(stats.exhausted.load(Relaxed), 3);
        assert_eq!(stats.other.load(Relaxed), 1);
        // 10 + 20 + 40 ms of (virtual) pauses, none after the abort.
        assert_eq!(t0.elapsed(), Duration::from_millis(70));
        assert!(!backoff.failing(), "reset by the success");
        assert!(wall.elapsed() < Duration::from_secs(5));
    }
}
