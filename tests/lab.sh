#!/usr/bin/env bash
# The lab, from a fresh machine: installs what the build and the lab need
# (protoc for the etcd client's build, iproute2; with --docker also Debian's
# dockerd, etcd and busybox-static for the containers' image), builds the
# release binaries and runs `vxmesh lab` with the default cluster
# (config/lab.toml); extra arguments go to `vxmesh lab` (--docker, --keep,
# --json, --config FILE, --bytes N). Needs root: the hosts are network
# namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/lab.sh: run as root (the lab creates network namespaces)" >&2
    exit 1
fi
. tests/deps.sh
install_missing ip:iproute2 protoc:protobuf-compiler
for arg in "$@"; do
    if [ "$arg" = --docker ]; then
        install_missing etcd:etcd-server
        install_missing_no_recommends dockerd:docker.io nsenter:util-linux
        install_busybox_static
    fi
done
cargo build --release --bins
exec ./target/release/vxmesh lab "$@"
