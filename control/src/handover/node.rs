//! What a node hands over and gets back: its descriptors and saved state
//! from a [`State`], the record of its devices in the state directory, and
//! `vxmeshd --cleanup`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vxmesh_dataplane::io::netdev;

use super::{Learned, Package, Saved};
use crate::state::State;
use crate::store::Store;

/// Sockets of the daemon itself that go with the node: the admin socket,
/// the Docker plugin socket and the handover socket.
#[derive(Default)]
pub struct OwnSockets {
    pub fds: Vec<(String, OwnedFd)>,
}

impl OwnSockets {
    pub fn add(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.fds.push((name.to_string(), fd.try_clone_to_owned()?));
        Ok(())
    }
}

/// Calls `f` with every descriptor of the node: TAP queues, underlay
/// sockets, listeners (published ports, VIPs, DNS) and `own`.
pub fn with_descriptors<T>(
    st: &State,
    own: &OwnSockets,
    f: impl FnOnce(&[(String, BorrowedFd<'_>)]) -> T,
) -> T {
    let inner = st.inner.lock().expect("state lock poisoned");
    let mut all = inner.reconciler.descriptors();
    all.extend(inner.dataplane.underlay().descriptors());
    all.extend(inner.mesh.descriptors());
    all.extend(own.fds.iter().map(|(n, fd)| (n.clone(), fd.as_fd())));
    f(&all)
}

/// What a successor gets: a copy of every descriptor and the saved state.
pub fn collect(st: &State, own: &OwnSockets) -> io::Result<Package> {
    let mut fds = with_descriptors(st, own, |all| {
        all.iter()
            .map(|(n, fd)| Ok((n.clone(), fd.try_clone_to_owned()?)))
            .collect::<io::Result<Vec<_>>>()
    })?;
    // UDP sessions go too (not into systemd's store: a crash loses them).
    fds.extend(
        st.inner
            .lock()
            .expect("state lock poisoned")
            .mesh
            .session_descriptors(),
    );
    Ok(Package {
        fds,
        saved: collect_state(st)?,
    })
}

/// The state worth keeping: learned entries with their age, the etcd lease.
pub fn collect_state(st: &State) -> io::Result<Saved> {
    let now = Instant::now();
    let learned = {
        let inner = st.inner.lock().expect("state lock poisoned");
        inner
            .reconciler
            .learned()
            .into_iter()
            .flat_map(|(net, fdb)| {
                fdb.entries(now)
                    .into_iter()
                    .map(move |(mac, vtep, age)| Learned {
                        network: net.clone(),
                        mac: mac.to_string(),
                        vtep,
                        age_ms: age.as_millis() as u64,
                    })
            })
            .collect()
    };
    let etcd_lease = match &st.store {
        Store::Etcd(e) => Some(e.lease_id()).filter(|l| *l != 0),
        Store::File(_) => None,
    };
    let unhealthy = st
        .inner
        .lock()
        .expect("state lock poisoned")
        .mesh
        .unhealthy();
    Ok(Saved {
        learned,
        etcd_lease,
        unhealthy,
    })
}

/// Puts a predecessor's learned entries back (for networks that still
/// learn), with their age.
pub fn restore(st: &State, saved: &Saved) {
    let inner = st.inner.lock().expect("state lock poisoned");
    let now = Instant::now();
    let fdbs = inner.reconciler.learned();
    let mut n = 0;
    for l in &saved.learned {
        let (Some((_, fdb)), Ok(mac)) = (
            fdbs.iter().find(|(name, _)| *name == l.network),
            l.mac.parse(),
        ) else {
            continue;
        };
        let seen = now
            .checked_sub(Duration::from_millis(l.age_ms))
            .unwrap_or(now);
        fdb.learn(mac, l.vtep, seen);
        n += 1;
    }
    if n > 0 {
        info!(entries = n, "learned forwarding entries taken over");
    }
    let down = inner.mesh.resume_unhealthy(&saved.unhealthy);
    if down > 0 {
        info!(tasks = down, "tasks down at the predecessor start down");
    }
}

/// The file that lists the node's devices (`<state-dir>/<node>.devices`).
pub fn devices_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(format!("{node}.devices"))
}

/// The devices an earlier run recorded.
pub fn recorded_devices(state_dir: &Path, node: &str) -> Vec<String> {
    std::fs::read_to_string(devices_path(state_dir, node))
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && netdev::valid_name(l))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Records `devices` (written whole, then renamed into place).
pub fn record_devices(state_dir: &Path, node: &str, devices: &[String]) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = devices_path(state_dir, node);
    let tmp = path.with_extension("devices.tmp");
    let mut text = devices.join("\n");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Removes devices an earlier run left that the node no longer has (its
/// network went away while the daemon was down).
pub fn remove_stale_devices(state_dir: &Path, node: &str, now: &[String]) {
    for d in recorded_devices(state_dir, node) {
        if !now.contains(&d) {
            match netdev::delete(&d) {
                Ok(()) => info!(device = %d, "removed a device of a network this node left"),
                Err(e) => warn!(device = %d, error = %e, "device not removed"),
            }
        }
    }
}

/// `vxmeshd --cleanup`: takes the node off the network for good, with no
/// daemon running: every device it recorded, and its nftables tables.
pub fn cleanup(state_dir: &Path, node: &str, socket: &Path) -> Result<Vec<String>, String> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "a vxmeshd answers on {}: stop it first",
            socket.display()
        ));
    }
    let mut removed = Vec::new();
    for d in recorded_devices(state_dir, node) {
        if netdev::exists(&d) {
            netdev::delete(&d).map_err(|e| format!("removing {d}: {e}"))?;
            removed.push(d);
        }
    }
    crate::firewall::Firewall::new(node).remove();
    let _ = std::fs::remove_file(devices_path(state_dir, node));
    Ok(removed)
}
