"""The control socket: a Unix stream socket (mode 0600) whose peers must be root or the server's own user
(checked with SO_PEERCRED; the mode already keeps everyone else out). ipsecd runs as root, so there that
means root only; a server run by an ordinary user (the unit tests) serves that user too. A socket another
ipsecd answers on is never taken over, and only the socket this server made is removed when it stops.
Requests are served one line at a time inside the data-plane event loop; a bad request gets an error
response and never takes the daemon down. Responses are written without blocking: what a client does not
read yet waits in its output buffer, and the loop goes on forwarding packets meanwhile."""

from __future__ import annotations

import functools
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..control.protocol import MAX_MESSAGE, ProtocolError, decode_request, encode_error, encode_result

log = logging.getLogger(__name__)

MAX_CLIENTS = 64
IDLE_TIMEOUT = 30.0  # seconds a client may hold a connection without finishing a request
SEND_TIMEOUT = 5.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def uid_allowed(peer: int, own: int) -> bool:
    """Whether a peer with uid `peer` may control a server running as `own`: root, or the same user
    (who could signal or trace the server anyway)."""
    return peer in (0, own)


def peer_allowed(sock: socket.socket) -> tuple[bool, str]:
    """Whether the peer may control this process (`uid_allowed`), and who it is (for the log). Only the
    uid the kernel recorded at connect() counts: reading a process's capabilities from /proc would race
    with an exec."""
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid_allowed(uid, os.geteuid()), f"pid {pid} uid {uid}"


def refusal() -> str:
    """The error a refused peer reads."""
    own = os.geteuid()
    return "permission denied: ipsecadm must run as root" + (f" or as uid {own}" if own else "")


class SocketInUse(OSError):
    """Another ipsecd answers on the control socket."""


def answering(path: str | Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out = b""  # the response the client has not taken whole yet ...
        self.sent = 0  # ... of which it took this many bytes
        self.waiting = False  # watched for writability
        self.since = time.monotonic()


class ControlServer:
    """Accepts control connections and answers each request line with `handle(op, args)`."""

    def __init__(
        self,
        path: str,
        handle: Callable[[str, dict[str, Any]], Any],
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        writable: Callable[[int, bool], None] | None = None,
    ) -> None:
        """`writable(fd, True)`: call fd's callback when it is writable instead of readable; False: back.
        Without it, responses are sent blocking, for at most SEND_TIMEOUT seconds."""
        self.path = Path(path)
        self.handle = handle
        self._watch = watch
        self._unwatch = unwatch
        self._writable = writable
        self.clients: dict[int, _Client] = {}
        self._made: tuple[int, int] | None = None  # (device, inode) of the socket file this server made
        self.sock = self._listen()
        watch(self.sock.fileno(), self._accept)

    def _listen(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if answering(self.path):
                raise SocketInUse(f"another ipsecd answers on {self.path}")
            self.path.unlink()  # nobody answers: left behind by an ipsecd that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is made 0600: no chmod by path afterwards
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        st = self.path.lstat()
        if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077:
            sock.close()
            raise OSError(f"{self.path} changed while it was made; not serving on it")
        self._made = (st.st_dev, st.st_ino)
        # A full backlog makes a client's connect() fail with EAGAIN (AF_UNIX, timeout set): leave room for
        # every client we would serve.
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        for fd in list(self.clients):
            self._drop(fd)
        self._unwatch(self.sock.fileno())
        self.sock.close()
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._made:  # never a socket another process made
                self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        allowed, who = peer_allowed(conn)
        if not allowed:
            log.warning("control connection refused: %s is neither root nor this server's user", who)
            self._send(conn, encode_error("EACCES", refusal()))
            conn.close()
            return
        if len(self.clients) >= MAX_CLIENTS:
            self._send(conn, encode_error("EBUSY", "too many control connections"))
            conn.close()
            return
        conn.setblocking(False)
        self.clients[conn.fileno()] = _Client(conn)
        self._watch(conn.fileno(), functools.partial(self._ready, conn.fileno()))

    def _drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            self._unwatch(fd)
            client.sock.close()

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(data)
            sock.setblocking(False)
            return True
        except OSError:
            return False

    def _ready(self, fd: int) -> None:
        """The client's socket is readable or, while a response waits, writable."""
        client = self.clients.get(fd)
        if client is None:
            return
        if client.out:
            if self._flush(fd, client) and not client.out:
                self._serve(fd, client)  # requests that came while the response waited
            return
        self._readable(fd)

    def _flush(self, fd: int, client: _Client) -> bool:
        """Send what the socket takes now; watch for writability while the rest waits. False: dropped."""
        try:
            while client.out:
                client.sent += client.sock.send(memoryview(client.out)[client.sent :])
                client.since = time.monotonic()
                if client.sent == len(client.out):
                    client.out, client.sent = b"", 0
        except BlockingIOError:
            pass
        except OSError:
            self._drop(fd)
            return False
        if self._writable is not None and client.waiting != bool(client.out):
            client.waiting = bool(client.out)
            self._writable(fd, client.waiting)
        return True

    def _readable(self, fd: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        client.buf += data
        if not self._serve(fd, client):
            return
        if len(client.buf) > MAX_MESSAGE:
            self._send(client.sock, encode_error("EMSGSIZE", f"request longer than {MAX_MESSAGE} bytes"))
            self._drop(fd)

    def _serve(self, fd: int, client: _Client) -> bool:
        """Answer the complete request lines in the client's buffer, one response waiting at most.
        False when the client was dropped."""
        while b"\n" in client.buf and not client.out:
            line, _, rest = bytes(client.buf).partition(b"\n")
            client.buf = bytearray(rest)
            if self._writable is None:
                if not self._send(client.sock, self.answer(line)):
                    self._drop(fd)
                    return False
                client.since = time.monotonic()
                continue
            client.out = self.answer(line)
            if not self._flush(fd, client):
                return False
        return True

    def answer(self, line: bytes) -> bytes:
        """The response line for request `line`."""
        try:
            req = decode_request(line)
            return encode_result(self.handle(req.op, req.args))
        except ProtocolError as exc:
            return encode_error(exc.errno, exc.message)
        except Exception:  # a bug must cost one request, never the daemon
            log.exception("control request failed")
            return encode_error("EIO", "internal error in ipsecd (see its log)")

    def expire_idle(self) -> None:
        """Close connections that have sat on an unfinished request too long."""
        now = time.monotonic()
        for fd, client in list(self.clients.items()):
            if now - client.since > IDLE_TIMEOUT:
                self._drop(fd)
