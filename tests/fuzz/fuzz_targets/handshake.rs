//! A handshake message (Noise IK initiation or response) to the key
//! manager of an encrypted network's node. The body is `bodies::handshake`,
//! shared with the crash replay in `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::handshake(data));
