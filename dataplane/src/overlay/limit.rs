//! The per-network flood limit: a token bucket over frames that must be
//! replicated to every peer (broadcast, multicast, unknown unicast), so a
//! broadcast storm on one host cannot multiply itself across the cluster.
//! Time is an argument; the bucket sits behind a mutex taken only on the
//! flood path, never for unicast.

use std::sync::Mutex;
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
    fn zero_is_unlimited() {
        let t0 = Instant::now();
        let l = FloodLimiter::new(0, 1);
        assert!((0..10_000).all(|_| l.allow(t0)));
    }
}
