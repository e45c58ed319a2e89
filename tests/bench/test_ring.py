"""bench/ring's reading of its load's sample lines (bench/lib/ringload.py)."""

from __future__ import annotations

from bench.lib.ringload import dev_counters
from bench.ring import parse_samples


def test_samples_and_base() -> None:
    text = "base 100 2 0\n1.5 1000 0 500 1152 20 0\n1.6 2000 48 900 1604 29 1\nnoise\n"
    rows, base = parse_samples(text)
    assert base == (100, 2, 0)
    assert rows == [(1.5, 1000, 0, 500, 1152, 20, 0), (1.6, 2000, 48, 900, 1604, 29, 1)]


def test_no_samples() -> None:
    assert parse_samples("") == ([], (0, 0, 0))


def test_device_counters_of_loopback() -> None:
    tx_bytes, tx_packets, drops = dev_counters("lo")
    assert tx_bytes >= 0 and tx_packets >= 0 and drops >= 0
