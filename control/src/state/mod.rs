//! The node's state: the desired state it runs, its dataplane and mesh,
//! the reconciler that turns one into the other, reload counters and the
//! container attachments. Everything else (the daemon's loop, the admin
//! API, metrics, the store's announcer, the attach operations) works on a
//! [`State`]; this module depends on none of them.

pub mod attachments;

static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once this process handed its node over to a successor
/// (`crate::handover`): sockets it bound at a path now belong to the
/// successor, which serves the very same socket, so nothing may remove the
/// path on the way out.
pub fn handed_over() -> bool {
    HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Records that the node was handed over.
pub fn set_handed_over() {
    HANDED_OVER.store(true, std::sync::atomic::Ordering::Relaxed);
}

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;
use vxmesh_dataplane::io::Dataplane;
use vxmesh_dataplane::mesh::runtime::Mesh;

use crate::config;
use crate::error::ApplyError;
use crate::model::Cluster;
use crate::reconcile::{dns_zones, mesh_desired, relay_policy, Reconciler};
use crate::store::etcd::EtcdStore;
use crate::store::{doc, Store, StoreStatus, View};
use crate::timing::ApplyTimes;

/// Everything the admin API and the signal handlers share.
pub struct State {
    pub node: String,
    /// The cluster file, or the etcd store's description
    /// (`etcd:<endpoints>/<prefix>`), as `/v1/status` shows it.
    pub config_path: PathBuf,
    pub started: Instant,
    pub inner: Mutex<Inner>,
    /// The store the desired state comes from; API writes go there.
    pub store: Store,
    /// How long validating and applying desired states took.
    pub times: ApplyTimes,
    /// Containers attached on this node.
    pub attach: attachments::Attach,
}

pub struct Inner {
    pub cluster: Cluster,
    pub dataplane: Dataplane,
    pub mesh: Mesh,
    pub reconciler: Reconciler,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
}

impl State {
    /// Re-reads the desired state and applies it as a diff: the file store
    /// reads its file again; the etcd store re-applies its last snapshot.
    /// On any error the running state stays and the error is counted.
    pub fn reload(&self) -> Result<Vec<String>, ApplyError> {
        let next = match &self.store {
            Store::File(path) => {
                let t = Instant::now();
                let c = config::load(path).map_err(ApplyError::from).map(|mut c| {
                    for w in crate::ipam::merge(&mut c, &self.node, &self.attach.local_list()) {
                        warn!(warning = %w, "container allocation left out");
                    }
                    c
                });
                self.times.validated(t.elapsed());
                c
            }
            Store::Etcd(e) => self.assemble(e, &e.snapshot()),
        };
        match next {
            Ok(next) => self.apply(next),
            Err(e) => {
                self.reject(e.to_string());
                Err(e)
            }
        }
    }

    /// The effective cluster of an etcd snapshot.
    pub fn assemble(&self, e: &EtcdStore, snap: &doc::Snapshot) -> Result<Cluster, ApplyError> {
        let t = Instant::now();
        let r = doc::assemble_quarantined(snap, e.node(), View::Effective, &e.describe());
        self.times.validated(t.elapsed());
        let (c, quarantined) = r.map_err(ApplyError::Store)?;
        e.set_quarantined(quarantined);
        Ok(c)
    }

    /// Counts a desired state that could not be read.
    pub fn reject(&self, error: String) {
        let mut inner = self.inner.lock().expect("state lock poisoned");
        inner.reloads_failed += 1;
        inner.last_reload_error = Some(error);
    }

    /// Applies a new desired state as a diff: new table snapshots swapped
    /// into the dataplane, listeners bound or drained, never a restart. On
    /// any error the running state stays in place and the error is counted
    /// and returned.
    pub fn apply(&self, next: Cluster) -> Result<Vec<String>, ApplyError> {
        let mut inner = self.inner.lock().expect("state lock poisoned");
        let started = Instant::now();
        let (endpoints, nodes) = (next.endpoints.len(), next.nodes.len());
        let result = (|| {
            let node = next.node(&self.node).ok_or_else(|| ApplyError::NodeGone {
                node: self.node.clone(),
                config: self.config_path.display().to_string(),
            })?;
            let cur = inner.cluster.node(&self.node).expect("running node exists");
            if node.address != cur.address
                || next.settings.vxlan_port != inner.cluster.settings.vxlan_port
                || next.settings.source_ports != inner.cluster.settings.source_ports
                || next.settings.queues != inner.cluster.settings.queues
            {
                return Err(ApplyError::NeedsRestart);
            }
            let (tables, taps, changes) = inner.reconciler.plan(&next)?;
            // Bind new listeners first: if one fails, nothing changes.
            let mut mesh_changes = inner.mesh.apply(
                mesh_desired(&next, &self.node),
                dns_zones(&next, &self.node),
            )?;
            let (relay_at, relay) = relay_policy(&next, &self.node);
            mesh_changes.extend(inner.mesh.set_relay(relay_at, relay)?);
            inner
                .dataplane
                .apply(tables, taps)
                .map_err(ApplyError::Workers)?;
            inner
                .dataplane
                .set_busy_poll(Duration::from_micros(next.settings.busy_poll_us));
            inner.cluster = next;
            let mut changes: Vec<String> = changes.iter().map(|c| format!("{c:?}")).collect();
            changes.extend(mesh_changes);
            Ok(changes)
        })();
        match &result {
            Ok(_) => {
                self.times.applied(started.elapsed(), endpoints, nodes);
                inner.reloads_ok += 1;
                inner.last_reload_error = None;
                self.attach.applied();
            }
            Err(e) => {
                inner.reloads_failed += 1;
                inner.last_reload_error = Some(e.to_string());
            }
        }
        result
    }

    /// The table snapshot the dataplane runs now.
    pub fn tables(&self) -> Arc<vxmesh_dataplane::overlay::Tables> {
        self.inner
            .lock()
            .expect("state lock poisoned")
            .dataplane
            .tables()
    }

    /// The store's health: for etcd, whether the watch runs (false: fail
    /// static), the revision applied, this node's lease.
    pub fn store_status(&self) -> StoreStatus {
        match &self.store {
            Store::File(p) => StoreStatus {
                backend: "file".into(),
                target: p.display().to_string(),
                connected: true,
                since_s: self.started.elapsed().as_secs_f64(),
                ..StoreStatus::default()
            },
            Store::Etcd(e) => e.status(),
        }
    }
}
