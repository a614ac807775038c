//! A datagram from a node of an encrypted network: node 2's session table
//! opens it (as it came, and the same bytes sealed by node 1 over a real
//! Noise IK session), and node 2's receive path takes it. The body is
//! `bodies::sealed_datagram`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::sealed_datagram(data));
