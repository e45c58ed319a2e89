"""Links through rtnetlink (rtnetlink(7)): the list of devices with their kind and alias, setting an
alias, and link events (a socket subscribed to RTMGRP_LINK).

Owns the sockets and the decoding of RTM_NEWLINK / RTM_DELLINK messages; what to do about a device that
was deleted or renamed is the daemon's business. All calls act in the network namespace of the calling
thread (unlike /sys/class/net, which shows the namespace it was mounted in).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

__all__ = ["LinkEvent", "LinkMonitor", "links", "parse", "set_alias"]

NETLINK_ROUTE = 0  # linux/netlink.h
RTMGRP_LINK = 0x1  # linux/rtnetlink.h: the multicast group of link changes
NLMSG_ERROR = 2  # linux/netlink.h
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
RTM_NEWLINK = 16  # linux/rtnetlink.h
RTM_DELLINK = 17
RTM_GETLINK = 18
IFLA_IFNAME = 3  # linux/if_link.h
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_INFO_KIND = 1  # inside IFLA_LINKINFO

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # length, type
_ERRNO = struct.Struct("=i")  # struct nlmsgerr starts with the (negative) error
_BUFFER = 1 << 16


def _align(n: int) -> int:
    return (n + 3) & ~3  # NLMSG_ALIGN / RTA_ALIGN


@dataclass(frozen=True)
class LinkEvent:
    """A device appeared or changed (``deleted`` False) or went away (True)."""

    index: int
    name: str
    flags: int  # IFF_* (IFF_UP 0x1)
    deleted: bool
    kind: str = ""  # IFLA_INFO_KIND: "tun", "veth", ...; "" for none (lo, say)
    alias: str = ""  # IFLA_IFALIAS


def _attrs(data: bytes, at: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while at + _RTATTR.size <= end:
        alen, atype = _RTATTR.unpack_from(data, at)
        if alen < _RTATTR.size or at + alen > end:
            break
        found[atype & 0x3FFF] = data[at + _RTATTR.size : at + alen]  # without NLA_F_NESTED / BYTEORDER
        at += _align(alen)
    return found


def _text(raw: bytes | None) -> str:
    return (raw or b"").split(b"\0", 1)[0].decode(errors="replace")


def parse(data: bytes) -> list[LinkEvent]:
    """The link messages in one datagram read from an rtnetlink socket; other messages are skipped."""
    events: list[LinkEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break  # truncated: the rest cannot be trusted
        body = offset + _NLMSGHDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSGHDR.size + _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
            attrs = _attrs(data, body + _IFINFOMSG.size, offset + length)
            info = attrs.get(IFLA_LINKINFO, b"")
            link_kind = _text(_attrs(info, 0, len(info)).get(IFLA_INFO_KIND))
            events.append(
                LinkEvent(index, _text(attrs.get(IFLA_IFNAME)), flags, kind == RTM_DELLINK, link_kind,
                          _text(attrs.get(IFLA_IFALIAS)))
            )  # fmt: skip
        offset += _align(length)
    return events


def _request(kind: int, flags: int, index: int = 0, attrs: bytes = b"") -> list[LinkEvent]:
    """Send one rtnetlink request and collect the link messages of its answer; OSError for an error."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + attrs
    message = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.send(message)
        found: list[LinkEvent] = []
        while True:
            data = sock.recv(_BUFFER)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, _f, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    return found
                if mtype == NLMSG_DONE:
                    return found
                if mtype == NLMSG_ERROR:
                    (error,) = _ERRNO.unpack_from(data, offset + _NLMSGHDR.size)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return found  # the ACK
                offset += _align(length)
            found += parse(data)
            if not flags & NLM_F_DUMP:
                return found


def links() -> list[LinkEvent]:
    """Every device of this network namespace (RTM_GETLINK dump), with its kind and alias."""
    return _request(RTM_GETLINK, NLM_F_DUMP)


def set_alias(index: int, text: str) -> None:
    """Set the alias of device number `index` (IFLA_IFALIAS, as ``ip link set DEV alias TEXT``)."""
    value = text.encode() + b"\0"
    attr = _RTATTR.pack(_RTATTR.size + len(value), IFLA_IFALIAS) + value
    _request(RTM_NEWLINK, NLM_F_ACK, index, attr + bytes(_align(len(attr)) - len(attr)))


class LinkMonitor:
    """A non-blocking rtnetlink socket receiving every link change of this network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, RTMGRP_LINK))
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """The socket's descriptor (for selectors)."""
        return self._sock.fileno()

    def read(self) -> list[LinkEvent] | None:
        """Every event queued now; None when the kernel dropped some (ENOBUFS): look at the devices again."""
        events: list[LinkEvent] = []
        while True:
            try:
                data = self._sock.recv(_BUFFER)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return None
                raise
            events += parse(data)

    def close(self) -> None:
        """Close the socket. Idempotent."""
        self._sock.close()
