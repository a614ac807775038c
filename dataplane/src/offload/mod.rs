//! Offload algorithms: what a NIC or the kernel would do to packets in bulk,
//! done in software where the overlay needs it. Pure: no I/O, no clock; they
//! work on frames and return frames, and [`crate::overlay::path`] decides
//! when to use them.
//!
//! - [`csum`]: the Internet checksum, and completing a TCP/UDP checksum a
//!   sender left partial.
//! - [`virtio`]: the virtio-net header a TAP with `IFF_VNET_HDR` puts in
//!   front of every frame (how TSO/USO super-frames cross the TAP).
//! - [`gso`]: cutting a TCP or UDP super-frame into segments, and preparing
//!   one for a TAP to cut.
//! - [`gro`]: joining consecutive segments back into one super-frame.
//!
//! They depend on [`crate::wire`] at most, never on the overlay.

pub mod csum;
pub mod gro;
pub mod gso;
pub mod virtio;
