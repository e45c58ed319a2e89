"""bench/counts' and bench/profile's rounds: every plane opened, measured once a round in alternating
order, and closed with the work directory removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.counts import close_all, interleaved


class FakePlane:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def open(self) -> None:
        self.log.append(f"open {self.name}")

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_rounds_alternate_the_order(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[str] = []
    planes: dict[str, Any] = {"base": FakePlane("base", log), "new": FakePlane("new", log)}

    def take(plane: Any) -> int:
        log.append(f"measure {plane.name}")
        return len(log)

    results = interleaved(planes, 3, take, lambda n: f"{n} things")
    assert log == ["open base", "open new", "measure base", "measure new", "measure new", "measure base",
                   "measure base", "measure new"]  # fmt: skip
    assert results == {"base": [3, 6, 7], "new": [4, 5, 8]}
    assert capsys.readouterr().err.splitlines()[:2] == ["round 1 base: 3 things", "round 1 new: 4 things"]


def test_close_all_closes_and_removes_the_work_directory(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    log: list[str] = []
    close_all({"x": FakePlane("x", log)}, work)  # type: ignore[dict-item]
    assert log == ["close x"] and not work.exists()
