//! One datagram to a network's DNS responder (hickory-proto parses it;
//! vxmesh answers, counts and sizes the reply). The body is `bodies::dns`,
//! shared with the crash replay in `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::dns(data));
