#!/usr/bin/env bash
# What would vxmeshd's underlay send path gain from AF_XDP (copy mode) or
# MSG_ZEROCOPY over UDP GSO (sendmsg + UDP_SEGMENT, 20 x 1450 B per call)?
#
# Builds underlay_tx.c, creates two throw-away namespaces joined by a veth
# pair (198.18.77.1/24 <-> 198.18.77.2/24, no other routes), and for each
# mode (gso, zerocopy, single, xdp) runs the receiver in ns b and the
# sender in ns a. Traffic never leaves the two namespaces; both are
# removed on any exit, and only the pids started here are ever killed.
#
# Usage (as root): bench/probes/underlay_tx.sh [SECONDS_PER_MODE [ROUNDS]]
# defaults: 3 s, 1 round. The machine's CPU is measured as a whole, so run
# it on an otherwise quiet machine; the idle baseline printed at the start
# of each round shows how quiet it was.
set -euo pipefail

SECS=${1:-3}
ROUNDS=${2:-1}
MODES=(gso zerocopy single xdp)
PORT=4789
IP_A=198.18.77.1
IP_B=198.18.77.2
NS_A="uxtx-$$-a"
NS_B="uxtx-$$-b"
DEV_A=uxtx0
DEV_B=uxtx1
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "underlay_tx.sh: $*" >&2; exit 1; }

[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 && $SECS -le 600 ]] || die "seconds must be 1..600"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le 50 ]] || die "rounds must be 1..50"
[[ $(id -u) -eq 0 ]] || die "must be run as root (namespaces, AF_XDP)"
for tool in gcc ip ethtool ss timeout python3; do
	command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -f /usr/include/linux/if_xdp.h ]] || die "no /usr/include/linux/if_xdp.h (apt-get install -y linux-libc-dev)"

TMP=$(mktemp -d /tmp/underlay_tx.XXXXXX)
PIDS=()

cleanup() {
	local pid
	# Only pids started here; each is a single, self-bounded process.
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	ip netns del "$NS_A" 2>/dev/null || true
	ip netns del "$NS_B" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

gcc -O2 -Wall -Wextra -o "$TMP/underlay_tx" "$HERE/underlay_tx.c"
BIN=$TMP/underlay_tx

in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }

setup_namespaces() {
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip -n "$NS_A" link add "$DEV_A" type veth peer name "$DEV_B" netns "$NS_B"
	for ns in "$NS_A" "$NS_B"; do
		ip -n "$ns" link set lo up
		# no IPv6 chatter (DAD, router solicitations) during the runs
		ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
	done
	ip -n "$NS_A" link set "$DEV_A" mtu 1500 up
	ip -n "$NS_B" link set "$DEV_B" mtu 1500 up
	ip -n "$NS_A" addr add "$IP_A/24" dev "$DEV_A"
	ip -n "$NS_B" addr add "$IP_B/24" dev "$DEV_B"
	# veth runs NAPI (and so GRO) on its receive side only with GRO on.
	# Even then it hands an skb to NAPI only if it looks GRO-eligible
	# (veth_skb_is_eligible_for_gro): with TSO on the sending veth, as
	# here, that takes rx-udp-gro-forwarding on the receiver, and AF_XDP
	# skbs never qualify. So all modes share the netif_rx receive path;
	# a GSO send arrives as one unsegmented skb either way.
	in_b ethtool -K "$DEV_B" gro on >/dev/null
	# resolve the neighbour once so the first timed sends do not wait on ARP
	in_a ping -c 1 -W 1 "$IP_B" >/dev/null 2>&1 || true
}

# sysfs of the root namespace does not show the namespaces' devices
mac_of() { ip -n "$1" -br link show dev "$2" | awk '{print $3}'; }

wait_for_receiver() {
	local i
	for i in $(seq 1 50); do
		in_b ss -Hlun "sport = :$PORT" | grep -q . && return 0
		sleep 0.1
	done
	die "receiver did not bind port $PORT"
}

sender_cmd() {
	case $1 in
	xdp) echo "$BIN xdp $DEV_A $MAC_A $MAC_B $IP_A $IP_B $PORT $SECS" ;;
	*) echo "$BIN $1 $IP_B $PORT $SECS" ;;
	esac
}

# One mode: receiver in ns b, sender in ns a, one JSON line from each.
run_mode() {
	local mode=$1 round=$2 rpid spid rc=0 out=$TMP/$mode.$round
	# Not through in_a/in_b: a backgrounded function is a subshell, and $!
	# must be the process itself (ip execs timeout, which passes a TERM on
	# to the probe). timeout is only a backstop; the probes stop by
	# themselves.
	ip netns exec "$NS_B" timeout -k 2 $((SECS + 15)) \
		"$BIN" recv "$PORT" "$SECS" >"$out.recv" 2>"$out.recv.err" &
	rpid=$!
	PIDS+=("$rpid")
	wait_for_receiver
	# shellcheck disable=SC2046
	ip netns exec "$NS_A" timeout -k 2 $((SECS + 15)) \
		$(sender_cmd "$mode") >"$out.send" 2>"$out.send.err" &
	spid=$!
	PIDS+=("$spid")
	# once reaped, forget a pid: it may be reused by someone else's process
	wait "$spid" || rc=$?
	PIDS=("$rpid")
	wait "$rpid" || rc=$((rc ? rc : $?))
	PIDS=()
	if ((rc)); then
		cat "$out.send.err" "$out.recv.err" >&2
		die "mode $mode failed (exit $rc)"
	fi
	printf '{"round":%d,"send":%s,"recv":%s}\n' "$round" "$(cat "$out.send")" "$(cat "$out.recv")" >>"$TMP/results.jsonl"
	echo "  $mode: $(cat "$out.send")"
	echo "  $mode: $(cat "$out.recv")"
	sleep 0.5
}

# Busy CPU seconds of the whole machine in one idle second, as a yardstick.
idle_baseline() {
	python3 - <<'EOF'
import os, time
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
b0 = busy(); time.sleep(1); print(f"{busy() - b0:.3f}")
EOF
}

summarize() {
	python3 - "$TMP/results.jsonl" <<'EOF'
import json, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1])]
agg = defaultdict(lambda: defaultdict(float))
order = []
for r in rows:
    m = r["send"]["mode"]
    if m not in order:
        order.append(m)
    a = agg[m]
    a["rcvd"] += r["recv"]["datagrams"]
    a["rbytes"] += r["recv"]["bytes"]
    a["rsecs"] += r["recv"]["seconds"]
    a["sent"] += r["send"]["datagrams"]
    a["ssecs"] += r["send"]["seconds"]
    a["scpu"] += r["send"]["sender_cpu_s"]
    a["mcpu"] += r["send"]["machine_busy_s"]
    a["drops"] += max(r["recv"]["rcvbuf_errors"], 0)
    a["rcpu"] += r["recv"]["recv_cpu_s"]
    a["reads"] += r["recv"]["reads"]
def stats(a):
    rate = a["rcvd"] / a["rsecs"] if a["rsecs"] else 0
    return dict(rate=rate,
                gbit=a["rbytes"] * 8 / a["rsecs"] / 1e9 if a["rsecs"] else 0,
                sent_rate=a["sent"] / a["ssecs"] if a["ssecs"] else 0,
                s_ns=a["scpu"] / a["sent"] * 1e9 if a["sent"] else 0,
                m_ns=a["mcpu"] / a["rcvd"] * 1e9 if a["rcvd"] else 0,
                r_ns=a["rcpu"] / a["rcvd"] * 1e9 if a["rcvd"] else 0,
                per_read=a["rcvd"] / a["reads"] if a["reads"] else 0,
                drops=a["drops"])
s = {m: stats(agg[m]) for m in order}
base = s.get("gso")
hdr = ("mode", "rcvd dgram/s", "payload Gbit/s", "sent dgram/s", "rcvbuf errs",
       "dgram/read", "snd ns/sent", "rcv ns/rcvd", "machine ns/rcvd",
       "rcvd/s vs gso", "machine ns vs gso")
print("%-9s %13s %15s %13s %11s %11s %12s %12s %16s %14s %18s" % hdr)
for m in order:
    x = s[m]
    r1 = x["rate"] / base["rate"] if base and base["rate"] else float("nan")
    r2 = x["m_ns"] / base["m_ns"] if base and base["m_ns"] else float("nan")
    print("%-9s %13.0f %15.2f %13.0f %11d %11.1f %12.0f %12.0f %16.0f %14.2f %18.2f" % (
        m, x["rate"], x["gbit"], x["sent_rate"], x["drops"], x["per_read"], x["s_ns"],
        x["r_ns"], x["m_ns"], r1, r2))
print()
print("payload = 1450 B per datagram; rcvbuf errs = receiver namespace's UDP")
print("RcvbufErrors (skbs dropped on a full socket; an unsegmented GSO skb of")
print("20 datagrams counts once);")
print("dgram/read = datagrams per recvmsg (GRO); snd ns/sent = sender process CPU")
print("(user+sys) per datagram it sent; rcv ns/rcvd = receiver process CPU per")
print("datagram received; machine ns/rcvd = busy CPU of all CPUs during the")
print("sender's run per datagram received (includes the receiver, softirq and")
print("anything else running on the machine).")
for r in rows:
    x = r["send"]
    if r["recv"]["csum_errors"]:
        print(f"round {r['round']}: {x['mode']}: receiver saw {r['recv']['csum_errors']} UDP checksum errors")
    if x["mode"] == "xdp":
        print(f"round {r['round']}: xdp zerocopy bind -> errno {x['zerocopy_bind_errno']} "
              f"({x['zerocopy_bind_error']}), copy mode, need_wakeup={x['need_wakeup']}, "
              f"{x['datagrams'] / max(x['calls'], 1):.1f} frames/kick, "
              f"kicks EAGAIN {x['kick_eagain']} EBUSY(dropped) {x['kick_ebusy_dropped']} "
              f"ENOBUFS {x['kick_enobufs']} of {x['calls']}")
    if x["mode"] == "zerocopy":
        print(f"round {r['round']}: zerocopy sends {x['zc_issued']}, completed {x['zc_completed']}, "
              f"came back COPIED {x['zc_copied']}")
EOF
}

setup_namespaces
MAC_A=$(mac_of "$NS_A" "$DEV_A")
MAC_B=$(mac_of "$NS_B" "$DEV_B")
echo "namespaces $NS_A ($DEV_A $MAC_A $IP_A) <-> $NS_B ($DEV_B $MAC_B $IP_B); ${SECS}s per mode, $ROUNDS round(s)"
echo "sender $DEV_A: $(in_a ethtool -k "$DEV_A" | grep -E '^(tcp-segmentation-offload|tx-udp-segmentation):' | tr -s ' \n' ' ')"
echo "receiver $DEV_B: $(in_b ethtool -k "$DEV_B" | grep -E '^(generic-receive-offload|rx-udp-gro-forwarding):' | tr -s ' \n' ' ')"
for round in $(seq 1 "$ROUNDS"); do
	echo "round $round: machine busy CPU in one idle second before the round: $(idle_baseline) s"
	for mode in "${MODES[@]}"; do
		run_mode "$mode" "$round"
	done
done
echo
summarize
