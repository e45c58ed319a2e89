"""The client side of the control protocol: send one request to ipsecd and return its result.

Each `Client.call` opens its own connection to the Unix socket, writes one request line, reads one response
line and closes the connection, so a client object holds no socket between calls; with `keep_open` (for
`ipsecadm -b`) one connection carries every call until `close`.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import time
from typing import Any

from .protocol import DEFAULT_SOCKET, MAX_RESPONSE, ProtocolError, decode_response, encode_request

ENV_SOCKET = "IPSEC_TUNNEL_SOCKET"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def default_socket_path() -> str:
    """The control socket path: $IPSEC_TUNNEL_SOCKET when set and not empty, else the protocol default."""
    return os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


class DaemonUnreachable(OSError):
    """ipsecd's socket could not be connected to; `errno` says why and `filename` is the socket path."""

    @property
    def permission_denied(self) -> bool:
        """True when the socket exists but this user may not connect to it."""
        return self.errno in (_errno.EACCES, _errno.EPERM)


class Client:
    """A connection factory for ipsecd's control socket at `path`."""

    def __init__(
        self, path: str, timeout: float = 10.0, max_response: int = MAX_RESPONSE, *, keep_open: bool = False
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.max_response = max_response
        self.keep_open = keep_open
        self._sock: socket.socket | None = None

    def close(self) -> None:
        """Close the connection kept open, if any."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                if exc.errno == _errno.EAGAIN and time.monotonic() < deadline:
                    time.sleep(0.01)  # the daemon's listen queue is full: it is busy, not gone
                    continue
                code = exc.errno if exc.errno is not None else _errno.EINVAL
                raise DaemonUnreachable(code, exc.strerror or str(exc), self.path) from None
            try:
                self._check_server(sock)
            except BaseException:
                sock.close()
                raise
            return sock

    def _check_server(self, sock: socket.socket) -> None:
        """Refuse a server that is neither root nor this user: whoever made the socket file would be
        handed the keys of every `sa add`. The uid is the one the kernel recorded when it listened."""
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid not in (0, os.geteuid()):
            raise ProtocolError(
                "EACCES", f"refusing to talk to {self.path}: it is served by uid {uid}, not by root"
            )

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """The result of `op` with `args`.

        Raises DaemonUnreachable when the socket cannot be connected to, and ProtocolError when ipsecd
        refuses the request, answers with something that is not a response, or does not answer in time.
        """
        request = encode_request(op, args)
        sock = self._sock or self._connect()
        done = False
        try:
            try:
                sock.sendall(request)
                line = self._read_line(sock, self.max_response)
                done = True
            except TimeoutError:
                raise ProtocolError("EIO", f"ipsecd did not answer within {self.timeout:g} s") from None
            except OSError as exc:
                raise ProtocolError("EIO", f"connection to ipsecd lost: {exc.strerror or exc}") from None
        finally:
            if self.keep_open and done:
                self._sock = sock
            else:
                sock.close()
                self._sock = None
        return decode_response(line)

    @staticmethod
    def _read_line(sock: socket.socket, limit: int) -> bytes:
        buf = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                if buf:
                    raise ProtocolError("EPROTO", "ipsecd sent an incomplete response")
                raise ProtocolError("EIO", "ipsecd closed the connection without answering")
            buf += chunk
            end = buf.find(b"\n")
            if end >= 0:
                if end > limit:
                    break
                return bytes(buf[:end])
            if len(buf) > limit:
                break
        raise ProtocolError("EMSGSIZE", f"ipsecd sent a response longer than {limit} bytes")
