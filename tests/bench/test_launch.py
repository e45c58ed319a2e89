"""bench/throughput, bench/scale and bench/wakeup: links to one launcher, each starting its script (which
imports bench.lib and tests.support) from any working directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("name", ["throughput", "scale", "wakeup"])
def test_each_launcher_starts_its_script(name: str) -> None:
    launcher = BENCH / name
    assert launcher.is_symlink() and launcher.resolve() == BENCH / "launch"
    res = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: bench/{name}")


def test_the_launcher_by_its_own_name_says_how_to_call_it() -> None:
    res = subprocess.run([str(BENCH / "launch")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "usage: bench/throughput|scale|wakeup" in res.stderr
