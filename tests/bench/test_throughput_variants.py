"""bench/throughput's --ipsecd-args and --variant: one ipsecd plane per variant, the others untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.lib.measure import Run
from bench.lib.planes import OursPlane, OursWithArgs
from bench.throughput import make_planes, parse_args


def test_variants_add_an_ipsecd_plane_each_with_their_options(tmp_path: Path) -> None:
    args = parse_args(["--only", "ours-gcm-udp,wg-go", "--ipsecd-args=--batch=64", "--variant=--spin-us=0"])
    assert args.ipsecd_args == "--batch=64" and args.variant == ["--spin-us=0"]
    planes = make_planes(["ours-gcm-udp", "wg-go"], tmp_path, ["--batch=64"], ["--spin-us=0 --no-gro"])
    assert [p.key for p in planes] == ["ours-gcm-udp", "ours-gcm-udp-v1", "wg-go"]
    base, variant = planes[0], planes[1]
    assert isinstance(base, OursWithArgs) and isinstance(variant, OursWithArgs)
    assert base.extra == ["--batch=64"]
    assert variant.extra == ["--batch=64", "--spin-us=0", "--no-gro"]
    assert variant.label.endswith("[--batch=64 --spin-us=0 --no-gro]")
    assert base.a.name != variant.a.name  # namespaces of their own


def test_without_options_the_planes_are_the_plain_ones(tmp_path: Path) -> None:
    planes = make_planes(["ours-gcm-esp"], tmp_path)
    assert [p.key for p in planes] == ["ours-gcm-esp"]
    assert type(planes[0]) is OursPlane


def test_run_bench_keeps_the_rounds_of_variant_planes(tmp_path: Path, monkeypatch: Any) -> None:
    from bench.lib import runner

    planes = make_planes(["ours-gcm-udp"], tmp_path, [], ["--spin-us=0"])
    monkeypatch.setattr(runner, "open_planes", lambda ps: list(ps))
    monkeypatch.setattr(runner, "close_planes", lambda ps: None)
    monkeypatch.setattr(OursPlane, "rss_kib", lambda self: [1])

    paced: list[str | None] = []

    def rounds(
        ready: list[Any], runs: int, seconds: float, pings: int, gap: float, results: Any, *, rate: str | None
    ) -> None:
        paced.append(rate)
        for plane in ready:
            results[plane.key].append(Run(1, mbps=100.0))

    monkeypatch.setattr(runner, "run_rounds", rounds)
    seen: list[Any] = []

    def render(summaries: list[Any], _planes: list[Any]) -> str:
        seen.extend(summaries)
        return ""

    report = tmp_path / "r.json"
    args = parse_args(
        ["--only", "ours-gcm-udp", "--variant=--spin-us=0", "--rate", "800M", "--json", str(report)]
    )
    status = runner.run_bench("throughput", args, lambda work: planes, render, keys=["ours-gcm-udp"])
    assert status == 0
    assert [(s.key, s.mbps) for s in seen] == [("ours-gcm-udp", 100.0), ("ours-gcm-udp-v1", 100.0)]
    assert paced == ["800M"] and json.loads(report.read_text())["rate"] == "800M"


def test_rate_paces_the_iperf3_stream() -> None:
    """--rate RATE: iperf3 -b RATE; without it, no -b (the stream as fast as the plane goes)."""
    from bench.lib import measure

    class Host:
        def __init__(self) -> None:
            self.commands: list[list[str]] = []

        def run(self, command: list[str], timeout: float) -> Any:
            self.commands.append(command)
            end = {"sum_received": {"bits_per_second": 8e8, "bytes": 10**9, "seconds": 10.0}, "sum_sent": {}}
            out = json.dumps({"end": end}) if command[0] == "iperf3" else ""
            return subprocess.CompletedProcess(command, 0, out, "")

    class Plane:
        def __init__(self) -> None:
            self.a = Host()

        def pids(self) -> list[int]:
            return []

    for rate, expected in (("800M", ["-b", "800M"]), (None, [])):
        plane = Plane()
        r = measure.measure(plane, 1, 10, 1, 0.05, rate)  # type: ignore[arg-type]
        assert r.error is None and r.mbps == 800.0
        (iperf,) = [c for c in plane.a.commands if c[0] == "iperf3"]
        assert iperf[-len(expected) :] == expected if expected else "-b" not in iperf


def test_a_name_value_variant_goes_into_ipsecds_environment(tmp_path: Path, monkeypatch: Any) -> None:
    """--variant=IPSEC_TUNNEL_PURE=1: ipsecd starts with it in its environment, not as an option; the
    bench's own environment is as before afterwards."""
    import os

    [_, variant] = make_planes(["ours-gcm-udp"], tmp_path, [], ["IPSEC_TUNNEL_PURE=1 --spin-us=0"])
    assert isinstance(variant, OursWithArgs)
    monkeypatch.delenv("IPSEC_TUNNEL_PURE", raising=False)
    started: list[tuple[tuple[str, ...], str | None]] = []

    class Host:
        def start(self, *args: str) -> None:
            started.append((args, os.environ.get("IPSEC_TUNNEL_PURE")))

    monkeypatch.setattr(variant, "hosts", (Host(), Host()))
    monkeypatch.setattr(OursWithArgs, "configure", lambda self: None)
    variant.setup()
    assert started == [(("--log-level", "warning", "--spin-us=0"), "1")] * 2
    assert "IPSEC_TUNNEL_PURE" not in os.environ
