//! The paths `overlay` measures, brought up and down on the testbed: the
//! kernel's vxlan (with and without offloads) and vxmeshd.

use super::*;

/// Runs a bounded command in a host and returns its stdout.
pub(crate) fn run(tb: &Testbed, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    daemon::run(tb, ns, args, CMD_TIMEOUT)
}

/// Creates `vxk0` in h1 and h2: kernel vxlan, VNI 4096, port 4789, static
/// FDB (an all-zero entry for flooding to the other host, and its MAC).
/// Returns the devices' details for the report.
pub(crate) fn kernel_up(tb: &Testbed) -> anyhow::Result<serde_json::Map<String, Value>> {
    for (me, other) in [(0usize, 1usize), (1, 0)] {
        let h = format!("h{}", me + 1);
        let (local, remote) = (UL[me].to_string(), UL[other].to_string());
        let mac = format!("02:42:0a:00:09:{:02x}", me + 1);
        let other_mac = format!("02:42:0a:00:09:{:02x}", other + 1);
        let addr = format!("{}/24", OV[me]);
        let steps = [
            format!(
                "ip link add vxk0 type vxlan id 4096 dstport 4789 local {local} dev eth0 nolearning"
            ),
            format!("ip link set dev vxk0 mtu 1450 address {mac}"),
            format!("ip addr add {addr} dev vxk0"),
            "ip link set dev vxk0 up".to_string(),
            format!("bridge fdb append 00:00:00:00:00:00 dev vxk0 dst {remote}"),
            format!("bridge fdb add {other_mac} dev vxk0 dst {remote} static"),
        ];
        for step in &steps {
            let args: Vec<&str> = step.split_whitespace().collect();
            run(tb, &h, &args).with_context(|| format!("kernel vxlan setup in {h}"))?;
        }
    }
    let mut setup = serde_json::Map::new();
    setup.insert(
        "h1: ip -d link show vxk0".into(),
        run(tb, "h1", &["ip", "-d", "link", "show", "dev", "vxk0"])?.into(),
    );
    setup.insert(
        "h1: bridge fdb show dev vxk0".into(),
        run(tb, "h1", &["bridge", "fdb", "show", "dev", "vxk0"])?.into(),
    );
    setup.insert(
        "h1: offloads of vxk0".into(),
        offloads(tb, "h1", "vxk0")?.into(),
    );
    Ok(setup)
}

/// `ethtool -K vxk0 tso off gso off gro off` in both hosts.
pub(crate) fn kernel_offloads_off(tb: &Testbed) -> anyhow::Result<serde_json::Map<String, Value>> {
    for h in ["h1", "h2"] {
        run(
            tb,
            h,
            &[
                "ethtool", "-K", "vxk0", "tso", "off", "gso", "off", "gro", "off",
            ],
        )
        .with_context(|| format!("turning offloads off on vxk0 in {h}"))?;
    }
    let mut setup = serde_json::Map::new();
    setup.insert(
        "h1: offloads of vxk0".into(),
        offloads(tb, "h1", "vxk0")?.into(),
    );
    Ok(setup)
}

/// Deletes `vxk0` in both hosts (both tried; the first error is returned).
pub(crate) fn kernel_down(tb: &Testbed) -> anyhow::Result<()> {
    let results: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| run(tb, h, &["ip", "link", "del", "dev", "vxk0"]))
        .collect();
    for r in results {
        r.context("deleting vxk0")?;
    }
    Ok(())
}

/// Writes the cluster file and starts vxmeshd in h1 and h2, each waited for
/// until READY=1.
/// Writes the daemons' cluster file (one per testbed) and returns its path.
pub(crate) fn vxmesh_up(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cluster: &str,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    daemon::start_daemons(tb, vxmeshd, cluster, &["h1", "h2"], READY_TIMEOUT)
}
