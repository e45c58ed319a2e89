"""A bench from start to end: the common options, then set up the planes, measure them in rounds, clean
up, and print the table (and JSON)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .measure import run_rounds
from .planes import OursPlane, Plane, close_planes, open_planes
from .prerequisites import busy_note, versions
from .processes import BenchError, Interrupted, log, raise_on_termination, shield_cleanup, workdir
from .report import Summary, emit


def common_args(p: argparse.ArgumentParser) -> None:
    """The options every bench takes: --seconds, --runs, --pings, --json, --keep."""
    p.add_argument("--seconds", type=float, default=10.0, help="length of each iperf3 run (default 10)")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3); medians are reported")
    p.add_argument("--pings", type=int, default=20, help="idle pings per round (default 20, 0.05 s apart)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON to FILE; without FILE, JSON on stdout and the table on stderr",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, captures)")


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the common options' impossible values."""
    if args.runs < 1 or args.seconds < 1 or args.pings < 1:
        p.error("--runs, --seconds and --pings must be at least 1")


def begin() -> tuple[float, float, str | None]:
    """Start a bench: SIGTERM raises (so that the clean-up runs); the start time, the load average and
    the note on it when the machine is busy (logged)."""
    raise_on_termination()
    started = time.time()
    load, busy = busy_note()
    if busy:
        log(busy)
    return started, load, busy


def finish(report: dict[str, Any], text: str, json_to: str | None, interrupted: bool, status: int) -> int:
    """Print the table (and JSON), marked as partial when interrupted; the exit status: 130 when
    interrupted, else `status`."""
    if interrupted:
        text = "INTERRUPTED: partial results\n" + text
    emit(report, text, json_to)
    return 130 if interrupted else status


def run_bench(
    name: str,
    args: argparse.Namespace,
    make_planes: Callable[[Path], list[Plane]],
    render: Callable[[list[Summary], list[Plane]], str],
    *,
    keys: Sequence[str],
    extra: dict[str, Any] | None = None,
    after: Callable[[list[Plane], list[Summary]], None] | None = None,
) -> int:
    """Set up the planes, measure them in interleaved rounds, clean up and print the table (and JSON);
    the exit status: 0 when every plane gave a result, 1 when one failed, 130 when interrupted."""
    started, load, busy = begin()
    planes: list[Plane] = []
    results: dict[str, list[Any]] = {k: [] for k in keys}
    interrupted = False
    try:
        with workdir(args.keep, f"ipsec-bench-{name}-") as work:
            try:
                planes = make_planes(work)
                for p in planes:  # variants of a plane (KEY-v1 ...) are not in `keys`
                    results.setdefault(p.key, [])
                ready = open_planes(planes)
                if ready:
                    log(f"measuring {len(ready)} data planes: {args.runs} rounds of {args.seconds:g} s each")
                    rate = getattr(args, "rate", None)
                    run_rounds(ready, args.runs, args.seconds, args.pings, 0.05, results, rate=rate)
                for p in ready:
                    if isinstance(p, OursPlane):
                        p.notes["rss_kib"] = p.rss_kib()
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                log("interrupted: cleaning up")
            finally:
                shield_cleanup()
                close_planes(planes)
    except BenchError as exc:
        print(f"bench/{name}: {exc}", file=sys.stderr)
        return 1
    summaries = [Summary(p.key, p.label, p.group, p.cipher, results[p.key], p.error, p.notes) for p in planes]
    if after is not None:
        after(planes, summaries)
    report = {
        "bench": name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "seconds": args.seconds,
        "runs": args.runs,
        "pings": args.pings,
        "rate": getattr(args, "rate", None),
        "interrupted": interrupted,
        **(extra or {}),
        "loadavg_at_start": round(load, 2),
        "versions": versions(),
        "planes": [s.to_json() for s in summaries],
    }
    text = render(summaries, planes)
    if busy:
        text += "\n" + busy
    status = 0 if all(s.mbps is not None for s in summaries) else 1
    return finish(report, text, args.json, interrupted, status)
