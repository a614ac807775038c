#!/usr/bin/env python3
"""Does this kernel's tun driver push back on a sender when the TAP's
reader falls behind? Issue 20 asks for UDP floods "with backpressure
instead of dropping at the TAP's tail"; this probe measures whether the
kernel offers any.

In a namespace of its own (removed at the end, also on failure) it opens a
TAP that nobody reads, gives it an address, a neighbour and a qdisc queue
of 100, and sends 20,000 64-byte UDP datagrams to the neighbour from a
non-blocking socket with a 64 KiB send buffer. With flow control the
sender would see EAGAIN (its buffer full of datagrams held in the qdisc)
and the qdisc would hold a backlog; without it every send succeeds and the
datagrams are dropped at the tun ring's tail (TX dropped).

Run as root: python3 bench/probes/tun_backpressure.py
"""
import fcntl
import os
import socket
import struct
import subprocess
import sys
import uuid

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
COUNT = 20000


def child():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tprobe0", IFF_TAP | IFF_NO_PI))
    for cmd in (
        "ip link set tprobe0 up txqueuelen 100",
        "ip addr add 10.99.0.1/24 dev tprobe0",
        "ip neigh add 10.99.0.2 lladdr 02:00:00:00:00:02 dev tprobe0",
    ):
        subprocess.run(cmd.split(), check=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.setblocking(False)
    sent = eagain = 0
    for _ in range(COUNT):
        try:
            s.sendto(b"x" * 64, ("10.99.0.2", 9))
            sent += 1
        except BlockingIOError:
            eagain += 1
    stats = lambda k: int(open(f"/sys/class/net/tprobe0/statistics/{k}").read())
    qdisc = subprocess.run(
        "tc -s qdisc show dev tprobe0".split(), capture_output=True, text=True
    ).stdout
    print(f"kernel {os.uname().release}")
    print(f"datagrams offered {COUNT}: sent {sent}, EAGAIN {eagain}")
    print(f"TAP TX packets {stats('tx_packets')}, TX dropped {stats('tx_dropped')}")
    print("qdisc: " + " | ".join(l.strip() for l in qdisc.splitlines()))
    verdict = "pushes back" if eagain > 0 else "does not push back (tail drop)"
    print(f"verdict: the tun driver {verdict}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        child()
        sys.exit(0)
    ns = "tunprobe-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, __file__, "--inside"],
            timeout=60,
        )
        sys.exit(r.returncode)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
