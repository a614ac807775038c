//! What the lanes report: batch-size histograms, the offloads in use and
//! each worker's health, for the status, `/metrics` and the watchdog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the batch-size buckets (reads per wake-up).
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// How many reads a worker made per wake-up: a histogram of relaxed
/// atomics, one bucket per power of two up to [`super::worker::BATCH`].
#[derive(Default, Debug)]
pub struct BatchHistogram {
    counts: [AtomicU64; BATCH_BUCKETS.len() + 1],
    sum: AtomicU64,
}

impl BatchHistogram {
    pub(super) fn observe(&self, reads: usize) {
        let r = reads as u64;
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| r <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(r, Ordering::Relaxed);
    }

    /// (sum, count, per-bucket counts with upper bounds, the last infinite).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BATCH_BUCKETS
            .iter()
            .map(|b| *b as f64)
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        (self.sum.load(Ordering::Relaxed) as f64, count, buckets)
    }
}

/// The batching histograms, for the status and `/metrics`.
pub struct Batches<'a> {
    /// Frames read from a TAP per wake-up.
    pub tap_reads: &'a BatchHistogram,
    /// Reads of the underlay socket per wake-up (each may hold several
    /// datagrams with UDP GRO).
    pub underlay_reads: &'a BatchHistogram,
    /// Datagrams per send to one peer (one `sendmsg` with UDP GSO).
    pub tx_datagrams: &'a BatchHistogram,
}

impl BatchHistogram {
    /// Mean per observation; 0 before the first.
    pub fn mean(&self) -> f64 {
        let (sum, count, _) = self.snapshot();
        if count == 0 {
            0.0
        } else {
            sum / count as f64
        }
    }
}

/// Which offloads are in use, for the status and `/metrics`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Offloads {
    /// Every TAP has a virtio-net header (TSO on the TAP).
    pub tap_vnet_hdr: bool,
    /// Every TAP hands over UDP super-frames (USO), cut here.
    pub tap_uso: bool,
    /// Every TAP takes runs of UDP datagrams as one UDP GSO frame.
    pub tap_uso_write: bool,
    pub udp_gso: bool,
    pub udp_gro: bool,
}

/// Health of one worker thread, for the watchdog and the admin API.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerStatus {
    pub name: String,
    /// Time since the worker last went round its loop.
    pub idle_ms: u64,
    pub running: bool,
    /// Frames read from TAP queues so far.
    pub tap_reads: u64,
    /// Underlay reads so far.
    pub underlay_reads: u64,
}

/// The watchdog's rule: every worker thread alive and round its loop
/// within `within`. A worker stuck in a syscall or a loop stops beating,
/// and the daemon then withholds WATCHDOG=1 so systemd restarts it.
pub fn all_turning(workers: &[WorkerStatus], within: Duration) -> bool {
    !workers.is_empty()
        && workers
            .iter()
            .all(|w| w.running && w.idle_ms <= within.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(idle_ms: u64, running: bool) -> WorkerStatus {
        WorkerStatus {
            name: "w".into(),
            idle_ms,
            running,
            tap_reads: 0,
            underlay_reads: 0,
        }
    }

    #[test]
    fn one_stuck_or_dead_worker_stops_the_watchdog() {
        let within = Duration::from_millis(500);
        assert!(all_turning(&[w(100, true), w(120, true)], within));
        assert!(!all_turning(&[w(100, true), w(900, true)], within), "stuck");
        assert!(!all_turning(&[w(100, true), w(0, false)], within), "exited");
        assert!(!all_turning(&[], within), "no worker is not healthy");
    }
}
