//! The thin OS drivers: a TAP device per network, the underlay UDP sockets,
//! and the worker threads that move packets between them through the pure
//! pipeline [`crate::overlay::path`] (around the sans-io
//! [`crate::overlay::Core`]); a lane only polls, reads, and carries out the
//! sends and TAP writes the pipeline hands back.
//!
//! Workers are plain threads (no async runtime on the packet path): one per
//! TAP queue and one for the underlay socket. Each owns its buffers, wakes on
//! `poll(2)` (with a short timeout so it notices a stop request and beats
//! its heartbeat), handles at most [`worker::BATCH`] packets per wake-up and
//! loads the table snapshot once per wake-up.

pub mod addr;
pub mod inherit;
mod keys;
mod lane;
pub mod netdev;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
pub mod tap;
pub mod udp;
pub mod worker;

pub use tap::{Tap, TapConfig};
pub use udp::{Underlay, UnderlayConfig};
pub use worker::Dataplane;
