#!/usr/bin/env python3
"""bench/latency: round-trip times through ipsecd and its peers, idle and under load.

What an interactive user feels first: the delay of a keystroke or a voice packet, on an idle tunnel and
while a download fills it. Each data plane runs between two network namespaces of its own (bench/lib's
topology): ipsecd with AES-128-GCM over ESP-in-UDP and raw ESP, strongSwan kernel-libipsec (aes128gcm16)
and wireguard-go (plain veth with --only veth). All are set up first, then measured in interleaved
rounds; per round and plane:

- idle: --pings pings 10.0.1.1 -> 10.0.2.1, 50 ms apart;
- under load: one iperf3 TCP stream 10.0.1.1 -> 10.0.2.1 (as fast as it goes, or capped with --rate), and
  after a --warmup the same number of pings alongside it (the ping is a separate flow: it waits in
  whatever queue the stream fills);
- with --queues, during the loaded pings, every 0.25 s: the qdisc backlog of A's tunnel device (`tc -s
  qdisc`) and the largest Recv-Q / Send-Q of the UDP and raw sockets in A and B (`ss`): where the standing
  queue is.

One table follows: p50/p95/p99 of the RTTs of all rounds pooled, lost pings, Mbit/s under load, and
ours over each peer. Figures only; nothing is asserted.

Run as root: bench/latency [--runs 3] [--pings 100] [--only ours,wg] [--queues] [--turns] [--rate 200M]
[--json [FILE]].
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from bench.lib.planes import OursConfig, Plane, close_planes, open_planes, ours_variants
from bench.lib.prerequisites import check_prerequisites, ipsecadm_works, versions
from bench.lib.processes import (
    BenchError,
    Interrupted,
    log,
    shield_cleanup,
    stop_process,
    workdir,
)
from bench.lib.report import fmt, table
from bench.lib.runner import begin, finish
from bench.lib.topology import IN_A, IN_B
from bench.throughput import make_planes as throughput_planes
from bench.throughput import selection
from tests.support.netns import Netns

# key -> group, in the order the table lists them; DEFAULT is what runs without --only
PLANES = {
    "ours-gcm-udp": "ours",
    "ours-gcm-esp": "ours",
    "swan-gcm": "strongswan",
    "wg-go": "wireguard",
    "veth": "veth",
}
DEFAULT = [k for k in PLANES if k != "veth"]
PEERS = ("swan-gcm", "wg-go")  # the planes ours is compared with
INTERVAL = 0.05  # seconds between pings
SAMPLE_EVERY = 0.25  # seconds between queue samples (--queues)
PERCENTILES = (50, 95, 99)
TURNS = Path(__file__).resolve().parent / "lib" / "turns"  # the sitecustomize of --turns


# -- parsing (unit-tested in tests/bench/test_latency.py) ------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The `p`-th percentile (0-100) of `values`, interpolated linearly between the closest ranks (as
    numpy's default does); None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not within 0-100")
    data = sorted(values)
    rank = (len(data) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def parse_ping(text: str) -> tuple[list[float], int]:
    """The RTTs (ms) of the answered pings in `ping -n` output, and how many were sent."""
    rtts = [float(m.group(1)) for m in re.finditer(r"\btime=([0-9.]+) ms", text)]
    sent = re.search(r"^(\d+) packets transmitted", text, re.MULTILINE)
    return rtts, int(sent.group(1)) if sent else len(rtts)


def parse_iperf(text: str) -> tuple[float, int]:
    """Receiver-side Mbit/s and the sender's retransmits from `iperf3 -J` output; ValueError with
    iperf3's own message when it failed."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValueError(f"iperf3 gave no JSON: {text.strip()[:200]!r}") from None
    end = doc.get("end", {}) if isinstance(doc, dict) else {}
    if "error" in doc or "sum_received" not in end:
        raise ValueError(f"iperf3: {doc.get('error', 'no result')}")
    mbps = float(end["sum_received"]["bits_per_second"]) / 1e6
    return round(mbps, 1), int(end.get("sum_sent", {}).get("retransmits", 0))


def parse_qdisc(text: str) -> dict[str, Any]:
    """The root qdisc in `tc -s -j qdisc show dev X` output: kind, backlog bytes, queued packets, drops."""
    for q in json.loads(text or "[]"):
        if q.get("root"):
            return {
                "kind": q.get("kind"),
                "backlog_bytes": int(q.get("backlog", 0)),
                "backlog_packets": int(q.get("qlen", 0)),
                "drops": int(q.get("drops", 0)),
            }
    return {}


def parse_ss(text: str) -> tuple[int, int]:
    """The largest Recv-Q and Send-Q (bytes) of the sockets in `ss -H -uwan` output."""
    recv = send = 0
    for line in text.splitlines():
        cols = line.split()
        # Netid State Recv-Q Send-Q Local Peer [Process]; without -H/Netid columns: State Recv-Q Send-Q
        nums = [c for c in cols[:4] if c.isdigit()]
        if len(nums) >= 2:
            recv, send = max(recv, int(nums[0])), max(send, int(nums[1]))
    return recv, send


def parse_turns(doc: dict[str, Any]) -> tuple[str, str, dict[str, dict[float, int]]] | None:
    """A turns file of bench/lib/turns (one ipsecd): its plane key and side (from the --socket path,
    .../KEY-A/ipsecd.sock) and, per handler, the count of calls per duration bucket (ms, upper edge);
    None for a process that is no plane's ipsecd."""
    argv = doc.get("argv", [])
    socket = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--socket"), None)
    m = re.search(r"/([^/]+)-([AB])/ipsecd\.sock$", socket or "")
    if m is None:
        return None
    turns = {name: {float(b): int(n) for b, n in buckets.items()} for name, buckets in doc["turns"].items()}
    return m.group(1), m.group(2), turns


def turn_rows(label: str, side: str, turns: dict[str, dict[float, int]]) -> list[list[str]]:
    """Table rows for one ipsecd's handlers: calls, how many lasted over 2 and over 8 ms, the longest
    bucket."""
    rows = []
    for name, buckets in sorted(turns.items()):
        calls = sum(buckets.values())
        over2 = sum(n for b, n in buckets.items() if b > 2)
        over8 = sum(n for b, n in buckets.items() if b > 8)
        rows.append([label, side, name, f"{calls:,}", f"{over2:,}", f"{over8:,}", f"<= {max(buckets):g} ms"])
    return rows


def route_device(text: str) -> str | None:
    """The output device in `ip route get` output."""
    m = re.search(r"\bdev (\S+)", text)
    return m.group(1) if m else None


# -- measuring -------------------------------------------------------------------------------------------


@dataclass
class LatRun:
    """One round of one plane."""

    run: int
    idle_ms: list[float] = field(default_factory=list)
    idle_sent: int = 0
    load_ms: list[float] = field(default_factory=list)
    load_sent: int = 0
    mbps: float | None = None
    retransmits: int | None = None
    queues: dict[str, list[int]] = field(default_factory=dict)  # --queues samples
    qdisc: str | None = None
    error: str | None = None


def pings(ns: Netns, count: int) -> tuple[list[float], int]:
    """`count` pings IN_A -> IN_B, INTERVAL apart: the RTTs (ms) answered and the number sent."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(INTERVAL), "-W", "1", "-I", IN_A, IN_B]
    return parse_ping(ns.run(argv, timeout=count * INTERVAL + 10).stdout)


class QueueSampler(threading.Thread):
    """Samples the tunnel device's qdisc backlog in A and the socket queues in A and B until stopped."""

    def __init__(self, plane: Plane, device: str | None) -> None:
        super().__init__(daemon=True)
        self.plane = plane
        self.device = device
        self.samples: dict[str, list[int]] = {}
        self.kind: str | None = None
        self.halt = threading.Event()

    def add(self, key: str, value: int) -> None:
        self.samples.setdefault(key, []).append(value)

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_EVERY):
            if self.device:
                q = parse_qdisc(
                    self.plane.a.run(["tc", "-s", "-j", "qdisc", "show", "dev", self.device]).stdout
                )
                if q:
                    self.kind = q["kind"]
                    self.add("A qdisc backlog bytes", q["backlog_bytes"])
                    self.add("A qdisc backlog packets", q["backlog_packets"])
            for side, ns in (("A", self.plane.a), ("B", self.plane.b)):
                recv, send = parse_ss(ns.run(["ss", "-H", "-uwan"]).stdout)
                self.add(f"{side} socket Recv-Q bytes", recv)
                self.add(f"{side} socket Send-Q bytes", send)


def iperf_argv(seconds: float, rate: str | None = None, window: str | None = None) -> list[str]:
    """The loading iperf3 client: one TCP stream IN_A -> IN_B for `seconds`, capped at `rate` (iperf3's
    -b, e.g. 200M) when given, else as fast as it goes; with `window`, both ends' socket buffers set to
    it (iperf3's -w: the application bounds its own window)."""
    argv = ["iperf3", "-c", IN_B, "-B", IN_A, "-t", f"{seconds:g}", "-J", "--connect-timeout", "5000"]
    if window:
        argv += ["-w", window]
    return [*argv, "-b", rate] if rate else argv


def measure(
    plane: Plane,
    run: int,
    count: int,
    seconds: float,
    warmup: float,
    queues: bool,
    rate: str | None = None,
    window: str | None = None,
) -> LatRun:
    """Idle pings, then pings alongside one iperf3 stream (capped at `rate`); failures are recorded,
    never raised."""
    r = LatRun(run)
    try:
        r.idle_ms, r.idle_sent = pings(plane.a, count)
        device = route_device(plane.a.run(["ip", "route", "get", IN_B, "from", IN_A]).stdout)
        if device:
            r.qdisc = parse_qdisc(plane.a.run(["tc", "-j", "qdisc", "show", "dev", device]).stdout).get(
                "kind"
            )
        iperf = iperf_argv(seconds, rate, window)
        proc = plane.a.popen(iperf, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = QueueSampler(plane, device) if queues else None
        try:
            time.sleep(warmup)
            if sampler is not None:
                sampler.start()
            r.load_ms, r.load_sent = pings(plane.a, count)
            if sampler is not None:
                sampler.halt.set()
                sampler.join()
                r.queues = sampler.samples
            out, err = proc.communicate(timeout=seconds + 30)
        finally:
            stop_process(proc)
            plane.a._procs.remove(proc)
        r.mbps, r.retransmits = parse_iperf(out or err)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        r.error = f"{type(exc).__name__}: {exc}"
    return r


def run_rounds(
    planes: Sequence[Plane], args: argparse.Namespace, seconds: float, results: dict[str, list[LatRun]]
) -> None:
    """`--runs` rounds of every plane, the starting plane rotating from round to round."""
    for i in range(args.runs):
        for plane in list(planes[i % len(planes) :]) + list(planes[: i % len(planes)]):
            r = measure(plane, i + 1, args.pings, seconds, args.warmup, args.queues, args.rate, args.window)
            results.setdefault(plane.key, []).append(r)
            if r.error:
                log(f"run {i + 1}/{args.runs} {plane.label}: FAILED: {r.error}")
            else:
                idle, load = percentile(r.idle_ms, 50), percentile(r.load_ms, 50)
                log(
                    f"run {i + 1}/{args.runs} {plane.label}: idle p50 {fmt(idle, 3)} ms, loaded p50 "
                    f"{fmt(load, 3)} p99 {fmt(percentile(r.load_ms, 99), 3)} ms, {r.mbps} Mbit/s"
                )


# -- summary ---------------------------------------------------------------------------------------------


@dataclass
class LatSummary:
    """One plane's rounds, pooled."""

    key: str
    label: str
    group: str
    runs: list[LatRun]
    error: str | None = None

    def _pool(self, attr: str) -> list[float]:
        return [t for r in self.runs if not r.error for t in getattr(r, attr)]

    def idle(self, p: float) -> float | None:
        return percentile(self._pool("idle_ms"), p)

    def load(self, p: float) -> float | None:
        return percentile(self._pool("load_ms"), p)

    @property
    def lost_pct(self) -> float | None:
        sent = sum(r.load_sent for r in self.runs if not r.error)
        return None if not sent else 100 * (sent - len(self._pool("load_ms"))) / sent

    @property
    def mbps(self) -> float | None:
        vals = [r.mbps for r in self.runs if r.mbps is not None]
        return float(statistics.median(vals)) if vals else None

    def queue_medians(self) -> dict[str, tuple[float, int]]:
        """Per queue: the median and the largest sample over all rounds."""
        pooled: dict[str, list[int]] = {}
        for r in self.runs:
            for k, v in r.queues.items():
                pooled.setdefault(k, []).extend(v)
        return {k: (statistics.median(v), max(v)) for k, v in pooled.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "error": self.error,
            "idle_ms": {f"p{p}": self.idle(p) for p in PERCENTILES},
            "load_ms": {f"p{p}": self.load(p) for p in PERCENTILES},
            "lost_pct": self.lost_pct,
            "mbps": self.mbps,
            "queues": {k: {"median": m, "max": x} for k, (m, x) in self.queue_medians().items()},
            "runs": [asdict(r) for r in self.runs],
        }


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def render(summaries: Sequence[LatSummary], args: argparse.Namespace, seconds: float) -> str:
    """The figures table, the ratios of ours over each peer, and (with --queues) the queue samples."""
    rows = []
    for s in summaries:
        if s.error or not s._pool("idle_ms"):
            rows.append([s.label, "FAILED" if s.error or s.runs else "not run", *[""] * 8])
            continue
        qdisc = next((r.qdisc for r in s.runs if r.qdisc), None) or "-"
        rows.append(
            [
                s.label,
                *(fmt(s.idle(p), 2) for p in PERCENTILES),
                *(fmt(s.load(p), 2) for p in PERCENTILES),
                fmt(s.lost_pct, 0),
                fmt(s.mbps, 0),
                qdisc,
            ]
        )
    header = ["data plane", "idle p50", "p95", "p99", "load p50", "p95", "p99", "lost %", "Mbit/s", "qdisc"]
    by_key = {s.key: s for s in summaries}
    ratios = []
    for s in summaries:
        if s.group != "ours":
            continue
        for key in PEERS:
            peer = by_key.get(key)
            if peer is None:
                continue
            ratios.append(
                [
                    f"{s.label} / {peer.label}",
                    ratio(s.idle(50), peer.idle(50)),
                    ratio(s.load(50), peer.load(50)),
                    ratio(s.load(99), peer.load(99)),
                    ratio(s.mbps, peer.mbps),
                ]
            )
    cap = f" capped at {args.rate}" if getattr(args, "rate", None) else ""
    if getattr(args, "window", None):
        cap += f", iperf3 -w {args.window}"
    cap += ", ECN negotiated" if getattr(args, "ecn", False) else ""
    lines = [
        f"RTT ms of pings 10.0.1.1 -> 10.0.2.1, {INTERVAL * 1000:g} ms apart, {args.pings} per round idle "
        f"and {args.pings} under load (one iperf3 TCP stream{cap}, {seconds:g} s, pings after "
        f"{args.warmup:g} s);",
        f"{args.runs} interleaved rounds, percentiles of all rounds' pings pooled. Mbit/s: iperf3 receiver "
        "side, median.",
        "lost %: pings unanswered under load. qdisc: root qdisc of A's tunnel device.",
        "",
        table(header, rows),
    ]
    if ratios:
        lines += [
            "",
            "ours / peer (below 1: ours lower RTT; above 1: ours more Mbit/s)",
            table(["", "idle p50", "load p50", "load p99", "Mbit/s"], ratios),
        ]
    queue_rows = [
        [s.label, k, fmt(m, 0), f"{x:,}"]
        for s in summaries
        for k, (m, x) in sorted(s.queue_medians().items())
    ]
    if queue_rows:
        lines += [
            "",
            "queues under load (sampled every 0.25 s)",
            table(["", "queue", "median", "max"], queue_rows),
        ]
    for s in summaries:
        if s.error:
            lines.append(f"FAILED {s.label}: {s.error}")
        lines += [f"run {r.run} of {s.label} failed: {r.error}" for r in s.runs if r.error]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------------


def make_planes(
    keys: Sequence[str], work: Path, extra: Sequence[str], variants: Sequence[str] = ()
) -> list[Plane]:
    """The planes of `keys`; each ipsecd plane started with `extra`, and once more per variant with the
    variant's options added (keys ours-...-v1, -v2 ...), all measured in the same interleaved rounds."""
    planes: list[Plane] = []
    for key in keys:
        if key.startswith("ours-"):
            _, cipher, encap = key.split("-")
            config = OursConfig(cipher, udp=encap == "udp")
            planes += ours_variants(key, work, config, extra, variants)
        else:
            planes += throughput_planes([key], work)
    return planes


ECN_SYSCTL = "net.ipv4.tcp_ecn=1"  # RFC 3168: request ECN on outgoing connections, accept it on incoming


def ecn(planes: Sequence[Plane]) -> None:
    """--ecn: TCP asks for ECN in both namespaces of every plane (the same for all)."""
    for plane in planes:
        for ns in (plane.a, plane.b):
            ns.check(["sysctl", "-qw", ECN_SYSCTL])


def read_turns(work: Path, planes: Sequence[Plane]) -> list[list[str]]:
    """The rows of every turns file the stopped ipsecds wrote into `work`."""
    labels = {p.key: p.label for p in planes}
    rows: list[list[str]] = []
    for path in sorted(work.glob("turns-*.json")):
        try:
            got = parse_turns(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"{path.name}: unreadable ({exc})")
            continue
        if got is not None:
            key, side, turns = got
            rows += turn_rows(labels.get(key, key), side, turns)
    return sorted(rows, key=lambda r: (r[0], r[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/latency",
        description="Idle and loaded ping RTT percentiles through ipsecd, strongSwan kernel-libipsec and "
        "wireguard-go, between two network namespaces (needs root).",
        epilog=f"data planes: {', '.join(PLANES)} (veth only when named)",
    )
    p.add_argument("--only", type=selection, default=None, metavar="LIST", help="these groups or planes only")
    p.add_argument("--skip", type=selection, default=set(), metavar="LIST", help="leave these out")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--pings", type=int, default=100, help="pings per round, idle and loaded (default 100)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the pings (default 1)")
    p.add_argument(
        "--rate",
        default=None,
        metavar="RATE",
        help="cap the loading stream at RATE (iperf3 -b: 200M, 1G): the RTT when the tunnel is not "
        "saturated (default: uncapped)",
    )
    p.add_argument(
        "--window",
        default=None,
        metavar="SIZE",
        help="the loading stream's socket buffers (iperf3 -w: 256K, 1M), so the application bounds its "
        "own window: what a bounded in-flight does to the RTT (default: the kernel's autotuning)",
    )
    p.add_argument(
        "--turns",
        action="store_true",
        help="time every handler call in each ipsecd (bench/lib/turns): how long a source's turn keeps "
        "the others waiting, idle and loaded phases together",
    )
    p.add_argument(
        "--queues", action="store_true", help="sample the tunnel device's qdisc and the socket queues"
    )
    p.add_argument(
        "--ecn",
        action="store_true",
        help="negotiate ECN on the loading stream: net.ipv4.tcp_ecn=1 in both namespaces of every plane "
        "(peers included; default: the kernel's 2, ECN only when asked)",
    )
    p.add_argument(
        "--ipsecd-args", default="", metavar="ARGS", help="extra ipsecd options, e.g. '--qdisc=none'"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARGS",
        help="also measure each ipsecd plane started with these options, in the same rounds "
        "(repeatable), e.g. --variant='--socket-buffer=1m' --variant='--batch=4096'",
    )
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE", help="JSON to FILE or stdout"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.pings < 2 or args.warmup < 0:
        p.error("--runs must be at least 1, --pings at least 2, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [
        k
        for k in PLANES
        if (k in args.only if args.only is not None else k in DEFAULT) and k not in args.skip
    ]
    if not keys:
        print("bench/latency: nothing left to measure", file=sys.stderr)
        return 2
    check_prerequisites({PLANES[k] for k in keys}, "bench/latency")
    if any(PLANES[k] == "ours" for k in keys) and (why := ipsecadm_works()):
        print(f"bench/latency: ipsecadm does not run ({why})", file=sys.stderr)
        return 2
    # the stream lasts through the warm-up, the loaded pings and a margin
    seconds = float(int(args.warmup + args.pings * INTERVAL * 1.2 + 2))
    started, load, busy = begin()
    planes: list[Plane] = []
    results: dict[str, list[LatRun]] = {}
    turns: list[list[str]] = []
    interrupted = False
    try:
        with workdir(args.keep, "ipsec-bench-latency-") as work:
            if args.turns:
                os.environ["IPSEC_TURNS_DIR"] = str(work)
                inherited = os.environ.get("PYTHONPATH")
                os.environ["PYTHONPATH"] = f"{TURNS}{os.pathsep}{inherited}" if inherited else str(TURNS)
            try:
                planes = make_planes(keys, work, shlex.split(args.ipsecd_args), args.variant)
                ready = open_planes(planes)
                if args.ecn:
                    ecn(ready)
                if ready:
                    log(f"measuring {len(ready)} data planes: {args.runs} rounds")
                    run_rounds(ready, args, seconds, results)
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                log("interrupted: cleaning up")
            finally:
                shield_cleanup()
                close_planes(planes)
                turns = read_turns(work, planes) if args.turns else []
    except BenchError as exc:
        print(f"bench/latency: {exc}", file=sys.stderr)
        return 1
    summaries = [LatSummary(p.key, p.label, p.group, results.get(p.key, []), p.error) for p in planes]
    report = {
        "bench": "latency",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "runs": args.runs,
        "pings": args.pings,
        "seconds": seconds,
        "ipsecd_args": args.ipsecd_args,
        "rate": args.rate,
        "window": args.window,
        "variants": args.variant,
        "ecn": args.ecn,
        "interrupted": interrupted,
        "loadavg_at_start": round(load, 2),
        "versions": versions(),
        "planes": [s.to_json() for s in summaries],
    }
    text = render(summaries, args, seconds)
    if turns:
        report["turns"] = turns
        text += "\n\nhandler calls per ipsecd (wall clock, bench/lib/turns)\n" + table(
            ["", "side", "handler", "calls", "> 2 ms", "> 8 ms", "longest"], turns
        )
    if busy:
        text += "\n" + busy.replace("Mbit/s moves with other load, CPU-s/GB much less", "RTTs move with it")
    status = 0 if all(s.load(50) is not None and s.mbps is not None for s in summaries) else 1
    return finish(report, text, args.json, interrupted, status)


if __name__ == "__main__":
    sys.exit(main())
