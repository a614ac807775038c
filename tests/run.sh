#!/usr/bin/env bash
# The whole vxmesh test suite, as CI runs it: installs the packages the
# tests need, checks formatting and lints, builds the binaries the
# end-to-end tests start, runs every test (none is skipped: CI=true), then
# runs every fuzz target for a short bounded time (FUZZ_SECONDS per target,
# default 15; 0 skips it) and fails on a crash.
# Needs root: the end-to-end tests build hosts from network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (the end-to-end tests create network namespaces)" >&2
    exit 1
fi

. tests/deps.sh
# wireguard-go and wg: the userspace WireGuard reference of `vxmesh-bench
# encryption` and its smoke test (this kernel has no WireGuard module); wrk
# and haproxy: the load generator and a reference of `vxmesh-bench mesh`.
install_missing systemd-analyze:systemd ip:iproute2 bridge:iproute2 ping:iputils-ping \
    iperf3:iperf3 ethtool:ethtool ss:iproute2 sysctl:procps python3:python3 \
    etcd:etcd-server protoc:protobuf-compiler perf:linux-perf nft:nftables \
    openssl:openssl unshare:util-linux wireguard-go:wireguard-go wg:wireguard-tools \
    wrk:wrk haproxy:haproxy
# Real container runtimes for the container tests (tests/tests/containers.rs):
# Debian's dockerd and podman (CNI backend), busybox for the image.
install_missing_no_recommends dockerd:docker.io podman:podman runc:runc \
    /usr/lib/cni/bridge:containernetworking-plugins nsenter:util-linux
install_busybox_static

export CI=true
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries for the end-to-end tests)"
cargo build --workspace --bins
echo "== cargo test"
# Two test threads: the machine has two cores and the end-to-end tests run
# real traffic; more in parallel only makes them slower. --no-fail-fast: one
# failing test binary does not hide the results of the ones after it.
cargo test --workspace --no-fail-fast -- --test-threads=2

fuzz_seconds=${FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" != 0 ]; then
    # cargo-fuzz needs nightly (sanitizer flags); install what is missing.
    if ! rustup toolchain list | grep '^nightly-' >/dev/null; then
        echo "== installing the nightly toolchain"
        rustup toolchain install nightly --profile minimal
    fi
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    echo "== fuzzing: every target ${fuzz_seconds} s (tests/fuzz/run.sh)"
    # Exits 1 on a crash (the input is copied into tests/fuzz/regressions/),
    # 2 if the targets do not build.
    bash tests/fuzz/run.sh "$fuzz_seconds"
fi
