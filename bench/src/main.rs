//! `vxmesh-bench`: benchmarks of vxmesh against the kernel, in network
//! namespaces (run as root). See `vxmesh-bench overlay --help`.

mod convergence;
mod simulated;

use clap::{Parser, Subcommand};
use vxmesh_bench::mesh::{run_mesh, MeshArgs};
use vxmesh_bench::overlay::{run_overlay, OverlayArgs};

/// Benchmarks of vxmesh, measured in network namespaces built on this
/// machine and removed afterwards.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// h1 -> h2 over the underlay, the kernel's vxlan (with and without
    /// offloads) and vxmesh, in one run: iperf3 TCP and UDP, ping, CPU.
    Overlay(OverlayArgs),
    /// Etcd store: time from a CLI change to it being live on every node
    /// (--simulated: with 1,000 simulated nodes and 100,000 endpoints).
    Convergence(convergence::ConvergenceArgs),
    /// The routing mesh against nftables DNAT and HAProxy (with and without
    /// splice), client -> h1:8080 -> tasks on h2 and h3, in one run: iperf3,
    /// new connections/s, keep-alive requests/s and MB/s, CPU.
    Mesh(MeshArgs),
    /// Containers on a vxmesh network (vxmeshd's Docker driver) against
    /// containers on Docker swarm's own overlay, same two hosts, one run:
    /// iperf3, ping, `docker run` time.
    Containers(vxmesh_bench::containers::ContainersArgs),
    /// h1's vxmeshd handed over (SIGUSR2) and crash-restarted (SIGKILL,
    /// descriptors from a stand-in for systemd's store) under a 1 ms ping
    /// stream, a 50 kpps UDP stream and an HTTP loop, beside HAProxy's
    /// `-sf` reload of a published port, in one run.
    Restart(vxmesh_bench::restart::RestartArgs),
    /// h1 -> h2 on a plain vxmesh network, on an encrypted one (same
    /// daemons) and through userspace WireGuard (wireguard-go), in one run:
    /// iperf3 TCP, UDP 64 B at a fixed rate, ping, CPU; encrypted/plain and
    /// encrypted/wireguard-go ratios beside the goals.
    Encryption(vxmesh_bench::encryption::EncryptionArgs),
}

fn main() -> anyhow::Result<()> {
    // Errors return through main (not process::exit), so every testbed has
    // been dropped, namespaces and processes removed, before the exit.
    match Cli::parse().cmd {
        Cmd::Overlay(args) => run_overlay(args),
        Cmd::Convergence(args) => convergence::run_convergence(args),
        Cmd::Mesh(args) => run_mesh(args),
        Cmd::Containers(args) => vxmesh_bench::containers::run_containers(args),
        Cmd::Restart(args) => vxmesh_bench::restart::run_restart(args),
        Cmd::Encryption(args) => vxmesh_bench::encryption::run_encryption(args),
    }
}
