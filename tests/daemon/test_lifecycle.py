"""Start-up reporting: the daemonized ipsecd tells its parent through a pipe that it is ready (exit 0)
or why not (exit 1, the line on stderr), and tells systemd through $NOTIFY_SOCKET (sd_notify(3)); the
unit waits for that (Type=notify). No root, no systemd: a unix datagram socket stands in for it, and
systemd-analyze (which needs no running systemd) checks the unit file."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_tunnel.daemon import lifecycle

UNIT = Path(__file__).parents[2] / "docs" / "ipsecd.service"


def test_notify_sends_the_state_to_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert lifecycle.notify("READY=1")
        assert systemd.recv(100) == b"READY=1"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"odv-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert lifecycle.notify("STOPPING=1")
        assert systemd.recv(100) == b"STOPPING=1"


def test_notify_without_systemd_is_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not lifecycle.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not lifecycle.notify("READY=1")


def _child_says(say: str | None) -> int:
    """What the waiting parent returns when its child reports `say` (None: dies without a word)."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.close(read_fd)
        starter = lifecycle.Starter(write_fd)
        if say == "ready":
            starter.ready()
        elif say is not None:
            starter.failed(say)
        os._exit(0)
    os.close(write_fd)
    return lifecycle.wait_for_child(read_fd, child)


def test_the_parent_exits_0_when_the_child_is_ready() -> None:
    assert _child_says("ready") == 0


def test_the_parent_exits_1_with_the_childs_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _child_says("ipsecd: ipsec0 already exists (another ipsecd in this network namespace?)") == 1
    assert capsys.readouterr().err == (
        "ipsecd: ipsec0 already exists (another ipsecd in this network namespace?)\n"
    )


def test_the_parent_exits_1_when_the_child_dies_silently(capsys: pytest.CaptureFixture[str]) -> None:
    assert _child_says(None) == 1
    assert "stopped during start-up" in capsys.readouterr().err


def test_the_unit_waits_for_readiness_and_is_hardened() -> None:
    unit = UNIT.read_text()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in unit.splitlines() if "=" in line
             and not line.startswith("#")}  # fmt: skip
    assert lines["Type"] == "notify" and lines["ExecStart"].endswith("ipsecd -f")
    assert lines["DeviceAllow"] == "/dev/net/tun rw"
    for setting in ("ProtectClock", "ProtectKernelLogs", "PrivateMounts"):
        assert lines[setting] == "yes"
    assert lines["SystemCallFilter"].startswith("@system-service")
    assert "ProtectKernelTunables" not in lines  # ipsecd writes /proc/sys/net/ipv6/conf/DEV/addr_gen_mode


def test_the_log_goes_to_syslog_when_it_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logging.handlers import SysLogHandler

    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        monkeypatch.setattr(lifecycle, "SYSLOG", path)
        handler = lifecycle.log_handler(None, False, tmp_path / "run" / "ipsecd.sock")
        try:
            assert isinstance(handler, SysLogHandler)
        finally:
            handler.close()


def test_without_syslog_the_log_goes_beside_the_control_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lifecycle, "SYSLOG", str(tmp_path / "no-syslog-here"))
    handler = lifecycle.log_handler(None, False, tmp_path / "run" / "ipsecd.sock")
    try:
        assert isinstance(handler, logging.FileHandler)
        assert handler.baseFilename == str(tmp_path / "run" / "ipsecd.log")
        assert f"logging to {tmp_path / 'run' / 'ipsecd.log'}" in capsys.readouterr().err
    finally:
        handler.close()
    with_f = lifecycle.log_handler(None, True, tmp_path / "ipsecd.sock")
    assert type(with_f) is logging.StreamHandler  # -f: stderr


def _installed_unit(tmp_path: Path) -> Path:
    """The unit as `make install` writes it (ExecStart on a real ipsecd), in tmp_path."""
    ipsecd = shutil.which("ipsecd") or str(Path(sys.executable).parent / "ipsecd")
    unit = tmp_path / "ipsecd.service"
    unit.write_text(UNIT.read_text().replace("@SBINDIR@", str(Path(ipsecd).parent)))
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (make deps installs it)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """systemd's own parser finds no error in the installed unit (man pages need not be installed)."""
    unit = _installed_unit(tmp_path)
    result = _analyze("verify", "--man=no", str(unit))
    assert result.returncode == 0, result.stderr
    assert "ipsecd.service" not in result.stderr  # no warning about the unit at all


def test_systemd_rates_the_unit_exposure_ok(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure at most 3.0 of 10 ("OK"; 2.8 today)."""
    unit = _installed_unit(tmp_path)
    result = _analyze("security", "--offline=true", "--threshold=30", str(unit))
    assert result.returncode == 0, result.stdout[-400:]
    weakened = tmp_path / "weak" / "ipsecd.service"
    weakened.parent.mkdir()
    weakened.write_text(unit.read_text().replace("CapabilityBoundingSet=", "#CapabilityBoundingSet="))
    worse = _analyze("security", "--offline=true", "--threshold=30", str(weakened))
    assert worse.returncode != 0  # the threshold bites: the same check fails a weaker unit
