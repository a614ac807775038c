//! vxmeshd on the benchmark hosts: the cluster file written into the
//! testbed, one daemon per host started on it and waited for (READY=1),
//! and bounded commands inside the testbed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use vxmesh_netns::{Proc, Testbed};

/// Writes `cluster` to `<testbed dir>/vxmesh.toml`.
pub fn write_cluster(tb: &Testbed, cluster: &str) -> anyhow::Result<PathBuf> {
    let cfg = tb.dir().join("vxmesh.toml");
    std::fs::write(&cfg, cluster).with_context(|| format!("writing {}", cfg.display()))?;
    Ok(cfg)
}

/// The state directory of `host`'s vxmeshd, `<testbed dir>/state-<host>`
/// (removed with the testbed): where it keeps its records and finds its
/// node key (`vxmesh-node.key`).
pub fn state_dir(tb: &Testbed, host: &str) -> PathBuf {
    tb.dir().join(format!("state-{host}"))
}

/// Writes `cluster` and starts `vxmeshd` on it in each of `hosts` (admin
/// socket `<testbed dir>/<host>.sock`, state in [`state_dir`]), each waited
/// for up to `ready`: (host, process, socket) in order. When one fails, the
/// ones started are stopped.
pub fn start_daemons(
    tb: &mut Testbed,
    vxmeshd: &Path,
    cluster: &str,
    hosts: &[&str],
    ready: Duration,
) -> anyhow::Result<Vec<(String, Proc, PathBuf)>> {
    let cfg = write_cluster(tb, cluster)?;
    let cfg_s = cfg.to_str().context("temp path is not UTF-8")?.to_string();
    let bin = vxmeshd.to_str().context("vxmeshd path is not UTF-8")?;
    let mut procs = Vec::new();
    for h in hosts {
        let sock = tb.dir().join(format!("{h}.sock"));
        let sock_s = sock.to_str().context("temp path is not UTF-8")?;
        let state = state_dir(tb, h);
        let state_s = state.to_str().context("temp path is not UTF-8")?;
        let started = tb.spawn_notify(
            h,
            &[
                bin,
                "--config",
                &cfg_s,
                "--node",
                h,
                "--socket",
                sock_s,
                "--state-dir",
                state_s,
            ],
            &[("NO_COLOR", "1")],
            ready,
        );
        let p = match started {
            Ok(p) => p,
            Err(e) => {
                // None of them is left running.
                for (_, p, _) in &procs {
                    tb.stop(p);
                }
                return Err(anyhow::Error::from(e).context(format!("starting vxmeshd in {h}")));
            }
        };
        eprintln!("[vxmesh] vxmeshd ready in {h} (pid {})", p.pid);
        procs.push((h.to_string(), p, sock));
    }
    Ok(procs)
}

/// `vxmeshd --cleanup` in each of `hosts` (daemons started by
/// [`start_daemons`] and stopped): removes the devices the daemon leaves
/// for its next start (its persistent TAPs, with their addresses) and its
/// nftables tables. Every host is tried; the first error is returned.
pub fn cleanup(tb: &Testbed, vxmeshd: &Path, hosts: &[&str]) -> anyhow::Result<()> {
    let bin = vxmeshd.to_str().context("vxmeshd path is not UTF-8")?;
    let results: Vec<anyhow::Result<String>> = hosts
        .iter()
        .map(|h| {
            let sock = tb.dir().join(format!("{h}.sock"));
            let state = state_dir(tb, h);
            let (sock, state) = (
                sock.to_str().context("temp path is not UTF-8")?,
                state.to_str().context("temp path is not UTF-8")?,
            );
            let args = [
                bin,
                "--node",
                h,
                "--socket",
                sock,
                "--state-dir",
                state,
                "--cleanup",
            ];
            run(tb, h, &args, Duration::from_secs(10))
                .with_context(|| format!("vxmeshd --cleanup in {h}"))
        })
        .collect();
    results.into_iter().try_for_each(|r| r.map(drop))
}

/// Runs `args` in namespace `ns`, stopped after `timeout`: its stdout.
pub fn run(tb: &Testbed, ns: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let out = tb.exec_timeout(ns, args, timeout)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
