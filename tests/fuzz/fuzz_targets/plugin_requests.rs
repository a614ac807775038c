//! Decoding of what container runtimes send: Docker's plugin calls and the
//! CNI configuration with its arguments. The body is
//! `bodies::plugin_requests`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::plugin_requests(data));
