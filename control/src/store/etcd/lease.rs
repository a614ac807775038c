//! This node's registration: a compare-and-swap that refuses a second
//! daemon with the same node name, the keep-alive that holds it, and the
//! revoke on a clean stop.
//!
//! Who may take a registration that is already there: only the daemon
//! that made it, recognised by the instance id kept in its state directory
//! (`<state-dir>/<node>.etcd-instance`, made once, mode 0600). That covers
//! the restart after a crash (the old lease still runs for up to its TTL):
//! the new run puts its document under a new lease at the revision it saw
//! and revokes the old lease. Anyone else, a second host configured with
//! the same `--node` for instance, is refused at start with the holder's
//! address and lease. A daemon whose state directory was lost waits for the
//! old lease to run out (at most the TTL; the error says how long).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::EtcdStore;
use crate::store::doc::{self, Doc};
use crate::store::StoreError;

/// Rounds of compare-and-swap when the key changes under a registration.
const REGISTER_TRIES: usize = 3;

/// The file that keeps this host's instance id for `node`.
pub fn instance_path(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(format!("{node}.etcd-instance"))
}

/// This daemon's instance id for `node`: read from the state directory, or
/// made (16 random bytes, hex) and kept there on first use.
pub fn instance_id(state_dir: &Path, node: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = instance_path(state_dir, node);
    let valid = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => {
            return Err(format!(
                "{}: not an instance id (32 hex digits); remove it to make a new one",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|e| format!("creating the state directory {}: {e}", state_dir.display()))?;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(format!("{id}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(id)
}

impl EtcdStore {
    /// Grants a lease and puts this node's document under it, if the key
    /// is free or holds this daemon's own earlier registration; a node
    /// registered by another daemon is [`StoreError::Duplicate`].
    pub(super) async fn register(&self, c: &mut Client) -> Result<i64, StoreError> {
        // A predecessor's lease, still alive, is kept: the node's documents
        // stay under it and no other node sees this one leave.
        let adopted = match self.opts.adopt_lease {
            Some(l) if self.lease.load(Ordering::Relaxed) == 0 => c
                .lease_time_to_live(l, None)
                .await
                .ok()
                .filter(|t| t.ttl() > 0)
                .map(|_| l),
            _ => None,
        };
        let lease = match adopted {
            Some(l) => {
                info!(lease = format!("{l:x}"), "keeping the predecessor's lease");
                l
            }
            None => c.lease_grant(self.opts.lease_ttl, None).await?.id(),
        };
        match self.register_under(c, lease).await {
            Ok(()) => {
                self.lease.store(lease, Ordering::Relaxed);
                info!(node = %self.opts.node.name, lease = format!("{lease:x}"), ttl_s = self.opts.lease_ttl, "registered under a lease");
                Ok(lease)
            }
            Err(e) => {
                // A lease of our own holds nothing: give it back now.
                if adopted.is_none() {
                    let _ = c.lease_revoke(lease).await;
                }
                Err(e)
            }
        }
    }

    async fn register_under(&self, c: &mut Client, lease: i64) -> Result<(), StoreError> {
        let name = &self.opts.node.name;
        let key = self.key(&doc::node_key(name));
        let doc = Doc {
            lease: Some(lease),
            ttl_s: Some(self.opts.lease_ttl),
            instance: Some(self.instance.clone()),
            ..Doc::new(match self.opts.node.public_key {
                // Peers make sessions of encrypted networks with this key.
                Some(k) => serde_json::json!({
                    "name": name,
                    "address": self.opts.node.address.to_string(),
                    "public_key": k.to_string(),
                }),
                None => serde_json::json!({
                    "name": name,
                    "address": self.opts.node.address.to_string(),
                }),
            })
        };
        let put = || {
            TxnOp::put(
                key.clone(),
                doc.to_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        for _ in 0..REGISTER_TRIES {
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([put()])
                        .or_else([TxnOp::get(key.clone(), None)]),
                )
                .await?;
            if r.succeeded() {
                return Ok(());
            }
            let held = r.op_responses().into_iter().find_map(|o| match o {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            // Gone between the compare and the read: try again.
            let Some(kv) = held else { continue };
            let holder: Option<Doc> = serde_json::from_slice(kv.value()).ok();
            let ours = holder
                .as_ref()
                .and_then(|d| d.instance.as_deref())
                .is_some_and(|i| i == self.instance);
            if !ours {
                let left = match c.lease_time_to_live(kv.lease(), None).await {
                    Ok(t) if t.ttl() > 0 => format!("{} s", t.ttl()),
                    _ => "moments".to_string(),
                };
                let address = holder
                    .as_ref()
                    .and_then(|d| d.spec.get("address"))
                    .and_then(|a| a.as_str())
                    .unwrap_or("?");
                return Err(StoreError::Duplicate(format!(
                    "node `{name}` is already registered in {} by another vxmeshd (address {address}, lease {:x}, instance {}): two daemons cannot share a node name. Give this one another --node, or stop the other. If the other was this host before its state directory ({}) was lost, its registration runs out in {left} unless it is kept alive; start again after that",
                    self.describe(),
                    kv.lease(),
                    holder.as_ref().and_then(|d| d.instance.as_deref()).unwrap_or("none"),
                    instance_path(&self.opts.state_dir, name).display(),
                )));
            }
            // Our own earlier run (a crash, or a keep-alive that lost track):
            // take the key at the revision seen, then end the old lease.
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([put()]),
                )
                .await?;
            if !r.succeeded() {
                continue;
            }
            let old = kv.lease();
            if old != 0 && old != lease {
                let _ = c.lease_revoke(old).await;
            }
            info!(node = %name, old_lease = format!("{old:x}"), "took back this daemon's earlier registration (same instance id)");
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "node `{name}`'s registration kept changing while registering; retrying"
        )))
    }

    /// Keeps this node's lease alive until `stop`; registers again under a
    /// new lease when the old one is gone (etcd was away longer than the TTL).
    pub async fn run_lease(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failing = false;
        loop {
            let r = tokio::select! {
                r = self.keep_lease(&mut failing) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match r {
                // One line per outage, not one per retry.
                Err(e @ StoreError::Duplicate(_)) if !failing => {
                    error!(error = %e, "cannot register again: this node stays out of the others' tables; retrying every 250 ms");
                    failing = true;
                    self.status_mut(|s| s.last_error = Some(format!("lease: {e}")));
                }
                Err(e) if !failing => {
                    warn!(error = %e, "lease keep-alive failed; retrying every 250 ms");
                    failing = true;
                    self.status_mut(|s| s.last_error = Some(format!("lease: {e}")));
                }
                Err(_) => {}
                Ok(()) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn keep_lease(&self, failing: &mut bool) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let mut id = self.lease.load(Ordering::Relaxed);
        if id == 0 {
            id = self.register(&mut c).await?;
        }
        let (mut keeper, mut responses) = match c.lease_keep_alive(id).await {
            Ok(k) => k,
            Err(etcd_client::Error::LeaseKeepAliveError(e)) => {
                warn!(lease = format!("{id:x}"), error = %e, "lease is gone; registering again");
                self.lease.store(0, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if std::mem::take(failing) {
            info!(lease = format!("{id:x}"), "lease kept alive again");
        }
        let period = Duration::from_millis((self.opts.lease_ttl.max(1) as u64 * 1000) / 3);
        loop {
            tokio::time::sleep(period).await;
            keeper.keep_alive().await?;
            let resp =
                tokio::time::timeout(period.max(Duration::from_secs(1)), responses.message())
                    .await
                    .map_err(|_| StoreError::Unavailable("lease keep-alive unanswered".into()))??
                    .ok_or_else(|| StoreError::Unavailable("etcd closed the keep-alive".into()))?;
            if resp.ttl() <= 0 {
                warn!(
                    lease = format!("{id:x}"),
                    "lease expired; registering again"
                );
                self.lease.store(0, Ordering::Relaxed);
                return Ok(());
            }
        }
    }

    /// This node's lease now (0 while it has none).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Revokes this node's lease (a clean stop): the others drop it now.
    pub async fn leave(&self) {
        let id = self.lease.swap(0, Ordering::Relaxed);
        if id == 0 {
            return;
        }
        let r = tokio::time::timeout(Duration::from_secs(1), async {
            self.client().await?.lease_revoke(id).await?;
            Ok::<_, StoreError>(())
        })
        .await;
        match r {
            Ok(Ok(())) => info!(lease = format!("{id:x}"), "lease revoked"),
            Ok(Err(e)) => warn!(error = %e, "revoking the lease failed; it expires on its own"),
            Err(_) => warn!("revoking the lease timed out; it expires on its own"),
        }
    }
}
