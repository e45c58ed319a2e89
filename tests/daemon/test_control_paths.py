"""The control socket and pid file under contention: a second ipsecd never takes over (or removes) a
socket another one answers on, a pid file symlink is not followed, and ipsecadm sends nothing to a
server that is neither root nor itself."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.control.client import Client
from ipsec_tunnel.control.protocol import ProtocolError
from ipsec_tunnel.daemon import main as daemon_main
from ipsec_tunnel.daemon.main import PidFile
from ipsec_tunnel.daemon.server import ControlServer, SocketInUse

from ..robustness.conftest import is_root


def _handle(op: str, args: dict[str, Any]) -> Any:
    return {"pong": True}


def _watch(fd: int, callback: Callable[[], None]) -> None:
    pass


def _unwatch(fd: int) -> None:
    pass


def _server(path: Path) -> ControlServer:
    return ControlServer(str(path), _handle, _watch, _unwatch)


def test_second_server_on_a_live_socket_refuses_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "ipsecd.sock"
    first = _server(path)
    try:
        inode = path.stat().st_ino
        with pytest.raises(SocketInUse, match=f"another ipsecd answers on {path}"):
            _server(path)
        assert path.stat().st_ino == inode  # not unlinked, not replaced
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))  # the first still answers
        probe.close()
    finally:
        first.close()
    assert not path.exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ipsecd.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    server = _server(path)
    server.close()
    assert not path.exists()


def test_close_never_removes_a_socket_it_did_not_make(tmp_path: Path) -> None:
    path = tmp_path / "ipsecd.sock"
    server = _server(path)
    path.unlink()  # someone else's socket now lives at the path
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        server.close()
        assert path.exists()
    finally:
        other.close()


def test_ipsecd_refuses_a_socket_another_ipsecd_answers_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ipsecd's first check is that it runs as root; past it, what is checked here needs none
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(daemon_main, "_serve", lambda args, store: 99)  # never a real daemon here
    path = tmp_path / "ipsecd.sock"
    first = _server(path)
    try:
        argv = ["-f", "--socket", str(path), "--state-dir", str(tmp_path / "state"),
                "--pidfile", str(tmp_path / "other.pid")]  # fmt: skip
        assert daemon_main.main(argv) == 1
        assert capsys.readouterr().err.strip() == f"ipsecd: another ipsecd answers on {path}"
        assert path.exists()
        assert not (tmp_path / "state").exists()  # refused before anything was opened
    finally:
        first.close()


def test_pid_file_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "ipsecd.pid"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        PidFile(link)
    assert victim.read_bytes() == b"precious"


def test_client_refuses_a_server_that_is_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever can make the socket file (a world-writable directory, say) must not collect the keys of
    `sa add`: ipsecadm checks the server's uid first and sends nothing. As root, the impostor is user
    nobody; an ordinary user cannot serve as someone else, so there the client pretends to be another
    user (the uid the kernel reports for the server is real either way)."""
    top = Path(tempfile.mkdtemp(prefix="ipsec-sst-"))  # pytest's tmp_path is closed to other users
    try:
        if is_root():
            _impostor(top, 65534, switch=True)
        else:
            me = os.geteuid()
            monkeypatch.setattr(os, "geteuid", lambda: me + 1)
            _impostor(top, me, switch=False)
    finally:
        shutil.rmtree(top)


def _impostor(top: Path, uid: int, switch: bool) -> None:
    """A server run by `uid` (the child switches to it if `switch`) in `top`; the client must refuse it."""
    os.chmod(top, 0o755)
    directory = top / "open"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    path = directory / "ipsecd.sock"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the impostor
        try:
            os.close(read)
            if switch:
                os.setgid(uid)
                os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            os.chmod(path, 0o666)
            sock.listen(1)
            os.write(write, b"1")
            conn, _ = sock.accept()
            conn.settimeout(2.0)
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            os.write(write, b"X" if data else b"-")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
        with pytest.raises(ProtocolError) as err:
            Client(str(path), timeout=2.0).call("sa.add", {"cipher_key": "00" * 16})
        assert err.value.errno == "EACCES" and f"served by uid {uid}," in err.value.message
        deadline = time.monotonic() + 5
        verdict = b""
        while not verdict and time.monotonic() < deadline:
            verdict = os.read(read, 1)
        assert verdict == b"-", "the client sent its request to the impostor"
    finally:
        os.close(read)
        os.waitpid(pid, 0)


def test_a_symlinked_pid_file_or_journal_is_named_as_such(tmp_path: Path) -> None:
    """The refusal says what is wrong ("is a symbolic link"), not the kernel's "too many levels of
    symbolic links"."""
    link = tmp_path / "ipsecd.pid"
    link.symlink_to(tmp_path / "victim")
    with pytest.raises(OSError, match=r"ipsecd\.pid is a symbolic link: refused"):
        PidFile(link)
    assert not (tmp_path / "victim").exists()
