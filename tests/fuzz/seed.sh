#!/usr/bin/env bash
# Regenerates the seed corpora in tests/fuzz/corpus/<target>/ from the
# kernel and HAProxy captures, config/lab.toml and a few synthetic frames
# (examples/seed.rs says which is which). Deterministic: commit the result.
# Needs no nightly: the example is an ordinary binary.
set -euo pipefail
cd "$(dirname "$0")"
cargo run --quiet --example seed
