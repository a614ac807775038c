//! The node's container attachments as state: where the state files live,
//! the allocations kept there (cluster file store) and the signal that a
//! desired state was applied. The attach operations (`crate::attach`) work
//! on it; the node state owns it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::ipam::{Attachment, LocalAllocations};

/// The daemon's attachment state.
pub struct Attach {
    /// Where the state files live (`--state-dir`).
    pub state_dir: PathBuf,
    /// Allocations of this node (cluster file store only).
    pub(crate) local: Mutex<Option<LocalAllocations>>,
    /// Bumped after every applied desired state.
    pub(crate) applied: watch::Sender<u64>,
    /// Serialises allocations on this node (a race with another node is
    /// settled by the store; two of our own would only cost retries).
    pub(crate) alloc: tokio::sync::Mutex<()>,
}

impl Attach {
    /// Opens the state of `state_dir`; with the file store it reads the
    /// allocations kept there (a state file that cannot be read stops the
    /// start: handing out its addresses again would give them twice).
    pub fn open(state_dir: &Path, node: &str, file_store: bool) -> Result<Attach, String> {
        let local = if file_store {
            let p = state_dir.join(format!("{node}-allocations.json"));
            Some(LocalAllocations::open(&p).map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Attach {
            state_dir: state_dir.to_path_buf(),
            local: Mutex::new(local),
            applied: watch::channel(0).0,
            alloc: tokio::sync::Mutex::new(()),
        })
    }

    /// This node's allocations kept in the state file (file store).
    pub fn local_list(&self) -> Vec<Attachment> {
        self.local
            .lock()
            .expect("allocations lock")
            .as_ref()
            .map(|l| l.list().to_vec())
            .unwrap_or_default()
    }

    /// Called after each applied state.
    pub fn applied(&self) {
        self.applied.send_modify(|n| *n += 1);
    }
}
