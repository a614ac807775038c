//! Start-up: the node built from its desired state (and whatever a
//! predecessor or systemd's store left), with the file store or etcd.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{error, info, warn};
use vxmesh_dataplane::io::{Dataplane, Underlay, UnderlayConfig};
use vxmesh_dataplane::mesh::runtime::Mesh;
use vxmesh_dataplane::overlay::Core;

use super::Options;
use crate::config;
use crate::handover;
use crate::model::Cluster;
use crate::reconcile::{dns_zones, mesh_desired, relay_policy, Reconciler};
use crate::state::{Inner, State};
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::{doc, Store, View};
use crate::timing::ApplyTimes;

/// Builds the dataplane for `opts` from an already validated cluster.
pub fn start(opts: &Options, mut cluster: Cluster, store: Store) -> anyhow::Result<Arc<State>> {
    // Announced addresses can only be published to etcd.
    let etcd = matches!(store, Store::Etcd(_));
    let attach = crate::attach::Attach::open(&opts.state_dir, &opts.node, !etcd)
        .map_err(anyhow::Error::msg)?;
    for w in crate::ipam::merge(&mut cluster, &opts.node, &attach.local_list()) {
        warn!(warning = %w, "container allocation left out");
    }
    if !etcd && cluster.networks.iter().any(|n| n.announce) {
        warn!("`announce = true` needs the etcd store; with the cluster file it does nothing");
    }
    let mut reconciler = Reconciler::new(opts.node.clone())
        .with_announce(etcd)
        .with_node_key(opts.node_key.clone());
    let local = reconciler.local_address(&cluster)?;
    match (&opts.node_key, cluster.node(&opts.node).and_then(|n| n.public_key)) {
        (Some(k), Some(listed)) if k.public() != listed => warn!(
            key = %k.public(),
            listed = %listed,
            "this node's key is not the public key the cluster lists for it: its peers will refuse every session"
        ),
        (None, _) if cluster.networks.iter().any(|n| n.encrypted) => warn!(
            "encrypted networks, but no node key (--key-file, or vxmesh-node.key in the state or credentials directory): they carry nothing to or from this node"
        ),
        (Some(k), _) => info!(public_key = %k.public(), "node key loaded"),
        _ => {}
    }
    let mut ucfg = UnderlayConfig::new(local);
    ucfg.port = cluster.settings.vxlan_port;
    ucfg.source_ports = cluster.settings.source_ports;
    ucfg.receivers = cluster.settings.effective_queues();
    let underlay = Underlay::bind(&ucfg).context("binding the underlay socket")?;
    // The first build counts as an apply (a daemon restarted into a large
    // cluster builds everything at once).
    let times = ApplyTimes::default();
    let built = Instant::now();
    let (tables, taps, changes) = reconciler.plan(&cluster)?;
    for c in &changes {
        info!(change = ?c, "applied");
    }
    let dataplane = Dataplane::start(underlay, Core, tables, taps).context("starting workers")?;
    dataplane.set_busy_poll(Duration::from_micros(cluster.settings.busy_poll_us));
    let mut mesh = Mesh::new(tokio::runtime::Handle::current());
    for c in mesh.apply(
        mesh_desired(&cluster, &opts.node),
        dns_zones(&cluster, &opts.node),
    )? {
        info!(change = %c, "applied");
    }
    let (relay_at, relay) = relay_policy(&cluster, &opts.node);
    if let Some(c) = mesh.set_relay(relay_at, relay)? {
        info!(change = %c, "applied");
    }
    times.applied(
        built.elapsed(),
        cluster.endpoints.len(),
        cluster.nodes.len(),
    );
    Ok(Arc::new(State {
        node: opts.node.clone(),
        config_path: match &store {
            Store::File(p) => p.clone(),
            Store::Etcd(e) => PathBuf::from(e.describe()),
        },
        started: Instant::now(),
        store,
        times,
        attach,
        inner: Mutex::new(Inner {
            cluster,
            dataplane,
            mesh,
            reconciler,
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_error: None,
        }),
    }))
}

/// Reads the cluster file and checks that `opts.node` is in it.
pub(super) fn file_cluster(opts: &Options) -> anyhow::Result<Cluster> {
    let cluster = config::load(&opts.config)?;
    if cluster.node(&opts.node).is_none() {
        anyhow::bail!(
            "{}: node `{}` is not among [[nodes]] ({})",
            opts.config.display(),
            opts.node,
            cluster
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(cluster)
}

/// Before anything binds: take a running daemon's node over (`--takeover`),
/// or, under systemd, the descriptors (and, after `systemctl restart`, the
/// saved state) its store kept.
pub(super) fn inherit(
    opts: &Options,
) -> anyhow::Result<(Option<handover::Takeover>, handover::Saved)> {
    let mut taken = None;
    if opts.takeover {
        let path = handover::path(&opts.socket);
        match handover::take_over(&path, opts.handover_version).with_context(|| {
            format!("taking the node over from the daemon on {}", path.display())
        })? {
            handover::Outcome::Taken(t) => taken = Some(t),
            handover::Outcome::Fallback(f) => {
                let pid = f.pid;
                // It drains its connections first.
                f.wait(Duration::from_secs(3700))?;
                info!(
                    predecessor = pid,
                    "the predecessor stopped; starting afresh on its devices"
                );
            }
        }
    }
    let mut saved = handover::Saved::default();
    if handover::fdstore::enabled() {
        handover::fdstore::receive();
        saved = handover::fdstore::take_state().unwrap_or_default();
    }
    if let Some(t) = &taken {
        saved = t.saved.clone();
    }
    Ok((taken, saved))
}

/// Connects to etcd and builds the node from its state; starts the watch,
/// the announcer and the lease keeper.
pub(super) async fn start_etcd(
    opts: &Options,
    mut eo: EtcdOptions,
    adopt_lease: Option<i64>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Arc<State>, Vec<tokio::task::JoinHandle<()>>)> {
    eo.adopt_lease = adopt_lease;
    let (etcd, snap) = EtcdStore::start(eo).await?;
    let (cluster, quarantined) =
        doc::assemble_quarantined(&snap, etcd.node(), View::Effective, &etcd.describe()).map_err(
            |errs| anyhow::anyhow!("the store's state is invalid:\n{}", errs.join("\n")),
        )?;
    etcd.set_quarantined(quarantined);
    info!(store = %etcd.describe(), revision = snap.revision, "desired state read");
    let state = start(opts, cluster, Store::Etcd(etcd.clone()))?;
    let st = Arc::downgrade(&state);
    let applier: crate::store::etcd::Applier = Arc::new(move |snap| {
        let Some(st) = st.upgrade() else {
            return Ok(());
        };
        let Store::Etcd(e) = &st.store else {
            return Ok(());
        };
        let rev = snap.revision;
        let started = Instant::now();
        let r = st.assemble(e, &snap).map_err(String::from).and_then(|c| {
            st.apply(c)
                .map_err(|e| format!("applying revision {rev}: {e}"))
        });
        match &r {
            Ok(changes) => {
                // A member of an attachable network gets its own address
                // there (off the watch's path: it writes).
                let weak = Arc::downgrade(&st);
                tokio::spawn(async move {
                    if let Some(st) = weak.upgrade() {
                        crate::attach::ensure_own_addresses(&st).await;
                    }
                });
                let t = st.times.last();
                info!(
                    revision = rev,
                    ?changes,
                    took_ms = started.elapsed().as_millis() as u64,
                    validate_ms = (t.validate_s * 1000.0) as u64,
                    apply_ms = (t.apply_s * 1000.0) as u64,
                    endpoints = t.endpoints,
                    "store change applied"
                )
            }
            Err(e) => {
                if !e.starts_with("applying") {
                    st.reject(e.clone());
                }
                error!(revision = rev, error = %e, "store change rejected; the running state stays in place")
            }
        }
        r.map(|_| ())
    });
    let tasks = vec![
        tokio::spawn(etcd.clone().run_watch(applier, stop.clone())),
        tokio::spawn(crate::announce::run(
            Arc::downgrade(&state),
            etcd.clone(),
            stop.clone(),
        )),
        tokio::spawn(etcd.run_lease(stop.clone())),
    ];
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        if let Some(st) = weak.upgrade() {
            crate::attach::ensure_own_addresses(&st).await;
        }
    });
    Ok((state, tasks))
}
