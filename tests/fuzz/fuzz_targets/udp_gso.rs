//! The USO cut of a UDP GSO frame; the first two bytes (little-endian) are
//! the segment size. The body is `bodies::udp_gso`, shared with the crash
//! replay in `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::udp_gso(data));
