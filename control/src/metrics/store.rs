//! The control plane's families: reloads, table applies and the store.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{counters, durations, gauges};
use crate::state::State;
use crate::status::Status;

/// Config reloads by result.
pub(super) fn reloads(e: &mut DescriptorEncoder, status: &Status) -> fmt::Result {
    counters(
        e,
        "vxmesh_reloads",
        "Config reloads, by result.",
        None,
        vec![
            (vec![("result", "ok".into())], status.reloads_ok),
            (vec![("result", "failed".into())], status.reloads_failed),
        ],
    )?;
    Ok(())
}

/// Table apply times and the store's health.
pub(super) fn encode(e: &mut DescriptorEncoder, st: &State) -> fmt::Result {
    durations(
        e,
        "vxmesh_table_apply",
        "Time to turn a desired state into running tables: validate (read and check it), apply (build the table snapshot and swap it in).",
        [("validate", &st.times.validate), ("apply", &st.times.apply)]
            .into_iter()
            .map(|(step, h)| (vec![("step", step.into())], h.snapshot()))
            .collect(),
    )?;
    let store = st.store_status();
    let sl = || vec![("store", store.backend.clone())];
    gauges(
        e,
        "vxmesh_store_up",
        "1 while the desired-state store is reachable (the file store always is); 0 means fail static.",
        None,
        vec![(sl(), if store.connected { 1.0 } else { 0.0 })],
    )?;
    gauges(
        e,
        "vxmesh_store_revision",
        "Store revision of the last desired state applied (0 for the file store).",
        None,
        vec![(sl(), store.revision as f64)],
    )?;
    counters(
        e,
        "vxmesh_store_events",
        "Store watch events applied since start.",
        None,
        vec![(sl(), store.events)],
    )?;
    gauges(
        e,
        "vxmesh_store_quarantined_documents",
        "Documents under the store prefix left out because they are invalid (everything else applies); the keys and reasons are in the status.",
        None,
        vec![(sl(), store.quarantined.len() as f64)],
    )?;
    Ok(())
}
