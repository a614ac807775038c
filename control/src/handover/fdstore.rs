//! systemd's file-descriptor store (`sd_pid_notify_with_fds(3)`,
//! `FDSTORE=1`): the daemon keeps its TAP queues, underlay sockets and
//! listeners there under the same names a handover uses, so that when it
//! crashes and `Restart=on-failure` starts it again, it gets them back
//! (`LISTEN_FDS`/`LISTEN_FDNAMES`) and resumes on the very same devices and
//! sockets: the kernel queued what arrived meanwhile.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use sd_notify::NotifyState;
use tracing::{info, warn};

/// True when the service manager keeps descriptors for this service:
/// `$NOTIFY_SOCKET` is set and `$FDSTORE` (systemd 254 and later set it
/// from `FileDescriptorStoreMax=`; the unit sets it for older ones) is
/// above 0.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|n| n > 0)
}

/// Takes what the service manager passed into the inherit pool; returns
/// how many.
pub fn receive() -> usize {
    match super::wire::listen_fds() {
        Ok(fds) => {
            let n = fds.len();
            if n > 0 {
                info!(
                    descriptors = n,
                    "descriptors from the service manager's store"
                );
            }
            vxmesh_dataplane::io::inherit::offer(fds);
            n
        }
        Err(e) => {
            warn!(error = %e, "LISTEN_FDS unreadable; starting afresh");
            0
        }
    }
}

/// The name of the saved state in the store.
const STATE: &str = "state";

/// Puts `saved` in the store as a sealed memfd named `state`, for the
/// process systemd starts next (`systemctl restart`).
pub fn put_state(saved: &super::Saved) {
    let put = || -> std::io::Result<()> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let text = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
        let fd = memfd_create("vxmesh-state", MFdFlags::MFD_CLOEXEC)?;
        let mut f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut f, &text)?;
        let _ = sd_notify::notify(
            false,
            &[NotifyState::FdStoreRemove, NotifyState::FdName(STATE)],
        );
        sd_notify::notify_with_fds(
            false,
            &[NotifyState::FdStore, NotifyState::FdName(STATE)],
            &[f.as_fd()],
        )
    };
    match put() {
        Ok(()) => info!(
            learned = saved.learned.len(),
            "state kept in the descriptor store for a restart"
        ),
        Err(e) => warn!(error = %e, "state not kept in the descriptor store"),
    }
}

/// The saved state a predecessor left in the store, read and taken out.
pub fn take_state() -> Option<super::Saved> {
    let fd = vxmesh_dataplane::io::inherit::take(STATE)?;
    let _ = sd_notify::notify(
        false,
        &[NotifyState::FdStoreRemove, NotifyState::FdName(STATE)],
    );
    let mut f = std::fs::File::from(fd);
    let mut text = Vec::new();
    use std::io::{Read, Seek};
    let read = f
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| (&mut f).take(64 << 20).read_to_end(&mut text));
    match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&text).map_err(|e| e.to_string()))
    {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "the saved state in the descriptor store does not read; starting without it");
            None
        }
    }
}

/// What this daemon has put in the store, to keep it in step: each name
/// with the identity (device, inode) of the descriptor sent under it.
#[derive(Default)]
pub struct Store {
    sent: BTreeMap<String, (u64, u64)>,
}

/// What changes in the store ([`Store::plan`]).
pub struct Plan {
    stale: Vec<String>,
    new: Vec<(String, (u64, u64), OwnedFd)>,
}

/// The identity of the file a descriptor refers to.
fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd).ok().map(|s| (s.st_dev, s.st_ino))
}

impl Store {
    /// What `fds` changes in the store: names that are gone or now stand
    /// for another socket, and copies of only the descriptors that are new
    /// (so the periodic check costs an fstat per descriptor, no copy, when
    /// nothing changed). Cheap enough to call under the state lock.
    pub fn plan(&self, fds: &[(String, BorrowedFd<'_>)]) -> Plan {
        let now: BTreeMap<&str, ((u64, u64), BorrowedFd<'_>)> = fds
            .iter()
            .filter(|(n, _)| super::valid_name(n))
            .filter_map(|(n, fd)| identity(*fd).map(|id| (n.as_str(), (id, *fd))))
            .collect();
        let stale = self
            .sent
            .iter()
            .filter(|(n, id)| now.get(n.as_str()).is_none_or(|(now_id, _)| now_id != *id))
            .map(|(n, _)| n.clone())
            .collect();
        let new = now
            .into_iter()
            .filter(|(n, (id, _))| self.sent.get(*n) != Some(id))
            .filter_map(|(n, (id, fd))| Some((n.to_string(), id, fd.try_clone_to_owned().ok()?)))
            .collect();
        Plan { stale, new }
    }

    /// Sends a [`Store::plan`] (one message per name: FDNAME names every
    /// descriptor of its message). Called without the state lock: a send
    /// may wait for the service manager to read.
    pub fn apply(&mut self, plan: Plan) {
        for n in &plan.stale {
            if let Err(e) =
                sd_notify::notify(false, &[NotifyState::FdStoreRemove, NotifyState::FdName(n)])
            {
                warn!(name = %n, error = %e, "FDSTOREREMOVE failed");
            }
            self.sent.remove(n);
        }
        for (name, id, fd) in plan.new {
            match sd_notify::notify_with_fds(
                false,
                &[NotifyState::FdStore, NotifyState::FdName(&name)],
                &[fd.as_fd()],
            ) {
                Ok(()) => {
                    self.sent.insert(name, id);
                }
                Err(e) => warn!(%name, error = %e, "FDSTORE failed"),
            }
        }
    }

    /// Takes `names` (inherited, never taken) out of the store.
    pub fn remove(&self, names: &[String]) {
        for n in names.iter().filter(|n| super::valid_name(n)) {
            let _ = sd_notify::notify(false, &[NotifyState::FdStoreRemove, NotifyState::FdName(n)]);
        }
    }
}
