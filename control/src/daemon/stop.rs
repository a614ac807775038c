//! The daemon's own sockets (admin, handover), the successor it starts on
//! SIGUSR2, and the way out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};
use vxmesh_dataplane::mesh::runtime::Mesh;

use super::Options;
use crate::api;
use crate::handover;
use crate::state::State;
use crate::store::Store;

/// How the main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
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

/// The admin socket: a predecessor's (still at the path), or bound.
pub(super) fn admin_socket(opts: &Options) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(fd) = vxmesh_dataplane::io::inherit::take("admin") {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        return Ok(tokio::net::UnixListener::from_std(l)?);
    }
    api::listen::bind_unix(&opts.socket)
        .with_context(|| format!("binding the admin socket {}", opts.socket.display()))
}

/// The handover socket: a predecessor's, or bound next to the admin socket.
pub(super) fn handover_socket(opts: &Options) -> anyhow::Result<std::os::fd::OwnedFd> {
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
pub(super) fn spawn_successor(exe: &std::path::Path) -> anyhow::Result<u32> {
    let args = successor_args(std::env::args_os().skip(1));
    let child = std::process::Command::new(exe)
        .args(&args)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(child.id())
}

/// This daemon's arguments with `--takeover` (once).
pub(super) fn successor_args(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.collect();
    if !args.iter().any(|a| a == "--takeover") {
        args.push("--takeover".into());
    }
    args
}

/// The way out, by how the loop ended. The node's devices stay in every
/// case (`vxmeshd --cleanup` removes them).
pub(super) async fn stop(
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
