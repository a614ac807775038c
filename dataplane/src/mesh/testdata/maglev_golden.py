#!/usr/bin/env python3
"""Independent reimplementation of vxmesh's Maglev table (mesh/maglev.rs
module docs) and MurmurHash3 x86_32, written from the description, not from
the Rust code. Prints the values frozen in maglev.rs `golden_*` tests.

Run: python3 dataplane/src/mesh/testdata/maglev_golden.py
"""
import ipaddress

OFFSET_SEED = int.from_bytes(b"mgof", "big")
SKIP_SEED = int.from_bytes(b"mgsk", "big")
CLIENT_SEED = int.from_bytes(b"mgcl", "big")
M32 = 0xFFFFFFFF


def rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & M32


def murmur3_32(data, seed):
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (rotl((k * c1) & M32, 15) * c2) & M32
        h ^= k
        h = (rotl(h, 13) * 5 + 0xE6546B64) & M32
    tail = data[n:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (rotl((k * c1) & M32, 15) * c2) & M32
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def populate(keys, weights, m):
    order = sorted((i for i in range(len(keys)) if weights[i] > 0),
                   key=lambda i: (keys[i].encode(), i))
    if not order:
        return []
    w_max = max(weights[i] for i in order)
    pos = {i: murmur3_32(keys[i].encode(), OFFSET_SEED) % m for i in order}
    skip = {i: murmur3_32(keys[i].encode(), SKIP_SEED) % (m - 1) + 1 for i in order}
    placed = {i: 0 for i in order}
    table = [None] * m
    filled = 0
    rnd = 0
    while True:
        rnd += 1
        for i in order:
            if placed[i] * w_max >= rnd * weights[i]:
                continue
            while table[pos[i]] is not None:
                pos[i] = (pos[i] + skip[i]) % m
            table[pos[i]] = i
            pos[i] = (pos[i] + skip[i]) % m
            placed[i] += 1
            filled += 1
            if filled == m:
                return table


def client_hash(ip):
    a = ipaddress.ip_address(ip)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return murmur3_32(a.packed, CLIENT_SEED)


def candidates(table, h, k):
    out = []
    start = h % len(table)
    for step in range(len(table)):
        b = table[(start + step) % len(table)]
        if b not in out:
            out.append(b)
        if len(out) == k:
            break
    return out


# MurmurHash3 x86_32 reference vectors (SMHasher / widely published).
assert murmur3_32(b"", 1) == 0x514E28B7
assert murmur3_32(b"abc", 0) == 0xB3DD93FA
assert murmur3_32(b"Hello, world!", 0x9747B28C) == 0x24884CBA
assert murmur3_32(b"The quick brown fox jumps over the lazy dog", 0x9747B28C) == 0x2FA826CD

M = 65537
KEYS = ["10.0.9.2:80", "10.0.9.3:80", "10.0.9.4:80"]
for k in KEYS:
    print(f"{k}: offset={murmur3_32(k.encode(), OFFSET_SEED) % M} "
          f"skip={murmur3_32(k.encode(), SKIP_SEED) % (M - 1) + 1}")
t = populate(KEYS, [1] * len(KEYS), M)
print("first16", t[:16])
print("counts", [t.count(i) for i in range(len(KEYS))])
HASHES = [0, 1, 2, 65536, 65537, 0xDEADBEEF, 0xFFFFFFFF]
print("lookups", [(hex(h), t[h % M]) for h in HASHES])
# Listing order must not matter: same owners by key.
rev = list(reversed(KEYS))
tr = populate(rev, [1] * 3, M)
assert [rev[i] for i in tr] == [KEYS[i] for i in t]
CLIENTS = ["198.19.0.2", "10.0.9.100", "::ffff:198.19.0.2", "2001:db8::1"]
for c in CLIENTS:
    h = client_hash(c)
    print(f"client {c}: hash={h:#010x} backend={t[h % M]} candidates={candidates(t, h, 3)}")
tw = populate(KEYS, [1, 2, 3], M)
print("weighted 1:2:3 counts", [tw.count(i) for i in range(3)], "first16", tw[:16])
tsmall = populate(KEYS, [1] * 3, 13)
print("size 13 table", tsmall)
