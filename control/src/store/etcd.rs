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

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions, WatchResponse, WatchStream,
};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use super::doc::{self, Doc, Snapshot, View};
use super::{StoreError, StoreStatus, Write};
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
    /// This node: its name and data-path address.
    pub node: Node,
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
}

fn read(p: &PathBuf, what: &str) -> Result<String, StoreError> {
    std::fs::read_to_string(p)
        .map_err(|e| StoreError::Invalid(format!("reading the {what} {}: {e}", p.display())))
}

fn connect_options(o: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    // HTTP/2 pings find a silent (stopped, partitioned) etcd within ~3 s.
    let mut c = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(p) = &o.credentials {
        let text = read(p, "credentials file")?;
        let text = text.trim();
        let (user, pass) = text
            .split_once(':')
            .or_else(|| text.split_once('\n'))
            .ok_or_else(|| {
                StoreError::Invalid(format!("{}: expected `user:password`", p.display()))
            })?;
        c = c.with_user(user.trim(), pass.trim());
    }
    if o.ca.is_some() || o.cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &o.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "CA file")?));
        }
        match (&o.cert, &o.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Invalid(
                    "--etcd-cert and --etcd-key go together".into(),
                ))
            }
        }
        c = c.with_tls(tls);
    }
    Ok(c)
}

async fn next_message(stream: &mut WatchStream) -> Result<WatchResponse, StoreError> {
    stream
        .message()
        .await?
        .ok_or_else(|| StoreError::Unavailable("etcd closed the watch".into()))
}

impl EtcdStore {
    fn new(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let connect = connect_options(&opts)?;
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
        s
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

    /// Grants a lease and puts this node's document under it.
    async fn register(&self, c: &mut Client) -> Result<i64, StoreError> {
        let lease = c.lease_grant(self.opts.lease_ttl, None).await?.id();
        let doc = Doc {
            lease: Some(lease),
            ttl_s: Some(self.opts.lease_ttl),
            ..Doc::new(serde_json::json!({
                "name": self.opts.node.name,
                "address": self.opts.node.address.to_string(),
            }))
        };
        c.put(
            self.key(&doc::node_key(&self.opts.node.name)),
            doc.to_bytes(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        self.lease.store(lease, Ordering::Relaxed);
        info!(node = %self.opts.node.name, lease = format!("{lease:x}"), ttl_s = self.opts.lease_ttl, "registered under a lease");
        Ok(lease)
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
                snap.docs.insert(k, d);
            }
            Ok(d) => {
                warn!(key = %k, version = d.version, "document version not understood; ignored");
                snap.docs.remove(&k);
            }
            Err(e) => {
                warn!(key = %k, error = %e, "not a vxmesh document; ignored");
                snap.docs.remove(&k);
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

    /// Folds one watch message into `snap`; true if a document changed.
    fn fold(&self, snap: &mut Snapshot, msg: &WatchResponse) -> bool {
        let mut changed = false;
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                etcd_client::EventType::Put => self.put_doc(snap, kv.key(), kv.value()),
                etcd_client::EventType::Delete => {
                    if let Some(k) = self.short_key(kv.key()) {
                        snap.docs.remove(&k);
                    }
                }
            }
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

    /// Checks a changed snapshot against the file's rules.
    fn validate(&self, candidate: &Snapshot) -> Result<(), StoreError> {
        doc::assemble(candidate, &self.opts.node, View::Declared, &self.describe())
            .map(|_| ())
            .map_err(|e| StoreError::Invalid(e.join("; ")))
    }

    /// Waits (bounded) until the watch has brought revision `rev`, so the
    /// next request through this daemon sees the write.
    async fn caught_up(&self, rev: i64) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.snapshot.lock().expect("snapshot lock").revision < rev
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Creates `key` with `spec` if absent; the new revision.
    async fn create(&self, key: String, spec: Value, what: String) -> Result<i64, StoreError> {
        self.create_doc(key, Doc::new(spec), what).await
    }

    /// Creates `key` with `doc` (under its lease, if it names one).
    async fn create_doc(&self, key: String, doc: Doc, what: String) -> Result<i64, StoreError> {
        let mut candidate = self.snapshot();
        if candidate.docs.contains_key(&key) {
            return Err(StoreError::Exists(what));
        }
        candidate.docs.insert(key.clone(), doc.clone());
        self.validate(&candidate)?;
        let full = self.key(&key);
        let put = doc.lease.map(|l| PutOptions::new().with_lease(l));
        let r = self
            .client()
            .await?
            .txn(
                Txn::new()
                    .when([Compare::version(full.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(full, doc.to_bytes(), put)]),
            )
            .await?;
        if !r.succeeded() {
            return Err(StoreError::Exists(what));
        }
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn remove(
        &self,
        key: String,
        prefix_too: Option<String>,
        what: String,
    ) -> Result<i64, StoreError> {
        let full = self.key(&key);
        let mut ops = vec![TxnOp::delete(full.clone(), None)];
        if let Some(p) = prefix_too {
            ops.push(TxnOp::delete(
                self.key(&p),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        let r = self
            .client()
            .await?
            .txn(
                Txn::new()
                    .when([Compare::version(full, CompareOp::Greater, 0)])
                    .and_then(ops),
            )
            .await?;
        if !r.succeeded() {
            return Err(StoreError::NotFound(what));
        }
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Applies an operator's change (validated first) and waits until this
    /// daemon's watch has seen it.
    pub async fn write(&self, w: Write) -> Result<(), StoreError> {
        let name_of = |spec: &Value, field: &str| -> Result<String, StoreError> {
            spec.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| StoreError::Invalid(format!("the spec needs a string `{field}`")))
        };
        let rev = match w {
            Write::CreateNetwork(spec) => {
                let name = name_of(&spec, "name")?;
                self.create(doc::network_key(&name), spec, format!("network `{name}`"))
                    .await?
            }
            Write::RemoveNetwork(name) => {
                let users: Vec<String> = self
                    .snapshot()
                    .kind("services")
                    .filter(|(_, s)| s.get("network").and_then(Value::as_str) == Some(&name))
                    .map(|(k, _)| k.to_string())
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "network `{name}` is used by service(s) {}; remove them first",
                        users.join(", ")
                    )));
                }
                self.remove(
                    doc::network_key(&name),
                    Some(format!("endpoints/{name}/")),
                    format!("network `{name}`"),
                )
                .await?
            }
            Write::CreateEndpoint(spec) => {
                let net = name_of(&spec, "network")?;
                let ip: std::net::Ipv4Addr = name_of(&spec, "ip")?
                    .parse()
                    .map_err(|e| StoreError::Invalid(format!("ip: {e}")))?;
                self.create(
                    doc::endpoint_key(&net, ip),
                    spec,
                    format!("endpoint {ip} in network `{net}`"),
                )
                .await?
            }
            Write::RemoveEndpoint { network, ip } => {
                self.remove(
                    doc::endpoint_key(&network, ip),
                    None,
                    format!("endpoint {ip} in network `{network}`"),
                )
                .await?
            }
            Write::CreateService(spec) => {
                let name = name_of(&spec, "name")?;
                self.create(doc::service_key(&name), spec, format!("service `{name}`"))
                    .await?
            }
            Write::UpdateService { name, patch } => {
                if patch.get("name").is_some_and(|n| n.as_str() != Some(&name)) {
                    return Err(StoreError::Invalid("a service cannot be renamed".into()));
                }
                self.update_doc(doc::service_key(&name), format!("service `{name}`"), patch)
                    .await?
            }
            Write::UpdateEndpoint { network, ip, patch } => {
                let ip_s = ip.to_string();
                if patch
                    .get("network")
                    .is_some_and(|n| n.as_str() != Some(&network))
                    || patch.get("ip").is_some_and(|n| n.as_str() != Some(&ip_s))
                {
                    return Err(StoreError::Invalid(
                        "an endpoint's network and address cannot change".into(),
                    ));
                }
                self.update_doc(
                    doc::endpoint_key(&network, ip),
                    format!("endpoint {ip} in network `{network}`"),
                    patch,
                )
                .await?
            }
            Write::RemoveService(name) => {
                self.remove(doc::service_key(&name), None, format!("service `{name}`"))
                    .await?
            }
        };
        self.caught_up(rev).await;
        Ok(())
    }

    /// Read, merge, validate, compare-and-swap on the key's revision; a few
    /// tries if someone else wrote in between. Members of `patch` replace
    /// the document's, `null` removes one (RFC 7386 at the top level).
    async fn update_doc(&self, key: String, what: String, patch: Value) -> Result<i64, StoreError> {
        let Value::Object(patch) = patch else {
            return Err(StoreError::Invalid(
                "the update is not a JSON object".into(),
            ));
        };
        let full = self.key(&key);
        for _ in 0..5 {
            let mut c = self.client().await?;
            let got = c.get(full.clone(), None).await?;
            let Some(kv) = got.kvs().first() else {
                return Err(StoreError::NotFound(what));
            };
            let mut d: Doc = serde_json::from_slice(kv.value())
                .map_err(|e| StoreError::Invalid(format!("stored {what}: {e}")))?;
            if let Value::Object(spec) = &mut d.spec {
                for (k, v) in &patch {
                    if v.is_null() {
                        spec.remove(k);
                    } else {
                        spec.insert(k.clone(), v.clone());
                    }
                }
            }
            let mut candidate = self.snapshot();
            candidate.docs.insert(key.clone(), d.clone());
            self.validate(&candidate)?;
            let put = d.lease.map(|l| PutOptions::new().with_lease(l));
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            full.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::put(full.clone(), d.to_bytes(), put)]),
                )
                .await?;
            if r.succeeded() {
                return Ok(r.header().map(|h| h.revision()).unwrap_or(0));
            }
        }
        Err(StoreError::Invalid(format!(
            "{what} kept changing under this update; try again"
        )))
    }
}
