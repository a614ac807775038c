//! Device plumbing for attached containers: the per-network bridge that
//! holds the TAP, and the veth pairs that hang containers off it.
//!
//! These run at attach and reconcile time, never per packet, so they drive
//! iproute2's `ip` (and `nsenter` for a container's namespace) rather than
//! hand-written rtnetlink: a veth pair whose peer lands in another
//! namespace, renamed, addressed and routed there, is a dozen netlink
//! messages with nested attributes, which `ip` has carried correctly for
//! twenty years. Every failure names the command and what it printed.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::wire::MacAddr;

/// Runs `prog args...`; an error carries the command line and its stderr.
fn run(prog: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {prog}: {e}")))?;
    finished(prog, args, &out)
}

/// Ok for a command that succeeded; otherwise an error with the command
/// line and what it printed on stderr.
fn finished(prog: &str, args: &[&str], out: &std::process::Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "`{prog} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> io::Result<()> {
    run("ip", args)
}

/// Runs `ip args...` inside the network namespace at `netns` (a path such
/// as `/proc/<pid>/ns/net` or `/run/netns/<name>`).
pub fn ip_in(netns: &Path, args: &[&str]) -> io::Result<()> {
    let ns = format!("--net={}", netns.display());
    let mut all = vec![ns.as_str(), "ip"];
    all.extend_from_slice(args);
    run("nsenter", &all)
}

/// True for a name Linux takes for an interface (1 to 15 bytes, no
/// whitespace, `/` or `:`).
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// True when an interface of that name exists in this namespace. (Not
/// through /sys/class/net: a daemon started with `nsenter --net` sees the
/// sysfs of the namespace it came from.)
pub fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Makes `dev` (a TAP or a bridge) deaf to router advertisements and
/// redirects (IPv6 and IPv4): a workload must not plant routes or
/// addresses on the host, whatever reaches the device.
pub fn refuse_router_traffic(dev: &str) {
    for (family, knob) in [
        ("ipv6", "accept_ra"),
        ("ipv6", "accept_redirects"),
        ("ipv4", "accept_redirects"),
        ("ipv4", "send_redirects"),
    ] {
        let p = format!("/proc/sys/net/{family}/conf/{dev}/{knob}");
        if let Err(e) = std::fs::write(&p, "0") {
            // IPv6 may be off in this kernel or namespace: nothing to refuse.
            tracing::debug!(path = %p, error = %e, "setting not written");
        }
    }
}

/// Replaces the permanent neighbour entries vxmesh keeps on `dev`: `old`
/// is what the last call installed, `new` what should be there now. Only
/// the difference is written, in one `ip -batch` run. Permanent entries are
/// never replaced by ARP, so no workload can redirect the node's own
/// traffic (the mesh's, the probes') by answering for another endpoint.
pub fn sync_neighbours(
    dev: &str,
    old: &std::collections::BTreeMap<Ipv4Addr, MacAddr>,
    new: &std::collections::BTreeMap<Ipv4Addr, MacAddr>,
) -> io::Result<()> {
    use std::fmt::Write as _;
    let mut batch = String::new();
    for ip in old.keys().filter(|ip| !new.contains_key(ip)) {
        let _ = writeln!(batch, "neigh del {ip} dev {dev}");
    }
    for (ip, mac) in new.iter().filter(|(ip, mac)| old.get(ip) != Some(mac)) {
        let _ = writeln!(
            batch,
            "neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
        );
    }
    if batch.is_empty() {
        return Ok(());
    }
    // `-force`: one entry already gone (a device flap) must not stop the
    // rest of the batch.
    run_with_input("ip", &["-force", "-batch", "-"], &batch)
}

/// Runs `prog args...` with `input` on its standard input.
fn run_with_input(prog: &str, args: &[&str], input: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    finished(prog, args, &out)
}

/// Makes sure bridge `name` exists with `mac` and `mtu` and is up; returns
/// true when it had to be created (false: one left by an earlier run, with
/// its container ports, is reused).
pub fn ensure_bridge(name: &str, mac: MacAddr, mtu: u16) -> io::Result<bool> {
    let created = !exists(name);
    if created {
        ip(&["link", "add", "name", name, "type", "bridge"])?;
    }
    let (mac, mtu) = (mac.to_string(), mtu.to_string());
    ip(&[
        "link", "set", "dev", name, "address", &mac, "mtu", &mtu, "up",
    ])?;
    refuse_router_traffic(name);
    Ok(created)
}

/// Makes `port` a port of `bridge`, up.
pub fn set_master(port: &str, bridge: &str) -> io::Result<()> {
    ip(&["link", "set", "dev", port, "master", bridge, "up"])
}

/// Sets the MTU of `dev`.
pub fn set_mtu(dev: &str, mtu: u16) -> io::Result<()> {
    ip(&["link", "set", "dev", dev, "mtu", &mtu.to_string()])
}

/// Deletes `dev` (with a veth, its peer too); a device already gone is no
/// error.
pub fn delete(dev: &str) -> io::Result<()> {
    if !exists(dev) {
        return Ok(());
    }
    match ip(&["link", "del", "dev", dev]) {
        Err(_) if !exists(dev) => Ok(()),
        r => r,
    }
}

/// The IPv4 addresses on `dev` now (`ip -o -4 addr show`): what a device
/// an earlier run left carries, so that a restart changes only what the
/// desired state changed instead of removing and adding them all.
pub fn addresses(dev: &str) -> io::Result<std::collections::BTreeSet<(Ipv4Addr, u8)>> {
    let args = ["-o", "-4", "addr", "show", "dev", dev];
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running ip: {e}")))?;
    finished("ip", &args, &out)?;
    Ok(parse_addresses(&String::from_utf8_lossy(&out.stdout)))
}

/// The `inet A/P` fields of `ip -o -4 addr` lines.
fn parse_addresses(text: &str) -> std::collections::BTreeSet<(Ipv4Addr, u8)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet")?;
            let (ip, prefix) = w.next()?.split_once('/')?;
            Some((ip.parse().ok()?, prefix.parse().ok()?))
        })
        .collect()
}

/// Adds `ip/prefix` to `dev` with global scope (so the prefix route it
/// brings can be used as a source for the subnet); already there is fine.
pub fn add_address(dev: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    ip_replace(dev, ip, prefix, "replace")
}

/// Removes `ip/prefix` from `dev`; not there is fine.
pub fn del_address(dev: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    match ip_replace(dev, ip, prefix, "del") {
        Err(e) if e.to_string().contains("Cannot assign requested address") => Ok(()),
        r => r,
    }
}

fn ip_replace(dev: &str, addr: Ipv4Addr, prefix: u8, verb: &str) -> io::Result<()> {
    let a = format!("{addr}/{prefix}");
    ip(&["-4", "addr", verb, &a, "dev", dev])
}

/// One container's link: a veth pair whose host end is a port of the
/// network's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    /// Host end, on the bridge (`vxh<id>`).
    pub host: String,
    /// Container end before it is moved and renamed (`vxc<id>`).
    pub peer: String,
}

impl Veth {
    /// The pair's names for an attachment key: 8 hex digits of a fixed
    /// hash (FNV-1a), so the same container always gets the same names
    /// and a stale pair from a crash is found again.
    pub fn for_key(key: &str) -> Veth {
        let h = key.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ b as u32).wrapping_mul(0x0100_0193)
        });
        Veth {
            host: format!("vxh{h:08x}"),
            peer: format!("vxc{h:08x}"),
        }
    }
}

/// Creates `v` (replacing a stale pair of the same names) with `mtu`, the
/// container end's MAC `mac`, and the host end on `bridge`, up.
pub fn create_veth(v: &Veth, mtu: u16, mac: MacAddr, bridge: &str) -> io::Result<()> {
    delete(&v.host)?;
    delete(&v.peer)?;
    let (mtu, mac) = (mtu.to_string(), mac.to_string());
    ip(&[
        "link", "add", "name", &v.host, "mtu", &mtu, "type", "veth", "peer", "name", &v.peer,
        "mtu", &mtu, "address", &mac,
    ])?;
    if let Err(e) = set_master(&v.host, bridge) {
        let _ = delete(&v.host);
        return Err(e);
    }
    refuse_router_traffic(&v.host);
    Ok(())
}

/// Moves the container end of `v` into `netns`, names it `ifname` and gives
/// it `ip/prefix`, up (with the namespace's loopback). On error the pair
/// is removed.
pub fn move_into(v: &Veth, netns: &Path, ifname: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let ns = netns.display().to_string();
    let addr = format!("{ip}/{prefix}");
    let r = self::ip(&["link", "set", "dev", &v.peer, "netns", &ns])
        .and_then(|()| ip_in(netns, &["link", "set", "dev", &v.peer, "name", ifname]))
        .and_then(|()| ip_in(netns, &["addr", "add", &addr, "dev", ifname]))
        .and_then(|()| ip_in(netns, &["link", "set", "dev", ifname, "up"]))
        .and_then(|()| ip_in(netns, &["link", "set", "dev", "lo", "up"]));
    if r.is_err() {
        let _ = delete(&v.host);
    }
    r
}

/// True when `netns` has an interface `ifname` holding `ip`.
pub fn has_address(netns: &Path, ifname: &str, ip: Ipv4Addr) -> bool {
    let ns = format!("--net={}", netns.display());
    Command::new("nsenter")
        .args([ns.as_str(), "ip", "-4", "-o", "addr", "show", "dev", ifname])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {ip}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_fit_an_interface_name() {
        let a = Veth::for_key("docker:4f1c");
        assert_eq!(a, Veth::for_key("docker:4f1c"));
        assert_ne!(a, Veth::for_key("docker:4f1d"));
        assert_eq!(a.host.len(), 11);
        assert!(a.host.starts_with("vxh") && a.peer.starts_with("vxc"));
        assert_eq!(a.host[3..], a.peer[3..]);
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_ip_lines() {
        let text = "7: vxb-front    inet 10.0.9.1/24 brd 10.0.9.255 scope global vxb-front\\       valid_lft forever preferred_lft forever\n\
                    7: vxb-front    inet 10.0.9.254/32 scope host vxb-front\\       valid_lft forever preferred_lft forever\n";
        let got: Vec<_> = parse_addresses(text).into_iter().collect();
        assert_eq!(
            got,
            vec![
                ("10.0.9.1".parse().unwrap(), 24),
                ("10.0.9.254".parse().unwrap(), 32)
            ]
        );
    }
}
