//! The writes the admin API asks for: validated against the file's rules
//! first, made with compare-and-swap transactions, and waited for until
//! this daemon's watch has seen them.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};
use serde_json::Value;

use super::EtcdStore;
use crate::store::doc::{self, Doc, Snapshot, View};
use crate::store::{StoreError, Write};

/// Longest wait for this daemon's watch to bring a write back.
pub(super) const CAUGHT_UP: Duration = Duration::from_secs(2);

impl EtcdStore {
    /// Checks a snapshot changed at `key` against the file's rules, without
    /// the documents quarantined now (a broken document someone else put
    /// there blocks no write; the written one is checked in full).
    fn validate(&self, mut candidate: Snapshot, key: &str) -> Result<(), StoreError> {
        for k in self.quarantined.lock().expect("quarantine lock").keys() {
            if k != key {
                candidate.docs.remove(k);
            }
        }
        doc::assemble(
            &candidate,
            &self.opts.node,
            View::Declared,
            &self.describe(),
        )
        .map(|_| ())
        .map_err(|e| StoreError::Invalid(e.join("; ")))
    }

    /// Waits (bounded) until the watch has brought revision `rev`, so the
    /// next request through this daemon sees the write.
    pub(super) async fn caught_up(&self, rev: i64) {
        let deadline = tokio::time::Instant::now() + CAUGHT_UP;
        while self.snapshot.lock().expect("snapshot lock").revision < rev
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Creates `key` with `spec` if absent; the new revision.
    async fn create(&self, key: String, spec: Value, what: String) -> Result<i64, StoreError> {
        self.create_doc(key, Doc::new(spec), what).await
    }

    /// Creates `key` with `doc` (under its lease, if it names one).
    pub(super) async fn create_doc(
        &self,
        key: String,
        doc: Doc,
        what: String,
    ) -> Result<i64, StoreError> {
        let mut candidate = self.snapshot();
        if candidate.docs.contains_key(&key) {
            return Err(StoreError::Exists(what));
        }
        candidate.docs.insert(key.clone(), doc.clone());
        self.validate(candidate, &key)?;
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
            self.validate(candidate, &key)?;
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
