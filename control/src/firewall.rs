//! The node's own nftables table, `inet vxmesh_<node>`: what the kernel
//! must refuse around the addresses and devices vxmesh puts in the host
//! namespace.
//!
//! - **DNS and VIPs answer only their network.** They are addresses on the
//!   network's TAP (or bridge), and a host answers for its addresses on any
//!   interface: without a rule, the underlay and other networks' workloads
//!   reach them too. Input to them is accepted only when it arrives on the
//!   network's own devices (or loopback, the node itself) from the
//!   network's subnet.
//! - **No routing into or out of the overlay.** With forwarding on (Docker
//!   turns it on), the host would route between the underlay and the
//!   overlay, past the VXLAN membership check. vxmesh forwards nothing in
//!   the kernel (the mesh proxies in userspace), so every routed packet
//!   from or to a `vxm-*` or `vxb-*` device is dropped. Frames bridged
//!   within one network's bridge (seen here when `br_netfilter` is loaded)
//!   stay accepted.
//!
//! - **A container speaks only for itself, to its neighbours too.** The
//!   overlay core checks what crosses the TAP, but containers on one bridge
//!   reach each other and the host directly. The table `bridge
//!   vxmesh_<node>` holds, for each container's port, its MAC and address:
//!   a frame from the port with another source MAC, an ARP with another
//!   sender, an IPv4 packet from another address, a VLAN tag, a router
//!   advertisement or redirect, or a DHCP server message (unless the network
//!   allows them) is dropped before the bridge sees it.
//!
//! Each drop rule counts and carries a comment naming the network and the
//! rule, so `nft list table inet vxmesh_<node>` shows which fired. The table
//! is replaced whole in one `nft -f` transaction when it changes, and
//! deleted when the daemon stops.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What the table needs to know of one network on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRules {
    pub name: String,
    /// The devices its traffic arrives on: the TAP, and the bridge when
    /// containers attach.
    pub devices: Vec<String>,
    pub bridge: Option<String>,
    pub subnet: (Ipv4Addr, u8),
    /// The addresses only the network may reach: its DNS and VIPs.
    pub guarded: Vec<Ipv4Addr>,
    /// This node's containers on the network's bridge.
    pub ports: Vec<Port>,
    /// The network lets workloads send router advertisements / DHCP
    /// server messages.
    pub allow_ra: bool,
    pub allow_dhcp: bool,
}

/// One container's port on a bridge: the host end of its veth, and the MAC
/// and address it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub dev: String,
    pub mac: vxmesh_dataplane::wire::MacAddr,
    pub ip: Ipv4Addr,
}

/// The table of one daemon, and what was last written.
#[derive(Debug)]
pub struct Firewall {
    table: String,
    last: Option<String>,
}

/// The table's name for `node`: nftables names take letters, digits and
/// underscores, so anything else in the node name becomes `_`.
pub fn table_name(node: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("vxmesh_{safe}")
}

impl Firewall {
    pub fn new(node: &str) -> Firewall {
        Firewall {
            table: table_name(node),
            last: None,
        }
    }

    /// The whole table for `nets`, as `nft -f` input that replaces any
    /// earlier copy atomically.
    pub fn ruleset(&self, nets: &[NetRules]) -> String {
        let t = &self.table;
        let mut s = String::new();
        // `add` then `delete`: the delete never fails, whether or not a
        // table was there; all of it is one transaction.
        let _ = writeln!(s, "add table inet {t}\ndelete table inet {t}");
        let _ = writeln!(s, "table inet {t} {{");
        let _ = writeln!(
            s,
            "  chain input {{\n    type filter hook input priority -10; policy accept;"
        );
        for n in nets.iter().filter(|n| !n.guarded.is_empty()) {
            let addrs = join(n.guarded.iter().map(|a| a.to_string()));
            let devs = join(
                n.devices
                    .iter()
                    .map(|d| format!("\"{d}\""))
                    .chain(["\"lo\"".to_string()]),
            );
            let (net, len) = n.subnet;
            let name = &n.name;
            let _ = writeln!(
                s,
                "    ip daddr {{ {addrs} }} iifname != {{ {devs} }} counter drop comment \"{name}: dns/vip from another device\""
            );
            let _ = writeln!(
                s,
                "    ip daddr {{ {addrs} }} ip saddr != {net}/{len} counter drop comment \"{name}: dns/vip from outside the subnet\""
            );
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  chain forward {{\n    type filter hook forward priority -10; policy accept;"
        );
        for n in nets {
            if let Some(br) = &n.bridge {
                let _ = writeln!(
                    s,
                    "    iifname \"{br}\" oifname \"{br}\" accept comment \"{}: bridged\"",
                    n.name
                );
            }
        }
        for (dir, prefix) in [
            ("iifname", "vxm-"),
            ("oifname", "vxm-"),
            ("iifname", "vxb-"),
            ("oifname", "vxb-"),
        ] {
            let _ = writeln!(
                s,
                "    {dir} \"{prefix}*\" counter drop comment \"routed {} overlay\"",
                if dir == "iifname" {
                    "out of the"
                } else {
                    "into the"
                }
            );
        }
        let _ = writeln!(s, "  }}\n}}");
        // The bridge family only where containers are: a kernel without
        // it still gets the rest.
        if nets.iter().any(|n| !n.ports.is_empty()) {
            let _ = writeln!(s, "add table bridge {t}\ndelete table bridge {t}");
            let _ = writeln!(s, "table bridge {t} {{");
            let _ = writeln!(
                s,
                "  chain prerouting {{\n    type filter hook prerouting priority -10; policy accept;"
            );
            for n in nets {
                for p in &n.ports {
                    port_rules(&mut s, n, p);
                }
            }
            let _ = writeln!(s, "  }}\n}}");
        }
        s
    }

    /// Writes the table for `nets` when it differs from what was last
    /// written. A failure (no `nft`, no nf_tables) leaves the last table in
    /// place and is returned for the caller to log.
    pub fn sync(&mut self, nets: &[NetRules]) -> io::Result<()> {
        let text = self.ruleset(nets);
        if self.last.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        nft(&text)?;
        self.last = Some(text);
        Ok(())
    }

    /// Deletes both tables, whoever wrote them (`vxmeshd --cleanup`, or
    /// the network's removal from the node).
    pub fn remove(&mut self) {
        self.last = None;
        let t = &self.table;
        // `add` first: deleting a table that is not there is an error.
        let text = format!(
            "add table inet {t}\ndelete table inet {t}\nadd table bridge {t}\ndelete table bridge {t}\n"
        );
        if let Err(e) = nft(&text) {
            tracing::warn!(table = %t, error = %e, "nftables table not removed");
        }
    }
}

/// The drop rules of one container's port (see the module's page).
fn port_rules(s: &mut String, n: &NetRules, p: &Port) {
    let (dev, mac, ip) = (&p.dev, p.mac, p.ip);
    let who = format!("{} {ip}", n.name);
    let mut rule = |m: &str, what: &str| {
        let _ = writeln!(
            s,
            "    iifname \"{dev}\" {m} counter drop comment \"{who}: {what}\""
        );
    };
    rule(&format!("ether saddr != {mac}"), "spoofed mac");
    rule("ether type { 8021q, 8021ad }", "vlan tag");
    rule(&format!("arp saddr ether != {mac}"), "spoofed arp mac");
    // 0.0.0.0: an ARP probe (RFC 5227) claims nothing.
    rule(
        &format!("arp saddr ip != {{ {ip}, 0.0.0.0 }}"),
        "spoofed arp ip",
    );
    rule(&format!("ip saddr != {{ {ip}, 0.0.0.0 }}"), "spoofed ip");
    if !n.allow_ra {
        rule(
            "icmpv6 type { nd-router-advert, nd-redirect }",
            "rogue router",
        );
        rule("icmp type redirect", "rogue router");
    }
    if !n.allow_dhcp {
        rule("udp sport 67 udp dport 68", "rogue dhcp");
        rule("udp dport 546", "rogue dhcp");
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Runs `nft -f -` with `input`.
fn nft(input: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running nft: {e} (is nftables installed?)"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "nft -f refused the table: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<NetRules> {
        vec![
            NetRules {
                name: "front".into(),
                devices: vec!["vxm-front".into(), "vxb-front".into()],
                bridge: Some("vxb-front".into()),
                subnet: (Ipv4Addr::new(10, 0, 9, 0), 24),
                guarded: vec![Ipv4Addr::new(10, 0, 9, 254), Ipv4Addr::new(10, 0, 9, 216)],
                ports: vec![Port {
                    dev: "vxh0011aabb".into(),
                    mac: vxmesh_dataplane::wire::MacAddr([2, 0x42, 10, 0, 9, 17]),
                    ip: Ipv4Addr::new(10, 0, 9, 17),
                }],
                allow_ra: false,
                allow_dhcp: true,
            },
            NetRules {
                name: "back".into(),
                devices: vec!["vxm-back".into()],
                bridge: None,
                subnet: (Ipv4Addr::new(10, 1, 0, 0), 16),
                guarded: vec![Ipv4Addr::new(10, 1, 255, 254)],
                ports: Vec::new(),
                allow_ra: false,
                allow_dhcp: false,
            },
        ]
    }

    #[test]
    fn the_table_guards_each_networks_addresses_and_the_overlay_devices() {
        let fw = Firewall::new("h-1.example");
        let r = fw.ruleset(&nets());
        assert!(r.starts_with(
            "add table inet vxmesh_h_1_example\ndelete table inet vxmesh_h_1_example\n"
        ));
        assert!(r.contains(
            "ip daddr { 10.0.9.254, 10.0.9.216 } iifname != { \"vxm-front\", \"vxb-front\", \"lo\" } counter drop"
        ));
        assert!(
            r.contains("ip daddr { 10.0.9.254, 10.0.9.216 } ip saddr != 10.0.9.0/24 counter drop")
        );
        assert!(r.contains("ip daddr { 10.1.255.254 } ip saddr != 10.1.0.0/16 counter drop"));
        assert!(r.contains("iifname \"vxb-front\" oifname \"vxb-front\" accept"));
        // The accept for bridged frames comes before the drops.
        let accept = r.find("oifname \"vxb-front\" accept").unwrap();
        for drop in [
            "iifname \"vxm-*\" counter drop",
            "oifname \"vxb-*\" counter drop",
        ] {
            assert!(r.find(drop).unwrap() > accept, "{drop}");
        }
    }

    /// `nft -c -f -` on `text`: Ok, or what nft said.
    fn nft_check(text: &str) -> Result<(), String> {
        let mut c = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft is installed (tests/run.sh installs nftables)");
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    #[test]
    fn the_table_nft_accepts() {
        // `nft -c` parses and checks without touching the kernel's tables
        // (it still needs nf_tables, which every test host has).
        nft_check(&Firewall::new("h1").ruleset(&nets())).unwrap();
    }
}
