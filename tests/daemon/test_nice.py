"""ipsecd --nice: parsed, bad values refused in one line, and applied to the daemon's thread."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from ipsec_tunnel.daemon import main as ipsecd


def test_default_and_values() -> None:
    assert ipsecd.parse_args([]).nice == ipsecd.DEFAULT_NICE
    assert ipsecd.parse_args(["--nice=-10"]).nice == -10
    assert ipsecd.parse_args(["--nice", "19"]).nice == 19


@pytest.mark.parametrize("arg", ["--nice=-21", "--nice=20", "--nice=x", "--nice=1.5", "--nice="])
def test_bad_values_are_one_line_errors(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args([arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--nice" in err and "Traceback" not in err


def test_zero_leaves_the_priority_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(os, "setpriority", lambda *a: calls.append(a))
    assert ipsecd.prioritize(0) is None
    assert calls == []


def test_refused_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(which: int, who: int, value: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "setpriority", refuse)
    why = ipsecd.prioritize(-10)
    assert why is not None and "-10" in why and "\n" not in why


def test_applied_to_the_process() -> None:
    # in a child: the test runner's own priority stays; a positive nice needs no privilege
    code = (
        "import os; from ipsec_tunnel.daemon.main import prioritize; "
        "assert prioritize(3) is None; print(os.getpriority(os.PRIO_PROCESS, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "3"
