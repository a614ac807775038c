//! The daemon: start-up, systemd notification and watchdog, SIGHUP reload,
//! SIGTERM drain and stop, SIGINT fast stop.
//!
//! Start-up order: read and validate the config (a bad file stops here with
//! file:line:reason), bind the underlay socket, create every TAP, start the
//! workers, bind the admin socket, and only then send `READY=1`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

mod start;
mod stop;

pub use start::start;
use start::{file_cluster, inherit, start_etcd};
use stop::{admin_socket, handover_socket, spawn_successor, stop, Exit};

use crate::api;
use crate::handover;
pub use crate::state::{Inner, State};
use crate::store::etcd::EtcdOptions;
use crate::store::Store;

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
    /// This node's static key, for encrypted networks (see
    /// [`Options::find_node_key`]).
    pub node_key: Option<std::sync::Arc<vxmesh_dataplane::crypto::NodeKey>>,
}

impl Options {
    /// Name of the key file in systemd's credentials directory
    /// (`LoadCredential=vxmesh-node.key:/etc/vxmesh/node.key`) and in the
    /// state directory.
    pub const NODE_KEY_FILE: &'static str = "vxmesh-node.key";

    /// The node key: `explicit` if given (an error if it cannot be read),
    /// else the credential systemd passed (`$CREDENTIALS_DIRECTORY`), else
    /// `<state_dir>/vxmesh-node.key` if it exists, else none (encrypted
    /// networks then carry nothing to or from this node).
    pub fn find_node_key(
        explicit: Option<&std::path::Path>,
        state_dir: &std::path::Path,
    ) -> Result<Option<vxmesh_dataplane::crypto::NodeKey>, vxmesh_dataplane::crypto::KeyError> {
        use vxmesh_dataplane::crypto::NodeKey;
        if let Some(p) = explicit {
            return NodeKey::load(p).map(Some);
        }
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join(Self::NODE_KEY_FILE));
        let found = creds
            .into_iter()
            .chain([state_dir.join(Self::NODE_KEY_FILE)])
            .find(|p| p.exists());
        found.map(|p| NodeKey::load(&p)).transpose()
    }
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
            node_key: None,
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
    let s = crate::status::build_status(st);
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
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_period`] from the variables' values and this process's pid.
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if let Some(pid) = pid {
        if pid.parse::<u32>().ok()? != me {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The admin listener options checked (see [`api::listen::admin_token`]).
pub fn admin_token(opts: &Options) -> anyhow::Result<Option<Arc<str>>> {
    api::listen::admin_token(opts.admin_addr, opts.admin_token_file.as_deref())
        .map_err(anyhow::Error::msg)
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
            let plan = handover::node::with_descriptors(state, &own, |fds| s.plan(fds));
            s.apply(plan);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_only_when_systemd_says_so() {
        let d = |u, p| watchdog_from(u, p, 42);
        assert_eq!(d(Some("400000"), None), Some(Duration::from_millis(400)));
        assert_eq!(
            d(Some("400000"), Some("42")),
            Some(Duration::from_millis(400))
        );
        assert_eq!(
            d(Some("400000"), Some("7")),
            None,
            "another process's watchdog"
        );
        assert_eq!(d(Some("0"), None), None);
        assert_eq!(d(Some("soon"), None), None);
        assert_eq!(d(None, Some("42")), None);
        assert_eq!(d(Some("400000"), Some("x")), None);
    }

    #[test]
    fn a_successor_gets_the_same_arguments_and_takeover_once() {
        let args = |v: &[&str]| stop::successor_args(v.iter().map(std::ffi::OsString::from));
        assert_eq!(
            args(&["--node", "h1", "--socket", "/run/x.sock"]),
            ["--node", "h1", "--socket", "/run/x.sock", "--takeover"]
        );
        assert_eq!(
            args(&["--takeover", "--node", "h1"]),
            ["--takeover", "--node", "h1"]
        );
    }

    #[test]
    fn without_takeover_or_a_store_nothing_is_inherited() {
        let dir = std::env::temp_dir().join(format!("vxmesh-inherit-{}", std::process::id()));
        let opts = Options::file(
            dir.join("c.toml"),
            "h1",
            dir.join("h1.sock"),
            dir.join("state"),
        );
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            let (t, saved) = inherit(&opts).unwrap();
            assert!(t.is_none());
            assert_eq!(saved, handover::Saved::default());
        }
    }
}
