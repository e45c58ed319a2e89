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
  50 ms asleep), in this process; and the same after shorter and longer gaps, asleep or busy (a loop
  that never sleeps), which tells whether keeping the process awake would keep its caches warm;
- with --ipsecd, where the time of an idle ping through ipsecd (AES-GCM, ESP-in-UDP) goes: tcpdump on
  every interface of both namespaces timestamps each hop, and the medians of each are printed;
- with --load as well, the same for pings of 300 bytes alongside one iperf3 TCP stream A -> B (a size no
  TCP segment or ACK of the stream has, so tcpdump can keep to the pings), and, for the slowest tenth
  of them, the mean of each hop: where a loaded ping's p99 goes. --ipsecd-args starts ipsecd with
  options, or a NAME=VALUE in its environment (PYTHONPATH=<another checkout>/src).

Figures only; nothing is asserted. Run as root: bench/wakeup [--rounds 40] [--ipsecd [--load]].
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.latency import percentile
from bench.lib.measure import ping_rtts as tunnel_rtts
from bench.lib.planes import OursConfig, OursWithArgs
from bench.lib.topology import IN_A, IN_B, PUB_A, PUB_B, Pair
from tests.support.netns import Netns

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


def gap_us(rounds: int) -> list[tuple[float, float, float]]:
    """(gap ms, median us of a seal after the gap asleep, after the gap busy) for gaps 0.1-50 ms."""
    aead = AESGCM(os.urandom(16))
    nonce, packet, aad = os.urandom(12), os.urandom(1438), os.urandom(8)

    def busy(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    rows = []
    for gap in (0.0001, 0.001, 0.005, 0.01, 0.05):
        medians = []
        for wait in (time.sleep, busy):
            times = []
            for _ in range(rounds):
                wait(gap)
                start = time.perf_counter()
                aead.encrypt(nonce, packet, aad)
                times.append((time.perf_counter() - start) * 1e6)
            medians.append(statistics.median(times))
        rows.append((gap * 1e3, medians[0], medians[1]))
    return rows


# The hops of one ping through ipsecd, as tcpdump sees them, (namespace, device, direction) of the event that
# ends each -> what the time since the one before went on. The ping starts at ("A", "tun", "Out").
HOPS: dict[tuple[str, str, str], str] = {
    ("A", "wire", "Out"): "ipsecd A: wake up, read the request, seal, send",
    ("B", "wire", "In"): "veth A -> B",
    ("B", "tun", "In"): "ipsecd B: wake up, receive, open, write to ipsec1",
    ("B", "tun", "Out"): "kernel B: the echo reply",
    ("B", "wire", "Out"): "ipsecd B: read the reply, seal, send",
    ("A", "wire", "In"): "veth B -> A",
    ("A", "tun", "In"): "ipsecd A: receive, open, write to ipsec1",
}


TCPDUMP = ["tcpdump", "-i", "any", "-n", "-tt", "-l", "--time-stamp-precision=nano", "icmp or udp port 4500"]
LOADED_PING = 300  # ICMP payload bytes of the pings under load: ESP-in-UDP datagrams of 392 bytes (AES-GCM)
# under load: the pings alone (on the wire, the only datagrams between 300 and 500 bytes)
TCPDUMP_LOADED = [*TCPDUMP[:-1], "icmp or (udp port 4500 and ip[2:2] > 300 and ip[2:2] < 500)"]


def ipsecd_hops(
    rounds: int, *, load: bool = False, extra: Sequence[str] = ()
) -> tuple[list[float], list[dict[str, float]]]:
    """Ping RTTs (ms) through ipsecd and, per ping, the microseconds each hop of HOPS took (tcpdump's
    clock); with `load`, pings of LOADED_PING bytes alongside one iperf3 stream A -> B."""
    work = Path(tempfile.mkdtemp(prefix="bench-wakeup-"))
    plane = OursWithArgs(f"wk{os.getpid()}", work, OursConfig("gcm", True), extra)
    dumps: list[tuple[str, subprocess.Popen[str]]] = []
    iperf: subprocess.Popen[str] | None = None
    try:
        plane.open()  # the tunnel and an iperf3 server in B
        tunnel_rtts(plane.a, 3, 0.05)
        tcpdump = TCPDUMP_LOADED if load else TCPDUMP
        for side, ns in (("A", plane.a), ("B", plane.b)):
            dump = ns.popen(tcpdump, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            dumps.append((side, dump))
        time.sleep(1.5)  # tcpdump listening
        if load:
            seconds = f"{rounds * 0.06 + 3:.0f}"
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            iperf = plane.a.popen(["iperf3", "-c", IN_B, "-B", IN_A, "-t", seconds], text=True, **quiet)
            time.sleep(1.5)  # the stream at full speed
        rtts = tunnel_rtts(plane.a, rounds, 0.05, size=LOADED_PING if load else None)
        time.sleep(0.5)
        lines: list[tuple[float, str, str]] = []
        for side, dump in dumps:
            dump.terminate()
            text, _ = dump.communicate(timeout=10)
            lines += [(float(line.split()[0]), side, line) for line in text.splitlines() if line.strip()]
    finally:
        for proc in [iperf, *(dump for _, dump in dumps)]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        plane.close()
        shutil.rmtree(work, ignore_errors=True)  # its keys too
    return rtts, _hop_times(sorted(lines))


def _hop_times(lines: list[tuple[float, str, str]]) -> list[dict[str, float]]:
    """Per ping seen through all of HOPS, the microseconds each took since the event before it, of `-i any
    -tt` tcpdump lines of both namespaces in time order: (timestamp, namespace, line)."""
    pings: list[dict[str, float]] = []
    hops: dict[str, float] = {}
    previous: float | None = None
    for stamp, side, line in lines:
        fields = line.split()
        key = (side, "tun" if fields[1].startswith("ipsec") else "wire", fields[2])
        if key == ("A", "tun", "Out"):  # a ping leaves A's stack
            previous, hops = stamp, {}
        elif previous is not None and key in HOPS:
            hops[HOPS[key]] = (stamp - previous) * 1e6
            previous = stamp
            if key == ("A", "tun", "In"):
                if len(hops) == len(HOPS):
                    pings.append(hops)
                previous = None
    return pings


def _hop_report(times: list[dict[str, float]]) -> list[str]:
    """Per hop, the median over all pings, and the mean over the slowest tenth (by their sum of hops)."""
    slow = sorted(times, key=lambda hops: sum(hops.values()))[-max(1, len(times) // 10) :]
    lines = [f"    {'hop':52s} {'median':>8s} {'slowest tenth':>14s}"]
    for label in HOPS.values():
        lines.append(
            f"    {label:52s} {statistics.median(t[label] for t in times):6.1f} us"
            f" {statistics.fmean(t[label] for t in slow):10.1f} us"
        )
    total = [sum(t.values()) / 1e3 for t in slow]
    lines.append(f"    (the slowest tenth: {len(slow)} pings, {min(total):.2f}-{max(total):.2f} ms)")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/wakeup", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40, help="round trips and seals measured (default 40)")
    p.add_argument("--ipsecd", action="store_true", help="also time each hop of a ping through ipsecd")
    p.add_argument("--load", action="store_true", help="with --ipsecd: the pings alongside an iperf3 stream")
    p.add_argument(
        "--ipsecd-args", default="", help="ipsecd's options or NAME=VALUE environment (shell words)"
    )
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
    hops: tuple[list[float], list[dict[str, float]]] | str | None = None
    what = "a ping alongside one iperf3 stream" if args.load else "an idle ping"
    if args.ipsecd:
        try:
            hops = ipsecd_hops(args.rounds, load=args.load, extra=shlex.split(args.ipsecd_args))
        except Exception as exc:  # a report line, not a traceback: the other figures still stand
            hops = f"{type(exc).__name__}: {exc}"
    warm, cold = seal_us(args.rounds)
    gaps = gap_us(args.rounds)
    print(f"idle round trips between two namespaces, {args.rounds} each, 50 ms apart; medians")
    print(f"  plain veth ping (kernel only)                   {statistics.median(veth):7.3f} ms")
    print(f"  Python UDP echo (2 Python wake-ups per round)   {statistics.median(echo):7.3f} ms")
    print("one AES-GCM seal of 1,438 bytes with its framing, in Python")
    print(f"  warm (back to back)                             {warm:7.1f} us")
    print(f"  cold (after 50 ms asleep)                       {cold:7.1f} us   ({cold / warm:.0f}x)")
    print("  the same AES-GCM call alone after a gap:      asleep        busy")
    for gap, asleep, busy in gaps:
        print(f"    {gap:5.1f} ms                                {asleep:7.1f} us  {busy:7.1f} us")
    if isinstance(hops, str):
        print(f"{what} through ipsecd: not measured ({hops})")
    elif hops is not None:
        rtts, times = hops
        print(
            f"{what} through ipsecd (AES-GCM, ESP-in-UDP): RTT median {statistics.median(rtts):.3f} ms,"
            f" p99 {percentile(rtts, 99) or 0:.3f} ms,"
            f" {len(rtts)} of {args.rounds} answered; {len(times)} seen at every hop"
        )
        print("  per hop (tcpdump's clock, which adds its own wake-ups)")
        if times:
            print("\n".join(_hop_report(times)))
    print(f"(addresses {PUB_A} and {PUB_B}, inside this bench's own namespaces)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
