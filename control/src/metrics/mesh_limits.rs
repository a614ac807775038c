//! The mesh's guards in `/metrics`: refusals by reason, the timeouts that
//! closed slow clients, the node-wide budget and the accept loops' errors.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::DescriptorEncoder;
use vxmesh_dataplane::mesh::limits::Resources;
use vxmesh_dataplane::mesh::service::ServiceStatus;

use super::{counters, gauges, Labels};

pub(super) fn encode(
    e: &mut DescriptorEncoder,
    services: &[ServiceStatus],
    res: &Resources,
) -> fmt::Result {
    let mut refused = Vec::new();
    let mut timeouts = Vec::new();
    for s in services {
        let rows = [
            ("connections", "service_limit", s.refused_connections),
            ("connections", "source_limit", s.source_refused_connections),
            ("connections", "node_budget", s.budget_refused_connections),
            ("sessions", "service_limit", s.refused_sessions),
            ("sessions", "source_limit", s.source_refused_sessions),
            ("sessions", "node_budget", s.budget_refused_sessions),
        ];
        for (kind, reason, v) in rows {
            let l: Labels = vec![
                ("service", s.name.clone()),
                ("kind", kind.into()),
                ("reason", reason.into()),
            ];
            refused.push((l, v));
        }
        for (kind, v) in [
            ("first_byte", s.first_byte_timeouts),
            ("write", s.write_timeouts),
        ] {
            timeouts.push((vec![("service", s.name.clone()), ("kind", kind.into())], v));
        }
    }
    counters(
        e,
        "vxmesh_service_refused",
        "Connections and sessions refused, by reason: the service's max_connections / max_sessions, the client address's per-source cap, or the node's budget.",
        None,
        refused,
    )?;
    counters(
        e,
        "vxmesh_service_timeouts",
        "Client connections closed because the client sent nothing within first_byte_timeout_ms, or reset because a write stayed blocked write_timeout_ms.",
        None,
        timeouts,
    )?;
    let b = res.budget.status();
    let rows = |fds: u64, bytes: u64| -> Vec<(Labels, f64)> {
        vec![
            (vec![("resource", "descriptors".into())], fds as f64),
            (vec![("resource", "memory_bytes".into())], bytes as f64),
        ]
    };
    gauges(
        e,
        "vxmesh_mesh_budget",
        "What the mesh's client connections and sessions may hold on this node: descriptors (a share of RLIMIT_NOFILE) and memory.",
        None,
        rows(b.fds_limit, b.bytes_limit),
    )?;
    gauges(
        e,
        "vxmesh_mesh_budget_used",
        "What the mesh's client connections and sessions hold now.",
        None,
        rows(b.fds_used, b.bytes_used),
    )?;
    counters(
        e,
        "vxmesh_mesh_budget_refused",
        "Connections and sessions refused because the node's budget was spent.",
        None,
        vec![(vec![], b.refused)],
    )?;
    counters(
        e,
        "vxmesh_mesh_accept_errors",
        "Failed accepts on published ports: exhausted (out of descriptors or memory; the loop paused) or other.",
        None,
        vec![
            (
                vec![("reason", "exhausted".into())],
                res.accept.exhausted.load(Relaxed),
            ),
            (
                vec![("reason", "other".into())],
                res.accept.other.load(Relaxed),
            ),
        ],
    )
}
