//! Where the desired state comes from. Two backends:
//!
//! - **file**: the cluster file (TOML), read at start and on SIGHUP. It is
//!   the source of truth: writes through the API are refused with a message
//!   naming it.
//! - **etcd**: documents under a key prefix in an etcd cluster
//!   ([`etcd`]). The daemon registers its node under a lease, watches the
//!   prefix and applies every change as a diff; writes from the API go to
//!   etcd and come back through the watch, like everyone else's.
//!
//! Both speak the same documents ([`doc`]): each value is the JSON form of
//! the file's table, validated by the same code. On etcd a node may also
//! publish the addresses its workloads use ([`crate::announce`]).

pub mod doc;
pub mod etcd;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use doc::{Doc, Snapshot, View};

/// A change an operator asks for (through the admin API).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create a network (spec: a `[[networks]]` table as JSON).
    CreateNetwork(Value),
    /// Remove a network and its endpoints (refused while a service uses it).
    RemoveNetwork(String),
    /// Create an endpoint (spec: an `[[endpoints]]` table as JSON).
    CreateEndpoint(Value),
    RemoveEndpoint {
        network: String,
        ip: std::net::Ipv4Addr,
    },
    /// Merge `patch` into an endpoint's spec (as `UpdateService` does); the
    /// network and address cannot change.
    UpdateEndpoint {
        network: String,
        ip: std::net::Ipv4Addr,
        patch: Value,
    },
    /// Create a service (spec: a `[[services]]` table as JSON).
    CreateService(Value),
    /// Merge `patch` into a service's spec: members given replace the old
    /// ones, `null` removes one (RFC 7386 at the top level).
    UpdateService {
        name: String,
        patch: Value,
    },
    RemoveService(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the cluster file {0} is the source of truth for this daemon (store: file); \
         edit it and send SIGHUP to vxmeshd (systemctl reload vxmeshd)"
    )]
    ReadOnly(PathBuf),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Unavailable(String),
    /// Another daemon holds this node's registration.
    #[error("{0}")]
    Duplicate(String),
    /// etcd refused the credentials or the permissions.
    #[error("{0}")]
    Refused(String),
}

/// The store a daemon runs on.
#[derive(Clone)]
pub enum Store {
    File(PathBuf),
    Etcd(Arc<etcd::EtcdStore>),
}

impl Store {
    /// `file:/etc/vxmesh/vxmesh.toml` or `etcd:http://..,..:/vxmesh`.
    pub fn describe(&self) -> String {
        match self {
            Store::File(p) => format!("file:{}", p.display()),
            Store::Etcd(e) => e.describe(),
        }
    }

    /// Applies an operator's change to the store. The daemon's own tables
    /// follow through the watch, never from here.
    pub async fn write(&self, w: Write) -> Result<(), StoreError> {
        match self {
            Store::File(p) => Err(StoreError::ReadOnly(p.clone())),
            Store::Etcd(e) => e.write(w).await,
        }
    }

    /// Names of nodes that own declared endpoints but have no live
    /// registration (etcd only).
    pub fn down_nodes(&self) -> Vec<String> {
        match self {
            Store::File(_) => Vec::new(),
            Store::Etcd(e) => e.down_nodes(),
        }
    }
}

/// The store's health as the daemon sees it (`/v1/status` `store`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `file` or `etcd`.
    pub backend: String,
    /// The file, or the etcd endpoints and prefix.
    pub target: String,
    /// The watch is running (always true for the file store). False means
    /// "fail static": the dataplane forwards on the last state it had.
    pub connected: bool,
    /// Store revision of the last state applied.
    pub revision: i64,
    /// Seconds since `connected` last changed.
    pub since_s: f64,
    /// This node's lease (etcd), in hexadecimal like etcdctl prints it.
    pub lease: Option<String>,
    pub lease_ttl_s: Option<i64>,
    pub last_error: Option<String>,
    /// Watch events applied since start.
    pub events: u64,
    /// Documents under the prefix left out because they are invalid
    /// (`key: reason`); everything else applies.
    #[serde(default)]
    pub quarantined: Vec<String>,
}
