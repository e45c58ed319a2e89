#!/usr/bin/env python3
"""bench/wakeup: what an idle round trip costs a Python data plane on this machine, before any tunnel.

The fast-path issue asks for an idle tunnel RTT of 0.25 ms. A ping through ipsecd wakes a sleeping
Python process four times (ipsecd A for the request, ipsecd B, ipsecd A for the reply, and the kernel
stack in between), and each wake-up of an idle process, on a virtual machine, meets cold caches. This
prints, side by side in one run between two network namespaces joined by a veth:

- the plain veth ping RTT (the kernel alone);
- the RTT of a minimal Python UDP echo (recvfrom, sendto; epoll between) at the far end and a Python
  client: two Python wake-ups per round trip, nothing else;
- one AES-GCM seal of a 1,438-byte packet and a few lines of Python, warm (back to back) and cold (after
  50 ms asleep), in this process.

Figures only; nothing is asserted. Run as root: bench/wakeup [--rounds 40].
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.benchlib import PUB_A, PUB_B, Pair
from ipsec_tunnel.testing.netns import Netns

PORT = 9  # inside the bench's own namespaces only
ECHO = f"""
import select, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({PUB_B!r}, {PORT}))
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN)
print("ready", flush=True)
while True:
    ep.poll(1.0)
    while True:
        try:
            data, peer = s.recvfrom(2048)
        except BlockingIOError:
            break
        s.sendto(data, peer)
"""
CLIENT = f"""
import socket, sys, time
rounds = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for _ in range(rounds):
    time.sleep(0.05)
    t = time.perf_counter()
    s.sendto(b"x" * 84, ({PUB_B!r}, {PORT}))
    s.recv(2048)
    print((time.perf_counter() - t) * 1e3)
"""


def ping_rtts(ns: Netns, rounds: int) -> list[float]:
    """Round trips (ms) of `rounds` pings to the far end of the veth, 50 ms apart."""
    out = ns.run(["ping", "-n", "-c", str(rounds), "-i", "0.05", "-W", "1", PUB_B], timeout=rounds + 10)
    return [float(line.split("time=")[1].split()[0]) for line in out.stdout.splitlines() if "time=" in line]


def echo_rtts(pair: Pair, rounds: int) -> list[float]:
    """Round trips (ms) of a Python client and a Python UDP echo, 50 ms apart."""
    server = pair.b.popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = pair.a.run([sys.executable, "-c", CLIENT, str(rounds)], timeout=rounds + 30, check=True)
        return [float(line) for line in out.stdout.split()]
    finally:
        server.kill()
        server.wait()


def seal_us(rounds: int) -> tuple[float, float]:
    """Median microseconds of one AES-GCM seal of 1,438 bytes (plus the Python around it): warm, cold."""
    aead = AESGCM(os.urandom(16))
    salt, packet = os.urandom(4), os.urandom(1438)
    warm: list[float] = []
    cold: list[float] = []

    def seal(seq: int) -> bytes:
        iv = seq.to_bytes(8, "big")
        header = (0x1000).to_bytes(4, "big") + seq.to_bytes(4, "big")
        return header + iv + aead.encrypt(salt + iv, packet + b"\x01\x02\x02\x04", header)

    for seq in range(1, 2 * rounds + 1):
        if seq % 2:
            time.sleep(0.05)
        start = time.perf_counter()
        seal(seq)
        (cold if seq % 2 else warm).append((time.perf_counter() - start) * 1e6)
    return statistics.median(warm), statistics.median(cold)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/wakeup", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40, help="round trips and seals measured (default 40)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/wakeup: needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = os.getpid()
    pair = Pair(Netns(f"bwk{tag}A"), Netns(f"bwk{tag}B"))
    try:
        pair.build()
        veth = ping_rtts(pair.a, args.rounds)
        echo = echo_rtts(pair, args.rounds)
    finally:
        pair.close()
    warm, cold = seal_us(args.rounds)
    print(f"idle round trips between two namespaces, {args.rounds} each, 50 ms apart; medians")
    print(f"  plain veth ping (kernel only)                   {statistics.median(veth):7.3f} ms")
    print(f"  Python UDP echo (2 Python wake-ups per round)   {statistics.median(echo):7.3f} ms")
    print("one AES-GCM seal of 1,438 bytes with its framing, in Python")
    print(f"  warm (back to back)                             {warm:7.1f} us")
    print(f"  cold (after 50 ms asleep)                       {cold:7.1f} us   ({cold / warm:.0f}x)")
    print(f"(addresses {PUB_A} and {PUB_B}, inside this bench's own namespaces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
