//! Log lines for the dataplane's limits, read from its counters off the
//! packet path.

use tracing::{info, warn};

use crate::state::State;

/// Logs when the dataplane starts or stops hitting a limit (the learned
/// table's cap, the flood rate): one line per change, read from the
/// counters every 2 s, never from the packet path. The same tick ages the
/// learned forwarding entries out.
#[derive(Default)]
pub struct LimitWatch {
    last: std::collections::HashMap<(String, &'static str), (u64, bool)>,
}

impl LimitWatch {
    pub fn check(&mut self, st: &State) {
        let tables = st.tables();
        let now = std::time::Instant::now();
        for n in &tables.networks {
            // Learned entries age out here, off the packet path.
            if n.learning && n.learned.expire(now) > 0 {
                tracing::debug!(network = %n.name, left = n.learned.len(), "learned entries aged out");
            }
            let now = [
                (
                    "fdb_full",
                    n.stats.fdb_full.load(std::sync::atomic::Ordering::Relaxed),
                ),
                (
                    "flood_rate",
                    n.stats
                        .drops
                        .get(vxmesh_dataplane::overlay::DropReason::FloodRate),
                ),
            ];
            for (what, v) in now {
                let e = self
                    .last
                    .entry((n.name.clone(), what))
                    .or_insert((v, false));
                let hitting = v > e.0;
                if hitting != e.1 {
                    if hitting {
                        warn!(network = %n.name, limit = what, refused = v - e.0, "limit reached");
                    } else {
                        info!(network = %n.name, limit = what, "back under the limit");
                    }
                }
                *e = (v, hitting);
            }
        }
    }
}
