"""One measurement round of one plane: idle ping RTT, one iperf3 TCP stream A -> B, and the CPU time of
the tunnel processes and of the machine around it; rounds interleaved over the planes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Netns

from .planes import Plane
from .processes import log
from .topology import IN_A, IN_B

HZ = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def host_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine, from /proc/stat."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(cpu[:8])  # guest time is already counted in user
    return total - cpu[3] - cpu[4], total, cpu[7]


@dataclass
class Run:
    """One measurement round of one plane."""

    run: int
    mbps: float | None = None  # receiver side
    bytes: int = 0
    seconds: float = 0.0
    retransmits: int | None = None
    cpu_s: float | None = None  # tunnel processes, both ends, during the iperf3 run
    cpu_s_per_gb: float | None = None
    rtts_ms: list[float] = field(default_factory=list)
    idle_cpu_pct: float | None = None  # tunnel processes during the ping (mostly idle)
    host_busy_pct: float | None = None
    host_steal_pct: float | None = None
    error: str | None = None


def ping_rtts(ns: Netns, count: int, interval: float, size: int | None = None) -> list[float]:
    """Round-trip times (ms) of `count` pings IN_A -> IN_B, `interval` s apart (`size`: payload bytes)."""
    sized = ["-s", str(size)] if size is not None else []
    res = ns.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", *sized, "-I", IN_A, IN_B],
        timeout=count * interval + 10,
    )
    rtts = []
    for line in res.stdout.splitlines():
        if "time=" in line:
            rtts.append(float(line.split("time=")[1].split()[0]))
    return rtts


def measure(
    plane: Plane, run: int, seconds: float, pings: int, interval: float, rate: str | None = None
) -> Run:
    """Idle ping RTT, then one iperf3 TCP stream A -> B for `seconds` (paced at `rate`, iperf3 -b, when
    given) with the tunnel's CPU time. A failure (a tunnel process gone, iperf3 hanging or failing) is
    recorded in the run, never raised."""
    r = Run(run)
    try:
        _measure(r, plane, seconds, pings, interval, rate)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        r.error = f"{type(exc).__name__}: {exc}"
    return r


def _measure(r: Run, plane: Plane, seconds: float, pings: int, interval: float, rate: str | None) -> None:
    pids = plane.pids()
    p0, w0 = [cpu_ticks(p) for p in pids], time.monotonic()
    r.rtts_ms = ping_rtts(plane.a, pings, interval)
    if pids:
        p1, w1 = [cpu_ticks(p) for p in pids], time.monotonic()
        r.idle_cpu_pct = round((sum(p1) - sum(p0)) / HZ / (w1 - w0) * 100, 2)
    t0, h0 = [cpu_ticks(p) for p in pids], host_ticks()
    iperf = ["iperf3", "-c", IN_B, "-B", IN_A, "-t", f"{seconds:g}", "-J", "--connect-timeout", "5000"]
    if rate is not None:
        iperf += ["-b", rate]
    res = plane.a.run(iperf, timeout=seconds + 30)
    t1, h1 = [cpu_ticks(p) for p in pids], host_ticks()
    total = h1[1] - h0[1] or 1
    r.host_busy_pct = round((h1[0] - h0[0]) / total * 100, 1)
    r.host_steal_pct = round((h1[2] - h0[2]) / total * 100, 1)
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        r.error = f"iperf3 gave no JSON (exit {res.returncode}): {res.stderr.strip()[:300]}"
        return
    if "error" in doc or "sum_received" not in doc.get("end", {}):
        r.error = f"iperf3: {doc.get('error', 'no result')}"
        return
    received = doc["end"]["sum_received"]
    r.mbps = round(received["bits_per_second"] / 1e6, 1)
    r.bytes = int(received["bytes"])
    r.seconds = float(received["seconds"])
    r.retransmits = int(doc["end"].get("sum_sent", {}).get("retransmits", 0))
    if pids and r.bytes:
        r.cpu_s = round((sum(t1) - sum(t0)) / HZ, 2)
        r.cpu_s_per_gb = round(r.cpu_s / (r.bytes / 1e9), 2)


def run_rounds(
    planes: Sequence[Plane],
    runs: int,
    seconds: float,
    pings: int,
    interval: float,
    results: dict[str, list[Run]],
    *,
    rate: str | None = None,
) -> None:
    """`runs` rounds; each round measures every plane once, the starting plane rotating from round to round
    so that slow drifts of the machine (other load, CPU steal, thermal) fall on all planes alike."""
    for i in range(runs):
        order = list(planes[i % len(planes) :]) + list(planes[: i % len(planes)])
        for plane in order:
            r = measure(plane, i + 1, seconds, pings, interval, rate)
            results[plane.key].append(r)
            rtt = f"{statistics.median(r.rtts_ms):.3f} ms" if r.rtts_ms else "no reply"
            if r.error:
                log(f"run {i + 1}/{runs} {plane.label}: FAILED: {r.error}")
            else:
                cpu = f", tunnel CPU {r.cpu_s} s = {r.cpu_s_per_gb} s/GB" if r.cpu_s is not None else ""
                log(
                    f"run {i + 1}/{runs} {plane.label}: {r.mbps} Mbit/s, {r.retransmits} retr, RTT {rtt}{cpu}"
                    f" (host busy {r.host_busy_pct}%, steal {r.host_steal_pct}%)"
                )
