"""A fake ipsecd for the ipsecadm tests: a thread serving a Unix socket that records every request and
answers with canned protocol responses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.cli.ipsecadm import main
from ipsec_tunnel.control.protocol import decode_request, encode_error, encode_result
from tests.robustness.test_control_server import Served
from tests.support import userns

# A 3DES key that is neither weak nor degenerate, and a SHA-1 HMAC key; tests check they never leak.
DES3_KEY = bytes.fromhex("8f3a5c71e2d94b06a7c3e18f5d2b9064c1f7a83e6d5b0e29")
SHA1_KEY = bytes.fromhex("5e0c9d7a3b61f84e2c17a0d9b38e6f4c7a2d1e95")
GCM_KEY = bytes.fromhex("c4e1a9375b0d82f6e3197ac54d28b06f9a3e7c15")  # 16-byte key + 4-byte salt

MUTATING = {"sa.add", "sa.del", "tunnel.add", "tunnel.change", "tunnel.del"}

SAMPLE_SA: dict[str, Any] = {
    "dst": "5.6.7.8", "src": "1.2.3.4", "spi": 0x1000, "cipher": "des_ede3-cbc", "cipher_bits": 192,
    "aead": False, "digest": "sha1", "digest_bits": 96, "digest_key_bits": 160, "integrity": True,
    "replay_window": 128, "esn": False, "encap": None, "soft": {"bytes": 0, "packets": 0, "seconds": 0},
    "hard": {"bytes": 0, "packets": 0, "seconds": 0}, "state": "mature", "created": 1_700_000_000.0,
}  # fmt: skip

SAMPLE_TUNNEL: dict[str, Any] = {
    "name": "ipsec1", "local": "1.2.3.4", "remote": "5.6.7.8", "spi": 0, "nextdev": None,
    "peer_nets": [], "mtu": 1419, "sa": 0x1000,
}  # fmt: skip

SAMPLE_STATS: dict[str, Any] = {
    "receive": {"accepted": 10, "unknown_sa": 1, "auth_failed": 2, "replayed": 3, "other": 0},
    "send": {"accepted": 7, "no_sa": 0, "too_big": 4, "other": 0},
    "keepalives": 5,
    "icmp_sent": 6,
}


def _sa_added(args: dict[str, Any]) -> dict[str, Any]:
    one = {**SAMPLE_SA, "dst": args["dst"], "src": args["src"], "spi": args["spi"]}
    added = [one]
    if args.get("duplex"):
        added.append({**one, "dst": args["src"], "src": args["dst"]})
    return {"added": added}


DEFAULTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "sa.add": _sa_added,
    "sa.del": lambda a: {"deleted": [{"dst": "5.6.7.8", "src": "1.2.3.4", "spi": 0x1000}]},
    "sa.show": lambda a: [SAMPLE_SA],
    "tunnel.add": lambda a: {**SAMPLE_TUNNEL, **a, "name": a.get("name") or "ipsec7"},
    "tunnel.change": lambda a: {**SAMPLE_TUNNEL, **a},
    "tunnel.del": lambda a: {"deleted": [a["name"]] if a.get("name") else ["ipsec1", "ipsec2"]},
    "tunnel.show": lambda a: [SAMPLE_TUNNEL],
    "stats": lambda a: SAMPLE_STATS,
    "version": lambda a: {"version": "0.10.0", "protocol": 1},
    "ping": lambda a: {"pong": True},
}


class FakeServer:
    """Serves the control protocol on `path` from a thread; `requests` holds (op, args) in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.results: dict[str, Any] = {}
        self.errors: dict[str, tuple[str, str]] = {}
        self.raw: bytes | None = None  # when set, sent instead of a proper response
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def ops(self) -> list[str]:
        """The operations requested so far."""
        return [op for op, _ in self.requests]

    def last(self, op: str) -> dict[str, Any]:
        """The arguments of the last request for `op`."""
        matching = [args for o, args in self.requests if o == op]
        assert matching, f"no {op} request in {self.ops}"
        return matching[-1]

    def fail(self, op: str, errno: str, message: str) -> None:
        """Answer `op` with an error response from now on."""
        self.errors[op] = (errno, message)

    def _answer(self, line: bytes) -> bytes:
        if self.raw is not None:
            return self.raw
        req = decode_request(line)
        self.requests.append((req.op, json.loads(json.dumps(req.args))))
        if req.op in self.errors:
            return encode_error(*self.errors[req.op])
        if req.op == "batch":  # all or none, as ipsecd's: the first refused request names its number
            results = []
            for number, inner in enumerate(req.args["requests"], 1):
                if inner["op"] in self.errors:
                    errno, message = self.errors[inner["op"]]
                    return encode_error(errno, f"request {number}: {message}")
                results.append(DEFAULTS[inner["op"]](inner["args"]))
            return encode_result(results)
        if req.op in self.results:
            return encode_result(self.results[req.op])
        return encode_result(DEFAULTS[req.op](req.args))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:  # every request line of the connection is answered, as ipsecd does (`ipsecadm -b`)
                conn.settimeout(5)
                buf = b""
                try:
                    while True:
                        while b"\n" not in buf:
                            chunk = conn.recv(65536)
                            if not chunk:
                                break
                            buf += chunk
                        if b"\n" not in buf:
                            break
                        line, _, buf = buf.partition(b"\n")
                        conn.sendall(self._answer(line))
                except OSError:
                    pass

    def close(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


# Short paths (Unix socket paths are limited to 107 bytes): /tmp, or in a user namespace its own TMPDIR
# (ipsecd refuses state directories below /tmp there, which the overflow uid owns)
SHORT_TMP = userns.TMPDIR if userns.entered else "/tmp"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="ipsecadm-", dir=SHORT_TMP)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sockdir: Path) -> Iterator[FakeServer]:
    srv = FakeServer(str(sockdir / "ipsecd.sock"))
    yield srv
    srv.close()


@dataclass
class Result:
    """What one ipsecadm run printed and returned."""

    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """stderr lines that are not warnings."""
        return [ln for ln in self.err.splitlines() if not ln.startswith("ipsecadm: warning:")]

    @property
    def warnings(self) -> list[str]:
        """stderr warning lines."""
        return [ln for ln in self.err.splitlines() if ln.startswith("ipsecadm: warning:")]


Run = Callable[..., Result]


@pytest.fixture
def run(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ipsecadm in-process against the fake server: run("sa", "show") -> Result."""

    def _run(*args: str) -> Result:
        capsys.readouterr()
        rc = main([f"--socket={server.path}", *args])
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return _run


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory that everyone may search (mode 755, under /tmp), so its files' own modes decide."""
    d = Path(tempfile.mkdtemp(prefix="ipsecadm-keys-", dir=SHORT_TMP))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    """A directory with key files: example.key (3DES, as the README's dd makes), sha1.key, gcm.key."""
    d = tmp_path / "x"
    d.mkdir()
    for name, key in (("example.key", DES3_KEY), ("sha1.key", SHA1_KEY), ("gcm.key", GCM_KEY)):
        p = d / name
        p.write_bytes(key)
        os.chmod(p, 0o600)
    return d


@pytest.fixture
def served() -> Iterator[Served]:
    """A real control server, manager and state store (fake devices) on a socket of its own."""
    d = Path(tempfile.mkdtemp(prefix="ocl-served-", dir=SHORT_TMP))
    s = Served(d)
    try:
        yield s
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)
