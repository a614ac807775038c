//! # The routing mesh
//!
//! Every host listens on each service's published ports and forwards each
//! connection to a healthy backend task, wherever it runs, over the overlay.
//! The pure parts live here beside the I/O: [`maglev`] is the consistent
//! hashing table (a fixed, documented hash, so a client lands on the same
//! backend whichever host it enters through), [`balance`] picks a backend
//! with the service's algorithm from the list of eligible backends. Both are
//! built off the hot path by the reconciler and published whole; picking a
//! backend reads them, allocates nothing and never panics.

pub mod balance;
pub mod dns;
pub mod framed;
pub mod health;
pub mod limits;
pub mod maglev;
pub mod probe;
pub mod relay;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod tcp;
pub mod udp;
