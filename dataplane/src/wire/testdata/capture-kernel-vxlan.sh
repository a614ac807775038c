#!/usr/bin/env bash
# Captures what the Linux kernel's own vxlan device puts on the wire, for the
# test vectors in dataplane/src/wire/{vxlan,arp}.rs.
#
# Run as root:  ./capture-kernel-vxlan.sh [OUT.pcap]
# Needs: ip, bridge (iproute2), ethtool, tcpdump, ping.
#
# Topology (all inside two fresh network namespaces; nothing is created or
# changed in the root namespace, and both namespaces are deleted on exit):
#
#   ns "$A": vx0 (vxlan id 4096, dstport 4789, 10.0.9.1/24, 02:42:0a:00:09:01, mtu 1450)
#            veth-a 198.18.0.1/24  <---- veth pair ---->  veth-b 198.18.0.2/24 (ns "$B")
#   ns "$B": vx0 (vxlan id 4096, dstport 4789, 10.0.9.3/24, 02:42:0a:00:09:03, mtu 1450)
#
# Each vx0 floods to the other node (all-zeros FDB entry). In $A, 10.0.9.2
# has a static neighbour entry, so `ping 10.0.9.2` sends one ICMP echo at
# once without ARP (nobody owns 10.0.9.2: $B's vx0 drops it, wrong MAC);
# 10.0.9.3 has none, so `ping 10.0.9.3` makes $A's kernel send an ARP
# request, which $B's kernel answers. tcpdump on veth-b records the first
# three VXLAN datagrams: the echo request, the ARP request and the ARP reply,
# each with its outer Ethernet+IPv4+UDP headers.
set -euo pipefail

OUT=${1:-}
TAG="vxcap$$"
A="${TAG}a"
B="${TAG}b"
TMP=$(mktemp -d)
TCPDUMP_PID=

cleanup() {
    if [[ -n "$TCPDUMP_PID" ]]; then kill "$TCPDUMP_PID" 2>/dev/null || true; fi
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }

inA() { ip netns exec "$A" "$@"; }
inB() { ip netns exec "$B" "$@"; }

ip netns add "$A"
ip netns add "$B"
for ns in "$A" "$B"; do
    # No IPv6 autoconfiguration traffic (RS, MLD, DAD) in the capture.
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.default.disable_ipv6=1
    ip netns exec "$ns" ip link set lo up
done

# Created inside $A and its peer moved to $B: never visible in the root namespace.
inA ip link add veth-a type veth peer name veth-b netns "$B"
inA ip addr add 198.18.0.1/24 dev veth-a
inB ip addr add 198.18.0.2/24 dev veth-b
# With TX checksum offload on (the veth default) the kernel leaves the outer
# UDP checksum CHECKSUM_PARTIAL: the capture would hold only the pseudo-header
# sum (tcpdump: "bad udp cksum"). Off, the stack completes it in software and
# we record what a real NIC would send.
inA ethtool -K veth-a tx off >/dev/null
inA ip link set veth-a up
inB ethtool -K veth-b tx off >/dev/null
inB ip link set veth-b up

inA ip link add vx0 address 02:42:0a:00:09:01 mtu 1450 \
    type vxlan id 4096 dstport 4789 local 198.18.0.1 nolearning
inA ip addr add 10.0.9.1/24 dev vx0
inA ip link set vx0 up
inA bridge fdb append 00:00:00:00:00:00 dev vx0 dst 198.18.0.2
inA ip neigh add 10.0.9.2 lladdr 02:42:0a:00:09:02 dev vx0

inB ip link add vx0 address 02:42:0a:00:09:03 mtu 1450 \
    type vxlan id 4096 dstport 4789 local 198.18.0.2 nolearning
inB ip addr add 10.0.9.3/24 dev vx0
inB ip link set vx0 up
inB bridge fdb append 00:00:00:00:00:00 dev vx0 dst 198.18.0.1

PCAP="$TMP/kernel-vxlan.pcap"
inB timeout 20 tcpdump -i veth-b -n -U -c 3 -w "$PCAP" 'udp port 4789' 2>"$TMP/tcpdump.err" &
TCPDUMP_PID=$!
for _ in $(seq 50); do
    grep -q listening "$TMP/tcpdump.err" 2>/dev/null && break
    sleep 0.1
done

inA ping -n -c 1 -W 1 10.0.9.2 >/dev/null || true   # echo request, no reply expected
inA ping -n -c 1 -W 1 10.0.9.3 >/dev/null || true   # ARP request for 10.0.9.3, and $B's reply
wait "$TCPDUMP_PID" || true
TCPDUMP_PID=

echo "# captured $(date -u +%Y-%m-%d) on $(uname -r) by $0"
inA ip -d link show vx0 | sed 's/^/# /'
tcpdump -r "$PCAP" -n -vv -xx 2>/dev/null
if [[ -n "$OUT" ]]; then cp "$PCAP" "$OUT"; fi
