//! A VXLAN datagram from a member node through the overlay core (and the TCP
//! segmentation it asks for), then the same bytes as a frame from every TAP.
//! The body is `bodies::overlay_datagram`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::overlay_datagram(data));
