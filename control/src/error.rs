//! Why a desired state did not become the running one, on reload or apply:
//! one variant per failing step. The running state stays on every one of
//! them; the text (`to_string`) is what the status shows as
//! `last_reload_error`.

use vxmesh_dataplane::mesh::runtime::MeshError;

use crate::config::ConfigErrors;
use crate::reconcile::ReconcileError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The cluster file cannot be read or breaks a rule (file:line: reason).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The store's snapshot breaks a rule no single document can be set
    /// aside for (`<store>/<key>: reason`, each).
    #[error("{}", .0.join("; "))]
    Store(Vec<String>),
    /// The desired state no longer lists this node.
    #[error("node `{node}` is no longer in {config}")]
    NodeGone { node: String, config: String },
    /// A setting changed that only a restart can change.
    #[error("the node address, vxlan_port, source_ports and queues change only with a restart")]
    NeedsRestart,
    /// The tables or TAP devices could not be planned.
    #[error("{0}")]
    Plan(#[from] ReconcileError),
    /// A listener of the routing mesh could not be bound.
    #[error("{0}")]
    Mesh(#[from] MeshError),
    /// The dataplane workers did not take the new tables.
    #[error("starting workers: {0}")]
    Workers(#[source] std::io::Error),
}

impl From<ApplyError> for String {
    fn from(e: ApplyError) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::ConfigError;

    /// The texts are the ones the daemon reported as strings before the
    /// enum: operators' scripts and the e2e tests match them.
    #[test]
    fn each_step_reads_as_before() {
        let file = ConfigErrors(vec![ConfigError {
            file: PathBuf::from("/etc/vxmesh/vxmesh.toml"),
            line: 3,
            column: 7,
            reason: "vni 0 is outside 1..=16777215 (24 bits)".into(),
        }]);
        let cases = [
            (
                ApplyError::from(file),
                "/etc/vxmesh/vxmesh.toml:3:7: vni 0 is outside 1..=16777215 (24 bits)",
            ),
            (
                ApplyError::Store(vec![
                    "etcd/networks/a: x".into(),
                    "etcd/services/b: y".into(),
                ]),
                "etcd/networks/a: x; etcd/services/b: y",
            ),
            (
                ApplyError::NodeGone {
                    node: "h1".into(),
                    config: "/etc/vxmesh/vxmesh.toml".into(),
                },
                "node `h1` is no longer in /etc/vxmesh/vxmesh.toml",
            ),
            (
                ApplyError::NeedsRestart,
                "the node address, vxlan_port, source_ports and queues change only with a restart",
            ),
            (
                ApplyError::Plan(ReconcileError::UnknownNode("h9".into())),
                "node `h9` is not in the cluster config",
            ),
            (
                ApplyError::Workers(std::io::Error::other("no queue")),
                "starting workers: no queue",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(String::from(e), want);
        }
    }
}
