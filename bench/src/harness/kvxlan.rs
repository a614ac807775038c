//! The kernel's vxlan device as the reference overlay: one device per host
//! on VNI 4096 and UDP 4789 (as vxmesh's `front`), `nolearning`, MTU 1450,
//! the host's overlay address on it, and a static FDB: an all-zero entry
//! per other host (flooding: ARP) and each other host's MAC. vxmeshd uses
//! the same port and addresses, so the devices exist only while the
//! reference is measured.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context};
use vxmesh_netns::Testbed;

use super::daemon;

/// Bound on each setup command.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// One host of the kernel overlay: its namespace, underlay and overlay
/// addresses.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub ns: &'a str,
    pub underlay: Ipv4Addr,
    pub overlay: Ipv4Addr,
}

/// The device's MAC for an overlay address: `02:42` and the address.
pub fn mac(overlay: Ipv4Addr) -> String {
    let o = overlay.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Creates `dev` in every member (`/prefix` on its overlay address), each
/// with static FDB entries for all the others. Fails before creating
/// anything when a member already has an address of the overlay subnet
/// on some device (a vxmeshd TAP left up would take the same routes).
pub fn up(tb: &Testbed, dev: &str, prefix: u8, members: &[Member]) -> anyhow::Result<()> {
    for m in members {
        let net = format!("{}/{prefix}", m.overlay);
        let held = daemon::run(
            tb,
            m.ns,
            &["ip", "-4", "-o", "addr", "show", "to", &net],
            CMD_TIMEOUT,
        )?;
        if !held.trim().is_empty() {
            bail!(
                "{}: the overlay subnet is already on a device: {}",
                m.ns,
                held.trim()
            );
        }
    }
    for m in members {
        let (local, own) = (m.underlay.to_string(), mac(m.overlay));
        let mut steps = vec![
            format!(
                "ip link add {dev} type vxlan id 4096 dstport 4789 local {local} dev eth0 nolearning"
            ),
            format!("ip link set dev {dev} mtu 1450 address {own}"),
            format!("ip addr add {}/{prefix} dev {dev}", m.overlay),
            format!("ip link set dev {dev} up"),
        ];
        for o in members.iter().filter(|o| o.ns != m.ns) {
            let (remote, omac) = (o.underlay, mac(o.overlay));
            steps.push(format!(
                "bridge fdb append 00:00:00:00:00:00 dev {dev} dst {remote}"
            ));
            steps.push(format!(
                "bridge fdb add {omac} dev {dev} dst {remote} static"
            ));
        }
        for step in &steps {
            let args: Vec<&str> = step.split_whitespace().collect();
            daemon::run(tb, m.ns, &args, CMD_TIMEOUT)
                .with_context(|| format!("kernel vxlan setup in {}", m.ns))?;
        }
    }
    Ok(())
}

/// Deletes `dev` in every member that has it (all tried; the first error
/// is returned). A member without it is no error: `up` may have stopped
/// half way.
pub fn down(tb: &Testbed, dev: &str, members: &[Member]) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = members
        .iter()
        .map(|m| {
            let shown =
                tb.exec_timeout_unchecked(m.ns, &["ip", "link", "show", "dev", dev], CMD_TIMEOUT)?;
            if shown.status.success() {
                daemon::run(tb, m.ns, &["ip", "link", "del", "dev", dev], CMD_TIMEOUT)
                    .with_context(|| format!("deleting {dev} in {}", m.ns))?;
            }
            Ok(())
        })
        .collect();
    results.into_iter().collect()
}
