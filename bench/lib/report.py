"""The medians of each plane over its runs, and the plain-text table and JSON a bench prints."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .measure import Run
from .processes import log


@dataclass
class Summary:
    """The medians of one plane over its runs."""

    key: str
    label: str
    group: str
    cipher: str | None
    runs: list[Run]
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)  # throughput over each peer's

    def _good(self) -> list[Run]:
        return [r for r in self.runs if r.mbps is not None]

    @staticmethod
    def _median(values: Sequence[float | int | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(statistics.median(vals)) if vals else None

    @property
    def mbps(self) -> float | None:
        return self._median([r.mbps for r in self._good()])

    @property
    def mbps_range(self) -> tuple[float, float] | None:
        vals = [r.mbps for r in self._good() if r.mbps is not None]
        return (min(vals), max(vals)) if vals else None

    @property
    def cpu_s_per_gb(self) -> float | None:
        return self._median([r.cpu_s_per_gb for r in self._good()])

    @property
    def rtt_ms(self) -> float | None:
        return self._median([t for r in self.runs for t in r.rtts_ms])

    @property
    def retransmits(self) -> float | None:
        return self._median([r.retransmits for r in self._good()])

    @property
    def idle_cpu_pct(self) -> float | None:
        return self._median([r.idle_cpu_pct for r in self.runs])

    def to_json(self) -> dict[str, Any]:
        runs = []
        for r in self.runs:
            d = asdict(r)
            d["rtt_ms_median"] = self._median(r.rtts_ms)
            runs.append(d)
        return {
            "key": self.key,
            "label": self.label,
            "group": self.group,
            "cipher": self.cipher,
            "error": self.error,
            "notes": self.notes,
            "median": {
                "mbps": _round(self.mbps, 1),
                "mbps_range": self.mbps_range,
                "cpu_s_per_gb": _round(self.cpu_s_per_gb, 2),
                "rtt_ms": _round(self.rtt_ms, 3),
                "retransmits": self.retransmits,
                "idle_cpu_pct": _round(self.idle_cpu_pct, 2),
            },
            "ratios": {k: _round(v, 3) for k, v in self.ratios.items()},
            "runs": runs,
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


TCP_HEADER = ["data plane", "Mbit/s", "min-max", "CPU-s/GB", "RTT ms", "retr"]


def tcp_row(s: Summary, *more: str) -> list[str]:
    """A table row: the plane's TCP figures (the columns of TCP_HEADER), then `more`; a plane without a
    throughput says FAILED or "not run", its other cells empty."""
    if s.error or s.mbps is None:
        empty = [""] * (len(TCP_HEADER) - 2 + len(more))
        return [s.label, "FAILED" if s.error or s.runs else "not run", *empty]
    rng = s.mbps_range
    return [
        s.label,
        fmt(s.mbps),
        f"{rng[0]:,.0f}-{rng[1]:,.0f}" if rng else "-",
        fmt(s.cpu_s_per_gb),
        fmt(s.rtt_ms, 3),
        fmt(s.retransmits, 0),
        *more,
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> str:
    """A plain-text table: the first `align_left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < align_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def emit(report: dict[str, Any], text: str, json_to: str | None) -> None:
    """The table on stdout, or with `--json -` the JSON on stdout and the table on stderr."""
    if json_to == "-":
        print(text, file=sys.stderr)
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print(text)
    if json_to:
        Path(json_to).write_text(json.dumps(report, indent=2) + "\n")
        log(f"JSON written to {json_to}")


def failures(summaries: Sequence[Summary]) -> list[str]:
    """A line for every plane and every run that failed."""
    lines = []
    for s in summaries:
        if s.error:
            lines.append(f"FAILED {s.label}: {s.error}")
        lines += [f"run {r.run} of {s.label} failed: {r.error}" for r in s.runs if r.error]
    return lines
