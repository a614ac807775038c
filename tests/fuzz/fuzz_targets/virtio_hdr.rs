//! One TAP read: a virtio-net header and its frame, through what the
//! worker does with them (checksum completion, the TSO or USO cut). The
//! body is `bodies::virtio_hdr`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::virtio_hdr(data));
