#!/usr/bin/env python3
"""bench/ring: how much of a loaded TCP stream waits in the sending ipsecd's tunnel device ring.

The TUN driver holds what the kernel routed into a device in a ring of `txqueuelen` entries until
ipsecd reads it, and counts a packet as sent (tx_bytes, tx_packets in /proc/net/dev) when ipsecd reads
it; the TCP sender counts what it handed down (TCP_INFO bytes_sent, resent bytes included). So the load
here is one TCP stream of bench/lib/ringload.py (A -> B, as fast as it goes, in place of iperf3), which
every `--every` seconds reads both, within microseconds of each other:

    ring = bytes_sent - bytes_retrans - (tx_bytes - 52 * tx_packets)    (counted from before the stream;
                                                                         52: IPv4 + TCP with timestamps)

(what the ring dropped at its tail is taken to be what TCP resent), and the stream's whole backlog in
flight, bytes_sent - bytes_acked (the ring, both daemons, the outer sockets, B's device and socket).
Pings ride alongside (50 ms apart) as in bench/latency; the slow ones are listed with their time. Per
plane and round: ring p50/p90/max (KB), in flight p50, pings p50/p99, Mbit/s (acknowledged), segments
resent and ring drops. ipsecd only (ours-gcm-udp), with `--variant` planes interleaved as in
bench/latency. Figures only.

Run as root: bench/ring.py [--runs 2] [--pings 60] [--every 0.05] [--variant ARGS ...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from bench.latency import parse_ping, percentile, route_device
from bench.lib.planes import OursConfig, Plane, close_planes, open_planes, ours_variants
from bench.lib.processes import log, shield_cleanup, stop_process, workdir
from bench.lib.topology import IN_A, IN_B

HEADER = 52  # IPv4 (20) + TCP with timestamps (32): what tx_bytes counts once per packet read
SLOW_MS = 50.0  # pings slower than this are listed with their time (ping -D)
LOAD = Path(__file__).resolve().parent / "lib" / "ringload.py"


def parse_samples(text: str) -> tuple[list[tuple[float, ...]], tuple[int, int, int]]:
    """The sample lines of ringload.py and its base counters."""
    base = (0, 0, 0)
    rows = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "base":
            base = (int(words[1]), int(words[2]), int(words[3]))
        elif len(words) == 7:
            rows.append(tuple(float(w) for w in words))
    return rows, base


@dataclass
class RingRun:
    """One round of one plane."""

    ring: list[int]  # bytes in the sending device's ring, per sample
    flight: list[int]  # bytes of the stream in flight, per sample
    rtts: list[float]  # ms, the answered pings
    lost: int
    mbps: int
    resent: int  # segments (of 1448 bytes)
    drops: int  # packets the ring dropped at its tail
    slow: list[tuple[float, float]]  # (unix time, ms) of the pings over SLOW_MS


def measure(plane: Plane, count: int, seconds: float, every: float) -> RingRun:
    a = plane.a
    device = route_device(a.run(["ip", "route", "get", IN_B, "from", IN_A]).stdout) or "ipsec1"
    load = a.popen(
        [sys.executable, str(LOAD), "send", device, str(seconds), str(every)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        argv = ["ping", "-D", "-n", "-c", str(count), "-i", "0.05", "-W", "1", "-I", IN_A, IN_B]
        text = a.run(argv, timeout=count * 0.05 + 10).stdout
        rtts, sent = parse_ping(text)
        slow = [
            (float(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"^\[([0-9.]+)\].*time=([0-9.]+) ms", text, re.MULTILINE)
            if float(m.group(2)) > SLOW_MS
        ]
        out, _ = load.communicate(timeout=seconds + 30)
    finally:
        stop_process(load)
        a._procs.remove(load)
    rows, (tx0, txp0, drop0) = parse_samples(out or "")
    if not rows:
        raise RuntimeError(f"ringload gave nothing: {out!r}")
    t0 = rows[0][0]
    ring, flight = [], []
    for t, bsent, retrans, acked, txb, txp, _drop in rows:
        if t - t0 < 1.0:
            continue  # slow start
        read = (txb - tx0) - HEADER * (txp - txp0)
        ring.append(max(0, int(bsent - retrans - read)))
        flight.append(int(bsent - acked))
    last, first = rows[-1], rows[0]
    mbps = (last[3] - first[3]) * 8 / (last[0] - first[0]) / 1e6
    return RingRun(
        ring,
        flight,
        rtts,
        sent - len(rtts),
        round(mbps),
        int(last[2] // 1448),
        int(last[6] - drop0),
        slow,
    )


def kb(values: list[int], p: float) -> str:
    v = percentile(values, p)
    return "-" if v is None else f"{v / 1024:,.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--pings", type=int, default=60)
    p.add_argument("--every", type=float, default=0.05, help="seconds between samples")
    p.add_argument("--variant", action="append", default=[])
    args = p.parse_args()
    seconds = float(int(1 + args.pings * 0.05 * 1.2 + 2))
    results: dict[str, list[RingRun]] = {}
    planes: list[Plane] = []
    with workdir(False, "ipsec-bench-ring-") as work:
        try:
            planes = ours_variants("ours-gcm-udp", work, OursConfig("gcm", udp=True), [], args.variant)
            ready = open_planes(planes)
            for plane in ready:
                plane.b.popen([sys.executable, str(LOAD), "sink"])
            time.sleep(1.0)
            for i in range(args.runs):
                for plane in ready[i % len(ready) :] + ready[: i % len(ready)]:
                    r = measure(plane, args.pings, seconds, args.every)
                    results.setdefault(plane.label, []).append(r)
                    log(
                        f"run {i + 1} {plane.label}: ring p50 {kb(r.ring, 50)} KB p90 {kb(r.ring, 90)} "
                        f"max {kb(r.ring, 100)}; in flight p50 {kb(r.flight, 50)} KB; ping p50 "
                        f"{percentile(r.rtts, 50) or 0:.2f} p99 {percentile(r.rtts, 99) or 0:.2f} ms; "
                        f"{r.mbps} Mbit/s, {r.resent} segments resent, {r.drops} ring drops, "
                        f"{r.lost} pings lost"
                    )
                    if r.slow:
                        log(f"  slow pings (unix time, ms): {r.slow}")
        finally:
            shield_cleanup()
            close_planes(planes)
    print("| plane | ring p50 KB | p90 | max | in flight p50 KB | ping p50 ms | p99 | Mbit/s | retransmits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rs in results.items():
        ring = [x for r in rs for x in r.ring]
        flight = [x for r in rs for x in r.flight]
        rtts = [x for r in rs for x in r.rtts]
        mbps = statistics.median(r.mbps for r in rs)
        retrans = "/".join(f"{r.resent}/{r.drops}" for r in rs)
        print(
            f"| {label} | {kb(ring, 50)} | {kb(ring, 90)} | {kb(ring, 100)} | {kb(flight, 50)} | "
            f"{percentile(rtts, 50) or 0:.2f} | {percentile(rtts, 99) or 0:.2f} | {mbps:,.0f} | {retrans} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
