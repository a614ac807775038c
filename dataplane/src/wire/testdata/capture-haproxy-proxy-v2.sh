#!/usr/bin/env bash
# Records the PROXY protocol v2 headers HAProxy sends with `send-proxy-v2`,
# for the test vectors in dataplane/src/wire/proxy_v2.rs.
#
# Usage:  ./capture-haproxy-proxy-v2.sh [OUT]    (OUT defaults to stdout)
# Needs: haproxy (tested with 2.6.12), python3, loopback IPv4 and IPv6.
#
# Everything stays on loopback: a Python sink listens on 127.0.0.1:47201 and
# 127.0.0.1:47202 and records the first bytes of each connection; HAProxy runs
# in the foreground with haproxy-send-proxy-v2.cfg (beside this script);
# clients connect from fixed source ports so the headers are reproducible:
#   v4:  127.0.0.1:47001 -> 127.0.0.1:47101   (header sent to :47201)
#   v6:  [::1]:47002     -> [::1]:47102       (header sent to :47201)
#   tlv: 127.0.0.1:47003 -> 127.0.0.1:47103   (crc32c + unique-id TLVs)
#   check: HAProxy's health check to :47202   (LOCAL command)
# Each output line is `name hex-bytes`. Both processes are stopped by pid on
# exit, and the whole run is bounded by `timeout`.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/dev/stdout}
TMP=$(mktemp -d)
HAPROXY_PID=
SINK_PID=

cleanup() {
    if [[ -n "$HAPROXY_PID" ]]; then kill "$HAPROXY_PID" 2>/dev/null || true; fi
    if [[ -n "$SINK_PID" ]]; then kill "$SINK_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# The sink: records the first read of each connection (HAProxy sends the
# header in one write as soon as the connection is established).
cat >"$TMP/sink.py" <<'PY'
import socket, sys, threading
out = sys.argv[1]
lock = threading.Lock()
def serve(port, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        c.settimeout(2)
        try:
            data = c.recv(4096)
        except OSError:
            data = b""
        c.close()
        with lock, open(out, "a") as f:
            f.write(f"{name} {data.hex()}\n")
threading.Thread(target=serve, args=(47202, "check"), daemon=True).start()
serve(47201, "conn")
PY

cat >"$TMP/client.py" <<'PY'
import socket, sys, time
def connect(family, src, dst):
    c = socket.socket(family, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(src); c.connect(dst); c.sendall(b"x")
    time.sleep(0.3); c.close(); time.sleep(0.2)
connect(socket.AF_INET, ("127.0.0.1", 47001), ("127.0.0.1", 47101))
connect(socket.AF_INET6, ("::1", 47002), ("::1", 47102))
connect(socket.AF_INET, ("127.0.0.1", 47003), ("127.0.0.1", 47103))
PY

timeout 20 python3 "$TMP/sink.py" "$TMP/raw" &
SINK_PID=$!
sleep 0.5
timeout 20 haproxy -db -f "$HERE/haproxy-send-proxy-v2.cfg" 2>"$TMP/haproxy.log" &
HAPROXY_PID=$!
sleep 0.5
timeout 10 python3 "$TMP/client.py"
sleep 0.5

# The sink logs connections in arrival order: name the three relayed ones and
# keep the first health check.
{
    haproxy -v | head -1 | sed 's/^/# /'
    grep '^conn ' "$TMP/raw" | awk 'NR==1{print "v4",$2} NR==2{print "v6",$2} NR==3{print "tlv",$2}'
    grep '^check ' "$TMP/raw" | head -1
} >"$OUT"
