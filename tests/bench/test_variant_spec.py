"""The `--variant NAME=SRC[:OPT,OPT]` words of bench/counts, bench/profile and bench/idle."""

from pathlib import Path

import pytest

from bench.counts import variant_spec


def test_name_absolute_src_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert variant_spec("nocap=src:--batch=4096,--spin-us=0") == (
        "nocap",
        str(tmp_path / "src"),
        ["--batch=4096", "--spin-us=0"],
    )


def test_without_options() -> None:
    assert variant_spec("base=/x/old/src") == ("base", "/x/old/src", [])
    assert variant_spec("base=/x/old/src:") == ("base", "/x/old/src", [])
