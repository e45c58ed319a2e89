#!/usr/bin/env python3
"""bench/counts: what ipsecd does per GB moved, for code variants side by side; robust where Mbit/s is not.

On a shared machine wall-clock throughput and even CPU seconds per GB swing by 10% or more from run to
run. Counts per GB moved do not: system calls by kind (perf's syscall tracepoints), context switches,
user and system CPU, packets per tunnel-device read and write, datagrams on the veth. Each variant is
an ipsecd pair (AES-128-GCM, ESP-in-UDP, as bench/throughput's ours-gcm-udp; raw ESP with --esp)
running the code under its source directory with its own options; variants are measured in turn, the
order reversed every round (ABBA), one iperf3 stream of --seconds each. Medians per variant, and each
run's figure.

    bench/counts --variant base=/path/to/old/src --variant main=src \\
                 --variant nocap=src:--batch=4096,--spin-us=0 --rounds 4 --seconds 5

--spin-us=0 takes busy polling (CPU burnt while waiting, which depends on the timing of the moment) out
of the CPU figures. Run as root; needs perf and iperf3. Nothing outside its own namespaces is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*, tests.*

from bench.lib.measure import HZ
from bench.lib.planes import OursConfig, OursPlane
from bench.lib.topology import IN_A, IN_B
from tests.support.hosts import IpsecHost

R = TypeVar("R")
SYSCALLS = [
    "epoll_wait",
    "recvmsg",
    "sendmsg",
    "read",
    "write",
    "writev",
    "sched_yield",
    "recvmmsg",
    "sendmmsg",
]
EVENTS = ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{s}" for s in SYSCALLS), "context-switches"]


class Host(IpsecHost):
    """An ipsecd host whose daemon and ipsecadm import ipsec_tunnel from `src`."""

    def __init__(self, label: str, work: Path, src: str) -> None:
        super().__init__(label, work)
        self.src = src

    @property
    def env(self) -> dict[str, str]:
        root = str(Path(__file__).resolve().parent.parent)
        return {**os.environ, "IPSEC_TUNNEL_SOCKET": str(self.socket), "PYTHONPATH": f"{self.src}:{root}"}


def variant_spec(spec: str) -> tuple[str, str, list[str]]:
    """A `--variant NAME=SRC[:OPT,OPT]` word: the name, SRC as an absolute path, the ipsecd options."""
    name, _, rest = spec.partition("=")
    src, _, opts = rest.partition(":")
    return name, str(Path(src).resolve()), [o for o in opts.split(",") if o]


class Variant(OursPlane):
    """ours-gcm-udp (with `esp`, ours-gcm-esp: raw ESP) with the code under `src` and extra ipsecd
    options."""

    def __init__(
        self, key: str, work: Path, src: str, options: list[str], host: type[Host] | None = None,
        esp: bool = False,
    ) -> None:  # fmt: skip
        self.options = options
        self.config = OursConfig("gcm", not esp)
        self.work = work
        make = host or Host
        self.hosts = (make(f"{key}-A", work, src), make(f"{key}-B", work, src))
        super(OursPlane, self).__init__(key, f"{key} ({src} {' '.join(options)})", work, "gcm")
        self.encap_filter = "ip proto 50" if esp else "udp port 4500"

    def setup(self) -> None:
        for host in self.hosts:
            host.start("--log-level", "warning", *self.options)
        self.configure()


def process(pid: int) -> dict[str, int]:
    """/proc counters of `pid`: user and system CPU ticks, context switches."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "utime": int(fields[11]),
        "stime": int(fields[12]),
        "voluntary": int(status["voluntary_ctxt_switches"]),
        "involuntary": int(status["nonvoluntary_ctxt_switches"]),
    }


def links(plane: Variant, side: int) -> dict[str, dict[str, int]]:
    """Packet counters of every link on side A (0) or B (1)."""
    ns = plane.a if side == 0 else plane.b
    out = json.loads(ns.check(["ip", "-s", "-j", "link", "show"]))
    return {
        link["ifname"]: {
            f"{d}_{k}": link["stats64"][d][k] for d in ("rx", "tx") for k in ("packets", "bytes")
        }
        for link in out
    }


def delta(before: Any, after: Any) -> Any:
    if isinstance(before, dict):
        return {k: delta(v, after[k]) for k, v in before.items() if k in after}
    return after - before


def perf_counts(path: Path) -> dict[str, float]:
    counts = {}
    for line in path.read_text().splitlines():
        parts = line.split(";")
        if len(parts) > 3 and parts[2]:
            try:
                counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = float(parts[0])
            except ValueError:
                pass
    return counts


def measure(plane: Variant, seconds: float, work: Path) -> dict[str, float]:
    """One iperf3 stream A -> B through `plane`: its counters per GB received."""
    pids = plane.pids()
    before = [process(p) for p in pids], [links(plane, 0), links(plane, 1)]
    outs = [work / f"perf-{i}.txt" for i in range(2)]
    perfs = [
        subprocess.Popen(
            ["perf", "stat", "-x", ";", "-e", ",".join(EVENTS), "-p", str(p), "-o", str(o)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p, o in zip(pids, outs, strict=True)
    ]
    time.sleep(0.3)
    res = plane.a.run(["iperf3", "-c", IN_B, "-B", IN_A, "-t", f"{seconds:g}", "-J"], timeout=seconds + 30)
    for p in perfs:
        p.send_signal(signal.SIGINT)
    for p in perfs:
        p.wait(timeout=10)
    procs = [delta(b, process(p)) for b, p in zip(before[0], pids, strict=True)]
    link = [delta(b, links(plane, i)) for i, b in enumerate(before[1])]
    received = json.loads(res.stdout)["end"]["sum_received"]
    gb = received["bytes"] / 1e9
    row: dict[str, float] = {"Mbit/s (noisy)": received["bits_per_second"] / 1e6}
    for side, proc, out in zip("AB", procs, outs, strict=True):
        row[f"{side} CPU-s/GB"] = (proc["utime"] + proc["stime"]) / HZ / gb
        row[f"{side} user CPU-s/GB"] = proc["utime"] / HZ / gb
        row[f"{side} system CPU-s/GB"] = proc["stime"] / HZ / gb
        row[f"{side} involuntary switches/GB"] = proc["involuntary"] / gb
        for name, value in perf_counts(out).items():
            row[f"{side} {name}/GB"] = value / gb
    veth = next(name for name in link[1] if name.startswith("v"))
    tun_a, tun_b = link[0]["ipsec1"], link[1]["ipsec1"]
    row["A tunnel-device reads (TSO)/GB"] = tun_a["tx_packets"] / gb
    row["A bytes per tunnel-device read"] = tun_a["tx_bytes"] / max(1, tun_a["tx_packets"])
    row["B datagrams (GSO) received/GB"] = link[1][veth]["rx_packets"] / gb
    row["B tunnel-device writes/GB"] = tun_b["rx_packets"] / gb
    row["B bytes per tunnel-device write"] = tun_b["rx_bytes"] / max(1, tun_b["rx_packets"])
    row["B ACKs read from the device/GB"] = tun_b["tx_packets"] / gb
    return row


def interleaved(
    planes: dict[str, Variant], rounds: int, take: Callable[[Variant], R], note: Callable[[R], str]
) -> dict[str, list[R]]:
    """Each plane (opened first) measured by `take` once a round, in the order given and then reversed
    in every other round; `note` says on stderr what each measurement gave."""
    for plane in planes.values():
        plane.open()
    names = list(planes)
    results: dict[str, list[R]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(take(planes[name]))
            print(f"round {i + 1} {name}: {note(results[name][-1])}", file=sys.stderr)
    return results


def close_all(planes: dict[str, Variant], work: Path) -> None:
    """Close every plane and remove the work directory."""
    for plane in planes.values():
        plane.close()
    subprocess.run(["rm", "-rf", str(work)], check=False)


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/counts", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, metavar="NAME=SRC[:OPT,OPT]",
                   help="a name, the src directory to import ipsec_tunnel from, ipsecd options")  # fmt: skip
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--esp", action="store_true", help="raw ESP instead of ESP-in-UDP")
    p.add_argument("--prefix", default="cn", help="namespace-name prefix")
    p.add_argument("--json", type=Path, help="write every run's figures here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-counts-"))
    planes: dict[str, Variant] = {}
    try:
        for spec in args.variant:
            name, src, options = variant_spec(spec)
            planes[name] = Variant(f"{args.prefix}{len(planes)}", work, src, options, esp=args.esp)
        results = interleaved(
            planes,
            args.rounds,
            lambda plane: measure(plane, args.seconds, work),
            lambda row: f"{row['Mbit/s (noisy)']:.0f} Mbit/s",
        )
        names = list(planes)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        keys = list(results[names[0]][0])
        print(f"{'per GB moved (medians)':40}" + "".join(f"{n:>14}" for n in names))
        for k in keys:
            print(
                f"{k:40}"
                + "".join(f"{statistics.median(r.get(k, 0) for r in results[n]):14.4g}" for n in names)
            )
        return 0
    finally:
        close_all(planes, work)


if __name__ == "__main__":
    sys.exit(main())
