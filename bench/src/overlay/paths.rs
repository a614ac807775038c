//! The paths `overlay` measures, brought up and down on the testbed: the
//! kernel's vxlan (with and without offloads) and vxmeshd.

use super::*;
use crate::harness::kvxlan;

/// Runs a bounded command in a host and returns its stdout.
pub(crate) fn run(tb: &Testbed, ns: &str, args: &[&str]) -> anyhow::Result<String> {
    daemon::run(tb, ns, args, CMD_TIMEOUT)
}

/// Creates `vxk0` in h1 and h2 (see [`kvxlan::up`]: VNI 4096, port 4789,
/// static FDB). Returns the devices' details for the report.
pub(crate) fn kernel_up(tb: &Testbed) -> anyhow::Result<serde_json::Map<String, Value>> {
    kvxlan::up(tb, "vxk0", 24, &MEMBERS)?;
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
    kvxlan::down(tb, "vxk0", &MEMBERS)
}

/// h1 and h2 as members of the kernel's overlay.
const MEMBERS: [kvxlan::Member<'static>; 2] = [
    kvxlan::Member {
        ns: "h1",
        underlay: UL[0],
        overlay: OV[0],
    },
    kvxlan::Member {
        ns: "h2",
        underlay: UL[1],
        overlay: OV[1],
    },
];

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
