//! How long turning a desired state into running tables takes, in two
//! steps: **validate** (the store's documents, or the cluster file, read
//! and checked into a [`crate::model::Cluster`]) and **apply** (the
//! reconciler builds the new table snapshot, TAPs and listeners are
//! adjusted, and the snapshot is swapped into the dataplane). Both are
//! histograms in `/metrics` (`vxmesh_table_apply_seconds{step=...}`), the
//! last one is in `/v1/status` (`last_apply`) and in the log line of every
//! reload or store change.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vxmesh_dataplane::mesh::service::DurationHistogram;

/// Upper bounds (seconds) of the apply-time buckets: a few endpoints apply
/// in a millisecond, 100,000 in about a second.
pub const APPLY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The last successful apply (`/v1/status` `last_apply`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastApply {
    /// Seconds to read and validate the desired state.
    pub validate_s: f64,
    /// Seconds to build the table snapshot and swap it in.
    pub apply_s: f64,
    /// Endpoints in the applied state (all networks, all nodes).
    pub endpoints: usize,
    /// Nodes in the applied state.
    pub nodes: usize,
}

/// The histograms and the last apply of one daemon.
pub struct ApplyTimes {
    pub validate: DurationHistogram,
    pub apply: DurationHistogram,
    last: Mutex<LastApply>,
}

impl Default for ApplyTimes {
    fn default() -> ApplyTimes {
        ApplyTimes {
            validate: DurationHistogram::new(&APPLY_BUCKETS),
            apply: DurationHistogram::new(&APPLY_BUCKETS),
            last: Mutex::new(LastApply::default()),
        }
    }
}

impl ApplyTimes {
    /// A desired state was read and validated in `d`.
    pub fn validated(&self, d: Duration) {
        self.validate.observe(d);
        self.last.lock().expect("timing lock").validate_s = d.as_secs_f64();
    }

    /// A state of `endpoints` endpoints and `nodes` nodes was applied in `d`.
    pub fn applied(&self, d: Duration, endpoints: usize, nodes: usize) {
        self.apply.observe(d);
        let mut l = self.last.lock().expect("timing lock");
        l.apply_s = d.as_secs_f64();
        l.endpoints = endpoints;
        l.nodes = nodes;
    }

    pub fn last(&self) -> LastApply {
        self.last.lock().expect("timing lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_counts_and_the_last_apply_is_kept() {
        let t = ApplyTimes::default();
        t.validated(Duration::from_millis(3));
        t.applied(Duration::from_millis(700), 100_003, 1_003);
        t.applied(Duration::from_millis(2), 3, 3);
        let a = t.apply.snapshot();
        assert_eq!(a.count, 2);
        assert!((a.sum_seconds - 0.702).abs() < 1e-9, "{a:?}");
        // 2 ms lands in the 2.5 ms bucket, 700 ms in the 1 s one.
        assert_eq!(a.buckets[1], (0.0025, 1));
        assert_eq!(a.buckets[9], (1.0, 1));
        assert_eq!(t.validate.snapshot().count, 1);
        let last = t.last();
        assert_eq!((last.endpoints, last.nodes), (3, 3));
        assert_eq!(last.validate_s, 0.003);
    }
}
