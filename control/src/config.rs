//! The cluster file: one TOML document, the same on every host, that lists
//! settings, nodes, networks, endpoints and services.
//!
//! Reading a cluster is two steps, shared by both stores: the documents
//! become the raw tables ([`raw`], plain serde types), and [`validate`]
//! checks them against every rule, collecting every problem with the
//! [`raw::Place`] of its value. Each store says where a place is in its own
//! documents: the file as file:line:column ([`parse`]), etcd as the key of
//! the document ([`crate::store::doc`]).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;
use vxmesh_dataplane::mesh::spec::{EndpointMode, ServiceSpec};

use crate::model::{Cluster, Endpoint, Network};

mod mesh;
pub mod raw;
mod services;
mod validate;

pub use mesh::bad_path;
pub use raw::{Invalid, Place, RawFile};
pub use validate::validate;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not tied to a place in the file.
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.reason
            )
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Bytes of VXLAN over IPv4 around an inner frame: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const OVERHEAD: u16 = 50;
/// Longest network name: the TAP is `vxm-<name>` and interface names stop
/// at 15 bytes.
pub const MAX_NETWORK_NAME: usize = 11;
/// Most addresses a node may announce in one network.
pub const MAX_ANNOUNCE_CAP: usize = 65536;
/// Most resolvers one network forwards to (like resolv.conf's three, and one).
pub const MAX_DNS_FORWARD: usize = 4;
/// Largest per-node container range (a /22): every node installs a
/// forwarding entry for each address of the other nodes' ranges.
pub const MAX_POOL_ADDRESSES: u32 = 1024;

/// Line starts of a text, to turn byte offsets into line and column.
struct Lines<'a> {
    file: &'a Path,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(file: &'a Path, text: &str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { file, starts }
    }

    fn error(&self, span: Option<Range<usize>>, reason: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let line = self.starts.partition_point(|&st| st <= s.start);
                (line, s.start - self.starts[line - 1] + 1)
            }
            None => (0, 0),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            reason: reason.into(),
        }
    }
}

/// Reads and validates a cluster file.
pub fn load(path: &Path) -> Result<Cluster, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            reason: format!("cannot read: {e}"),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates a cluster document; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Cluster, ConfigErrors> {
    let lines = Lines::new(path, text);
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![lines.error(e.span(), e.message().trim().to_string())]))?;
    // The spans are only needed to report errors: parsed again then.
    let mut tree: Option<Spanned<DeTable>> = None;
    validate(&raw, |e| {
        let tree = tree.get_or_insert_with(|| DeTable::parse(text).expect("parsed once already"));
        lines.error(Some(span_of(tree, &e.place)), e.reason)
    })
    .map_err(ConfigErrors)
}

/// The span of the value at `place` in a parsed document; of the deepest
/// part of it that is there when the value itself is not (a default).
fn span_of(root: &Spanned<DeTable>, place: &Place) -> Range<usize> {
    let mut span = root.span();
    let Some(mut cur) = lookup(root.get_ref(), place.table.name()) else {
        return span;
    };
    if let DeValue::Array(a) = cur.get_ref() {
        match a.get(place.index) {
            Some(v) => cur = v,
            None => return cur.span(),
        }
    }
    span = cur.span();
    for step in &place.steps {
        let next = match (step, cur.get_ref()) {
            (raw::Step::Key(k), DeValue::Table(t)) => lookup(t, k),
            (raw::Step::Index(i), DeValue::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => {
                cur = v;
                span = cur.span();
            }
            None => break,
        }
    }
    span
}

fn lookup<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    t.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
}

/// Endpoints that name a service are its tasks (containers started with a
/// selector), after the tasks the service lists itself.
pub fn add_labelled_tasks(services: &mut [ServiceSpec], endpoints: &[Endpoint]) {
    let labelled: Vec<&Endpoint> = endpoints.iter().filter(|e| e.service.is_some()).collect();
    if labelled.is_empty() {
        return;
    }
    for s in services {
        for e in &labelled {
            if e.network == s.network
                && e.service.as_deref() == Some(s.name.as_str())
                && !s.tasks.contains(&e.ip)
            {
                s.tasks.push(e.ip);
            }
        }
    }
}

/// FNV-1a (32 bit) of a service name: where its VIP search starts. Fixed
/// and documented, so every node (whatever built it) allocates the same.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// Gives every `vip`-mode service without a configured VIP one from its
/// network's pool: the quarter of the subnet's usable addresses just below
/// the DNS address. A service starts at `fnv1a(name) % pool` and walks down
/// (wrapping) to the first address no configured VIP and no service before
/// it (in name order) took. The result depends only on the network and the
/// services' names and configured VIPs: the same on every node, and a
/// service keeps its VIP when others come and go unless they collide.
/// Returns the services that found no free address.
pub fn allocate_vips(networks: &[Network], services: &mut [ServiceSpec]) -> Vec<String> {
    let mut failed = Vec::new();
    let mut order: Vec<usize> = (0..services.len()).collect();
    order.sort_by(|a, b| services[*a].name.cmp(&services[*b].name));
    for net in networks {
        let mut taken: HashSet<Ipv4Addr> = services
            .iter()
            .filter(|s| s.network == net.name)
            .filter_map(|s| s.vip)
            .collect();
        taken.insert(net.dns);
        let first = u32::from(net.subnet.network()) + 1;
        let below = u32::from(net.dns).saturating_sub(first);
        let hosts = (1u64 << (32 - net.subnet.prefix_len())).saturating_sub(2);
        let pool = ((hosts / 4).max(1) as u32).min(below);
        for &i in &order {
            let s = &mut services[i];
            if s.network != net.name || s.vip.is_some() || s.endpoint_mode != EndpointMode::Vip {
                continue;
            }
            let start = if pool == 0 { 0 } else { fnv1a(&s.name) % pool };
            let found = (0..pool)
                .map(|k| Ipv4Addr::from(u32::from(net.dns) - 1 - (start + k) % pool))
                .find(|ip| !taken.contains(ip));
            match found {
                Some(ip) => {
                    taken.insert(ip);
                    s.vip = Some(ip);
                }
                None => failed.push(s.name.clone()),
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::Settings;

    const BASE: &str = r#"
[[nodes]]
name = "h1"
address = "198.18.0.1"
[[networks]]
name = "front"
vni = 1
subnet = "10.0.9.0/24"
[[endpoints]]
network = "front"
node = "h1"
ip = "10.0.9.1"
"#;

    fn svc(name: &str, extra: &str) -> String {
        format!("[[services]]\nname = \"{name}\"\nnetwork = \"front\"\n{extra}\n")
    }

    #[test]
    fn vips_are_allocated_from_the_pool_and_stable() {
        let c = parse(
            Path::new("t"),
            &format!(
                "{BASE}{}{}",
                svc("web", ""),
                svc("db", "endpoint_mode = \"dnsrr\"")
            ),
        )
        .unwrap();
        let net = &c.networks[0];
        assert_eq!(net.dns, Ipv4Addr::new(10, 0, 9, 254));
        assert_eq!(net.domain, "vxmesh");
        let web = c.services[0].vip.expect("web has a VIP");
        // The pool: the 63 addresses below .254.
        assert!((191..=253).contains(&web.octets()[3]), "{web}");
        assert_eq!(c.services[1].vip, None, "dnsrr has no VIP");
        // Adding a service (in front, in file order) keeps web's VIP.
        let c2 = parse(
            Path::new("t"),
            &format!("{BASE}{}{}", svc("aaa", ""), svc("web", "")),
        )
        .unwrap();
        assert_eq!(c2.services[1].vip, Some(web));
        assert_ne!(c2.services[0].vip, Some(web));
    }

    #[test]
    fn bad_discovery_settings_name_their_line() {
        let text = format!(
            "{}{}{}",
            BASE.replace(
                "subnet = \"10.0.9.0/24\"",
                "subnet = \"10.0.9.0/24\"\ndomain = \"a..b\""
            ),
            svc("web", "vip = \"10.0.8.1\""),
            svc("db", "endpoint_mode = \"dnsrr\"\nvip = \"10.0.9.50\""),
        );
        let errs = parse(Path::new("t"), &text).unwrap_err().to_string();
        assert!(errs.contains("domain `a..b`"), "{errs}");
        assert!(
            errs.contains("vip 10.0.8.1 must be a usable address"),
            "{errs}"
        );
        assert!(errs.contains("a `dnsrr` service has no VIP"), "{errs}");
        let on_dns = BASE.replace("ip = \"10.0.9.1\"", "ip = \"10.0.9.254\"");
        let errs = parse(Path::new("t"), &on_dns).unwrap_err().to_string();
        assert!(errs.contains("DNS address"), "{errs}");
    }

    #[test]
    fn dns_forward_takes_addresses_and_refuses_loops_with_their_line() {
        let with = |list: &str| {
            BASE.replace(
                "subnet = \"10.0.9.0/24\"",
                &format!("subnet = \"10.0.9.0/24\"\ndns_forward = [{list}]"),
            )
        };
        let c = parse(
            Path::new("t"),
            &with("\"198.18.0.53\", \"198.18.0.54:5353\""),
        )
        .unwrap();
        let want: Vec<SocketAddr> = vec![
            "198.18.0.53:53".parse().unwrap(),
            "198.18.0.54:5353".parse().unwrap(),
        ];
        assert_eq!(c.networks[0].dns_forward, want);
        assert!(parse(Path::new("t"), BASE).unwrap().networks[0]
            .dns_forward
            .is_empty());
        let errs = parse(
            Path::new("t"),
            &with("\"resolver\", \"10.0.9.254\", \"0.0.0.0:53\""),
        )
        .unwrap_err()
        .to_string();
        assert!(errs.contains("t:9:"), "the line: {errs}");
        assert!(
            errs.contains("dns_forward `resolver` must be an address"),
            "{errs}"
        );
        assert!(errs.contains("own DNS responder"), "{errs}");
        assert!(errs.contains("needs a real address"), "{errs}");
        let five = with(&["\"198.18.0.53\""; 5].join(", "));
        let errs = parse(Path::new("t"), &five).unwrap_err().to_string();
        assert!(errs.contains("at most 4 resolvers"), "{errs}");
    }

    #[test]
    fn busy_poll_is_off_by_default_and_bounded() {
        let c = parse(Path::new("t"), BASE).unwrap();
        assert_eq!(c.settings.busy_poll_us, 0);
        let c = parse(
            Path::new("t"),
            &format!("[settings]\nbusy_poll_us = 200\n{BASE}"),
        )
        .unwrap();
        assert_eq!(c.settings.busy_poll_us, 200);
        let errs = parse(
            Path::new("t"),
            &format!("[settings]\nbusy_poll_us = 20000\n{BASE}"),
        )
        .unwrap_err()
        .to_string();
        assert!(errs.contains("t:2:"), "the line: {errs}");
        assert!(
            errs.contains("busy_poll_us must be 0 (off) to 10000, not 20000"),
            "{errs}"
        );
    }

    #[test]
    fn queues_default_to_the_cpus_and_too_many_are_refused_with_their_line() {
        let c = parse(Path::new("t"), BASE).unwrap();
        assert_eq!(c.settings.queues, 0);
        assert!((1..=Settings::MAX_QUEUES).contains(&c.settings.effective_queues()));
        let c = parse(Path::new("t"), &format!("[settings]\nqueues = 3\n{BASE}")).unwrap();
        assert_eq!(c.settings.effective_queues(), 3);
        let errs = parse(Path::new("t"), &format!("[settings]\nqueues = 99\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(errs.contains("t:2"), "{errs}");
        assert!(
            errs.contains("queues must be 0 (one per CPU) to 16, not 99"),
            "{errs}"
        );
    }

    #[test]
    fn encrypted_networks_take_keys_and_a_smaller_mtu_and_bad_keys_name_their_line() {
        let key = vxmesh_dataplane::crypto::NodeKey::generate()
            .public()
            .to_string();
        let keyed = BASE.replace(
            "address = \"198.18.0.1\"",
            &format!("address = \"198.18.0.1\"\npublic_key = \"{key}\""),
        );
        let sealed = keyed.replace(
            "subnet = \"10.0.9.0/24\"",
            "subnet = \"10.0.9.0/24\"\nencrypted = true",
        );
        let c = parse(
            Path::new("t"),
            &format!("[settings]\nrekey_seconds = 30\n{sealed}"),
        )
        .unwrap();
        assert!(c.networks[0].encrypted);
        assert_eq!(c.networks[0].mtu, 1500 - 50 - 32);
        assert_eq!(
            c.nodes[0].public_key.map(|k| k.to_string()),
            Some(key.clone())
        );
        assert_eq!(c.settings.rekey().after, std::time::Duration::from_secs(30));
        // A plain network keeps the full MTU; an encrypted one cannot have it.
        assert_eq!(parse(Path::new("t"), &keyed).unwrap().networks[0].mtu, 1450);
        let too_big = sealed.replace("encrypted = true", "encrypted = true\nmtu = 1450");
        let errs = parse(Path::new("t"), &too_big).unwrap_err().to_string();
        assert!(errs.contains("mtu 1450 must be 576 to 1418"), "{errs}");
        assert!(errs.contains("minus 82, encrypted"), "{errs}");
        let bad = keyed.replace(&key, "not-a-key");
        let errs = parse(Path::new("t"), &bad).unwrap_err().to_string();
        assert!(
            errs.contains("t:5") && errs.contains("public_key"),
            "{errs}"
        );
        let twice = format!(
            "{keyed}[[nodes]]\nname = \"h2\"\naddress = \"198.18.0.2\"\npublic_key = \"{key}\"\n"
        );
        let errs = parse(Path::new("t"), &twice).unwrap_err().to_string();
        assert!(errs.contains("used by two nodes"), "{errs}");
        let fast = format!("[settings]\nrekey_seconds = 0\n{keyed}");
        let errs = parse(Path::new("t"), &fast).unwrap_err().to_string();
        assert!(errs.contains("rekey_seconds must be 1 to 86400"), "{errs}");
    }

    #[test]
    fn the_relay_port_cannot_be_published() {
        let text = format!(
            "[settings]\nmesh_relay_port = 8080\n{BASE}{}",
            svc(
                "web",
                "tasks = [\"10.0.9.1\"]\nports = [{ published = 8080, target = 80 }]"
            )
        );
        let errs = parse(Path::new("t"), &text).unwrap_err().to_string();
        assert!(
            errs.contains("mesh_relay_port 8080 is published by service `web`"),
            "{errs}"
        );
        let off = text.replace("mesh_relay_port = 8080", "mesh_relay_port = 0");
        assert!(parse(Path::new("t"), &off).is_ok());
    }
}
