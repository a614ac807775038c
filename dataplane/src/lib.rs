//! # vxmesh dataplane
//!
//! Everything that touches packets: the overlay (VXLAN between nodes) and
//! the routing mesh (published ports balanced over a service's tasks).
//! Layers, from the bytes up; each depends only on the ones above it:
//! - [`wire`]: wire formats (VXLAN header, flow hash, ARP replies, PROXY
//!   v2 header), zero-copy views, pure.
//! - [`offload`]: the offload algorithms (checksums, the virtio-net header,
//!   GSO cuts, GRO), pure.
//! - [`overlay`]: the sans-io overlay. [`overlay::Core`] takes a frame from
//!   a TAP or a datagram from the underlay with the current table snapshot
//!   and the time, and gives an [`overlay::Verdict`]; [`overlay::path`] is
//!   the per-packet pipeline around it (batching, GSO, GRO and their
//!   fallbacks), which takes buffers and hands back transmits and TAP
//!   writes. Nothing in it touches an fd or reads a clock.
//! - [`mesh`]: the routing mesh: consistent hashing ([`mesh::maglev`]),
//!   balancing, the health state machine and its probes, the TCP and UDP
//!   forwarders, per-source limits and the service DNS. Its pure parts
//!   (hashing, balancing, health) are kept apart from its tokio I/O.
//! - [`crypto`]: encrypted networks: node keys, the Noise IK handshake
//!   and its timers (sans-io), the sessions the pipeline seals and opens
//!   datagrams with.
//! - [`io`]: the thin OS drivers (TAP devices, UDP sockets, lane threads)
//!   that feed the overlay pipeline and carry out its sends and writes. The
//!   only `unsafe` lives in `io::sys`.
//!
//! The design as a whole: the "Design" section of the repository's
//! README.md.

pub mod crypto;
pub mod io;
pub mod mesh;
pub mod offload;
pub mod overlay;
pub mod wire;
