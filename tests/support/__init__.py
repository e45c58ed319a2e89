"""Test-only harnesses (network namespaces, hosts running ipsecd, the UML kernel peer, the lossy relay,
pcap and tshark readers, the transfer tool). Never installed: `make install` ships src/ only.

Run in other processes as `python -m tests.support.NAME`, with `ROOT` on PYTHONPATH (see `pythonpath`).
Imports nothing beyond the standard library: a UML guest runs `transfer` with the host's bare python3."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout; `tests.support` imports from here


def pythonpath() -> str:
    """PYTHONPATH for a child process that runs `python -m tests.support.NAME`: ROOT, then the caller's."""
    inherited = os.environ.get("PYTHONPATH")
    return f"{ROOT}{os.pathsep}{inherited}" if inherited else str(ROOT)
