//! ARP request recognition and the reply written for it.
//! The body is `bodies::arp`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::arp(data));
