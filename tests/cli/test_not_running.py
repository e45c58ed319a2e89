"""What ipsecadm says when ipsecd cannot be reached, and that nothing ever ends in a traceback."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_tunnel.cli.ipsecadm import main
from ipsec_tunnel.control import client as client_mod

NOT_RUNNING = (
    "ipsecadm: cannot reach ipsecd at {path}: is it running? Start it with 'ipsecd' (it replaces the "
    "original's 'modprobe ipsec')"
)


def test_missing_socket(capsys: pytest.CaptureFixture[str], sockdir: Path) -> None:
    path = str(sockdir / "nope.sock")
    assert main(["sa", "show", f"--socket={path}"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [NOT_RUNNING.format(path=path)]
    assert "kernel module" not in err  # there is none: the daemon is what is missing


def test_stale_socket_refuses(capsys: pytest.CaptureFixture[str], sockdir: Path) -> None:
    path = str(sockdir / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    assert main(["tunnel", "show", "--socket", path]) == 1
    assert capsys.readouterr().err.splitlines() == [NOT_RUNNING.format(path=path)]


def test_default_socket_path(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPSEC_TUNNEL_SOCKET", raising=False)
    monkeypatch.setattr(client_mod, "DEFAULT_SOCKET", "/nonexistent-ipsec-tunnel/ipsecd.sock")
    assert main(["stats"]) == 1
    assert "/nonexistent-ipsec-tunnel/ipsecd.sock: is it running?" in capsys.readouterr().err


def test_permission_denied_says_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class DeniedSocket(socket.socket):
        def connect(self, address: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket, "socket", DeniedSocket)
    assert main(["sa", "show", "--socket=/run/x.sock"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "permission denied" in line and "root" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["sa", "show"],
        ["sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher=aes-gcm",
         "--cipher-key=" + "11" * 20],
        ["sa", "add", "--spi=1"],
        ["tunnel", "frob"],
        ["x"],
        [],
    ],
)  # fmt: skip
def test_console_script_never_prints_a_traceback(argv: list[str], sockdir: Path) -> None:
    env = {**os.environ, "IPSEC_TUNNEL_SOCKET": str(sockdir / "none.sock")}
    proc = subprocess.run(
        [sys.executable, "-m", "ipsec_tunnel.cli.ipsecadm", *argv],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip()


def test_internal_error_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipsec_tunnel.cli import ipsecadm

    def boom(argv: list[str], client: object = None) -> int:
        raise RuntimeError("something broke near 00112233445566778899aabbccddeeff")

    monkeypatch.setattr(ipsecadm, "run", boom)
    assert ipsecadm.main(["stats"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ipsecadm: internal error: RuntimeError")
    assert "00112233445566778899" not in line  # anything key-shaped is hidden
