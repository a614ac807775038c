//! The routing mesh's families, per service and task, and its limits
//! ([`super::mesh_limits`]).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;
use vxmesh_dataplane::mesh::service::ServiceStatus;

use super::{counters, durations, gauges, mesh_limits, Labels};
use crate::state::State;

/// One per-task family of the mesh, filled row by row.
struct TaskFamily {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    counter: bool,
    rows: Vec<(Labels, f64)>,
}

impl TaskFamily {
    fn new(name: &'static str, help: &'static str, unit: Option<Unit>, counter: bool) -> Self {
        TaskFamily {
            name,
            help,
            unit,
            counter,
            rows: Vec::new(),
        }
    }
}

pub(super) fn encode(
    e: &mut DescriptorEncoder,
    st: &State,
    services: &[ServiceStatus],
) -> fmt::Result {
    // The mesh, per service and task.
    let mut rows = [
        TaskFamily::new(
            "vxmesh_service_connections_active",
            "Open connections (TCP) or sessions (UDP) to the task.",
            None,
            false,
        ),
        TaskFamily::new(
            "vxmesh_service_connections",
            "Connections and sessions opened to the task.",
            None,
            true,
        ),
        TaskFamily::new(
            "vxmesh_service_rx",
            "Bytes from clients to the task.",
            Some(Unit::Bytes),
            true,
        ),
        TaskFamily::new(
            "vxmesh_service_tx",
            "Bytes from the task back to clients.",
            Some(Unit::Bytes),
            true,
        ),
        TaskFamily::new(
            "vxmesh_service_connect_failures",
            "Failed connects to the task.",
            None,
            true,
        ),
        TaskFamily::new(
            "vxmesh_service_ejections",
            "Times the task was ejected after failed connects.",
            None,
            true,
        ),
        TaskFamily::new(
            "vxmesh_service_task_up",
            "1 when the task takes new connections.",
            None,
            false,
        ),
    ];
    let mut no_backend = Vec::new();
    let mut open = Vec::new();
    for s in services {
        no_backend.push((vec![("service", s.name.clone())], s.no_backend));
        for (kind, o) in [
            ("connections", s.open_connections),
            ("sessions", s.open_sessions),
        ] {
            let l = vec![("service", s.name.clone()), ("kind", kind.to_string())];
            open.push((l, o as f64));
        }
        for t in &s.tasks {
            let l = vec![("service", s.name.clone()), ("task", t.addr.clone())];
            let up = matches!(
                t.state,
                vxmesh_dataplane::mesh::health::State::Up
                    | vxmesh_dataplane::mesh::health::State::SlowStart
            );
            let vals = [
                t.active as f64,
                t.total as f64,
                t.bytes_in as f64,
                t.bytes_out as f64,
                t.connect_failures as f64,
                t.ejections as f64,
                if up { 1.0 } else { 0.0 },
            ];
            for (row, v) in rows.iter_mut().zip(vals) {
                row.rows.push((l.clone(), v));
            }
        }
    }
    for f in rows {
        if f.counter {
            let vals = f.rows.into_iter().map(|(l, v)| (l, v as u64)).collect();
            counters(e, f.name, f.help, f.unit.as_ref(), vals)?;
        } else {
            gauges(e, f.name, f.help, f.unit.as_ref(), f.rows)?;
        }
    }
    durations(
        e,
        "vxmesh_health_check_duration",
        "How long active health checks of a task took.",
        services
            .iter()
            .flat_map(|s| {
                s.tasks.iter().map(|t| {
                    let l = vec![("service", s.name.clone()), ("task", t.addr.clone())];
                    (l, t.probe_duration.clone())
                })
            })
            .collect(),
    )?;
    let res = st
        .inner
        .lock()
        .expect("state lock poisoned")
        .mesh
        .resources()
        .clone();
    mesh_limits::encode(e, services, &res)?;
    gauges(
        e,
        "vxmesh_service_open",
        "Connections and sessions this node holds open for the service.",
        None,
        open,
    )?;
    counters(
        e,
        "vxmesh_service_no_backend",
        "Client connections refused because no task could take them.",
        None,
        no_backend,
    )?;
    counters(
        e,
        "vxmesh_service_relayed_connections",
        "Connections to tasks on other nodes that went through the task node's relay (underlay) instead of the overlay.",
        None,
        services
            .iter()
            .map(|s| (vec![("service", s.name.clone())], s.relayed_connections))
            .collect(),
    )?;
    let relay = st
        .inner
        .lock()
        .expect("state lock poisoned")
        .mesh
        .relay_status();
    for (name, help, v) in [
        ("vxmesh_relay_accepted", "Relay requests from other nodes served: connected to a local task.", relay.accepted),
        ("vxmesh_relay_refused", "Relay requests refused: not from a member node, malformed, or not for a local task of a plain network.", relay.refused),
        ("vxmesh_relay_unreachable", "Relay requests whose local task did not take the connection.", relay.unreachable),
        ("vxmesh_relay_reused", "Relay requests served on a connection from another node that had carried an earlier one.", relay.reused),
        ("vxmesh_relay_pool_reused", "Connections to tasks on other nodes sent over a pooled connection to their relay (no connect).", relay.pool_reused),
        ("vxmesh_relay_pool_stale", "Pooled connections to other nodes' relays found closed by the other end and replaced.", relay.pool_stale),
    ] {
        counters(e, name, help, None, vec![(vec![], v)])?;
    }
    gauges(
        e,
        "vxmesh_relay_active",
        "Relayed connections this node serves for other nodes now.",
        None,
        vec![(vec![], relay.active as f64)],
    )?;
    gauges(
        e,
        "vxmesh_relay_pool_idle",
        "Idle connections to other nodes' relays kept for the next request.",
        None,
        vec![(vec![], relay.pool_idle as f64)],
    )?;
    Ok(())
}
