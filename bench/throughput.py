#!/usr/bin/env python3
"""bench/throughput: ipsecd's data plane against the userspace tunnels a user would pick instead.

Each data plane runs between two network namespaces of its own (see bench/lib/topology.py): plain veth (the
ceiling), ipsecd with AES-128-GCM and AES-128-CBC + HMAC-SHA256, each over raw ESP and ESP-in-UDP
(configured only with ipsecadm), strongSwan kernel-libipsec (aes128gcm16, aes128-sha256; ESP-in-UDP)
and wireguard-go. All are set up first, then measured in interleaved rounds: per round and plane an idle
ping (median RTT) and one iperf3 TCP stream (receiver-side Mbit/s, retransmits, and the tunnel
processes' CPU seconds per GB at both ends). One table of medians follows, with ours / each peer.

Run as root: bench/throughput [--runs 3] [--seconds 10] [--only ours,strongswan] [--json [FILE]].
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from bench.lib.planes import OursConfig, OursPlane, Plane, VethPlane, ours_variants
from bench.lib.prerequisites import check_prerequisites, ipsecadm_works
from bench.lib.report import TCP_HEADER, Summary, failures, fmt, table, tcp_row
from bench.lib.runner import check_common, common_args, run_bench
from bench.peers import StrongSwanPlane, WireGuardPlane

# key -> group; in the order the table lists them
PLANES = {
    "veth": "veth",
    "ours-gcm-esp": "ours",
    "ours-gcm-udp": "ours",
    "ours-cbc-esp": "ours",
    "ours-cbc-udp": "ours",
    "swan-gcm": "strongswan",
    "swan-cbc": "strongswan",
    "wg-go": "wireguard",
}
GROUP_ALIASES = {
    "ours": "ours",
    "ipsecd": "ours",
    "strongswan": "strongswan",
    "swan": "strongswan",
    "libipsec": "strongswan",
    "wireguard": "wireguard",
    "wg": "wireguard",
    "wireguard-go": "wireguard",
    "veth": "veth",
    "baseline": "veth",
}


def selection(text: str) -> set[str]:
    """Plane keys named by a comma-separated list of groups (ours, strongswan, wireguard, veth) or keys."""
    keys: set[str] = set()
    for word in filter(None, (w.strip().lower() for w in text.split(","))):
        if word in PLANES:
            keys.add(word)
        elif word in GROUP_ALIASES:
            keys |= {k for k, g in PLANES.items() if g == GROUP_ALIASES[word]}
        else:
            raise argparse.ArgumentTypeError(
                f"unknown data plane {word!r}: name groups (ours, strongswan, wireguard, veth) "
                f"or planes ({', '.join(PLANES)})"
            )
    return keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/throughput",
        description="Throughput, CPU per GB, idle RTT and retransmits of ipsecd against strongSwan "
        "kernel-libipsec, wireguard-go and plain veth, between two network namespaces (needs root).",
        epilog=f"data planes: {', '.join(PLANES)}; groups: ours, strongswan, wireguard, veth",
    )
    p.add_argument(
        "--only",
        type=selection,
        default=None,
        metavar="LIST",
        help="measure only these groups or planes (comma-separated), e.g. --only ours,veth",
    )
    p.add_argument(
        "--skip",
        type=selection,
        default=set(),
        metavar="LIST",
        help="leave these groups or planes out, e.g. --skip strongswan",
    )
    p.add_argument(
        "--ipsecd-args", default="", metavar="ARGS", help="extra options for every ipsecd, e.g. '--spin-us=0'"
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ARGS",
        help="measure each ipsecd plane once more, started with ARGS added, in the same interleaved rounds "
        "(repeatable), e.g. --variant='--spin-us=0'",
    )
    p.add_argument(
        "--rate",
        default=None,
        metavar="RATE",
        help="pace the stream at RATE (iperf3 -b: 800M, 1G), below what every plane moves: CPU-s/GB then "
        "compares the work per byte at one offered load, apart from how each plane shares a saturated "
        "machine (default: unpaced)",
    )
    common_args(p)
    args = p.parse_args(argv)
    check_common(p, args)
    return args


def make_planes(
    keys: list[str], work: Path, extra: Sequence[str] = (), variants: Sequence[str] = ()
) -> list[Plane]:
    """The planes of `keys`; each ipsecd plane started with `extra`, and once more per variant."""
    planes: list[Plane] = []
    for key in keys:
        if key == "veth":
            planes.append(VethPlane(key, "plain veth (no tunnel)", work))
        elif key.startswith("ours-"):
            _, cipher, encap = key.split("-")
            config = OursConfig(cipher, udp=encap == "udp")
            if extra or variants:
                planes += ours_variants(key, work, config, extra, variants)
            else:
                planes.append(OursPlane(key, work, config))
        elif key == "swan-gcm":
            planes.append(StrongSwanPlane(key, work, "aes128gcm16", "gcm"))
        elif key == "swan-cbc":
            planes.append(StrongSwanPlane(key, work, "aes128-sha256", "cbc"))
        elif key == "wg-go":
            planes.append(WireGuardPlane(key, work))
    return planes


def add_ratios(summaries: list[Summary]) -> None:
    """Ours over strongSwan with the same algorithms, and over wireguard-go, for throughput."""
    by_key = {s.key: s for s in summaries}
    for s in summaries:
        if s.group != "ours":
            continue
        for peer, key in (("strongswan", f"swan-{s.cipher}"), ("wireguard-go", "wg-go")):
            other = by_key.get(key)
            if other is not None:
                s.ratios[peer] = s.mbps / other.mbps if s.mbps is not None and other.mbps else None


def render(summaries: list[Summary], args: argparse.Namespace) -> str:
    rows = [
        tcp_row(
            s,
            fmt(s.ratios.get("strongswan"), 2) if s.group == "ours" else "",
            fmt(s.ratios.get("wireguard-go"), 2) if s.group == "ours" else "",
        )
        for s in summaries
    ]
    header = [*TCP_HEADER, "ours/swan", "ours/wg-go"]
    lines = [
        f"TCP, one stream 10.0.1.1 -> 10.0.2.1, {args.seconds:g} s x {args.runs} interleaved rounds"
        + (f", paced at {rate} (iperf3 -b)" if (rate := getattr(args, "rate", None)) else "")
        + "; medians.",
        "Mbit/s: iperf3 receiver side. CPU-s/GB: utime+stime of the tunnel processes at both ends",
        "(ipsecd, charon, wireguard-go) per 10^9 bytes received. RTT: idle ping, median.",
        "retr: TCP retransmits per run. ours/swan: throughput over strongSwan with the same algorithms",
        "(strongSwan 5.9.8 does ESP-in-UDP only).",
        "",
        table(header, rows),
    ]
    lines += failures(summaries)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [k for k in PLANES if (args.only is None or k in args.only) and k not in args.skip]
    if not keys:
        print("bench/throughput: nothing left to measure", file=sys.stderr)
        return 2
    check_prerequisites({PLANES[k] for k in keys}, "bench/throughput")
    if any(PLANES[k] == "ours" for k in keys) and (why := ipsecadm_works()):
        print(
            f"bench/throughput: ipsecadm does not run ({why}); measure the peers with --skip ours",
            file=sys.stderr,
        )
        return 2
    return run_bench(
        "throughput",
        args,
        lambda work: make_planes(keys, work, shlex.split(args.ipsecd_args), args.variant),
        lambda summaries, _planes: render(summaries, args),
        keys=keys,
        after=lambda _planes, summaries: add_ratios(summaries),
    )


if __name__ == "__main__":
    sys.exit(main())
