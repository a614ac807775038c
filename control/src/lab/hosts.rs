//! The lab without containers: the cluster file's own store, a vxmeshd per
//! host started on it, the tasks as small HTTP servers in the hosts'
//! namespaces ([`super::mesh::prove`]).

use std::time::Duration;

use anyhow::Context;
use vxmesh_netns::Testbed;

use super::report::Report;
use super::{interrupted, mesh, note, overlay, Setup};

pub fn run(tb: &mut Testbed, setup: &Setup) -> anyhow::Result<Report> {
    let cluster = &setup.cluster;
    let cfg_path = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg_path, &setup.text)?;
    for n in &cluster.nodes {
        interrupted()?;
        let sock = tb.dir().join(format!("{}.sock", n.name));
        let ns = tb.ns(&n.name);
        tb.spawn_notify(
            &ns,
            &[
                setup
                    .vxmeshd
                    .to_str()
                    .context("vxmeshd path is not UTF-8")?,
                "--config",
                cfg_path.to_str().context("temp path is not UTF-8")?,
                "--node",
                &n.name,
                "--socket",
                sock.to_str().context("temp path is not UTF-8")?,
            ],
            &[],
            Duration::from_secs(10),
        )
        .with_context(|| format!("starting vxmeshd on {}", n.name))?;
        note(format_args!(
            "  {:<4} {:<12} vxmeshd ready (admin socket {})",
            n.name,
            n.address,
            sock.display()
        ));
    }
    let mut rows = Vec::new();
    let mut port = 5201;
    for net in &cluster.networks {
        let eps: Vec<_> = cluster
            .nodes
            .iter()
            .filter_map(|n| {
                cluster
                    .tap_address(net, &n.name)
                    .map(|ip| (n.name.clone(), ip))
            })
            .collect();
        rows.extend(overlay::prove(tb, &eps, setup.bytes, &mut port)?);
    }
    interrupted()?;
    let mesh = mesh::prove(tb, cluster)?;
    if setup.keep {
        super::keep(tb, cluster, None);
    }
    Ok(Report {
        suffix: tb.suffix().to_string(),
        docker: None,
        overlay: rows,
        mesh,
    })
}
