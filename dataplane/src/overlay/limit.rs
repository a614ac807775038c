//! The per-network flood limit: a token bucket over frames that must be
//! replicated to every peer (broadcast, multicast, unknown unicast), so a
//! broadcast storm on one host cannot multiply itself across the cluster.
//! Time is an argument; the bucket sits behind a mutex taken only on the
//! flood path, never for unicast. Like the learned entries, a limiter is
//! shared by successive snapshots of its network ([`FloodLimiter::reuse`]),
//! so a reload does not refill its bucket.

use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug)]
pub struct FloodLimiter {
    /// Frames per second; 0 means no limit.
    rate: u32,
    /// Bucket size in frames.
    burst: u32,
    state: Mutex<Option<(f64, Instant)>>,
}

impl FloodLimiter {
    pub fn new(rate: u32, burst: u32) -> FloodLimiter {
        FloodLimiter {
            rate,
            burst: burst.max(1),
            state: Mutex::new(None),
        }
    }

    /// The limiter of a network limited to `pps` frames per second (burst
    /// as many) in a new snapshot: `prev`, the one its last snapshot used,
    /// with its bucket as it stands, when its rate is the same; otherwise a
    /// new one with a full bucket.
    pub fn reuse(prev: Option<&Arc<FloodLimiter>>, pps: u32) -> Arc<FloodLimiter> {
        match prev {
            Some(p) if p.rate == pps && p.burst == pps.max(1) => p.clone(),
            _ => Arc::new(FloodLimiter::new(pps, pps)),
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn allow(&self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut st = self.state.lock().expect("flood limiter lock");
        let (tokens, last) = st.unwrap_or((f64::from(self.burst), now));
        let refill = now.saturating_duration_since(last).as_secs_f64() * f64::from(self.rate);
        let tokens = (tokens + refill).min(f64::from(self.burst));
        let (left, ok) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        *st = Some((left, now));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_the_rate() {
        let t0 = Instant::now();
        let l = FloodLimiter::new(100, 10);
        let passed = (0..50).filter(|_| l.allow(t0)).count();
        assert_eq!(passed, 10, "the burst, then nothing at the same instant");
        // 100 frames/s: 5 more after 50 ms.
        let t1 = t0 + Duration::from_millis(50);
        let passed = (0..50).filter(|_| l.allow(t1)).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn a_reload_with_the_same_rate_keeps_the_budget_and_a_new_rate_starts_afresh() {
        let t0 = Instant::now();
        let l = FloodLimiter::reuse(None, 10);
        assert_eq!((0..50).filter(|_| l.allow(t0)).count(), 10);
        let kept = FloodLimiter::reuse(Some(&l), 10);
        assert!(Arc::ptr_eq(&kept, &l));
        assert!(!kept.allow(t0), "the spent budget is still spent");
        let changed = FloodLimiter::reuse(Some(&l), 20);
        assert_eq!(changed.rate(), 20);
        assert_eq!(
            (0..50).filter(|_| changed.allow(t0)).count(),
            20,
            "a full bucket"
        );
        // Unlimited to unlimited is the same limiter too.
        let off = FloodLimiter::reuse(None, 0);
        assert!(Arc::ptr_eq(&FloodLimiter::reuse(Some(&off), 0), &off));
    }

    #[test]
    fn zero_is_unlimited() {
        let t0 = Instant::now();
        let l = FloodLimiter::new(0, 1);
        assert!((0..10_000).all(|_| l.allow(t0)));
    }
}
