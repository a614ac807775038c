//! The etcd backend: membership under a lease, a watch that drives
//! reconcile, and the writes the admin API asks for.
//!
//! Call protocol: [`EtcdStore::start`] connects, registers this node under a
//! fresh lease and reads the whole prefix (bounded retries); the daemon
//! builds its dataplane from that snapshot, then runs [`EtcdStore::run_watch`]
//! (events -> snapshot -> the daemon's applier, coalesced over
//! [`COALESCE`]) and [`EtcdStore::run_lease`] (keep-alive at a third of the
//! TTL, a new lease if the old one expired) until stopped, and
//! [`EtcdStore::leave`] revokes the lease on a clean stop so the others
//! drop this node at once.
//!
//! Fail static: when etcd cannot be reached the watch ends with an error,
//! the status says `connected: false` and nothing is applied; the dataplane
//! keeps the last state. On return the watch resumes from the revision after
//! the last one applied, so no event is lost or seen twice; if that revision
//! was compacted away, the whole prefix is read again.

mod connect;
pub mod lease;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use super::doc::{self, Doc, Snapshot};
use super::{StoreError, StoreStatus};
use crate::model::Node;

/// Events arriving within this time of the first are applied together.
pub const COALESCE: Duration = Duration::from_millis(20);
/// How long start-up waits for etcd before giving up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys per request when reading the whole prefix (a page stays far below
/// gRPC's 4 MiB message limit).
pub const LOAD_PAGE: i64 = 5000;
/// Largest watch message taken. A watcher that falls behind (while a large
/// state applies) gets up to 1,000 revisions in one message: 1,000
/// transactions of 128 puts are about 30 MB.
pub const WATCH_MESSAGE_MAX: usize = 256 << 20;

/// How to reach etcd and who this node is.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://198.18.0.250:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix without a trailing slash, e.g. `/vxmesh`.
    pub prefix: String,
    /// Lease TTL in seconds: a dead node vanishes this long after its last
    /// keep-alive.
    pub lease_ttl: i64,
    /// PEM CA bundle to verify etcd's certificate (https endpoints).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A file holding `user:password` for etcd's authentication.
    pub credentials: Option<PathBuf>,
    /// Send credentials over plain http (refused otherwise).
    pub allow_insecure_auth: bool,
    /// The daemon's state directory: it keeps the instance id that lets a
    /// restarted daemon take back its own registration ([`lease`]).
    pub state_dir: PathBuf,
    /// This node: its name and data-path address.
    pub node: Node,
    /// The lease a predecessor registered this node under (a handover):
    /// kept alive instead of a new one while it has not run out.
    pub adopt_lease: Option<i64>,
}

/// Applies a new snapshot to the dataplane; returns an error to report.
pub type Applier = Arc<dyn Fn(Snapshot) -> Result<(), String> + Send + Sync>;

pub struct EtcdStore {
    opts: EtcdOptions,
    connect: ConnectOptions,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The last snapshot the watch brought (what the dataplane runs, or
    /// tried to).
    snapshot: Mutex<Snapshot>,
    status: Mutex<StoreStatus>,
    changed_at: Mutex<Instant>,
    lease: AtomicI64,
    /// This daemon's instance id (see [`lease`]).
    instance: String,
    /// Documents set aside by the last assembly: key, reason.
    quarantined: Mutex<BTreeMap<String, String>>,
}

/// Checks `o` as [`EtcdStore::start`] would before connecting (TLS and
/// credential rules, files readable), without connecting.
pub fn check_options(o: &EtcdOptions) -> Result<(), StoreError> {
    connect::connect_options(o).map(|_| ())
}

async fn next_message(stream: &mut WatchStream) -> Result<WatchResponse, StoreError> {
    stream
        .message()
        .await?
        .ok_or_else(|| StoreError::Unavailable("etcd closed the watch".into()))
}

impl EtcdStore {
    fn new(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let connect = connect::connect_options(&opts)?;
        let instance =
            lease::instance_id(&opts.state_dir, &opts.node.name).map_err(StoreError::Invalid)?;
        let status = StoreStatus {
            backend: "etcd".into(),
            target: format!("{} {}", opts.endpoints.join(","), opts.prefix),
            lease_ttl_s: Some(opts.lease_ttl),
            ..StoreStatus::default()
        };
        Ok(EtcdStore {
            opts,
            connect,
            client: tokio::sync::Mutex::new(None),
            snapshot: Mutex::new(Snapshot::default()),
            status: Mutex::new(status),
            changed_at: Mutex::new(Instant::now()),
            lease: AtomicI64::new(0),
            instance,
            quarantined: Mutex::new(BTreeMap::new()),
        })
    }

    /// Connects, registers this node and reads the prefix, retrying until
    /// [`START_TIMEOUT`].
    pub async fn start(opts: EtcdOptions) -> Result<(Arc<EtcdStore>, Snapshot), StoreError> {
        let store = Arc::new(EtcdStore::new(opts)?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let attempt = async {
                let mut c = store.client().await?;
                store.register(&mut c).await?;
                store.load(&mut c).await
            };
            match attempt.await {
                Ok(snap) => {
                    *store.snapshot.lock().expect("snapshot lock") = snap.clone();
                    store.status_mut(|s| s.revision = snap.revision);
                    store.set_connected(true, None);
                    return Ok((store, snap));
                }
                // A second daemon for this node, or credentials etcd
                // refuses: waiting changes nothing.
                Err(e @ StoreError::Duplicate(_)) => return Err(e),
                Err(e) if connect::is_refusal(&e) => {
                    return Err(StoreError::Refused(format!(
                        "etcd at {} refused this daemon: {e} (check --etcd-credentials, the client certificate's user and its permissions on {})",
                        store.opts.endpoints.join(","),
                        store.opts.prefix
                    )))
                }
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, store = %store.describe(), "etcd not reachable yet; retrying");
                    store.reset_client().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {} not reachable within {START_TIMEOUT:?}: {e}",
                        store.opts.endpoints.join(",")
                    )))
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        format!("etcd:{}{}", self.opts.endpoints.join(","), self.opts.prefix)
    }

    /// The node this daemon runs as.
    pub fn node(&self) -> &Node {
        &self.opts.node
    }

    pub fn status(&self) -> StoreStatus {
        let mut s = self.status.lock().expect("status lock").clone();
        s.since_s = self
            .changed_at
            .lock()
            .expect("lock")
            .elapsed()
            .as_secs_f64();
        let lease = self.lease.load(Ordering::Relaxed);
        s.lease = (lease != 0).then(|| format!("{lease:x}"));
        s.quarantined = self
            .quarantined
            .lock()
            .expect("quarantine lock")
            .iter()
            .map(|(k, r)| format!("{k}: {r}"))
            .collect();
        s
    }

    /// Records the documents the last assembly set aside (key, reason):
    /// one log line for each newly set aside, one for each back in use.
    pub fn set_quarantined(&self, now: Vec<(String, String)>) {
        let now: BTreeMap<String, String> = now.into_iter().collect();
        let mut q = self.quarantined.lock().expect("quarantine lock");
        for (k, r) in &now {
            if q.get(k) != Some(r) {
                warn!(key = %format!("{}/{k}", self.opts.prefix), reason = %r,
                      "store document quarantined: left out, everything else applies");
            }
        }
        for k in q.keys() {
            if !now.contains_key(k) {
                info!(key = %format!("{}/{k}", self.opts.prefix), "store document no longer quarantined");
            }
        }
        *q = now;
    }

    /// The last snapshot seen.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().expect("snapshot lock").clone()
    }

    /// Owners of declared endpoints that have no live registration.
    pub fn down_nodes(&self) -> Vec<String> {
        let snap = self.snapshot.lock().expect("snapshot lock");
        let live = snap.live_nodes();
        let mut down: Vec<String> = snap
            .kind("endpoints")
            .filter_map(|(_, s)| s.get("node").and_then(Value::as_str))
            .filter(|n| !live.contains(*n) && *n != self.opts.node.name)
            .map(str::to_string)
            .collect();
        down.sort();
        down.dedup();
        down
    }

    fn status_mut(&self, f: impl FnOnce(&mut StoreStatus)) {
        f(&mut self.status.lock().expect("status lock"));
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        let mut s = self.status.lock().expect("status lock");
        if s.connected != up {
            *self.changed_at.lock().expect("lock") = Instant::now();
            if up {
                info!(store = %self.describe(), revision = s.revision, "etcd reachable: watching");
            } else {
                warn!(store = %self.describe(), error = ?error, revision = s.revision,
                      "etcd unreachable: forwarding on the last known state (fail static)");
            }
        }
        s.connected = up;
        if error.is_some() || up {
            s.last_error = error;
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}/{k}", self.opts.prefix)
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let client = Client::connect(&self.opts.endpoints, Some(self.connect.clone())).await?;
        *c = Some(client.clone());
        Ok(client)
    }

    async fn reset_client(&self) {
        *self.client.lock().await = None;
    }

    /// Reads the whole prefix, [`LOAD_PAGE`] keys per request, every page
    /// at the revision of the first (one consistent state).
    async fn load(&self, c: &mut Client) -> Result<Snapshot, StoreError> {
        let start = self.key("");
        // The end of the prefix range: `<prefix>/` with its `/` made `0`.
        let end = format!("{}0", self.opts.prefix);
        let mut from = start.into_bytes();
        let mut snap = Snapshot::default();
        loop {
            let mut o = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LOAD_PAGE);
            if snap.revision > 0 {
                o = o.with_revision(snap.revision);
            }
            let resp = c.get(from.clone(), Some(o)).await?;
            if snap.revision == 0 {
                snap.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in resp.kvs() {
                self.put_doc(&mut snap, kv.key(), kv.value());
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(snap),
            }
        }
    }

    fn put_doc(&self, snap: &mut Snapshot, key: &[u8], value: &[u8]) {
        let Some(k) = self.short_key(key) else { return };
        match serde_json::from_slice::<Doc>(value) {
            Ok(d) if d.version == doc::VERSION => {
                snap.invalid.remove(&k);
                snap.docs.insert(k, d);
            }
            Ok(d) => {
                snap.docs.remove(&k);
                let why = format!("document version {} not understood", d.version);
                snap.invalid.insert(k, why);
            }
            Err(e) => {
                snap.docs.remove(&k);
                snap.invalid
                    .insert(k, format!("not a vxmesh document: {e}"));
            }
        }
    }

    fn short_key(&self, key: &[u8]) -> Option<String> {
        let k = std::str::from_utf8(key).ok()?;
        Some(
            k.strip_prefix(&self.opts.prefix)?
                .strip_prefix('/')?
                .to_string(),
        )
    }

    /// Folds one event into `snap`: a put of `value`, or a delete.
    fn fold_event(&self, snap: &mut Snapshot, put: bool, key: &[u8], value: &[u8]) {
        if put {
            self.put_doc(snap, key, value);
        } else if let Some(k) = self.short_key(key) {
            snap.docs.remove(&k);
            snap.invalid.remove(&k);
        }
    }

    /// Folds one watch message into `snap`; true if a document changed.
    fn fold(&self, snap: &mut Snapshot, msg: &WatchResponse) -> bool {
        let mut changed = false;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            let put = ev.event_type() == etcd_client::EventType::Put;
            self.fold_event(snap, put, kv.key(), kv.value());
            changed = true;
        }
        if let Some(h) = msg.header() {
            snap.revision = snap.revision.max(h.revision());
        }
        changed
    }

    /// Watches the prefix and applies changes until `stop`; reconnects and
    /// resumes from the last revision after an error.
    pub async fn run_watch(self: Arc<Self>, apply: Applier, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let r = tokio::select! {
                r = self.watch_once(&apply) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Err(e) = r {
                self.set_connected(false, Some(e.to_string()));
                self.reset_client().await;
            } else {
                backoff = Duration::from_millis(250);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn watch_once(&self, apply: &Applier) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let from = self.snapshot.lock().expect("snapshot lock").revision + 1;
        let mut stream = c
            .watch_client()
            .max_decoding_message_size(WATCH_MESSAGE_MAX)
            .watch(
                self.key(""),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(from)
                        .with_progress_notify(),
                ),
            )
            .await?;
        let first = next_message(&mut stream).await?;
        self.set_connected(true, None);
        let mut msg = Some(first);
        loop {
            let m = match msg.take() {
                Some(m) => m,
                None => next_message(&mut stream).await?,
            };
            if m.canceled() {
                if m.compact_revision() > 0 {
                    warn!(
                        from,
                        compacted = m.compact_revision(),
                        "watch revision compacted; reading the whole prefix again"
                    );
                    let snap = self.load(&mut c).await?;
                    self.publish(snap, apply).await;
                    return Ok(());
                }
                return Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    m.cancel_reason()
                )));
            }
            let mut snap = self.snapshot();
            let mut changed = self.fold(&mut snap, &m);
            let mut events = m.events().len() as u64;
            if changed {
                // Take what else arrives right away, then apply once.
                let deadline = tokio::time::Instant::now() + COALESCE;
                while let Ok(r) = tokio::time::timeout_at(deadline, next_message(&mut stream)).await
                {
                    let m = r?;
                    if m.canceled() {
                        msg = Some(m);
                        break;
                    }
                    changed |= self.fold(&mut snap, &m);
                    events += m.events().len() as u64;
                }
            }
            self.status_mut(|s| s.events += events);
            if changed {
                self.publish(snap, apply).await;
            } else {
                let rev = snap.revision;
                self.snapshot.lock().expect("snapshot lock").revision = rev;
                self.status_mut(|s| s.revision = rev);
            }
        }
    }

    /// Records `snap` as the last seen state and hands it to the daemon.
    async fn publish(&self, snap: Snapshot, apply: &Applier) {
        let rev = snap.revision;
        *self.snapshot.lock().expect("snapshot lock") = snap.clone();
        let apply = apply.clone();
        let r = tokio::task::spawn_blocking(move || apply(snap))
            .await
            .unwrap_or_else(|e| Err(format!("applier panicked: {e}")));
        self.status_mut(|s| {
            s.revision = rev;
            if let Err(e) = &r {
                s.last_error = Some(e.clone());
            }
        });
    }

    /// Runs `f` over the last snapshot seen, without copying it.
    pub fn with_snapshot<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(&self.snapshot.lock().expect("snapshot lock"))
    }

    /// Publishes a local workload's address as an endpoint owned by this
    /// node, under `lease` (it goes when the lease does), if the key is
    /// free and the result passes the file's rules.
    pub async fn announce(
        &self,
        network: &str,
        ip: std::net::Ipv4Addr,
        mac: vxmesh_dataplane::wire::MacAddr,
        lease: i64,
    ) -> Result<(), StoreError> {
        let doc = Doc {
            lease: Some(lease),
            ..Doc::new(serde_json::json!({
                "network": network,
                "node": self.opts.node.name,
                "ip": ip.to_string(),
                "mac": mac.to_string(),
            }))
        };
        let what = format!("endpoint {ip} in network `{network}`");
        self.create_doc(doc::endpoint_key(network, ip), doc, what)
            .await
            .map(|_| ())
    }

    /// Withdraws an address this node announced under `lease` (nothing if
    /// the key is no longer under that lease).
    pub async fn withdraw(
        &self,
        network: &str,
        ip: std::net::Ipv4Addr,
        lease: i64,
    ) -> Result<(), StoreError> {
        let full = self.key(&doc::endpoint_key(network, ip));
        self.client()
            .await?
            .txn(
                Txn::new()
                    .when([Compare::lease(full.clone(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(full, None)]),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
