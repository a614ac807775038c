//! The store's documents and how a set of them becomes a [`Cluster`].
//!
//! Every value in a store is a versioned JSON document
//! `{"version": 1, "spec": {...}}` whose `spec` has exactly the shape of the
//! matching table of the cluster file (`[[networks]]`, `[[endpoints]]`,
//! `[[services]]`, `[[nodes]]`, `[settings]`). A snapshot's specs are read
//! straight into the file's raw tables ([`crate::config::raw`]) and checked
//! by the same rules as the file ([`crate::config::validate`]): both stores
//! accept the same values, and an error names the key it came from.
//!
//! Key layout under the prefix (e.g. `/vxmesh`):
//!
//! | key | lease | spec |
//! |---|---|---|
//! | `settings` | no | `[settings]` |
//! | `networks/<name>` | no | a `[[networks]]` table |
//! | `endpoints/<network>/<ip>` | no | an `[[endpoints]]` table |
//! | `services/<name>` | no | a `[[services]]` table |
//! | `nodes/<name>` | the node's | a `[[nodes]]` table, plus `lease` and `ttl_s` beside `spec` |

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{
    self,
    raw::{RawEndpoint, RawFile, RawNetwork, RawNode, RawService, Table},
    Place,
};
use crate::model::{Cluster, Node};

/// The document version this code writes and reads.
pub const VERSION: u32 = 1;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub version: u32,
    pub spec: Value,
    /// The lease the key is attached to: node documents, and endpoints a
    /// node announced (see [`crate::announce`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    /// The lease's TTL in seconds (node documents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<i64>,
    /// Which daemon registered the node (node documents): an id kept in
    /// its state directory, so a restart after a crash can take its own
    /// registration back while anyone else is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Doc {
    pub fn new(spec: Value) -> Doc {
        Doc {
            version: VERSION,
            spec,
            lease: None,
            ttl_s: None,
            instance: None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JSON value serialises")
    }
}

/// What the store holds, keyed by the part of the key after the prefix
/// (`networks/front`), at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub docs: BTreeMap<String, Doc>,
    /// The store revision this snapshot reflects (0 for the file store).
    pub revision: i64,
    /// Values under the prefix that are not documents this code reads
    /// (not JSON, another version): key and reason. They are quarantined.
    pub invalid: BTreeMap<String, String>,
}

/// How a snapshot is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// What the dataplane runs: only nodes with a live registration (and
    /// this node), only their endpoints, only service tasks that are live
    /// endpoints. A dead node vanishes from every table.
    Effective,
    /// What the operator declared: every endpoint, whichever node owns it
    /// and whether it is up (used to validate writes).
    Declared,
}

impl Snapshot {
    /// Specs of one kind (`networks`, `endpoints`, ...).
    pub fn kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.docs.iter().filter_map(move |(k, d)| {
            let rest = k.strip_prefix(kind)?.strip_prefix('/')?;
            Some((rest, &d.spec))
        })
    }

    /// Names of the nodes with a live registration.
    pub fn live_nodes(&self) -> BTreeSet<String> {
        self.kind("nodes").map(|(n, _)| n.to_string()).collect()
    }
}

/// Key of a network document.
pub fn network_key(name: &str) -> String {
    format!("networks/{name}")
}

/// Key of an endpoint document.
pub fn endpoint_key(network: &str, ip: Ipv4Addr) -> String {
    format!("endpoints/{network}/{ip}")
}

/// Key of a service document.
pub fn service_key(name: &str) -> String {
    format!("services/{name}")
}

/// Key of a node's registration.
pub fn node_key(name: &str) -> String {
    format!("nodes/{name}")
}

const NOT_OBJECT: &str = "spec is not a JSON object";

/// Reads one spec into its raw table. `null` members mean "not set" (as
/// an absent key in the file); anything else that does not fit the table
/// is an error naming the member.
fn read<T: serde::de::DeserializeOwned>(spec: &Value) -> Result<T, String> {
    let Some(members) = spec.as_object() else {
        return Err(NOT_OBJECT.into());
    };
    let r = if members.values().any(Value::is_null) {
        let stripped: serde_json::Map<String, Value> = members
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        T::deserialize(&Value::Object(stripped))
    } else {
        T::deserialize(spec)
    };
    r.map_err(|e| e.to_string())
}

fn str_field<'a>(spec: &'a Value, field: &str) -> Option<&'a str> {
    spec.get(field).and_then(Value::as_str)
}

/// The [`Cluster`] a snapshot describes, for `this` node (always present,
/// with the address it was started with). `source` names the store in
/// errors. Documents that cannot be read are skipped and reported in the
/// second value; values that break the file's rules fail the whole
/// snapshot, each error naming its key.
pub fn assemble(
    snap: &Snapshot,
    this: &Node,
    view: View,
    source: &str,
) -> Result<(Cluster, Vec<String>), Vec<String>> {
    build(snap, this, view)
        .map(|(c, skipped)| {
            let skipped = skipped.into_iter().map(|(k, r)| format!("{k}: {r}"));
            (c, skipped.collect())
        })
        .map_err(|errs| keyed_errors(&errs, source))
}

/// `<source>/<key>: <reason>` for each error.
fn keyed_errors(errs: &[KeyedError], source: &str) -> Vec<String> {
    errs.iter()
        .map(|(k, r)| format!("{source}/{}: {r}", k.as_deref().unwrap_or("?")))
        .collect()
}

/// A document left out of an assembly: its key and why.
pub type Quarantined = (String, String);

/// An error of the file's rules, with the key it came from (if known).
type KeyedError = (Option<String>, String);

/// Most rounds of setting documents aside in [`assemble_quarantined`]:
/// each round takes every error the file's rules report, so one or two
/// are the rule.
pub const QUARANTINE_ROUNDS: usize = 8;

/// Like [`assemble`], but a document that breaks the rules is set aside
/// (quarantined) instead of failing the whole snapshot: the cluster of
/// everything else, and every document left out with its reason (key,
/// reason; the snapshot's [`Snapshot::invalid`] values too). Fails only
/// for an error no single document can be blamed for, or one in this
/// node's own registration.
pub fn assemble_quarantined(
    snap: &Snapshot,
    this: &Node,
    view: View,
    source: &str,
) -> Result<(Cluster, Vec<Quarantined>), Vec<String>> {
    let mut out: Vec<Quarantined> = snap
        .invalid
        .iter()
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    let own = node_key(&this.name);
    // Copied only once something has to be taken out.
    let mut work: Option<Snapshot> = None;
    for _ in 0..QUARANTINE_ROUNDS {
        let cur = work.as_ref().unwrap_or(snap);
        let errs = match build(cur, this, view) {
            Ok((c, skipped)) => {
                out.extend(skipped);
                out.sort();
                return Ok((c, out));
            }
            Err(errs) => errs,
        };
        let mut blamed: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (key, reason) in &errs {
            match key {
                Some(k) if *k != own && cur.docs.contains_key(k) => {
                    blamed.entry(k.clone()).or_default().push(reason)
                }
                _ => return Err(keyed_errors(&errs, source)),
            }
        }
        let w = work.get_or_insert_with(|| snap.clone());
        for (k, reasons) in blamed {
            w.docs.remove(&k);
            out.push((k, reasons.join("; ")));
        }
    }
    Err(vec![format!(
        "{source}: still invalid after setting documents aside {QUARANTINE_ROUNDS} times"
    )])
}

/// A snapshot's specs as the file's raw tables, with the key each element
/// came from.
#[derive(Default)]
struct Raw {
    file: RawFile,
    nodes: Vec<String>,
    networks: Vec<String>,
    endpoints: Vec<String>,
    services: Vec<String>,
}

impl Raw {
    /// The key of the document a place is in.
    fn key(&self, place: &Place) -> Option<String> {
        let keys = match place.table {
            Table::Settings => return Some("settings".into()),
            Table::Nodes => &self.nodes,
            Table::Networks => &self.networks,
            Table::Endpoints => &self.endpoints,
            Table::Services => &self.services,
        };
        keys.get(place.index).cloned()
    }
}

/// The documents set aside and the errors of an assembly so far.
#[derive(Default)]
struct Out {
    skipped: Vec<Quarantined>,
    errs: Vec<KeyedError>,
}

impl Out {
    /// A document's table, if it could be read: a spec that is not an
    /// object is set aside, one that does not fit its table is an error.
    fn take<T>(&mut self, key: String, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) if e == NOT_OBJECT => {
                self.skipped.push((key, e));
                None
            }
            Err(e) => {
                self.errs.push((Some(key), e));
                None
            }
        }
    }
}

/// [`assemble`] with errors and skipped documents by key.
fn build(
    snap: &Snapshot,
    this: &Node,
    view: View,
) -> Result<(Cluster, Vec<Quarantined>), Vec<KeyedError>> {
    let mut out = Out::default();
    let mut raw = Raw::default();
    if let Some(d) = snap.docs.get("settings") {
        if let Some(s) = out.take("settings".into(), read(&d.spec)) {
            raw.file.settings = s;
        }
    }
    // Nodes: the live ones, this node with its own address.
    let mut nodes: BTreeMap<&str, Option<&Value>> = BTreeMap::new();
    for (name, spec) in snap.kind("nodes") {
        if name != this.name {
            nodes.insert(name, Some(spec));
        }
    }
    nodes.insert(&this.name, None);
    let networks: HashSet<&str> = snap
        .kind("networks")
        .filter_map(|(_, s)| str_field(s, "name"))
        .collect();
    // Endpoints, ordered by network then address (a node's lowest address
    // in a network goes on its TAP).
    let mut endpoints: Vec<(&str, &str, Ipv4Addr, &Value)> = Vec::new();
    for (key, spec) in snap.kind("endpoints") {
        let (Some(net), Some(node), Some(ip)) = (
            str_field(spec, "network"),
            str_field(spec, "node"),
            str_field(spec, "ip").and_then(|s| s.parse::<Ipv4Addr>().ok()),
        ) else {
            out.skipped.push((
                format!("endpoints/{key}"),
                "needs network, node and ip".into(),
            ));
            continue;
        };
        if view == View::Effective && (!nodes.contains_key(node) || !networks.contains(net)) {
            continue;
        }
        endpoints.push((key, net, ip, spec));
    }
    endpoints.sort_by_key(|e| (e.1, u32::from(e.2)));
    // Owners that are not up get a placeholder node (240.0.0.0/4 is
    // reserved), so the endpoint itself can be validated.
    let mut placeholders: Vec<&str> = Vec::new();
    if view == View::Declared {
        for (_, _, _, spec) in &endpoints {
            if let Some(node) = str_field(spec, "node") {
                if !nodes.contains_key(node) {
                    nodes.insert(node, None);
                    placeholders.push(node);
                }
            }
        }
    }
    for (name, spec) in &nodes {
        let key = node_key(name);
        let node = match spec {
            Some(spec) => out.take(key.clone(), read::<RawNode>(spec)),
            None if *name == this.name => Some(RawNode {
                name: this.name.clone(),
                address: this.address,
                public_key: this.public_key.map(|k| k.to_string()),
            }),
            None => {
                let n = placeholders.iter().position(|p| p == name).unwrap_or(0) as u32 + 1;
                Some(RawNode {
                    name: name.to_string(),
                    address: Ipv4Addr::from(0xf000_0000 | n),
                    public_key: None,
                })
            }
        };
        if let Some(n) = node {
            raw.file.nodes.push(n);
            raw.nodes.push(key);
        }
    }
    for (key, spec) in snap.kind("networks") {
        let key = format!("networks/{key}");
        if let Some(n) = out.take(key.clone(), read::<RawNetwork>(spec)) {
            raw.file.networks.push(n);
            raw.networks.push(key);
        }
    }
    let live: HashSet<(&str, Ipv4Addr)> = endpoints.iter().map(|e| (e.1, e.2)).collect();
    raw.file.endpoints.reserve(endpoints.len());
    for (key, _, _, spec) in &endpoints {
        let key = format!("endpoints/{key}");
        if let Some(e) = out.take(key.clone(), read::<RawEndpoint>(spec)) {
            raw.file.endpoints.push(e);
            raw.endpoints.push(key);
        }
    }
    for (key, spec) in snap.kind("services") {
        let key = format!("services/{key}");
        let Some(mut s) = out.take(key.clone(), read::<RawService>(spec)) else {
            continue;
        };
        if view == View::Effective {
            if !networks.contains(s.network.as_str()) {
                out.skipped
                    .push((key, format!("network `{}` does not exist", s.network)));
                continue;
            }
            // A task whose endpoint is gone (its node died) leaves the list.
            s.tasks
                .retain(|ip| live.contains(&(s.network.as_str(), *ip)));
        }
        raw.file.services.push(s);
        raw.services.push(key);
    }
    if !out.errs.is_empty() {
        return Err(out.errs);
    }
    config::validate(&raw.file, |e| (raw.key(&e.place), e.reason)).map(|c| (c, out.skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(docs: &[(&str, Value)]) -> Snapshot {
        Snapshot {
            docs: docs
                .iter()
                .map(|(k, v)| (k.to_string(), Doc::new(v.clone())))
                .collect(),
            revision: 1,
            ..Snapshot::default()
        }
    }

    fn me() -> Node {
        Node {
            name: "h1".into(),
            address: "198.18.0.1".parse().unwrap(),
            public_key: None,
        }
    }

    fn base() -> Vec<(&'static str, Value)> {
        vec![
            ("nodes/h2", json!({"name": "h2", "address": "198.18.0.2"})),
            (
                "networks/front",
                json!({"name": "front", "vni": 4096, "subnet": "10.0.9.0/24"}),
            ),
            (
                "endpoints/front/10.0.9.1",
                json!({"network": "front", "node": "h1", "ip": "10.0.9.1"}),
            ),
            (
                "endpoints/front/10.0.9.2",
                json!({"network": "front", "node": "h2", "ip": "10.0.9.2"}),
            ),
            (
                "endpoints/front/10.0.9.3",
                json!({"network": "front", "node": "h3", "ip": "10.0.9.3"}),
            ),
            (
                "services/web",
                json!({"name": "web", "network": "front", "tasks": ["10.0.9.2", "10.0.9.3"],
                       "ports": [{"published": 8080, "target": 80}],
                       "health": {"kind": "tcp", "interval_ms": 200, "timeout_ms": 100},
                       "mode": null}),
            ),
        ]
    }

    #[test]
    fn effective_view_drops_dead_nodes_endpoints_and_tasks() {
        let (c, skipped) = assemble(&snap(&base()), &me(), View::Effective, "etcd").unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(c.nodes.len(), 2);
        let ips: Vec<String> = c.endpoints.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.9.1", "10.0.9.2"]);
        assert_eq!(
            c.services[0].tasks,
            ["10.0.9.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(c.services[0].health.interval.as_millis(), 200);
    }

    #[test]
    fn declared_view_keeps_every_endpoint() {
        let (c, _) = assemble(&snap(&base()), &me(), View::Declared, "etcd").unwrap();
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.services[0].tasks.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let mut docs = base();
        docs.push((
            "networks/back",
            json!({"name": "back", "vni": 0, "subnet": "10.0.8.0/24"}),
        ));
        let errs = assemble(&snap(&docs), &me(), View::Effective, "etcd").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("etcd/networks/back: vni 0"), "{errs:?}");
    }

    #[test]
    fn a_broken_document_is_set_aside_and_the_rest_applies() {
        let mut docs = base();
        docs.push((
            "networks/back",
            json!({"name": "back", "vni": 0, "subnet": "10.0.8.0/24"}),
        ));
        docs.push(("services/odd", json!("not a table")));
        let mut s = snap(&docs);
        s.invalid
            .insert("networks/junk".into(), "not a vxmesh document".into());
        // Strictly, the snapshot fails; with quarantine everything else runs.
        assert!(assemble(&s, &me(), View::Effective, "etcd").is_err());
        let (c, out) = assemble_quarantined(&s, &me(), View::Effective, "etcd").unwrap();
        let keys: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["networks/back", "networks/junk", "services/odd"],
            "{out:?}"
        );
        assert!(out[0].1.contains("vni 0"), "{out:?}");
        assert_eq!(c.networks.len(), 1);
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.services[0].name, "web");
        // A clean snapshot sets nothing aside.
        let (_, none) =
            assemble_quarantined(&snap(&base()), &me(), View::Effective, "etcd").unwrap();
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn specs_read_straight_into_the_tables_and_misfits_name_their_key() {
        let mut docs = base();
        docs.push((
            "endpoints/front/10.0.9.4",
            json!({"network": "front", "node": "h1", "ip": "10.0.9.4", "name": "a \"b\"", "mac": null}),
        ));
        let (c, _) = assemble(&snap(&docs), &me(), View::Effective, "etcd").unwrap();
        let e = c.endpoints.iter().find(|e| e.ip.octets()[3] == 4).unwrap();
        assert_eq!(e.name.as_deref(), Some("a \"b\""));
        docs.push((
            "networks/back",
            json!({"name": "back", "vni": "ten", "subnet": "10.0.8.0/24"}),
        ));
        docs.push((
            "services/db",
            json!({"name": "db", "network": "front", "colour": "red"}),
        ));
        let errs = assemble(&snap(&docs), &me(), View::Effective, "etcd").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("etcd/networks/back: invalid type: string \"ten\""),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("etcd/services/db: unknown field `colour`"),
            "{errs:?}"
        );
    }

    #[test]
    fn endpoints_sort_by_address_not_text() {
        let mut docs = base();
        docs.push((
            "endpoints/front/10.0.9.10",
            json!({"network": "front", "node": "h1", "ip": "10.0.9.10"}),
        ));
        let (c, _) = assemble(&snap(&docs), &me(), View::Effective, "etcd").unwrap();
        let front = c.network("front").unwrap();
        assert_eq!(
            c.tap_address(front, "h1"),
            Some("10.0.9.1".parse().unwrap())
        );
        assert_eq!(c.endpoints.last().unwrap().ip.to_string(), "10.0.9.10");
    }
}
