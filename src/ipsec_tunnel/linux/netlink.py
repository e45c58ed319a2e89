"""Link events from the kernel: an rtnetlink socket subscribed to RTMGRP_LINK.

Owns the socket and the decoding of RTM_NEWLINK / RTM_DELLINK messages (rtnetlink(7)); what to do
about a device that was deleted or renamed is the daemon's business. All calls act in the network
namespace of the calling thread.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

__all__ = ["LinkEvent", "LinkMonitor", "parse"]

NETLINK_ROUTE = 0  # linux/netlink.h
RTMGRP_LINK = 0x1  # linux/rtnetlink.h: the multicast group of link changes
NLMSG_ERROR = 2  # linux/netlink.h
NLMSG_DONE = 3
RTM_NEWLINK = 16  # linux/rtnetlink.h
RTM_DELLINK = 17
IFLA_IFNAME = 3  # linux/if_link.h

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # length, type
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


def parse(data: bytes) -> list[LinkEvent]:
    """The link events in one datagram read from an rtnetlink socket; other messages are skipped."""
    events: list[LinkEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break  # truncated: the rest cannot be trusted
        body = offset + _NLMSGHDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSGHDR.size + _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
            name = ""
            at = body + _IFINFOMSG.size
            end = offset + length
            while at + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, at)
                if alen < _RTATTR.size or at + alen > end:
                    break
                if atype == IFLA_IFNAME:
                    name = data[at + _RTATTR.size : at + alen].split(b"\0", 1)[0].decode(errors="replace")
                at += _align(alen)
            events.append(LinkEvent(index, name, flags, kind == RTM_DELLINK))
        offset += _align(length)
    return events


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
