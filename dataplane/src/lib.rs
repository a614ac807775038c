//! # vxmesh dataplane
//!
//! Everything that touches packets, in three layers:
//! - [`wire`]: byte formats (VXLAN header, flow hash, ARP replies), pure.
//! - [`offload`]: GRO, GSO, checksums and the virtio-net header, pure.
//! - [`overlay`]: the sans-io overlay core. A frame from a TAP or a datagram
//!   from the underlay goes in with the current table snapshot and the time;
//!   a [`overlay::Verdict`] comes out. Nothing in it touches an fd or a clock.
//! - [`io`]: the thin OS drivers (TAP devices, UDP sockets, worker threads)
//!   that feed the core and carry out its verdicts. The only `unsafe` lives
//!   in `io::sys`.

pub mod io;
pub mod mesh;
pub mod offload;
pub mod overlay;
pub mod wire;
