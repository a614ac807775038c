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
use crate::handover;
use crate::model::Cluster;
use crate::reconcile::{dns_zones, mesh_desired, Reconciler};
pub use crate::state::{Inner, State};
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::{doc, Store, View};
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
    /// Take the node over from the daemon running on the same admin
    /// socket instead of starting afresh ([`crate::handover`]).
    pub takeover: bool,
    /// The handover version this daemon says it reads (normally
    /// [`handover::VERSION`]; another value makes a running daemon's offer
    /// unreadable, which tests use to prove the fallback).
    pub handover_version: u32,
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
            takeover: false,
            handover_version: handover::VERSION,
        }
    }
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
    let attach = crate::attach::Attach::open(&opts.state_dir, &opts.node, !etcd)
        .map_err(anyhow::Error::msg)?;
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

/// How the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// SIGTERM: drain the mesh, then stop (devices stay).
    Stop,
    /// SIGINT: stop without draining.
    Fast,
    /// A successor serves the node: stop the lanes at once, drain the
    /// relayed connections, leave the cluster registration to it.
    HandedOver,
    /// A successor could not read this version and starts afresh once
    /// this process is gone: stop as on SIGTERM, but stay registered.
    MakeWay,
}

/// Before anything binds: take a running daemon's node over (`--takeover`),
/// or, under systemd, the descriptors (and, after `systemctl restart`, the
/// saved state) its store kept.
fn inherit(opts: &Options) -> anyhow::Result<(Option<handover::Takeover>, handover::Saved)> {
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
async fn start_etcd(
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
        let r = st.assemble(e, &snap).and_then(|c| {
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
        tokio::spawn(crate::store::announce::run(
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

/// The admin socket: a predecessor's (still at the path), or bound.
fn admin_socket(opts: &Options) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(fd) = vxmesh_dataplane::io::inherit::take("admin") {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        return Ok(tokio::net::UnixListener::from_std(l)?);
    }
    api::listen::bind_unix(&opts.socket)
        .with_context(|| format!("binding the admin socket {}", opts.socket.display()))
}

/// The handover socket: a predecessor's, or bound next to the admin socket.
fn handover_socket(opts: &Options) -> anyhow::Result<std::os::fd::OwnedFd> {
    if let Some(fd) = vxmesh_dataplane::io::inherit::take("handover") {
        return Ok(fd);
    }
    let path = handover::path(&opts.socket);
    api::listen::bind_unix_with(&path, handover::wire::live, handover::wire::bind)
        .with_context(|| format!("binding the handover socket {}", path.display()))
}

/// Starts a new vxmeshd (this binary's path as it was at start, which after
/// an upgrade holds the new version) with this one's arguments and
/// `--takeover` (SIGUSR2).
fn spawn_successor(exe: &std::path::Path) -> anyhow::Result<u32> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !args.iter().any(|a| a == "--takeover") {
        args.push("--takeover".into());
    }
    let child = std::process::Command::new(exe)
        .args(&args)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(child.id())
}

/// Runs the daemon until SIGTERM or SIGINT, or until a successor took the
/// node over.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    // Refuse bad admin options before joining anything.
    let token = admin_token(&opts)?;
    let exe = std::env::current_exe().context("this binary's path")?;
    let (takeover, saved) = inherit(&opts)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (store_stop_tx, store_stop_rx) = watch::channel(false);
    let (state, store_tasks) = match &opts.etcd {
        None => {
            let cluster = file_cluster(&opts)?;
            let st = start(&opts, cluster, Store::File(opts.config.clone()))?;
            (st, Vec::new())
        }
        Some(eo) => start_etcd(&opts, eo.clone(), saved.etcd_lease, &store_stop_rx).await?,
    };
    handover::node::restore(&state, &saved);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut own = handover::node::OwnSockets::default();
    let unix = admin_socket(&opts)?;
    own.add("admin", std::os::fd::AsFd::as_fd(&unix))?;
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
        let (server, fd) =
            crate::attach::docker::serve(plugin, &opts.docker_plugin_dir, stopped(stop_rx.clone()))
                .await
                .with_context(|| {
                    format!(
                        "binding the docker plugin socket in {}",
                        opts.docker_plugin_dir.display()
                    )
                })?;
        own.fds
            .push((crate::attach::docker::inherit_name(name), fd));
        servers.push(tokio::spawn(async move {
            let _ = server.await;
            Ok(())
        }));
    }
    let hand = handover_socket(&opts)?;
    own.add("handover", std::os::fd::AsFd::as_fd(&hand))?;
    let own = Arc::new(own);
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let hand_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hand_thread = {
        let (st, own) = (Arc::downgrade(&state), own.clone());
        handover::serve(
            hand,
            opts.node.clone(),
            move || {
                let st = st
                    .upgrade()
                    .ok_or_else(|| std::io::Error::other("stopping"))?;
                handover::node::collect(&st, &own)
            },
            ev_tx,
            hand_stop.clone(),
        )?
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let line = summary(&state);
    info!(status = %line, "ready");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&line),
    ]);
    if let Some(t) = takeover {
        let pid = t.predecessor;
        t.done().context("telling the predecessor it may go")?;
        info!(predecessor = pid, "took the node over");
    }
    let left = vxmesh_dataplane::io::inherit::close_leftovers();
    if !left.is_empty() {
        info!(?left, "inherited descriptors nobody uses any more: closed");
    }
    let mut fdstore = handover::fdstore::enabled().then(|| {
        let s = handover::fdstore::Store::default();
        s.remove(&left);
        s
    });
    let mut devices = Vec::new();
    let mut keep = |state: &State, fdstore: &mut Option<handover::fdstore::Store>| {
        let now = state
            .inner
            .lock()
            .expect("state lock poisoned")
            .reconciler
            .devices();
        if now != devices {
            if devices.is_empty() {
                handover::node::remove_stale_devices(&opts.state_dir, &opts.node, &now);
            }
            if let Err(e) = handover::node::record_devices(&opts.state_dir, &opts.node, &now) {
                warn!(error = %e, "cannot record the node's devices");
            }
            devices = now;
        }
        if let Some(s) = fdstore {
            // Copies, so that the state lock is not held while systemd reads.
            let fds = handover::node::with_descriptors(state, &own, |fds| {
                fds.iter()
                    .filter_map(|(n, fd)| Some((n.clone(), fd.try_clone_to_owned().ok()?)))
                    .collect::<Vec<_>>()
            });
            s.sync(&fds);
        }
    };
    keep(&state, &mut fdstore);
    let wd_period = watchdog_period();
    let watchdog = wd_period.is_some();
    let wd_period = wd_period.unwrap_or(Duration::from_secs(10));
    // Ping at half the period, like sd_watchdog_enabled(3) advises; a worker
    // idle for longer than the whole period counts as stuck.
    let mut wd_tick = tokio::time::interval((wd_period / 2).max(Duration::from_millis(50)));
    let stuck_after = wd_period.max(Duration::from_millis(500));
    let mut limits = crate::limits::LimitWatch::default();
    let mut limits_tick = tokio::time::interval(Duration::from_secs(2));
    let exit = loop {
        tokio::select! {
            _ = limits_tick.tick() => {
                limits.check(&state);
                keep(&state, &mut fdstore);
            }
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
                keep(&state, &mut fdstore);
                let line = summary(&state);
                notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&line)]);
            }
            _ = usr2.recv() => match spawn_successor(&exe) {
                Ok(pid) => info!(successor = pid, "SIGUSR2: started a successor to take the node over"),
                Err(e) => error!(error = %e, "SIGUSR2: no successor started"),
            },
            Some(ev) = ev_rx.recv() => match ev {
                handover::Event::Taken { pid } => {
                    info!(successor = pid, "the successor serves the node; stopping");
                    // Under systemd the successor is the service now.
                    notify(&[sd_notify::NotifyState::MainPid(pid as u32)]);
                    break Exit::HandedOver;
                }
                handover::Event::Declined { pid, reason } => {
                    warn!(successor = pid, %reason, "the successor reads another version: stopping so it can start afresh");
                    break Exit::MakeWay;
                }
            },
            _ = term.recv() => { info!("SIGTERM: stopping"); break Exit::Stop; }
            _ = int.recv() => { info!("SIGINT: fast stop"); break Exit::Fast; }
            _ = wd_tick.tick(), if watchdog => {
                let healthy = state.inner.lock().expect("state lock poisoned").dataplane.healthy(stuck_after);
                if healthy {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    warn!("a dataplane worker is stuck; withholding the watchdog ping");
                }
            }
        }
    };
    if exit != Exit::HandedOver {
        notify(&[sd_notify::NotifyState::Stopping]);
    }
    hand_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = hand_thread.join();
    stop(
        &opts,
        &state,
        exit,
        store_stop_tx,
        store_tasks,
        stop_tx,
        servers,
    )
    .await;
    Ok(())
}

/// The way out, by how the loop ended. The node's devices stay in every
/// case (`vxmeshd --cleanup` removes them).
async fn stop(
    opts: &Options,
    state: &Arc<State>,
    exit: Exit,
    store_stop: watch::Sender<bool>,
    store_tasks: Vec<tokio::task::JoinHandle<()>>,
    servers_stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    if exit == Exit::HandedOver {
        // The successor runs its own lanes on the same queues and sockets.
        state
            .inner
            .lock()
            .expect("state lock poisoned")
            .dataplane
            .stop();
    }
    let _ = store_stop.send(true);
    for t in store_tasks {
        let _ = t.await;
    }
    // Under a descriptor store, SIGTERM may be `systemctl restart`: the
    // saved state goes into the store for the next process, and the
    // registration stays (a stop lets it run out within the lease TTL).
    let restartable = exit == Exit::Stop && handover::fdstore::enabled();
    if restartable {
        match handover::node::collect_state(state) {
            Ok(saved) => handover::fdstore::put_state(&saved),
            Err(e) => warn!(error = %e, "state not kept for a restart"),
        }
    }
    // Leave the cluster first, so the others stop sending here; a successor
    // keeps this node's registration (and its lease) instead.
    if let (Store::Etcd(e), Exit::Stop | Exit::Fast, false) = (&state.store, exit, restartable) {
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
    mesh.stop_accepting();
    let _ = servers_stop.send(true);
    let deadline = Instant::now()
        + if exit == Exit::Fast {
            Duration::ZERO
        } else {
            mesh.max_drain()
        };
    let cut = mesh.drain(deadline).await;
    info!(cut, "mesh drained");
    for s in servers {
        let _ = s.await;
    }
    if !handover::handed_over() {
        let _ = std::fs::remove_file(&opts.socket);
        let _ = std::fs::remove_file(handover::path(&opts.socket));
    }
    // Stop the workers; the TAPs stay (persistent) for the next start.
    state
        .inner
        .lock()
        .expect("state lock poisoned")
        .dataplane
        .stop();
    info!(?exit, "stopped");
}
