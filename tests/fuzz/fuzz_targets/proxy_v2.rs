//! PROXY v2 header parsing and the emit -> parse round trip.
//! The body is `bodies::proxy_v2`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::proxy_v2(data));
