"""The tables bench/throughput and bench/scale print: a plane's TCP figures in the first columns, the
bench's own after them; a plane that failed or never ran says so with its other cells empty."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

from bench import scale, throughput
from bench.lib.measure import Run
from bench.lib.report import Summary

ARGS = argparse.Namespace(seconds=10.0, runs=2)


def _summaries() -> list[Summary]:
    runs = [
        Run(1, mbps=1000.0, cpu_s_per_gb=2.0, retransmits=3, rtts_ms=[0.1, 0.3], idle_cpu_pct=1.5),
        Run(2, mbps=1200.0, cpu_s_per_gb=4.0, retransmits=5, rtts_ms=[0.2], idle_cpu_pct=2.5),
    ]
    return [
        Summary("plain", "ours plain", "ours", "gcm", runs),
        Summary("scaled", "ours scaled", "ours", "gcm", [Run(1, error="boom")], error="it broke"),
        Summary("swan-gcm", "strongSwan", "strongswan", "gcm", []),
    ]


def _rows(text: str) -> list[list[str]]:
    """The header and the three rows of the table in `text`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("data plane"))
    return [line.split("  ") for line in [lines[start], *lines[start + 2 : start + 5]]]


def _cells(row: list[str]) -> list[str]:
    return [c.strip() for c in row if c.strip()]


def test_throughput_rows() -> None:
    summaries = _summaries()
    summaries[0].ratios = {"strongswan": 1.25, "wireguard-go": None}
    header, *rows = _rows(throughput.render(summaries, ARGS))
    assert _cells(header) == ["data plane", "Mbit/s", "min-max", "CPU-s/GB", "RTT ms", "retr", "ours/swan",
                              "ours/wg-go"]  # fmt: skip
    assert _cells(rows[0]) == ["ours plain", "1,100.0", "1,000-1,200", "3.0", "0.200", "4", "1.25", "-"]
    assert _cells(rows[1]) == ["ours scaled", "FAILED"]
    assert _cells(rows[2]) == ["strongSwan", "not run"]
    assert "FAILED ours scaled: it broke" in throughput.render(summaries, ARGS)


def test_scale_rows() -> None:
    planes: list[Any] = [SimpleNamespace(notes={"rss_kib": [2048, 3072]}), SimpleNamespace(notes={}),
                         SimpleNamespace(notes={})]  # fmt: skip
    text = scale.render(_summaries(), planes, ARGS)
    header, *rows = _rows(text)
    assert _cells(header) == ["data plane", "Mbit/s", "min-max", "CPU-s/GB", "RTT ms", "retr", "idle CPU%",
                              "RSS MiB A/B", "vs plain"]  # fmt: skip
    assert _cells(rows[0]) == ["ours plain", "1,100.0", "1,000-1,200", "3.0", "0.200", "4", "2.0", "2/3"]
    assert _cells(rows[1]) == ["ours scaled", "FAILED"]
    assert _cells(rows[2]) == ["strongSwan", "not run"]
