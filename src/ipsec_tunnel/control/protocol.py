"""The control protocol between ipsecadm and ipsecd: one JSON object per line over a Unix stream socket.

Request:  {"v": 1, "op": "sa.add", "args": {...}}
Response: {"v": 1, "ok": true, "result": ...}  or  {"v": 1, "ok": false, "errno": "EEXIST", "error": "..."}

Keys travel as hex inside `sa.add` and `ike.add` (the PSK) only (the socket is root-only, mode 0600); no
response ever holds one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_MESSAGE = 1 << 20  # bytes; a longer request line is refused as EMSGSIZE
MAX_RESPONSE = 1 << 28  # bytes a client accepts in one response (`sa show` of 100,000s of SAs)
DEFAULT_SOCKET = "/run/ipsec-tunnel/ipsecd.sock"

OPS = (
    "sa.add",
    "sa.del",
    "sa.show",
    "tunnel.add",
    "tunnel.change",
    "tunnel.del",
    "tunnel.show",
    "batch",  # sa.add and tunnel.add requests applied all or none (`ipsecadm -b`)
    "stats",
    "algos",
    "version",
    "ping",
    # IKEv2 peers (docs/control-protocol.md)
    "ike.add",
    "ike.del",
    "ike.up",
    "ike.down",
    "ike.show",
)

# errno-style codes (names from errno.h) a response may carry, with their meaning here.
ERRORS = {
    "EINVAL": "invalid argument",
    "EEXIST": "already exists",
    "ENOENT": "no such object",
    "EPERM": "operation not permitted",
    "EACCES": "permission denied",
    "EPROTO": "malformed request",
    "EMSGSIZE": "request too large",
    "EOPNOTSUPP": "unknown operation",
    "ENOSPC": "no space left",
    "EIO": "input/output error",
    "ENODEV": "no such device",
    "EBUSY": "device or resource busy",
}


class ProtocolError(Exception):
    """A request that could not be carried out: an errno-style code and one human line."""

    def __init__(self, errno: str, message: str) -> None:
        super().__init__(message)
        self.errno = errno if errno in ERRORS else "EIO"
        self.message = message


@dataclass(frozen=True)
class Request:
    """A decoded request."""

    op: str
    args: dict[str, Any]


def encode_request(op: str, args: dict[str, Any] | None = None) -> bytes:
    """The wire form of a request."""
    return json.dumps({"v": VERSION, "op": op, "args": args or {}}, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes) -> Request:
    """The request in `line`, or ProtocolError saying why it is not one."""
    if len(line) > MAX_MESSAGE:
        raise ProtocolError("EMSGSIZE", f"request longer than {MAX_MESSAGE} bytes")
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise ProtocolError("EPROTO", "request is not valid JSON") from None
    if not isinstance(msg, dict):
        raise ProtocolError("EPROTO", "request must be a JSON object")
    if type(msg.get("v")) is not int or msg.get("v") != VERSION:
        raise ProtocolError(
            "EPROTO", f"unsupported protocol version {msg.get('v')!r} (ipsecd speaks {VERSION})"
        )
    op = msg.get("op")
    args = msg.get("args", {})
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError("EOPNOTSUPP", f"unknown operation {op!r}")
    if not isinstance(args, dict):
        raise ProtocolError("EPROTO", "args must be a JSON object")
    return Request(op, args)


def encode_result(result: Any) -> bytes:
    """The wire form of a successful response."""
    return json.dumps({"v": VERSION, "ok": True, "result": result}, separators=(",", ":")).encode() + b"\n"


def encode_error(errno: str, message: str) -> bytes:
    """The wire form of a failed response."""
    return (
        json.dumps(
            {"v": VERSION, "ok": False, "errno": errno, "error": message}, separators=(",", ":")
        ).encode()
        + b"\n"
    )


def decode_response(line: bytes) -> Any:
    """The result in a response line; ProtocolError for an error response or garbage."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("EPROTO", "ipsecd sent a malformed response") from None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise ProtocolError("EPROTO", "ipsecd speaks another protocol version; restart it after upgrading")
    if msg.get("ok"):
        return msg.get("result")
    raise ProtocolError(str(msg.get("errno", "EIO")), str(msg.get("error", "unknown error")))


# -- argument helpers for the server ---------------------------------------------------------------------


def arg(
    args: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    *,
    required: bool = False,
) -> Any:
    """`args[name]` checked against `kind`; ProtocolError EINVAL when missing (if required) or mistyped."""
    if name not in args or args[name] is None:
        if required:
            raise ProtocolError("EINVAL", f"missing argument {name!r}")
        return default
    value = args[name]
    if isinstance(value, bool) and kind in (int, (int,)):
        raise ProtocolError("EINVAL", f"argument {name!r} must be an integer")
    if not isinstance(value, kind):
        raise ProtocolError("EINVAL", f"argument {name!r} has the wrong type")
    return value
