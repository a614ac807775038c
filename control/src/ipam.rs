//! Address allocation for containers: which addresses of a network a node
//! may hand out, in which order, and (with the cluster file) the state file
//! that keeps a node's allocations across restarts.
//!
//! Pure except for the state file's reads and writes. The cluster-wide
//! guarantee (an address is never given twice) comes from the store: etcd
//! creates the endpoint key with a compare-and-swap, and with the cluster
//! file every node allocates only from its own range.

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Endpoint, Network};
use vxmesh_dataplane::wire::MacAddr;

/// Where a node allocates from in a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    /// The whole subnet, shared by every node (etcd store).
    Shared(Ipv4Net),
    /// The node's own range (cluster file `pools`).
    Own(Ipv4Net),
}

impl Range {
    pub fn net(&self) -> Ipv4Net {
        match self {
            Range::Shared(n) | Range::Own(n) => *n,
        }
    }
}

/// FNV-1a of a node name: where its scan of a shared subnet starts, so
/// nodes allocating at the same moment rarely reach for the same address
/// (a collision only costs a retry: the compare-and-swap decides).
fn start_of(node: &str, size: u32) -> u32 {
    let h = node.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    if size == 0 {
        0
    } else {
        h % size
    }
}

/// The free addresses of `range` in `net` for `node`, in the order to try
/// them: allocatable (not the network, broadcast or DNS address, not in
/// the VIP pool) and not in `taken`.
pub fn candidates(
    net: &Network,
    range: &Range,
    node: &str,
    taken: &HashSet<Ipv4Addr>,
) -> Vec<Ipv4Addr> {
    let r = range.net();
    let first = u32::from(r.network());
    let size = (1u64 << (32 - r.prefix_len())).min(u64::from(u32::MAX)) as u32;
    let start = match range {
        Range::Shared(_) => start_of(node, size),
        Range::Own(_) => 0,
    };
    (0..size)
        .map(|k| Ipv4Addr::from(first.wrapping_add((start + k) % size)))
        .filter(|ip| net.allocatable(*ip) && !taken.contains(ip))
        .collect()
}

/// How many addresses of `range` containers could ever get.
pub fn capacity(net: &Network, range: &Range) -> usize {
    range
        .net()
        .hosts()
        .filter(|ip| net.allocatable(*ip))
        .count()
}

/// The range `node` allocates from in `net`: its pool with the cluster
/// file (`None` when the file gives it none), the subnet with etcd.
pub fn range_for(net: &Network, node: &str, shared: bool) -> Option<Range> {
    if shared {
        return Some(Range::Shared(net.subnet));
    }
    net.pools
        .iter()
        .find(|(n, _)| n == node)
        .map(|(_, r)| Range::Own(*r))
}

/// One container's allocation, as the state file keeps it (cluster file
/// store; with etcd the endpoint document is the record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    attachments: Vec<Attachment>,
}

const STATE_VERSION: u32 = 1;

/// The state file of a node's allocations (cluster file store).
#[derive(Debug)]
pub struct LocalAllocations {
    path: PathBuf,
    list: Vec<Attachment>,
}

impl LocalAllocations {
    /// Reads `path` (a missing file is an empty list; an unreadable one is
    /// an error, so that nothing is handed out twice after a restart).
    pub fn open(path: &Path) -> io::Result<LocalAllocations> {
        let list = match std::fs::read(path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                if f.version != STATE_VERSION {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: state version {} (this vxmeshd reads {STATE_VERSION})",
                            path.display(),
                            f.version
                        ),
                    ));
                }
                f.attachments
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        Ok(LocalAllocations {
            path: path.to_path_buf(),
            list,
        })
    }

    pub fn list(&self) -> &[Attachment] {
        &self.list
    }

    /// Replaces the list and writes it (to a temporary file, then renamed
    /// over the old one: a crash leaves the old or the new list whole).
    pub fn store(&mut self, list: Vec<Attachment>) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&StateFile {
            version: STATE_VERSION,
            attachments: list.clone(),
        })
        .expect("attachments serialise");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.list = list;
        Ok(())
    }
}

/// Adds this node's allocations to a cluster read from the file, as
/// endpoints owned by `node`. An allocation that no longer fits (its
/// network is gone or no longer attachable, the address left the node's
/// pool or was declared by an endpoint meanwhile) is left out and named in
/// the returned warnings; it stays in the state file until released.
pub fn merge(cluster: &mut Cluster, node: &str, list: &[Attachment]) -> Vec<String> {
    let mut warnings = Vec::new();
    // A node with a pool and no address of its own in an attachable network
    // takes its pool's first free address: the source of its mesh and
    // health-check traffic to other nodes' tasks. The others know it
    // already (every address of a pool forwards to the pool's node).
    let own: Vec<Endpoint> = cluster
        .networks
        .iter()
        .filter(|n| n.attachable && cluster.host_endpoint(n, node).is_none())
        .filter_map(|n| {
            let range = range_for(n, node, false)?;
            let taken: HashSet<Ipv4Addr> = cluster
                .endpoints_of(&n.name)
                .map(|e| e.ip)
                .chain(list.iter().filter(|a| a.network == n.name).map(|a| a.ip))
                .collect();
            let ip = *candidates(n, &range, node, &taken).first()?;
            Some(Endpoint {
                network: n.name.clone(),
                node: node.to_string(),
                ip,
                mac: MacAddr::from_ipv4(ip),
                name: None,
                container: None,
                service: None,
            })
        })
        .collect();
    cluster.endpoints.extend(own);
    for a in list {
        let Some(net) = cluster.network(&a.network) else {
            warnings.push(format!(
                "allocation {} of `{}`: the network is gone",
                a.ip, a.container
            ));
            continue;
        };
        let in_pool = range_for(net, node, false).is_some_and(|r| r.net().contains(&a.ip));
        if !net.attachable || !in_pool || !net.allocatable(a.ip) {
            warnings.push(format!(
                "allocation {} of `{}` in `{}` is outside this node's pool or the network is not attachable",
                a.ip, a.container, a.network
            ));
            continue;
        }
        let mac = a.mac.parse::<MacAddr>().unwrap_or(MacAddr::from_ipv4(a.ip));
        if cluster
            .endpoints_of(&a.network)
            .any(|e| e.ip == a.ip || e.mac == mac)
        {
            warnings.push(format!(
                "allocation {} of `{}` in `{}` collides with a declared endpoint",
                a.ip, a.container, a.network
            ));
            continue;
        }
        cluster.endpoints.push(Endpoint {
            network: a.network.clone(),
            node: node.to_string(),
            ip: a.ip,
            mac,
            name: a.name.clone(),
            container: Some(a.container.clone()),
            service: a.service.clone(),
        });
    }
    crate::config::add_labelled_tasks(&mut cluster.services, &cluster.endpoints);
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str) -> Network {
        let text = format!(
            "[[nodes]]\nname = \"h1\"\naddress = \"198.18.0.1\"\n[[networks]]\nname = \"n\"\nvni = 5\nsubnet = \"{subnet}\"\nattachable = true\nnodes = [\"h1\"]\npools = [{{ node = \"h1\", range = \"{subnet}\" }}]\n"
        );
        crate::config::parse(Path::new("t.toml"), &text)
            .unwrap()
            .networks
            .remove(0)
    }

    #[test]
    fn candidates_skip_reserved_addresses_and_the_taken() {
        let n = net("10.0.9.0/24");
        let taken: HashSet<Ipv4Addr> = ["10.0.9.1".parse().unwrap()].into();
        let c = candidates(&n, &Range::Own(n.subnet), "h1", &taken);
        assert_eq!(c[0], "10.0.9.2".parse::<Ipv4Addr>().unwrap());
        // 254 usable, minus the DNS address, minus a pool of 63 VIPs below
        // it (.191-.253), minus the one taken.
        assert_eq!(c.len(), 254 - 1 - 63 - 1);
        assert!(!c.contains(&"10.0.9.254".parse().unwrap()));
        assert!(!c.contains(&"10.0.9.191".parse().unwrap()));
        assert!(c.contains(&"10.0.9.190".parse().unwrap()));
        assert_eq!(capacity(&n, &Range::Own(n.subnet)), 254 - 1 - 63);
    }

    #[test]
    fn shared_scans_start_where_the_node_name_says() {
        let n = net("10.0.9.0/24");
        let none = HashSet::new();
        let a = candidates(&n, &Range::Shared(n.subnet), "h1", &none);
        let b = candidates(&n, &Range::Shared(n.subnet), "h2", &none);
        assert_eq!(a.len(), b.len());
        assert_ne!(a[0], b[0]);
        let mut sa = a.clone();
        sa.sort();
        let mut sb = b.clone();
        sb.sort();
        assert_eq!(sa, sb, "the same addresses, another order");
    }

    #[test]
    fn the_state_file_round_trips_and_refuses_another_version() {
        let dir = std::env::temp_dir().join(format!("vxmesh-ipam-{}", std::process::id()));
        let path = dir.join("attachments.json");
        let mut l = LocalAllocations::open(&path).unwrap();
        assert!(l.list().is_empty());
        let a = Attachment {
            network: "n".into(),
            ip: "10.0.9.7".parse().unwrap(),
            mac: "02:42:0a:00:09:07".into(),
            container: "cni:abc/eth0".into(),
            name: Some("web-1".into()),
            service: None,
        };
        l.store(vec![a.clone()]).unwrap();
        assert_eq!(LocalAllocations::open(&path).unwrap().list(), &[a]);
        std::fs::write(&path, br#"{"version": 9, "attachments": []}"#).unwrap();
        let e = LocalAllocations::open(&path).unwrap_err().to_string();
        assert!(e.contains("state version 9"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn merge_leaves_out_what_no_longer_fits() {
        let text = "[[nodes]]\nname = \"h1\"\naddress = \"198.18.0.1\"\n[[networks]]\nname = \"n\"\nvni = 5\nsubnet = \"10.0.9.0/24\"\nattachable = true\npools = [{ node = \"h1\", range = \"10.0.9.0/26\" }]\n[[endpoints]]\nnetwork = \"n\"\nnode = \"h1\"\nip = \"10.0.9.1\"\n[[services]]\nname = \"web\"\nnetwork = \"n\"\n";
        let mut c = crate::config::parse(Path::new("t.toml"), text).unwrap();
        let at = |ip: &str, svc: Option<&str>| Attachment {
            network: "n".into(),
            ip: ip.parse().unwrap(),
            mac: MacAddr::from_ipv4(ip.parse().unwrap()).to_string(),
            container: format!("cni:{ip}"),
            name: None,
            service: svc.map(str::to_string),
        };
        let w = merge(
            &mut c,
            "h1",
            &[
                at("10.0.9.5", Some("web")),
                at("10.0.9.100", None),
                at("10.0.9.1", None),
            ],
        );
        assert_eq!(w.len(), 2, "{w:?}");
        // The declared endpoint and the container's: the node has an
        // address of its own already, so none is added.
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(
            c.services[0].tasks,
            vec!["10.0.9.5".parse::<Ipv4Addr>().unwrap()]
        );
    }
}
