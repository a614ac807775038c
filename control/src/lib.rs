//! # vxmesh control plane
//!
//! Where the desired state comes from and how it reaches the dataplane:
//! - [`model`]: nodes, networks, endpoints (the desired state);
//! - [`config`]: the cluster file (TOML), parsed with file:line:reason errors;
//! - [`store`]: where the desired state lives: the file, or etcd (watch, leases);
//! - [`reconcile`]: desired state -> table snapshots and TAP devices, as a diff;
//! - [`attach`]: containers on the overlay: allocation, Docker's plugin protocol, CNI's backend;
//! - [`cni`]: the `vxmesh-cni` plugin (CNI 1.0) over the admin API;
//! - [`api`]: the local admin API (HTTP on a unix socket) and its client;
//! - [`daemon`]: start-up, systemd notify, SIGHUP reload, SIGTERM stop;
//! - [`error`]: why a desired state was not applied ([`error::ApplyError`]);
//! - [`timing`]: how long validating and applying a desired state takes;
//! - [`lab`]: the namespace lab behind `vxmesh lab`.
//!
//! The control plane never touches a packet.

pub mod announce;
pub mod api;
pub mod attach;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod error;
pub mod firewall;
pub mod handover;
pub mod ipam;
pub mod lab;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod store;
pub mod timing;
pub mod unix_http;
