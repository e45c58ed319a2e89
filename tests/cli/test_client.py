"""control.client.Client against a fake daemon."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from ipsec_tunnel.control.client import Client, DaemonUnreachable, default_socket_path
from ipsec_tunnel.control.protocol import DEFAULT_SOCKET, MAX_MESSAGE, ProtocolError

from .conftest import FakeServer


def test_call_returns_the_result(server: FakeServer) -> None:
    client = Client(server.path)
    assert client.call("version") == {"version": "0.10.0", "protocol": 1}
    assert client.call("sa.show", {"stats": True}) == client.call("sa.show", {"stats": True})
    assert server.requests[-1] == ("sa.show", {"stats": True})


def test_error_response_raises_protocol_error(server: FakeServer) -> None:
    server.fail("sa.add", "EEXIST", "SA already exists")
    with pytest.raises(ProtocolError) as exc:
        Client(server.path).call("sa.add", {})
    assert (exc.value.errno, exc.value.message) == ("EEXIST", "SA already exists")


def test_garbage_response(server: FakeServer) -> None:
    server.raw = b"this is not json\n"
    with pytest.raises(ProtocolError, match="malformed"):
        Client(server.path).call("ping")


def test_unreachable(sockdir: Path) -> None:
    with pytest.raises(DaemonUnreachable) as exc:
        Client(str(sockdir / "none.sock")).call("ping")
    assert isinstance(exc.value, OSError)
    assert exc.value.filename == str(sockdir / "none.sock")
    assert not exc.value.permission_denied


def _one_shot(path: str, reply: bytes | None, hold: float = 0.0) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.recv(65536)
            if reply is not None:
                conn.sendall(reply)
            if hold:
                threading.Event().wait(hold)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_closed_without_answer(sockdir: Path) -> None:
    path = str(sockdir / "s.sock")
    t = _one_shot(path, b"")
    with pytest.raises(ProtocolError, match="without answering"):
        Client(path).call("ping")
    t.join(2)


def test_oversized_response(sockdir: Path) -> None:
    path = str(sockdir / "s.sock")
    t = _one_shot(path, b"x" * (MAX_MESSAGE + 10))
    with pytest.raises(ProtocolError) as exc:
        Client(path, max_response=MAX_MESSAGE).call("ping")
    assert exc.value.errno == "EMSGSIZE"
    t.join(2)


def test_timeout(sockdir: Path) -> None:
    path = str(sockdir / "s.sock")
    t = _one_shot(path, None, hold=1.0)
    with pytest.raises(ProtocolError, match="did not answer"):
        Client(path, timeout=0.2).call("ping")
    t.join(3)


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IPSEC_TUNNEL_SOCKET", raising=False)
    assert default_socket_path() == DEFAULT_SOCKET
    monkeypatch.setenv("IPSEC_TUNNEL_SOCKET", "/tmp/other.sock")
    assert default_socket_path() == "/tmp/other.sock"
    monkeypatch.setenv("IPSEC_TUNNEL_SOCKET", "")
    assert default_socket_path() == DEFAULT_SOCKET
