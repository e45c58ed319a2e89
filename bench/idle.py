"""bench/idle: the idle round trip through ipsecd for code variants side by side, with wireguard-go in
the same interleaved rounds, and each tunnel's CPU (both ends) while idle and at 20 pings a second.

    bench/idle --variant NAME=SRC[:OPT,OPT] ... [--plane ours-gcm-udp] [--rounds 3] [--pings 100]
               [--idle 5] [--no-wg]

Each variant is an ipsecd plane (--plane: cipher and encapsulation) whose daemons import ipsec_tunnel
from SRC, started with OPTs. Per round, every plane in turn (the starting plane rotating): CPU over
--idle seconds of no traffic, then --pings pings 50 ms apart (20/s) with the CPU they cost. Figures
only; see bench/README.md."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*, tests.*

from bench.counts import Variant, process, variant_spec
from bench.latency import percentile, pings
from bench.lib.measure import HZ
from bench.lib.planes import OursConfig, Plane, close_planes, open_planes
from bench.lib.prerequisites import check_prerequisites
from bench.lib.processes import log, workdir
from bench.throughput import make_planes as throughput_planes


def cpu(plane: Plane) -> int:
    """CPU ticks of the plane's tunnel processes (both ends), all threads."""
    total = 0
    for pid in plane.pids():
        p = process(pid)
        total += p["utime"] + p["stime"]
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/idle")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=SRC[:OPT,OPT]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pings", type=int, default=100)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--no-wg", action="store_true", help="leave wireguard-go out")
    p.add_argument(
        "--plane",
        default="ours-gcm-udp",
        choices=["ours-gcm-udp", "ours-gcm-esp", "ours-cbc-udp", "ours-cbc-esp"],
        help="the ipsecd configuration of every variant (default ours-gcm-udp)",
    )
    args = p.parse_args(argv)
    check_prerequisites({"ours"} if args.no_wg else {"ours", "wireguard"}, "bench/idle")
    results: dict[str, dict[str, list[float]]] = {}
    with workdir(False, "ipsec-bench-idle-") as work:
        planes: list[Plane] = []
        for spec in args.variant:
            name, src, options = variant_spec(spec)
            variant = Variant(f"idle{len(planes)}", work, src, options)
            _, cipher, encap = args.plane.split("-")
            variant.config = OursConfig(cipher, udp=encap == "udp")
            variant.cipher = cipher
            variant.encap_filter = "udp port 4500" if encap == "udp" else "ip proto 50"
            variant.label = f"{name} {args.plane} ({src} {' '.join(variant.options)})"
            planes.append(variant)
        if not args.no_wg:
            planes += throughput_planes(["wg-go"], work)
        try:
            ready = open_planes(planes)
            for i in range(args.rounds):
                for plane in ready[i % len(ready) :] + ready[: i % len(ready)]:
                    r = results.setdefault(plane.label, {"rtt": [], "idle": [], "ping": []})
                    c0, t0 = cpu(plane), time.monotonic()
                    time.sleep(args.idle)
                    c1, t1 = cpu(plane), time.monotonic()
                    rtts, _sent = pings(plane.a, args.pings)
                    c2, t2 = cpu(plane), time.monotonic()
                    r["rtt"] += rtts
                    r["idle"].append((c1 - c0) / HZ / (t1 - t0) * 100)
                    r["ping"].append((c2 - c1) / HZ / (t2 - t1) * 100)
                    log(f"round {i + 1} {plane.label}: p50 {percentile(rtts, 50):.3f} ms")
        finally:
            close_planes(planes)
    print(f"{'plane':60} {'p10':>6} {'p50':>6} {'p90':>6} {'idle CPU%':>9} {'20/s CPU%':>9}")
    for label, r in results.items():
        rtt = r["rtt"]
        print(
            f"{label[:60]:60} {percentile(rtt, 10):6.3f} {percentile(rtt, 50):6.3f} "
            f"{percentile(rtt, 90):6.3f} {statistics.median(r['idle']):9.2f} "
            f"{statistics.median(r['ping']):9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
