//! # vxmesh benchmarks
//!
//! `vxmesh-bench overlay` measures three paths between two testbed hosts in
//! one run (the underlay itself, the kernel's vxlan with and without
//! offloads, and vxmesh) with iperf3 and ping, and reports each figure with
//! the vxmesh/kernel ratios. Everything runs inside network namespaces built
//! by [`vxmesh_netns::Testbed`], which removes them on drop.
//!
//! Modules:
//! - [`overlay`], the `overlay` command (testbed, paths, table, JSON), a
//!   folder of small files like [`mesh`] and [`containers`].
//! - [`iperf`], one bounded iperf3 run (TCP or UDP) with its JSON parsed and
//!   the CPU used meanwhile.
//! - [`cpu`], CPU time of processes (`/proc/<pid>/stat`) and of the machine
//!   (`/proc/stat`).
//! - [`harness`], what every benchmark shares: the results model's
//!   helpers (medians, ratios), the machine's description, text tables,
//!   the chart, writing the table/chart/JSON report, starting vxmeshd.
//! - [`mesh`], the `mesh` command: the routing mesh against nftables DNAT
//!   and HAProxy on one testbed (iperf3 and wrk through a published port).
//! - [`http`], the HTTP/1.1 keep-alive server the `mesh` command's tasks
//!   run (`vxmesh-bench-backend`).
//! - [`containers`], the `containers` command: containers on vxmesh against
//!   containers on Docker swarm's own overlay, same hosts, one run.
//! - [`restart`], the `restart` command: what traffic sees while vxmeshd
//!   is handed over or crash-restarted, beside HAProxy's `-sf` reload.
//! - [`encryption`], the `encryption` command: a plain and an encrypted
//!   vxmesh network on the same daemons against userspace WireGuard
//!   (wireguard-go), same hosts, one run.
//! - [`profile`], `perf` recordings of extra runs: where the CPU and the
//!   round-trip time go.

pub mod containers;
pub mod cpu;
pub mod encryption;
pub mod harness;
pub mod http;
pub mod iperf;
pub mod mesh;
pub mod overlay;
pub mod profile;
pub mod restart;
