//! # vxmesh end-to-end tests
//!
//! The tests in `tests/` build hosts from network namespaces with the
//! [`vxmesh_netns`] testbed (the crate in `tests/testbed/`, which `vxmesh
//! lab` and the benchmarks use too) and run the workspace's binaries in
//! them. This library holds nothing of its own: the package exists for its
//! test targets (`cargo test -p vxmesh-testbed --test overlay`).

#![deny(unsafe_code)]

pub use vxmesh_netns;
