#!/usr/bin/env python3
"""bench/profile: where ipsecd's CPU time goes, per function, for code variants side by side.

Each variant is an ipsecd pair (AES-128-GCM over ESP-in-UDP as bench/throughput's ours-gcm-udp, or raw
ESP with --esp) running the code under its source directory, as in bench/counts. While one iperf3
stream runs, a sampler inside each ipsecd (bench/lib/sampler/sitecustomize.py) notes its Python stack
at every tick of CPU time the process uses (ITIMER_PROF: user and system time, never time asleep, so
unlike a wall-clock sampler a process waiting for the CPU on a busy machine adds nothing). A sample
lands where Python next looks at its signals: after a C function called from Python, in the caller
(right); after an operator on NumPy arrays, at the next call or loop jump (so a short NumPy helper
such as ndarray.any shows the comparisons before it; the kinds of work below count NumPy's frames for
the code that called them). Variants are measured in turn, the order reversed every round (ABBA).
Printed per end (A sends, B receives): samples per GB moved by kind of work and the functions with the
most samples (self time: the frame running).

CPU time per GB of the same code moves by 10% or more with the machine's load, for the AES calls too;
the shares within one run move much less. Compare shares, and samples per GB only within a run.

    bench/profile --variant before=/path/to/old/src --variant after=src --rounds 2 --seconds 8
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*, tests.*

from bench.counts import Host, Variant, close_all, interleaved, variant_spec
from bench.lib.planes import OursConfig
from bench.lib.topology import IN_A, IN_B

SAMPLER = Path(__file__).resolve().parent / "lib" / "sampler"
# Kinds of work, by the innermost frame of ipsec_tunnel's ("file:function" prefix; the first that
# matches): NumPy's own frames count for the code that called them
KINDS = [
    ("CBC loops", ["esp.py:seal_rows_cbc", "esp.py:open_cbc_many", "esp.py:seal_cbc", "esp.py:open_cbc"]),
    (
        "AES-GCM loops",
        ["esp.py:seal_rows", "esp.py:open_aead16_many", "esp.py:seal_aead16", "esp.py:open_aead16"],
    ),
    ("TSO cut", ["tso.py", "gso.py"]),
    ("GRO coalesce", ["gro.py"]),
    ("SA, replay window", ["sa.py", "replay.py"]),
    ("pipelines", ["receive.py", "send.py", "engine.py", "plane.py", "tunnel.py", "natt.py", "sad.py"]),
    ("sockets", ["udp.py", "raw.py", "_transport.py", "_sockopt.py"]),
    ("TUN devices", ["tun.py"]),
    ("event loop", ["dataplane.py", "ike_runner.py"]),
]


class Profiled(Host):
    """An ipsecd host of `bench/counts` with the sampler loaded, writing into `out`."""

    out = Path()

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        return {**env, "PYTHONPATH": f"{SAMPLER}:{env['PYTHONPATH']}", "IPSEC_PROFILE_DIR": str(self.out)}


def kind(stack: str) -> str:
    """The kind of work of a sampled stack: that of its innermost frame that has one."""
    for frame in reversed(stack.split(";")):
        for name, prefixes in KINDS:
            if frame.startswith(tuple(prefixes)):
                return name
    return "other"


def measure(plane: Variant, seconds: float, out: Path) -> dict[str, Any]:
    """One iperf3 stream A -> B: GB received and each end's stacks."""
    pids = plane.pids()
    files = [out / f"prof-{pid}.txt" for pid in pids]
    for path in files:
        path.unlink(missing_ok=True)
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    res = plane.a.run(["iperf3", "-c", IN_B, "-B", IN_A, "-t", f"{seconds:g}", "-J"], timeout=seconds + 30)
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    stacks = []
    for path in files:
        for _ in range(50):
            if path.exists():
                break
            time.sleep(0.1)
        counts: dict[str, int] = {}
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            counts[stack] = int(count)
        stacks.append(counts)
    return {"gb": json.loads(res.stdout)["end"]["sum_received"]["bytes"] / 1e9, "stacks": stacks}


def report(results: dict[str, list[dict[str, Any]]], top: int) -> None:
    names = list(results)
    for side in (0, 1):
        self_time: dict[str, collections.Counter[str]] = {}
        kinds: dict[str, collections.Counter[str]] = {}
        gbs = {}
        for name in names:
            counter: collections.Counter[str] = collections.Counter()
            by_kind: collections.Counter[str] = collections.Counter()
            for run in results[name]:
                for stack, count in run["stacks"][side].items():
                    counter[stack.rsplit(";", 1)[-1].split("@")[0]] += count
                    by_kind[kind(stack)] += count
            self_time[name], kinds[name] = counter, by_kind
            gbs[name] = sum(run["gb"] for run in results[name])
        totals = {n: sum(self_time[n].values()) for n in names}
        print(f"\n{'AB'[side]} ({'sender' if side == 0 else 'receiver'}): samples per GB, share")
        print(f"{'':52}" + "".join(f"{n:>16}" for n in names))
        for label in [k for k, _ in KINDS] + ["other"]:
            print(
                f"{label:52}"
                + "".join(
                    f"{kinds[n][label] / gbs[n]:10.0f} {100 * kinds[n][label] / max(1, totals[n]):4.1f}%"
                    for n in names
                )
            )
        print(f"{'all':52}" + "".join(f"{totals[n] / gbs[n]:10.0f} {100:4.0f}%" for n in names))
        overall: dict[str, float] = collections.defaultdict(float)  # summed shares, to rank by
        for n in names:
            for leaf, count in self_time[n].items():
                overall[leaf] += count / max(1, totals[n])
        for leaf in sorted(overall, key=overall.__getitem__, reverse=True)[:top]:
            share = {n: 100 * self_time[n][leaf] / max(1, totals[n]) for n in names}
            print(
                f"  {leaf[:50]:50}"
                + "".join(f"{self_time[n][leaf] / gbs[n]:10.0f} {share[n]:4.1f}%" for n in names)
            )


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, metavar="NAME=SRC[:OPT,OPT]",
                   help="a name, the src directory to import ipsec_tunnel from, ipsecd options")  # fmt: skip
    p.add_argument("--esp", action="store_true", help="raw ESP instead of ESP-in-UDP")
    p.add_argument("--cbc", action="store_true", help="AES-128-CBC + HMAC-SHA-256 instead of AES-128-GCM")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--top", type=int, default=25, help="functions listed per end")
    p.add_argument("--prefix", default="pf", help="namespace-name prefix")
    p.add_argument("--json", type=Path, help="write every run's stacks here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    Profiled.out = work
    planes: dict[str, Variant] = {}
    try:
        for spec in args.variant:
            name, src, options = variant_spec(spec)
            plane = Variant(f"{args.prefix}{len(planes)}", work, src, options, Profiled)
            cipher = "cbc" if args.cbc else "gcm"
            if args.esp:
                plane.config, plane.encap_filter = OursConfig(cipher, False), "ip proto 50"
            elif args.cbc:
                plane.config = OursConfig(cipher, True)
            planes[name] = plane
        results = interleaved(
            planes,
            args.rounds,
            lambda plane: measure(plane, args.seconds, work),
            lambda run: f"{run['gb']:.2f} GB",
        )
        if args.json:
            args.json.write_text(json.dumps(results))
        report(results, args.top)
        return 0
    finally:
        close_all(planes, work)


if __name__ == "__main__":
    sys.exit(main())
