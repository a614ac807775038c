//! The daemon: start-up, systemd notification and watchdog, SIGHUP reload,
//! SIGTERM drain and stop, SIGINT fast stop.
//!
//! Start-up order: read and validate the config (a bad file stops here with
//! file:line:reason), bind the underlay socket, create every TAP, start the
//! workers, bind the admin socket, and only then send `READY=1`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};
use vxmesh_dataplane::io::{Dataplane, Underlay, UnderlayConfig};
use vxmesh_dataplane::overlay::Core;

use crate::api;
use crate::config;
use crate::model::Cluster;
use crate::reconcile::{dns_zones, mesh_desired, Reconciler};
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::{doc, Store, StoreStatus, View};
use crate::timing::ApplyTimes;
use vxmesh_dataplane::mesh::runtime::Mesh;

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster file (file store).
    pub config: PathBuf,
    pub node: String,
    pub socket: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    /// A file holding the token that allows writes on `admin_addr`
    /// (without one the TCP listener is read-only).
    pub admin_token_file: Option<PathBuf>,
    /// Where the desired state lives; `None` is the file store.
    pub etcd: Option<EtcdOptions>,
    /// Where the daemon keeps its state (allocations with the cluster
    /// file, Docker networks bound to vxmesh networks).
    pub state_dir: PathBuf,
    /// Serve Docker's plugin protocol under this plugin name.
    pub docker_plugin: Option<String>,
    /// The directory Docker discovers plugin sockets in.
    pub docker_plugin_dir: PathBuf,
    /// dockerd's API socket, asked for container names and labels.
    pub docker_host: Option<PathBuf>,
}

impl Options {
    pub const DEFAULT_STATE_DIR: &'static str = "/var/lib/vxmesh";
    pub const DEFAULT_PLUGIN_DIR: &'static str = "/run/docker/plugins";

    /// A daemon on the cluster file `config` as node `node`, with its state
    /// in `state_dir` and nothing else turned on.
    pub fn file(config: PathBuf, node: &str, socket: PathBuf, state_dir: PathBuf) -> Options {
        Options {
            config,
            node: node.to_string(),
            socket,
            admin_addr: None,
            admin_token_file: None,
            etcd: None,
            state_dir,
            docker_plugin: None,
            docker_plugin_dir: PathBuf::from(Self::DEFAULT_PLUGIN_DIR),
            docker_host: None,
        }
    }
}

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
    pub attach: crate::attach::Attach,
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

/// Sends a state line to systemd; a no-op outside systemd.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// A one-line summary for systemd's STATUS=.
fn summary(st: &State) -> String {
    let s = api::server::build_status(st);
    let peers: std::collections::BTreeSet<&String> =
        s.networks.iter().flat_map(|n| n.peers.iter()).collect();
    let services = st.inner.lock().expect("state lock poisoned").mesh.status();
    let tasks: usize = services.iter().map(|s| s.tasks.len()).sum();
    let healthy: usize = services
        .iter()
        .flat_map(|s| s.tasks.iter())
        .filter(|t| t.state.accepts_new())
        .count();
    format!(
        "node {} ({}): {} networks, {} peers, {} services, {healthy}/{tasks} tasks healthy",
        s.node,
        s.address,
        s.networks.len(),
        peers.len(),
        services.len(),
    )
}

impl State {
    /// Re-reads the desired state and applies it as a diff: the file store
    /// reads its file again; the etcd store re-applies its last snapshot.
    /// On any error the running state stays and the error is counted.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let next = match &self.store {
            Store::File(path) => {
                let t = Instant::now();
                let c = config::load(path).map_err(|e| e.to_string()).map(|mut c| {
                    for w in
                        crate::attach::ipam::merge(&mut c, &self.node, &self.attach.local_list())
                    {
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
                self.reject(e.clone());
                Err(e)
            }
        }
    }

    /// The effective cluster of an etcd snapshot.
    fn assemble(&self, e: &EtcdStore, snap: &doc::Snapshot) -> Result<Cluster, String> {
        let t = Instant::now();
        let r = doc::assemble_quarantined(snap, e.node(), View::Effective, &e.describe());
        self.times.validated(t.elapsed());
        let (c, quarantined) = r.map_err(|errs| errs.join("; "))?;
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
    pub fn apply(&self, next: Cluster) -> Result<Vec<String>, String> {
        let mut inner = self.inner.lock().expect("state lock poisoned");
        let started = Instant::now();
        let (endpoints, nodes) = (next.endpoints.len(), next.nodes.len());
        let result = (|| {
            let node = next.node(&self.node).ok_or_else(|| {
                format!(
                    "node `{}` is no longer in {}",
                    self.node,
                    self.config_path.display()
                )
            })?;
            let cur = inner.cluster.node(&self.node).expect("running node exists");
            if node.address != cur.address
                || next.settings.vxlan_port != inner.cluster.settings.vxlan_port
                || next.settings.source_ports != inner.cluster.settings.source_ports
                || next.settings.queues != inner.cluster.settings.queues
            {
                return Err(
                    "the node address, vxlan_port, source_ports and queues change only with a restart"
                        .to_string(),
                );
            }
            let (tables, taps, changes) =
                inner.reconciler.plan(&next).map_err(|e| e.to_string())?;
            // Bind new listeners first: if one fails, nothing changes.
            let mesh_changes = inner
                .mesh
                .apply(
                    mesh_desired(&next, &self.node),
                    dns_zones(&next, &self.node),
                )
                .map_err(|e| e.to_string())?;
            inner
                .dataplane
                .apply(tables, taps)
                .map_err(|e| format!("starting workers: {e}"))?;
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
                inner.last_reload_error = Some(e.clone());
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

/// The watchdog period systemd asks for: `WATCHDOG_USEC`, unless
/// `WATCHDOG_PID` names another process. (The sd-notify crate also refuses
/// an unset `WATCHDOG_PID`; libsystemd's `sd_watchdog_enabled` accepts it.)
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Builds the dataplane for `opts` from an already validated cluster.
pub fn start(opts: &Options, mut cluster: Cluster, store: Store) -> anyhow::Result<Arc<State>> {
    // Announced addresses can only be published to etcd.
    let etcd = matches!(store, Store::Etcd(_));
    let attach = crate::attach::Attach::open(&opts.state_dir, &opts.node, !etcd)?;
    for w in crate::attach::ipam::merge(&mut cluster, &opts.node, &attach.local_list()) {
        warn!(warning = %w, "container allocation left out");
    }
    if !etcd && cluster.networks.iter().any(|n| n.announce) {
        warn!("`announce = true` needs the etcd store; with the cluster file it does nothing");
    }
    let mut reconciler = Reconciler::new(opts.node.clone()).with_announce(etcd);
    let local = reconciler.local_address(&cluster)?;
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
fn file_cluster(opts: &Options) -> anyhow::Result<Cluster> {
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

/// The admin listener options checked (see [`api::listen::admin_token`]).
pub fn admin_token(opts: &Options) -> anyhow::Result<Option<Arc<str>>> {
    api::listen::admin_token(opts.admin_addr, opts.admin_token_file.as_deref())
        .map_err(anyhow::Error::msg)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Refuse bad admin options before joining anything.
    let token = admin_token(&opts)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (store_stop_tx, store_stop_rx) = watch::channel(false);
    let mut store_tasks = Vec::new();
    let state = match &opts.etcd {
        None => {
            let cluster = file_cluster(&opts)?;
            start(&opts, cluster, Store::File(opts.config.clone()))?
        }
        Some(eo) => {
            let (etcd, snap) = EtcdStore::start(eo.clone()).await?;
            let (cluster, quarantined) =
                doc::assemble_quarantined(&snap, etcd.node(), View::Effective, &etcd.describe())
                    .map_err(|errs| {
                        anyhow::anyhow!("the store's state is invalid:\n{}", errs.join("\n"))
                    })?;
            etcd.set_quarantined(quarantined);
            info!(store = %etcd.describe(), revision = snap.revision, "desired state read");
            let state = start(&opts, cluster, Store::Etcd(etcd.clone()))?;
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
                let r = st.assemble(e, &snap).and_then(|c| {
                    st.apply(c)
                        .map_err(|e| format!("applying revision {rev}: {e}"))
                });
                match &r {
                    Ok(changes) => {
                        // A member of an attachable network gets its own
                        // address there (off the watch's path: it writes).
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
            store_tasks.push(tokio::spawn(
                etcd.clone().run_watch(applier, store_stop_rx.clone()),
            ));
            store_tasks.push(tokio::spawn(crate::store::announce::run(
                Arc::downgrade(&state),
                etcd.clone(),
                store_stop_rx.clone(),
            )));
            store_tasks.push(tokio::spawn(etcd.run_lease(store_stop_rx.clone())));
            let weak = Arc::downgrade(&state);
            tokio::spawn(async move {
                if let Some(st) = weak.upgrade() {
                    crate::attach::ensure_own_addresses(&st).await;
                }
            });
            state
        }
    };
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix = api::listen::bind_unix(&opts.socket)
        .with_context(|| format!("binding the admin socket {}", opts.socket.display()))?;
    let mut servers = vec![tokio::spawn(api::server::serve_unix(
        unix,
        state.clone(),
        stopped(stop_rx.clone()),
    ))];
    if let Some(addr) = opts.admin_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin address {addr}"))?;
        let addr = l.local_addr().context("the admin address")?;
        info!(%addr, writes = token.is_some(), "admin API on TCP (writes only with the token)");
        let access = api::listen::TcpAccess {
            addr,
            token,
            socket: opts.socket.clone(),
        };
        servers.push(tokio::spawn(api::server::serve_tcp(
            l,
            state.clone(),
            access,
            stopped(stop_rx.clone()),
        )));
    }
    if let Some(name) = &opts.docker_plugin {
        let plugin = crate::attach::docker::Plugin::new(name, &state, opts.docker_host.clone())?;
        let server =
            crate::attach::docker::serve(plugin, &opts.docker_plugin_dir, stopped(stop_rx.clone()))
                .await
                .with_context(|| {
                    format!(
                        "binding the docker plugin socket in {}",
                        opts.docker_plugin_dir.display()
                    )
                })?;
        servers.push(tokio::spawn(async move {
            let _ = server.await;
            Ok(())
        }));
    }
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let line = summary(&state);
    info!(status = %line, "ready");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&line),
    ]);
    let wd_period = watchdog_period();
    let watchdog = wd_period.is_some();
    let wd_period = wd_period.unwrap_or(Duration::from_secs(10));
    // Ping at half the period, like sd_watchdog_enabled(3) advises; a worker
    // idle for longer than the whole period counts as stuck.
    let mut wd_tick = tokio::time::interval((wd_period / 2).max(Duration::from_millis(50)));
    let stuck_after = wd_period.max(Duration::from_millis(500));
    let mut fast = false;
    let mut limits = crate::limits::LimitWatch::default();
    let mut limits_tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = limits_tick.tick() => limits.check(&state),
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                match state.reload() {
                    Ok(changes) => {
                        let t = state.times.last();
                        info!(
                            ?changes,
                            validate_ms = (t.validate_s * 1000.0) as u64,
                            apply_ms = (t.apply_s * 1000.0) as u64,
                            endpoints = t.endpoints,
                            "reload applied"
                        )
                    }
                    Err(e) => error!(error = %e, "reload rejected; the running config stays in place"),
                }
                let line = summary(&state);
                notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&line)]);
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { info!("SIGINT: fast stop"); fast = true; break; }
            _ = wd_tick.tick(), if watchdog => {
                let healthy = state.inner.lock().expect("state lock poisoned").dataplane.healthy(stuck_after);
                if healthy {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    warn!("a dataplane worker is stuck; withholding the watchdog ping");
                }
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    // Leave the cluster first, so the others stop sending here.
    let _ = store_stop_tx.send(true);
    for t in store_tasks {
        let _ = t.await;
    }
    if let Store::Etcd(e) = &state.store {
        e.leave().await;
    }
    // Drain the mesh: no new connections, open ones get up to the longest
    // drain time of any service, then are cut.
    let mut mesh = {
        let mut inner = state.inner.lock().expect("state lock poisoned");
        std::mem::replace(
            &mut inner.mesh,
            Mesh::new(tokio::runtime::Handle::current()),
        )
    };
    let deadline = Instant::now()
        + if fast {
            Duration::ZERO
        } else {
            mesh.max_drain()
        };
    let cut = mesh.drain(deadline).await;
    info!(cut, "mesh drained");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&opts.socket);
    // Stop the workers; the TAPs close with them.
    let mut inner = state.inner.lock().expect("state lock poisoned");
    inner.reconciler.clear();
    inner.dataplane.stop();
    info!("stopped");
    Ok(())
}
