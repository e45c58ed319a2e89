"""The control socket under hostile and careless clients: every bad request gets an error response with
the right errno code and the server goes on serving; concurrent clients do not corrupt the SA set; a
non-root client is refused; the socket is 0600; no response ever carries a key.

The server runs as in ipsecd: `ControlServer` answering with `Manager.handle`, on a selectors loop (here in
a background thread), with a state store in a temporary directory and fake tunnel devices.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import selectors
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.control.client import Client
from ipsec_tunnel.control.protocol import MAX_MESSAGE, ProtocolError, encode_request
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon import server as server_module
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.server import MAX_CLIENTS, ControlServer, peer_allowed, refusal, uid_allowed
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeDevices

from .conftest import A4, B4, NOW, is_root

TIMEOUT = 10.0


class Served:
    """ipsecd's control side: store, engine, manager and server on a selectors loop in a thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "ipsecd.sock"
        self.sel = selectors.DefaultSelector()
        self.store = Store(directory / "state")
        self.engine = Engine()
        self.devices = FakeDevices()
        self.manager = Manager(self.engine, self.store, self.devices, now=lambda: NOW)
        self.server = ControlServer(str(self.path), self.manager.handle, self._watch, self._unwatch)
        self.errors: list[BaseException] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, name="control-loop", daemon=True)
        self.thread.start()

    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, callback)

    def _unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)

    def _run(self) -> None:
        try:
            while self.running:
                for key, _mask in self.sel.select(timeout=0.02):
                    key.data()
                self.server.expire_idle()
        except BaseException as exc:  # the daemon's loop would have died: the test must fail
            self.errors.append(exc)
            raise

    def close(self) -> None:
        self.running = False
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        self.server.close()
        self.store.close()
        self.sel.close()
        assert self.errors == [], f"the server loop raised {self.errors!r}"

    # -- clients -------------------------------------------------------------------------------------

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.path))
        return sock

    def exchange(self, line: bytes) -> dict[str, Any]:
        """Send raw `line` (newline added) on a fresh connection; the decoded response."""
        with self.connect() as sock:
            with contextlib.suppress(BrokenPipeError):  # refused at accept: the answer is waiting
                sock.sendall(line + b"\n")
            response: dict[str, Any] = json.loads(read_line(sock))
            return response

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """What ipsecadm does."""
        return Client(str(self.path), timeout=TIMEOUT).call(op, args)

    def alive(self) -> None:
        """The server still answers a new client."""
        assert self.call("ping") == {"pong": True, "base_device": "ipsec0"}


def read_line(sock: socket.socket) -> bytes:
    """One response line; fails on EOF before a newline."""
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    assert rest == b"", "more than one response"
    return line


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _sa_args(spi: int, *, src: Any = A4, dst: Any = B4, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "spi": spi,
        "src": src,
        "dst": dst,
        "cipher": "aes-cbc",
        "cipher_key": os.urandom(16).hex(),
        "digest": "sha256",
        "digest_key": os.urandom(32).hex(),
    }
    args.update(extra)
    return args


def _req(op: Any, args: Any = None, **top: Any) -> bytes:
    msg: dict[str, Any] = {"v": 1, "op": op}
    if args is not None:
        msg["args"] = args
    msg.update(top)
    return json.dumps(msg).encode()


def _sa_set(served: Served) -> set[tuple[int, str, str]]:
    return {(sa["spi"], sa["src"], sa["dst"]) for sa in served.call("sa.show")}


# -- bad requests ------------------------------------------------------------------------------------

BAD_REQUESTS: dict[str, tuple[bytes, str]] = {
    # not a request at all
    "empty-line": (b"", "EPROTO"),
    "malformed-json": (b'{"v": 1, "op": "ping"', "EPROTO"),
    "not-utf8": (b"\xff\xfe\x00\x80garbage", "EPROTO"),
    "binary-noise": (bytes(range(1, 10)) + bytes(range(11, 256)), "EPROTO"),
    "array": (b"[1, 2, 3]", "EPROTO"),
    "string": (b'"ping"', "EPROTO"),
    "null": (b"null", "EPROTO"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "EPROTO"),
    "deeply-nested-args": (
        b'{"v":1,"op":"ping","args":{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        "EPROTO",
    ),
    "huge-integer": (b'{"v":1,"op":"sa.show","args":{"spi":' + b"9" * 5000 + b"}}", "EPROTO"),
    # the envelope
    "no-version": (b'{"op": "ping"}', "EPROTO"),
    "wrong-version": (_req("ping", v=2), "EPROTO"),
    "version-as-string": (_req("ping", v="1"), "EPROTO"),
    "no-op": (b'{"v": 1}', "EOPNOTSUPP"),
    "unknown-op": (_req("sa.frobnicate"), "EOPNOTSUPP"),
    "op-names-a-method": (_req("handle"), "EOPNOTSUPP"),
    "op-dunder": (_req("__init__"), "EOPNOTSUPP"),
    "op-not-a-string": (_req(5), "EOPNOTSUPP"),
    "args-a-list": (_req("ping", [1]), "EPROTO"),
    "args-a-string": (_req("sa.show", "all"), "EPROTO"),
    # sa.add arguments of the wrong type or value
    "spi-string": (_req("sa.add", _sa_args(0x1000) | {"spi": "0x1000"}), "EINVAL"),
    "spi-bool": (_req("sa.add", _sa_args(0x1000) | {"spi": True}), "EINVAL"),
    "spi-float": (_req("sa.add", _sa_args(0x1000) | {"spi": 4096.0}), "EINVAL"),
    "spi-object": (_req("sa.add", _sa_args(0x1000) | {"spi": {"$gt": 1}}), "EINVAL"),
    "spi-reserved": (_req("sa.add", _sa_args(0x10)), "EINVAL"),
    "spi-too-big": (_req("sa.add", _sa_args(1 << 40)), "EINVAL"),
    "spi-negative": (_req("sa.add", _sa_args(-1)), "EINVAL"),
    "spi-missing": (_req("sa.add", {k: v for k, v in _sa_args(0x1000).items() if k != "spi"}), "EINVAL"),
    "dst-number": (_req("sa.add", _sa_args(0x1000, dst=5)), "EINVAL"),
    "dst-not-an-address": (_req("sa.add", _sa_args(0x1000, dst="not-an-address")), "EINVAL"),
    "dst-multicast": (_req("sa.add", _sa_args(0x1000, dst="224.0.0.1")), "EINVAL"),
    "mixed-families": (_req("sa.add", _sa_args(0x1000, dst="2001:db8::2")), "EINVAL"),
    "key-number": (_req("sa.add", _sa_args(0x1000) | {"cipher_key": 1234}), "EINVAL"),
    "key-not-hex": (_req("sa.add", _sa_args(0x1000) | {"cipher_key": "zz" * 16}), "EINVAL"),
    "key-odd-hex": (_req("sa.add", _sa_args(0x1000) | {"cipher_key": "abc"}), "EINVAL"),
    "key-wrong-length": (_req("sa.add", _sa_args(0x1000) | {"cipher_key": "00" * 15}), "EINVAL"),
    "unknown-cipher": (_req("sa.add", _sa_args(0x1000) | {"cipher": "rot13"}), "EINVAL"),
    "cipher-number": (_req("sa.add", _sa_args(0x1000) | {"cipher": 3}), "EINVAL"),
    "esn-string": (_req("sa.add", _sa_args(0x1000) | {"esn": "yes"}), "EINVAL"),
    "duplex-number": (_req("sa.add", _sa_args(0x1000) | {"duplex": 1}), "EINVAL"),
    "window-float": (_req("sa.add", _sa_args(0x1000) | {"replay_window": 1.5}), "EINVAL"),
    "window-negative": (_req("sa.add", _sa_args(0x1000) | {"replay_window": -1}), "EINVAL"),
    "window-huge": (_req("sa.add", _sa_args(0x1000) | {"replay_window": 1 << 40}), "EINVAL"),
    "digest-bits-string": (_req("sa.add", _sa_args(0x1000) | {"digest_bits": "96"}), "EINVAL"),
    "digest-bits-odd": (_req("sa.add", _sa_args(0x1000) | {"digest_bits": 100}), "EINVAL"),
    "encap-string": (_req("sa.add", _sa_args(0x1000) | {"encap": "udp"}), "EINVAL"),
    "encap-port-string": (_req("sa.add", _sa_args(0x1000) | {"encap": {"sport": "x"}}), "EINVAL"),
    "encap-port-list": (_req("sa.add", _sa_args(0x1000) | {"encap": {"dport": [4500]}}), "EINVAL"),
    "encap-port-zero": (_req("sa.add", _sa_args(0x1000) | {"encap": {"sport": 0}}), "EINVAL"),
    "lifetime-list": (_req("sa.add", _sa_args(0x1000) | {"soft": [1, 2]}), "EINVAL"),
    "lifetime-string": (_req("sa.add", _sa_args(0x1000) | {"hard": {"bytes": "many"}}), "EINVAL"),
    "lifetime-negative": (_req("sa.add", _sa_args(0x1000) | {"hard": {"packets": -5}}), "EINVAL"),
    # other operations
    "sa-del-nothing": (_req("sa.del", {}), "EINVAL"),
    "sa-del-dst-number": (_req("sa.del", {"dst": 5}), "EINVAL"),
    "sa-del-dst-garbage": (_req("sa.del", {"dst": "nowhere"}), "EINVAL"),
    "sa-del-absent": (_req("sa.del", {"spi": 0x9999}), "ENOENT"),
    "sa-show-spi-string": (_req("sa.show", {"spi": "x"}), "EINVAL"),
    "tunnel-add-nothing": (_req("tunnel.add", {}), "EINVAL"),
    "tunnel-add-local-number": (_req("tunnel.add", {"local": 1, "remote": B4}), "EINVAL"),
    "tunnel-add-bad-name": (_req("tunnel.add", {"name": "a/b", "local": A4, "remote": B4}), "EINVAL"),
    "tunnel-add-long-name": (_req("tunnel.add", {"name": "x" * 40, "local": A4, "remote": B4}), "EINVAL"),
    "tunnel-add-name-number": (_req("tunnel.add", {"name": 7, "local": A4, "remote": B4}), "EINVAL"),
    "tunnel-add-base": (_req("tunnel.add", {"name": "ipsec0", "local": A4, "remote": B4}), "EPERM"),
    "tunnel-add-nets-string": (
        _req("tunnel.add", {"local": A4, "remote": B4, "peer_nets": "10.0.0.0/8"}),
        "EINVAL",
    ),
    "tunnel-add-nets-numbers": (_req("tunnel.add", {"local": A4, "remote": B4, "peer_nets": [10]}), "EINVAL"),
    "tunnel-add-nets-garbage": (
        _req("tunnel.add", {"local": A4, "remote": B4, "peer_nets": ["ten"]}),
        "EINVAL",
    ),
    "tunnel-add-spi-string": (_req("tunnel.add", {"local": A4, "remote": B4, "spi": "x"}), "EINVAL"),
    "tunnel-change-no-name": (_req("tunnel.change", {}), "EINVAL"),
    "tunnel-change-absent": (_req("tunnel.change", {"name": "nope", "remote": B4}), "ENOENT"),
    "tunnel-change-base": (_req("tunnel.change", {"name": "ipsec0", "remote": B4}), "EPERM"),
    "tunnel-del-nothing": (_req("tunnel.del", {}), "EINVAL"),
    "tunnel-del-absent": (_req("tunnel.del", {"name": "nope"}), "ENOENT"),
    "tunnel-del-name-number": (_req("tunnel.del", {"name": 3}), "EINVAL"),
    "tunnel-show-absent": (_req("tunnel.show", {"name": "nope"}), "ENOENT"),
}


def test_each_bad_request_gets_its_error_and_the_server_goes_on(served: Served) -> None:
    for name, (line, errno) in BAD_REQUESTS.items():
        response = served.exchange(line)
        assert response.get("ok") is False, (name, response)
        assert response.get("errno") == errno, (name, response)
        assert isinstance(response.get("error"), str) and response["error"], name
        assert response.get("v") == 1
        served.alive()
    # nothing was half-done by any of them
    assert served.call("sa.show") == []
    assert served.call("tunnel.show") == []
    assert served.devices.names == set()
    assert served.store.load_sas(NOW) == [] and served.store.load_tunnels() == []


def test_one_connection_carries_on_after_a_bad_request(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(b"garbage\n" + encode_request("sa.add", _sa_args(0x1000)) + b"[]\n")
        buf = b""
        while buf.count(b"\n") < 3:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
    first, second, third = (json.loads(x) for x in buf.splitlines())
    assert (first["ok"], first["errno"]) == (False, "EPROTO")
    assert second["ok"] is True and second["result"]["added"][0]["spi"] == 0x1000
    assert (third["ok"], third["errno"]) == (False, "EPROTO")
    assert _sa_set(served) == {(0x1000, A4, B4)}


def test_truncated_request_then_close(served: Served) -> None:
    """A request without its newline, then the client goes away: no answer, no crash, no leaked client."""
    for partial in (b'{"v": 1, "op": "sa.add", "args": {"spi": 4096', b"{", b"x" * 70_000):
        with served.connect() as sock:
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""  # the server closed without answering half a request
        served.alive()
    deadline = time.monotonic() + TIMEOUT
    while served.server.clients:
        assert time.monotonic() < deadline, "the server kept the dead connections"
        time.sleep(0.01)
    assert served.call("sa.show") == []


def test_half_close_after_a_whole_request_is_answered(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(encode_request("version"))
        sock.shutdown(socket.SHUT_WR)
        response = json.loads(read_line(sock))
    assert response["ok"] is True and response["result"]["protocol"] == 1


def _oversized(served: Served, payload: bytes) -> dict[str, Any]:
    with served.connect() as sock:
        errors: list[OSError] = []

        def send() -> None:
            try:
                sock.sendall(payload)
            except OSError as exc:  # the server may close before all of it is read
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            line = read_line(sock)
        finally:
            sender.join(TIMEOUT)
        if not payload.endswith(b"\n"):  # the rest can never become a request: the server hangs up
            try:
                assert sock.recv(100) == b"", "the connection stayed open after EMSGSIZE"
            except ConnectionResetError:
                pass
    response: dict[str, Any] = json.loads(line)
    return response


@pytest.mark.parametrize("newline", [False, True], ids=["no-newline", "with-newline"])
def test_oversized_request_is_refused(served: Served, newline: bool) -> None:
    body = b'{"v":1,"op":"ping","args":{"x":"' + b"a" * MAX_MESSAGE + b'"}}'
    response = _oversized(served, body + (b"\n" if newline else b""))
    assert (response["ok"], response["errno"]) == (False, "EMSGSIZE")
    served.alive()


def test_idle_and_trickling_clients_cannot_lock_others_out(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.5)
    idle = [served.connect() for _ in range(MAX_CLIENTS - 1)]
    trickler = served.connect()
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(served.server.clients) < MAX_CLIENTS:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # the table is full: the next client is told so, not hung
        response = served.exchange(encode_request("ping").rstrip(b"\n"))
        assert (response["ok"], response["errno"]) == (False, "EBUSY")
        # a client sending one byte at a time does not keep its place
        start = time.monotonic()
        dropped_after = None
        try:
            for byte in b'{"v": 1, "op": "ping"' * 10:
                trickler.send(bytes((byte,)))
                time.sleep(0.02)
                if time.monotonic() - start > 3:
                    break
        except OSError:
            dropped_after = time.monotonic() - start
        assert dropped_after is not None and dropped_after < 3, "a trickling client kept its connection"
        served.alive()  # the idle ones were closed after IDLE_TIMEOUT
        for sock in idle:
            sock.settimeout(TIMEOUT)
            assert sock.recv(10) == b""
    finally:
        for sock in [*idle, trickler]:
            sock.close()


# -- concurrency -------------------------------------------------------------------------------------

N_CLIENTS = 20
PER_CLIENT = 5


def _chunked_call(path: str, line: bytes, rng: random.Random) -> dict[str, Any]:
    """A request written in random pieces with pauses, as a slow client would."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        i = 0
        while i < len(line):
            n = rng.randint(1, 64)
            sock.sendall(line[i : i + n])
            i += n
            if rng.random() < 0.2:
                time.sleep(0.001)
        response: dict[str, Any] = json.loads(read_line(sock))
        return response


def test_concurrent_clients_leave_exactly_their_sas(served: Served) -> None:
    barrier = threading.Barrier(N_CLIENTS)
    results: dict[int, list[dict[str, Any]]] = {}
    failures: list[BaseException] = []

    def client(n: int) -> None:
        try:
            rng = random.Random(n)
            barrier.wait(TIMEOUT)
            out = []
            for k in range(PER_CLIENT):
                spi = 0x10000 + n * 0x100 + k
                line = encode_request("sa.add", _sa_args(spi))
                if k % 2:  # ipsecadm's way
                    result = Client(str(served.path), timeout=TIMEOUT).call(
                        "sa.add", json.loads(line)["args"]
                    )
                    out.append({"ok": True, "result": result})
                else:  # a slow writer
                    out.append(_chunked_call(str(served.path), line, rng))
            # everyone also races for one shared SPI: exactly one may win
            out.append(_chunked_call(str(served.path), encode_request("sa.add", _sa_args(0xCAFE)), rng))
            results[n] = out
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert len(results) == N_CLIENTS
    for n, out in results.items():
        for k, response in enumerate(out[:PER_CLIENT]):
            assert response["ok"] is True, response
            assert response["result"]["added"][0]["spi"] == 0x10000 + n * 0x100 + k
    shared = [out[-1] for out in results.values()]
    assert sum(r["ok"] for r in shared) == 1
    assert sorted(r.get("errno", "") for r in shared if not r["ok"]) == ["EEXIST"] * (N_CLIENTS - 1)
    expected = {(0x10000 + n * 0x100 + k, A4, B4) for n in range(N_CLIENTS) for k in range(PER_CLIENT)}
    expected.add((0xCAFE, A4, B4))
    assert _sa_set(served) == expected
    assert {(sa.config.spi, sa.config.src, sa.config.dst) for sa in served.store.load_sas(NOW)} == expected


# -- who may connect ---------------------------------------------------------------------------------


def test_socket_is_0600_and_a_file_in_its_place_is_not_replaced(served: Served, tmp_path: Path) -> None:
    st = served.path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    target = tmp_path / "target"
    target.write_text("precious")
    regular, link = tmp_path / "regular.sock", tmp_path / "symlink.sock"
    regular.write_text("precious")
    link.symlink_to(target)
    watched: list[int] = []
    for path in (regular, link):
        with pytest.raises(OSError):
            ControlServer(str(path), served.manager.handle, lambda fd, cb: watched.append(fd), watched.remove)
        assert path.is_symlink() or path.read_text() == "precious"
        assert target.read_text() == "precious"
    assert watched == []


def _as_nobody(path: str, line: bytes) -> dict[str, Any]:
    """Connect to `path` as user nobody in a forked child, send `line`; what happened."""
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        uid = 65534
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            outcome: dict[str, Any] = {"uid": os.getuid()}
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(TIMEOUT)
                    sock.connect(path)
                    with contextlib.suppress(BrokenPipeError):  # the server may hang up first
                        sock.sendall(line)
                    outcome["response"] = json.loads(read_line(sock))
            except OSError as exc:
                outcome["oserror"] = exc.errno
            os.write(wfd, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    assert result["uid"] == uid != 0
    return result


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory user nobody can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="ipsec-robust-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_non_root_client_is_refused(open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root: user nobody is kept out by the socket's mode, and by the server's own check. An ordinary
    user cannot connect as someone else: there the server pretends to run as another user instead."""
    if not is_root():
        _refused_when_the_server_is_another_user(open_dir, monkeypatch)
        return
    served = Served(open_dir)
    try:
        request = encode_request("sa.add", _sa_args(0x4242))
        # the socket's mode keeps nobody out at connect()
        outcome = _as_nobody(str(served.path), request)
        assert outcome.get("oserror") == 13, outcome  # EACCES
        # and if the mode were loosened, the server's own check still refuses, with EACCES
        os.chmod(served.path, 0o666)
        outcome = _as_nobody(str(served.path), request)
        response = outcome.get("response")
        assert response is not None, outcome
        assert (response["ok"], response["errno"]) == (False, "EACCES")
        assert served.call("sa.show") == []
        assert served.store.load_sas(NOW) == []
        # root still gets in
        served.call("sa.add", _sa_args(0x4242))
        assert _sa_set(served) == {(0x4242, A4, B4)}
    finally:
        served.close()


def test_root_and_the_servers_own_user_may_control_it() -> None:
    assert uid_allowed(0, 0) and uid_allowed(0, 1001) and uid_allowed(1001, 1001)
    assert not uid_allowed(1001, 0) and not uid_allowed(1002, 1001) and not uid_allowed(65534, 1001)


def test_the_peer_check_reads_the_kernels_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same user is let in; once the server seems to run as someone else, only root still is."""
    me = os.geteuid()
    a, b = socket.socketpair()
    with a, b:
        assert peer_allowed(a) == (True, f"pid {os.getpid()} uid {me}")
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)
        assert peer_allowed(a) == (me == 0, f"pid {os.getpid()} uid {me}")
        assert refusal() == f"permission denied: ipsecadm must run as root or as uid {me + 1}"
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert refusal() == "permission denied: ipsecadm must run as root"


def _refused_when_the_server_is_another_user(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = os.geteuid()
    served = Served(directory)
    try:
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)
        with served.connect() as sock:  # refused at accept(), before any request is read
            response = json.loads(read_line(sock))
            assert sock.recv(1) == b""  # and hung up
        error = f"permission denied: ipsecadm must run as root or as uid {me + 1}"
        assert response == {"v": 1, "ok": False, "errno": "EACCES", "error": error}
        monkeypatch.setattr(os, "geteuid", lambda: me)
        assert served.call("sa.show") == []
        assert served.store.load_sas(NOW) == []
        served.call("sa.add", _sa_args(0x4242))  # the server's own user gets in
        assert _sa_set(served) == {(0x4242, A4, B4)}
    finally:
        served.close()


# -- keys never come back ----------------------------------------------------------------------------


def test_no_response_carries_a_key(served: Served) -> None:
    key_material: list[bytes] = []
    responses: list[bytes] = []

    def raw(line: bytes) -> None:
        with served.connect() as sock:
            sock.sendall(line)
            responses.append(read_line(sock))

    def add(args: dict[str, Any]) -> None:
        for k in ("cipher_key", "digest_key"):
            if args.get(k):
                key_material.append(bytes.fromhex(args[k]))
        raw(encode_request("sa.add", args))

    gcm = {"cipher": "aes-gcm", "cipher_key": os.urandom(20).hex(), "digest": None, "digest_key": None}
    add(_sa_args(0x1000))
    add(_sa_args(0x1001, duplex=True, **gcm))
    add(_sa_args(0x1000))  # EEXIST
    add(_sa_args(0x1002, **gcm))  # the same GCM key in the same direction: refused, must not echo it
    add(_sa_args(0x1003, cipher_key=os.urandom(24).hex()))  # AES-192
    add(_sa_args(0x1004, cipher_key=os.urandom(17).hex()))  # wrong length: EINVAL
    add(_sa_args(0x1005, digest_key=os.urandom(31).hex()))  # wrong length: EINVAL
    add(_sa_args(0x1006, cipher="chacha20-poly1305", cipher_key=os.urandom(36).hex(), digest=None))
    raw(encode_request("tunnel.add", {"name": "t1", "local": A4, "remote": B4}))
    raw(encode_request("tunnel.change", {"name": "t1", "spi": 0x1000}))
    for op, args in (
        ("sa.show", {}),
        ("sa.show", {"stats": True}),
        ("sa.show", {"spi": 0x1001}),
        ("tunnel.show", {"stats": True}),
        ("stats", {}),
        ("algos", {}),
        ("version", {}),
        ("ping", {}),
    ):
        raw(encode_request(op, args))
    raw(encode_request("sa.del", {"spi": 0x1001, "duplex": True}))
    raw(encode_request("tunnel.del", {"all": True}))
    raw(encode_request("sa.del", {"all": True}))
    assert len(responses) == 21
    assert sum(json.loads(r)["ok"] for r in responses) == 17
    assert len(key_material) >= 14
    everything = b"\n".join(responses).lower()
    for key in key_material:
        assert key.hex().encode() not in everything
        for i in range(0, len(key) - 7):  # nor any 8-byte piece of one
            assert key[i : i + 8].hex().encode() not in everything


def test_client_library_reports_server_errors(served: Served) -> None:
    """What ipsecadm sees for a refused request: ProtocolError with the server's errno."""
    with pytest.raises(ProtocolError) as err:
        served.call("sa.del", {"spi": 0x7777})
    assert err.value.errno == "ENOENT"
    served.alive()
