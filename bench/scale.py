#!/usr/bin/env python3
"""bench/scale: ipsecd's data plane with large tables, side by side with the plain configuration.

Two ipsecd data planes (AES-128-GCM, ESP-in-UDP), each between two namespaces of its own (see
bench/lib/topology.py), measured in interleaved rounds exactly as bench/throughput measures them:
- plain: one SA pair and one tunnel per host;
- scaled: 10,000 SAs and 256 tunnels per host (--sas, --tunnels). The filler SAs (raw-ESP duplex pairs
  with fresh keys) and tunnels (remotes in 198.18.0.0/15, RFC 2544's benchmarking range, never reached) are
  added first, then the measured SA pair and tunnel with ipsecadm as in the plain plane, so whatever
  scans the tables meets every filler before the entry in use.

Adding 10,000 SAs with one ipsecadm process each would take many minutes, so by default a sample
(--adm-sample) is added with ipsecadm and the rest over one long-lived control-socket connection; both
rates are reported (--via adm adds everything with ipsecadm). Also reported: the time of the last
`ipsecadm sa add` / `tunnel add` into full tables, of `ipsecadm sa show` over them, ipsecd's resident
memory and its CPU use while idle.

Run as root: bench/scale [--runs 3] [--seconds 10] [--sas 10000] [--tunnels 256] [--json [FILE]].
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: bench.*

from bench.lib.planes import OursConfig, OursPlane, Plane
from bench.lib.prerequisites import check_prerequisites, ipsecadm_works
from bench.lib.processes import BenchError, log
from bench.lib.report import TCP_HEADER, Summary, failures, fmt, ratio, table, tcp_row
from bench.lib.runner import check_common, common_args, run_bench
from bench.lib.topology import PUB_A, PUB_B
from ipsec_tunnel.control.client import Client
from tests.support.hosts import IpsecHost

FILLER_NET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 §C.2.2: benchmarking, never routed here
FILLER_SPI = 0x10000
GCM_KEY = 20  # AES-128 + 4-byte salt


def timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


class ScaledPlane(OursPlane):
    """ipsecd with `sas` SAs and `tunnels` tunnels per host; one SA pair and one tunnel carry traffic."""

    def __init__(
        self, key: str, work: Path, config: OursConfig, sas: int, tunnels: int, sample: int, via_adm: bool
    ) -> None:
        super().__init__(key, work, config)
        self.label = f"{config.label}, {sas:,} SAs + {tunnels} tunnels"
        self.pairs = (sas - 2) // 2  # duplex filler pairs; the measured pair makes up the rest
        self.fillers = tunnels - 1
        self.sample = sample
        self.via_adm = via_adm
        self.remotes = [str(FILLER_NET.network_address + 1 + i) for i in range(self.fillers)]

    def configure(self) -> None:
        keys = [os.urandom(GCM_KEY) for _ in range(self.pairs)]  # one per pair, the same at both ends
        load: dict[str, Any] = {}
        for host, local in zip(self.hosts, (PUB_A, PUB_B), strict=True):
            log(f"{self.label}: loading {host.label}: {self.pairs * 2:,} filler SAs, {self.fillers} tunnels")
            load[host.label[-1]] = self.load(host, local, keys)
        self.notes["load"] = load
        super().configure()
        for host in self.hosts:  # all there?
            control = Client(str(host.socket), timeout=30.0)
            n_sa = len(control.call("sa.show"))
            n_tun = len(control.call("tunnel.show"))
            if n_sa != self.pairs * 2 + 2 or n_tun != self.fillers + 1:
                raise BenchError(f"{host.label}: ipsecd holds {n_sa} SAs and {n_tun} tunnels after loading")
            t = time.perf_counter()
            res = host.adm("sa", "show", check=False)
            show: dict[str, Any] = {
                "s": round(time.perf_counter() - t, 3),
                "exit": res.returncode,
                "lines": len(res.stdout.splitlines()),
            }
            if res.returncode:
                show["error"] = res.stderr.strip()[-200:]
            load[host.label[-1]]["ipsecadm_sa_show"] = show

    def load(self, host: IpsecHost, local: str, keys: list[bytes]) -> dict[str, Any]:
        """Add the filler SAs, then the filler tunnels; returns the timings."""
        sample_sa = len(keys) if self.via_adm else min(self.sample, len(keys))
        sample_tun = self.fillers if self.via_adm else min(self.sample, self.fillers)
        keydir = self.dir / "filler-keys"
        keydir.mkdir(exist_ok=True)
        out: dict[str, Any] = {}

        def sa_argv(i: int) -> list[str]:
            path = keydir / f"{i}.key"
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(keys[i])
            return [
                "sa",
                "add",
                f"--spi={FILLER_SPI + i:#x}",
                f"--dst={self.remotes[i % self.fillers]}",
                f"--src={local}",
                "--cipher=aes-gcm",
                f"--cipher-keyfile={path}",
                "--duplex",  # raw ESP: ipsecd refuses --duplex with a counter-mode cipher over UDP
            ]

        t = time.perf_counter()
        for i in range(sample_sa):
            host.adm(*sa_argv(i))
        out["sa_add_ipsecadm"] = {
            "ops": sample_sa,
            "sas": 2 * sample_sa,
            "s": round(time.perf_counter() - t, 3),
        }
        control = Client(str(host.socket), timeout=30.0)  # one connection per request, as ipsecadm's
        t = time.perf_counter()
        for i in range(sample_sa, len(keys)):
            control.call(
                "sa.add",
                {
                    "spi": FILLER_SPI + i,
                    "dst": self.remotes[i % self.fillers],
                    "src": local,
                    "cipher": "aes-gcm",
                    "cipher_key": keys[i].hex(),
                    "duplex": True,
                },
            )
        n = len(keys) - sample_sa
        out["sa_add_socket"] = {"ops": n, "sas": 2 * n, "s": round(time.perf_counter() - t, 3)}
        t = time.perf_counter()
        for i in range(sample_tun):
            host.adm("tunnel", "add", f"ipsec{i + 2}", f"--local={local}", f"--remote={self.remotes[i]}")
        out["tunnel_add_ipsecadm"] = {"ops": sample_tun, "s": round(time.perf_counter() - t, 3)}
        t = time.perf_counter()
        for i in range(sample_tun, self.fillers):
            control.call("tunnel.add", {"name": f"ipsec{i + 2}", "local": local, "remote": self.remotes[i]})
        n = self.fillers - sample_tun
        out["tunnel_add_socket"] = {"ops": n, "s": round(time.perf_counter() - t, 3)}
        return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/scale",
        description="ipsecd (AES-GCM, ESP-in-UDP) with 10,000 SAs and 256 tunnels per host against the plain "
        "1-SA configuration, in the same run (needs root).",
    )
    p.add_argument("--sas", type=int, default=10_000, help="SAs per host in the scaled plane (default 10000)")
    p.add_argument(
        "--tunnels", type=int, default=256, help="tunnels per host in the scaled plane (default 256)"
    )
    p.add_argument(
        "--adm-sample",
        type=int,
        default=20,
        metavar="N",
        help="filler SA pairs and tunnels added with ipsecadm before the control socket takes over "
        "(default 20)",
    )
    p.add_argument(
        "--via",
        choices=["socket", "adm"],
        default="socket",
        help="add the fillers over the control socket after the sample (default) or all with ipsecadm",
    )
    common_args(p)
    args = p.parse_args(argv)
    check_common(p, args)
    if args.sas < 4 or args.sas % 2 or args.tunnels < 2:
        p.error("--sas must be even and at least 4 (duplex pairs), --tunnels at least 2")
    return args


def _rate(entry: dict[str, Any] | None, total: int | None = None) -> str:
    """'N in S s = M ms each'; with `total`, also how long that many would take at this rate."""
    if not entry or not entry.get("ops"):
        return "-"
    each = entry["s"] / entry["ops"]
    text = f"{entry['ops']:,} in {entry['s']:.1f} s = {each * 1000:.1f} ms each"
    if total and total > entry["ops"]:
        text += f" (all {total:,} at this rate: ~{each * total:,.1f} s)"
    return text


def render(summaries: list[Summary], planes: list[Plane], args: argparse.Namespace) -> str:
    plain = next((s for s in summaries if s.key == "plain"), None)
    rows = []
    for s, p in zip(summaries, planes, strict=True):
        rss = [round(k / 1024) for k in p.notes.get("rss_kib", [])]
        rows.append(
            tcp_row(
                s,
                fmt(s.idle_cpu_pct, 1),
                "/".join(str(r) for r in rss) or "-",
                ratio(s.mbps, plain.mbps if plain else None) if s.key != "plain" else "",
            )
        )
    header = [*TCP_HEADER, "idle CPU%", "RSS MiB A/B", "vs plain"]
    lines = [
        f"TCP, one stream 10.0.1.1 -> 10.0.2.1, {args.seconds:g} s x {args.runs} interleaved rounds; "
        "medians.",
        "CPU-s/GB: utime+stime of both ipsecd per 10^9 bytes received. idle CPU%: both ipsecd during the",
        "idle ping (no bulk traffic). RSS after the runs. vs plain: throughput of the scaled plane over",
        "the plain one.",
        "",
        table(header, rows),
    ]
    for s, p in zip(summaries, planes, strict=True):
        adm = p.notes.get("ipsecadm_s", {})
        if adm:
            lines.append("")
            lines.append(
                f"{s.label}: measured pair: ipsecadm sa add {adm.get('sa_add')} s, "
                f"tunnel add {adm.get('tunnel_add')} s (host A, B)"
            )
        pairs, fillers = getattr(p, "pairs", None), getattr(p, "fillers", None)
        for side, load in p.notes.get("load", {}).items():
            show = load.get("ipsecadm_sa_show", {})
            shown = f"{show.get('s')} s, {show.get('lines')} lines" + (
                f", FAILED: {show['error']}" if show.get("error") else ""
            )
            lines += [
                f"  host {side}: sa add (--duplex) via ipsecadm: {_rate(load.get('sa_add_ipsecadm'), pairs)}",
                f"          sa.add (duplex) via control socket: {_rate(load.get('sa_add_socket'))}",
                f"          tunnel add via ipsecadm: {_rate(load.get('tunnel_add_ipsecadm'), fillers)}",
                f"          tunnel.add via control socket: {_rate(load.get('tunnel_add_socket'))}",
                f"          ipsecadm sa show over the full table: {shown}",
            ]
    lines += failures(summaries)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_prerequisites({"ours"}, "bench/scale")
    if why := ipsecadm_works():
        print(f"bench/scale: ipsecadm does not run ({why})", file=sys.stderr)
        return 2
    config = OursConfig("gcm", udp=True)

    def make_planes(work: Path) -> list[Plane]:
        plain = OursPlane("plain", work, config)
        plain.label = f"{config.label}, 2 SAs + 1 tunnel"
        scaled = ScaledPlane(
            "scaled", work, config, args.sas, args.tunnels, args.adm_sample, args.via == "adm"
        )
        return [plain, scaled]

    extra = {"sas": args.sas, "tunnels": args.tunnels, "adm_sample": args.adm_sample, "via": args.via}
    return run_bench(
        "scale",
        args,
        make_planes,
        lambda summaries, planes: render(summaries, planes, args),
        keys=["plain", "scaled"],
        extra=extra,
    )


if __name__ == "__main__":
    sys.exit(main())
