//! # vxmesh benchmarks
//!
//! `vxmesh-bench overlay` measures three paths between two testbed hosts in
//! one run (the underlay itself, the kernel's vxlan with and without
//! offloads, and vxmesh) with iperf3 and ping, and reports each figure with
//! the vxmesh/kernel ratios. Everything runs inside network namespaces built
//! by [`vxmesh_testbed::Testbed`], which removes them on drop.
//!
//! Modules:
//! - [`overlay`], the `overlay` command (testbed, paths, table, JSON).
//! - [`iperf`], one bounded iperf3 run (TCP or UDP) with its JSON parsed and
//!   the CPU used meanwhile.
//! - [`cpu`], CPU time of processes (`/proc/<pid>/stat`) and of the machine
//!   (`/proc/stat`).
//! - [`stats`], medians.
//! - [`chart`], the PNG bar chart.

pub mod chart;
pub mod cpu;
pub mod iperf;
pub mod overlay;
pub mod stats;
