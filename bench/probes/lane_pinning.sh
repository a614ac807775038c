#!/usr/bin/env bash
# Issue 20, direction 3: does pinning the lanes (and the iperf3 ends) to
# CPUs speed up one overlay TCP stream? Starts the lab (`vxmesh lab --keep`,
# three hosts in namespaces of its own, removed when this script ends),
# then runs iperf3 h1 -> h2 over the overlay ROUNDS times for each
# placement, pinning h1's and h2's lane threads with taskset:
#   free            nothing pinned (the default)
#   cross           h1's lanes on CPU 1, h2's on CPU 0; the iperf3 client on
#                   CPU 0, the server on CPU 1 (each lane beside the far end)
#   lanes-together  both daemons' lanes on CPU 0, both iperf3 ends on CPU 1
# and prints each placement's runs and median (Gbit/s).
#
# Usage (as root, release build first): bench/probes/lane_pinning.sh [SECONDS [ROUNDS]]
# defaults: 4 s, 5 rounds. Run it on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${1:-4}
ROUNDS=${2:-5}
BIN=./target/release/vxmesh
[[ $(id -u) -eq 0 ]] || { echo "lane_pinning.sh: run as root" >&2; exit 1; }
[[ -x $BIN ]] || { echo "lane_pinning.sh: build first (cargo build --release --bins)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/lane_pinning.XXXXXX)
mkfifo "$TMP/stdin"
# The lab stays up until its standard input ends: hold the fifo open on fd 3
# and close it to tear the lab down.
"$BIN" lab --keep <"$TMP/stdin" >"$TMP/lab.log" 2>&1 &
LAB=$!
exec 3>"$TMP/stdin"
cleanup() {
    exec 3>&- || true
    wait "$LAB" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

for _ in $(seq 1 120); do
    grep -q 'Press Enter' "$TMP/lab.log" && break
    kill -0 "$LAB" 2>/dev/null || { cat "$TMP/lab.log" >&2; exit 1; }
    sleep 0.5
done
grep -q 'Press Enter' "$TMP/lab.log" || { echo "lane_pinning.sh: the lab did not come up" >&2; exit 1; }
LAB_NAME=$(grep -o 'h1-lab-[0-9-]*' "$TMP/lab.log" | head -1)
LAB_NAME=${LAB_NAME#h1-}
# The lab's own daemons: children of its process, one per host.
daemon_of() { pgrep -P "$LAB" -f -- "--node $1 " | head -1; }
P1=$(daemon_of h1)
P2=$(daemon_of h2)

lanes() { for t in /proc/"$1"/task/*; do [[ $(cat "$t/comm") == vxm-lane-* ]] && basename "$t"; done; }
pin() { for t in $(lanes "$1"); do taskset -p -c "$2" "$t" >/dev/null; done; }

# run NAME H1_LANES H2_LANES CLIENT_CPUS SERVER_CPUS: one stream's Gbit/s
run() {
    pin "$P1" "$2"
    pin "$P2" "$3"
    ip netns exec "h2-$LAB_NAME" taskset -c "$5" iperf3 -s -D -1 -B 10.0.9.2 -p 5301 \
        --pidfile "$TMP/iperf3.pid"
    for _ in $(seq 1 50); do
        ip netns exec "h2-$LAB_NAME" ss -Hltn 'sport = :5301' | grep -q . && break
        sleep 0.1
    done
    ip netns exec "h1-$LAB_NAME" taskset -c "$4" iperf3 -c 10.0.9.2 -p 5301 -t "$SECS" -J |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))'
}

declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
    RESULTS[free]+=" $(run free 0,1 0,1 0,1 0,1)"
    RESULTS[cross]+=" $(run cross 1 0 0 1)"
    RESULTS[lanes-together]+=" $(run lanes-together 0 0 1 1)"
    echo "round $round/$ROUNDS done" >&2
done
pin "$P1" 0,1
pin "$P2" 0,1

echo "lane pinning, one overlay TCP stream h1 -> h2 (lab $LAB_NAME), ${SECS} s x $ROUNDS rounds, Gbit/s"
for p in free cross lanes-together; do
    python3 - "$p" ${RESULTS[$p]} <<'EOF'
import statistics, sys
name, runs = sys.argv[1], [float(x) for x in sys.argv[2:]]
print(f"{name:<15} median {statistics.median(runs):6.2f}   runs {' '.join(f'{x:.2f}' for x in runs)}")
EOF
done
