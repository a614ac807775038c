//! The store's documents and how a set of them becomes a [`Cluster`].
//!
//! Every value in a store is a versioned JSON document
//! `{"version": 1, "spec": {...}}` whose `spec` has exactly the shape of the
//! matching table of the cluster file (`[[networks]]`, `[[endpoints]]`,
//! `[[services]]`, `[[nodes]]`, `[settings]`). A snapshot is assembled into
//! one TOML document, one fragment per key, and validated by the same code
//! as the file ([`crate::config::parse`]): both stores accept the same
//! values, and an error names the key it came from.
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
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config;
use crate::model::{Cluster, Node};

/// The document version this code writes and reads.
pub const VERSION: u32 = 1;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub version: u32,
    pub spec: Value,
    /// The lease the key is attached to: node documents, and endpoints a
    /// node announced (see [`crate::store::announce`]).
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

/// Drops `null` members (TOML has no null) and rejects nothing else.
fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// One `[[table]]` fragment of TOML text holding `spec`.
fn fragment(table: &str, spec: &Value, array: bool) -> Result<String, String> {
    if array {
        if let Some(text) = plain_fragment(table, spec) {
            return Ok(text);
        }
    }
    let spec = strip_nulls(spec);
    if !spec.is_object() {
        return Err("spec is not a JSON object".into());
    }
    let body = if array {
        serde_json::json!({ table: [spec] })
    } else {
        serde_json::json!({ table: spec })
    };
    let value = toml::Value::try_from(&body).map_err(|e| e.to_string())?;
    toml::to_string(&value).map_err(|e| e.to_string())
}

/// The fragment of a table whose members are all plain strings (bare keys,
/// no quote, backslash or control character), written directly: the shape
/// of nearly every endpoint and node, 100,000 of which would otherwise each
/// go through a JSON -> TOML value -> text conversion. `None`: use the
/// general path.
fn plain_fragment(table: &str, spec: &Value) -> Option<String> {
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let plain = |v: &str| !v.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    let mut out = format!("[[{table}]]\n");
    for (k, v) in spec.as_object()? {
        let v = v.as_str()?;
        if !bare(k) || !plain(v) {
            return None;
        }
        out.push_str(&format!("{k} = \"{v}\"\n"));
    }
    Some(out)
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
    build(snap, this, view, source)
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
        let errs = match build(cur, this, view, source) {
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

/// [`assemble`] with errors and skipped documents by key.
fn build(
    snap: &Snapshot,
    this: &Node,
    view: View,
    source: &str,
) -> Result<(Cluster, Vec<Quarantined>), Vec<KeyedError>> {
    let mut skipped: Vec<Quarantined> = Vec::new();
    let mut text = String::new();
    // (first line, key) of every fragment, to name the key in errors.
    let mut origin: Vec<(usize, String)> = Vec::new();
    // Lines so far, counted as fragments are added (recounting the whole
    // text per fragment is quadratic: minutes at 100,000 endpoints).
    let mut lines = 0usize;
    let mut push = |text: &mut String, key: &str, frag: String| {
        origin.push((lines + 1, key.to_string()));
        lines += frag.bytes().filter(|b| *b == b'\n').count() + 1;
        text.push_str(&frag);
        text.push('\n');
    };
    if let Some(d) = snap.docs.get("settings") {
        match fragment("settings", &d.spec, false) {
            Ok(f) => push(&mut text, "settings", f),
            Err(e) => skipped.push(("settings".into(), e)),
        }
    }
    // Nodes: the live ones, this node with its own address.
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    for (name, spec) in snap.kind("nodes") {
        if name != this.name {
            nodes.insert(name.to_string(), spec.clone());
        }
    }
    nodes.insert(
        this.name.clone(),
        serde_json::json!({ "name": this.name, "address": this.address.to_string() }),
    );
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
            skipped.push((
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
    if view == View::Declared {
        // Owners that are not up get a placeholder node (240.0.0.0/4 is
        // reserved), so the endpoint itself can be validated.
        let mut n = 0u32;
        for (_, _, _, spec) in &endpoints {
            if let Some(node) = str_field(spec, "node") {
                if !nodes.contains_key(node) {
                    n += 1;
                    let a = Ipv4Addr::from(0xf000_0000 | n);
                    nodes.insert(
                        node.to_string(),
                        serde_json::json!({ "name": node, "address": a.to_string() }),
                    );
                }
            }
        }
    }
    for (name, spec) in &nodes {
        match fragment("nodes", spec, true) {
            Ok(f) => push(&mut text, &node_key(name), f),
            Err(e) => skipped.push((node_key(name), e)),
        }
    }
    for (key, spec) in snap.kind("networks") {
        match fragment("networks", spec, true) {
            Ok(f) => push(&mut text, &format!("networks/{key}"), f),
            Err(e) => skipped.push((format!("networks/{key}"), e)),
        }
    }
    let live: HashSet<(&str, Ipv4Addr)> = endpoints.iter().map(|e| (e.1, e.2)).collect();
    for (key, _, _, spec) in &endpoints {
        match fragment("endpoints", spec, true) {
            Ok(f) => push(&mut text, &format!("endpoints/{key}"), f),
            Err(e) => skipped.push((format!("endpoints/{key}"), e)),
        }
    }
    for (key, spec) in snap.kind("services") {
        let mut spec = spec.clone();
        if view == View::Effective {
            let net = str_field(&spec, "network").unwrap_or_default().to_string();
            if !networks.contains(net.as_str()) {
                skipped.push((
                    format!("services/{key}"),
                    format!("network `{net}` does not exist"),
                ));
                continue;
            }
            // A task whose endpoint is gone (its node died) leaves the list.
            if let Some(Value::Array(tasks)) = spec.get_mut("tasks") {
                tasks.retain(|t| {
                    t.as_str()
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        .is_some_and(|ip| live.contains(&(net.as_str(), ip)))
                });
            }
        }
        match fragment("services", &spec, true) {
            Ok(f) => push(&mut text, &format!("services/{key}"), f),
            Err(e) => skipped.push((format!("services/{key}"), e)),
        }
    }
    match config::parse(Path::new(source), &text) {
        Ok(c) => Ok((c, skipped)),
        Err(errs) => Err(errs
            .0
            .iter()
            .map(|e| {
                let key = origin
                    .iter()
                    .rev()
                    .find(|(line, _)| *line <= e.line)
                    .map(|(_, k)| k.clone());
                (key, e.reason.clone())
            })
            .collect()),
    }
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
    fn plain_fragments_read_like_the_general_ones() {
        let plain =
            json!({"network": "front", "node": "h1", "ip": "10.0.9.1", "mac": "02:42:0a:00:09:01"});
        let general = |spec: &Value| {
            let v = toml::Value::try_from(json!({ "endpoints": [spec] })).unwrap();
            toml::to_string(&v).unwrap()
        };
        let fast = plain_fragment("endpoints", &plain).unwrap();
        let parsed = |t: &str| t.parse::<toml::Table>().unwrap();
        assert_eq!(parsed(&fast), parsed(&general(&plain)));
        // Anything else takes the general path.
        for odd in [
            json!({"network": "front", "ip": "10.0.9.1", "name": "a \"b\""}),
            json!({"network": "front", "ip": "10.0.9.1", "name": null}),
            json!({"network": "front", "ip": "10.0.9.1", "x y": "z"}),
            json!({"network": "front", "tasks": ["10.0.9.1"]}),
        ] {
            assert_eq!(plain_fragment("endpoints", &odd), None, "{odd}");
        }
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
