//! The benchmark harness: what every benchmark shares, so that each one is
//! only its testbed, its measuring loop, its results model and its table.
//!
//! - [`report`]: the machine's description, logs, text tables.
//! - [`stats`]: medians and ratios.
//! - [`chart`]: the PNG bar chart.
//! - [`output`]: writing the table, the chart (or its legend) and the JSON
//!   report into the output directory, and the closing lines.
//! - [`daemon`]: vxmeshd per host on a cluster file, and bounded commands
//!   inside the testbed.
//! - [`kvxlan`]: the kernel's vxlan devices between hosts (the reference
//!   overlay), made and deleted.
//! - [`runs`]: the repetitions a path between h1 and h2 is measured with
//!   (pings, iperf3 runs), their medians, and the checks and inspections
//!   around them (reachability, offloads, a daemon's status).

pub mod chart;
pub mod daemon;
pub mod kvxlan;
pub mod output;
pub mod report;
pub mod runs;
pub mod stats;
