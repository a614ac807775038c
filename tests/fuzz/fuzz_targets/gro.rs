//! GRO of what arrives from peers, driven as the receive path
//! (`overlay::path::RxPath`) drives it, over a run of frames described by records. The body is
//! `bodies::gro`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::gro(data));
