//! Inner checksum completion and TCP segmentation; the first byte is the MSS.
//! The body is `bodies::csum_gso`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::csum_gso(data));
