"""Socket option numbers, control-message codecs and error-queue parsing shared by the transports.

Values are Linux's (the ``socket`` module lacks several of them on 3.11); each cites its header.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

# asm-generic/socket.h
SO_BINDTODEVICE = 25
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: a struct timespec (CLOCK_REALTIME) of each datagram's arrival
SCM_TIMESTAMPNS = SO_TIMESTAMPNS  # the control message it comes in (64-bit time_t on 64-bit hosts)

# linux/in.h
IP_TOS = 1
IP_TTL = 2
IP_PKTINFO = 8
IP_MTU_DISCOVER = 10
IP_RECVERR = 11
IP_RECVTOS = 13
IP_MTU = 14
IP_PMTUDISC_DONT = 0  # never set DF
IP_PMTUDISC_DO = 2  # always set DF, EMSGSIZE above the path MTU

SO_BINDTOIFINDEX = 62  # Linux 5.0
SIOCGIFINDEX = 0x8933  # linux/sockios.h

# linux/in6.h
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0
IPV6_PMTUDISC_DO = 2
IPV6_MTU = 24
IPV6_RECVERR = 25
IPV6_V6ONLY = 26
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPV6_HOPLIMIT = 52
IPV6_DONTFRAG = 62
IPV6_RECVTCLASS = 66
IPV6_TCLASS = 67

MSG_ERRQUEUE = 0x2000  # linux/socket.h
MSG_TRUNC = 0x20

# linux/errqueue.h: struct sock_extended_err and its origins
SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
_EXT_ERR = struct.Struct("=IBBBBII")

IN_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr (linux/in.h)
IN6_PKTINFO = struct.Struct("=16sI")  # struct in6_pktinfo: addr, ifindex (linux/ipv6.h)
_INT = struct.Struct("=i")
TIMESPEC = struct.Struct("=qq")  # struct timespec on a 64-bit host: tv_sec, tv_nsec

# errno values that report something about the network (usually a received ICMP error) rather
# than misuse of the socket; a read that fails with one of them is retried.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOPROTOOPT,
        errno.EMSGSIZE,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EPROTO,
        errno.EACCES,
        errno.ETIMEDOUT,
        errno.EOPNOTSUPP,
        errno.ENONET,
    }
)

Address = str | bytes


class SocketError(NamedTuple):
    """An asynchronous error reported on a transport, usually an ICMP error from the path.

    ``origin`` is SO_EE_ORIGIN_ICMP/ICMP6 with the ICMP ``type``/``code`` and ``info`` (the next-hop
    MTU for "fragmentation needed"/"packet too big"), or SO_EE_ORIGIN_NONE when only the errno is
    known. ``offender`` is who sent the ICMP error, ``dst``/``port`` where the offending packet went,
    ``data`` the start of the offending payload (ESP header or UDP payload) as quoted.
    """

    errno: int
    origin: int = SO_EE_ORIGIN_NONE
    type: int = 0
    code: int = 0
    info: int = 0
    offender: bytes | None = None
    dst: bytes | None = None
    port: int = 0
    data: bytes = b""


def pack_addr(family: int, addr: Address) -> bytes:
    """``addr`` as packed bytes of the given family (strings may carry an IPv6 ``%zone``)."""
    if isinstance(addr, bytes):
        if len(addr) != (16 if family == socket.AF_INET6 else 4):
            raise ValueError(f"packed address of wrong length for family {family}: {addr!r}")
        return addr
    return socket.inet_pton(family, addr.split("%", 1)[0])


def ifindex_of(sock: socket.socket, name: str) -> int:
    """The index of interface ``name`` in the socket's own network namespace (SIOCGIFINDEX)."""
    raw = name.encode()
    if not raw or len(raw) >= 16:
        raise ValueError(f"invalid interface name: {name!r}")
    result = fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, struct.pack("16si20x", raw, 0))
    return int(struct.unpack_from("16si", result)[1])


def sockaddr(
    family: int, addr: Address, port: int = 0, ifindex: Callable[[str], int] = socket.if_nametoindex
) -> tuple[str, int] | tuple[str, int, int, int]:
    """The Python socket address for ``addr`` (packed or text, maybe ``fe80::1%eth0``) and ``port``."""
    if family == socket.AF_INET:
        if isinstance(addr, bytes):
            return socket.inet_ntop(family, addr), port
        return addr, port
    scope = 0
    if isinstance(addr, bytes):
        text = socket.inet_ntop(family, addr)
    else:
        text, _, zone = addr.partition("%")
        if zone:
            scope = int(zone) if zone.isdigit() else ifindex(zone)
    return text, port, 0, scope


def int_cmsg(level: int, kind: int, value: int) -> tuple[int, int, bytes]:
    """A control message carrying one C int."""
    return level, kind, _INT.pack(value)


def cmsg_int(data: bytes) -> int:
    """The integer in a control message that holds an int or a single byte."""
    if len(data) >= 4:
        (value,) = _INT.unpack_from(data)
        return int(value)
    return data[0] if data else 0


def cmsg_timespec(data: bytes) -> float:
    """A struct timespec control message (SCM_TIMESTAMPNS) in seconds; 0.0 when it is not one."""
    if len(data) >= TIMESPEC.size:
        sec, nsec = TIMESPEC.unpack_from(data)
    elif len(data) >= 8:  # a 32-bit host's struct timespec
        sec, nsec = struct.unpack_from("=ii", data)
    else:
        return 0.0
    return float(sec + nsec * 1e-9)


def set_buffers(sock: socket.socket, rcvbuf: int | None, sndbuf: int | None) -> None:
    """Set the socket buffer sizes, beyond the sysctl limits when privileged (SO_*BUFFORCE)."""
    for size, forced, plain in (
        (rcvbuf, SO_RCVBUFFORCE, socket.SO_RCVBUF),
        (sndbuf, SO_SNDBUFFORCE, socket.SO_SNDBUF),
    ):
        if size is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def bind_to_device(sock: socket.socket, device: str) -> None:
    """Restrict the socket to one interface for routing and receiving (SO_BINDTODEVICE)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())


def attach_drop_all(sock: socket.socket) -> None:
    """Attach a classic BPF filter that drops every received packet (linux/filter.h)."""
    insn = struct.pack("=HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, k = 0: accept 0 bytes
    buf = ctypes.create_string_buffer(insn, len(insn))
    prog = struct.pack("@HP", 1, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def _unpack_sockaddr(raw: bytes) -> tuple[bytes | None, int]:
    if len(raw) < 4:
        return None, 0
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return raw[4:8], port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return raw[8:24], port
    return None, port


def parse_error_queue_entry(
    family: int, data: bytes, ancdata: list[tuple[int, int, bytes]], address: object, strip_ip: bool
) -> SocketError | None:
    """The SocketError in one MSG_ERRQUEUE message; None for local errors (already raised by send).

    ``strip_ip``: the quoted payload starts with the IPv4 header we built (IP_HDRINCL raw sockets).
    """
    level, kind = (
        (socket.IPPROTO_IPV6, IPV6_RECVERR) if family == socket.AF_INET6 else (socket.IPPROTO_IP, IP_RECVERR)
    )
    for cm_level, cm_type, cm_data in ancdata:
        if cm_level != level or cm_type != kind or len(cm_data) < _EXT_ERR.size:
            continue
        err, origin, icmp_type, icmp_code, _pad, info, _data = _EXT_ERR.unpack_from(cm_data)
        if origin == SO_EE_ORIGIN_LOCAL:
            return None
        offender, _ = _unpack_sockaddr(cm_data[_EXT_ERR.size :])
        dst: bytes | None = None
        port = 0
        if isinstance(address, tuple) and address:
            dst = socket.inet_pton(family, str(address[0]).split("%", 1)[0])
            port = int(address[1])
        if strip_ip and len(data) >= 20 and data[0] >> 4 == 4:
            data = data[(data[0] & 0x0F) * 4 :]
        return SocketError(err, origin, icmp_type, icmp_code, info, offender, dst, port, data)
    return None
