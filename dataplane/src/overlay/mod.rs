//! The sans-io overlay: forwarding tables, learned entries, local addresses
//! to announce, counters and the core that turns frames and datagrams into
//! verdicts. See [`core`] for the call protocol.

pub mod announce;
pub mod core;
pub mod fdb;
pub mod guard;
pub mod limit;
pub mod path;
pub mod stats;
pub mod tables;

pub use self::core::{Core, Verdict};
pub use announce::Announcements;
pub use fdb::LearnedFdb;
pub use limit::FloodLimiter;
pub use stats::{DropReason, GlobalStats, NetStats};
pub use tables::{EndpointEntry, NetworkTable, Tables};
