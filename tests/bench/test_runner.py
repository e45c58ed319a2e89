"""The end of every bench run (bench/lib/runner.finish): the table, marked when interrupted, and the
exit status."""

from __future__ import annotations

import pytest

from bench.lib.runner import finish


def test_a_complete_run_prints_the_table_and_keeps_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert finish({"bench": "x"}, "the table", None, False, 1) == 1
    assert capsys.readouterr().out == "the table\n"


def test_an_interrupted_run_says_so_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert finish({"bench": "x"}, "the table", "-", True, 0) == 130
    captured = capsys.readouterr()
    assert captured.err == "INTERRUPTED: partial results\nthe table\n"
    assert '"bench": "x"' in captured.out
