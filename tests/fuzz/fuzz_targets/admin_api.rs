//! The admin API: one HTTP request (method, target, body) through the axum
//! router over a daemon state in memory, and a `POST` body through what
//! the etcd store validates before writing. The body is
//! `bodies::admin_api`, shared with the crash replay in
//! `tests/tests/fuzz_regressions.rs`.

#![no_main]

#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::admin_api(data));
