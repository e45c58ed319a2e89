"""The ESP-in-UDP socket (RFC 3948, port 4500) with its kernel offloads: UDP GSO to send bursts
(UDP_SEGMENT, Linux 4.18) and UDP GRO to receive coalesced batches (UDP_GRO, Linux 5.0).

Owns how the socket is opened, bound (address, device), read and written, with the outer addresses,
TOS/traffic class, TTL/hop limit and DF chosen per packet. Non-blocking: ``recv`` returns None when
nothing is queued. Sending returns False when the socket buffer is full and raises OSError for anything
else (EMSGSIZE: too big for the path; ENETUNREACH/EHOSTUNREACH: no route), so the caller can count a
drop reason. What is inside (SPI, non-ESP marker, keepalives) belongs to the core.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from ipsec_tunnel.core.framing import native as _native
from ipsec_tunnel.core.sa import NAT_T_PORT
from ipsec_tunnel.linux import sizebpf
from ipsec_tunnel.linux._sockopt import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_PKTINFO,
    IP_RECVTOS,
    IP_TOS,
    IP_TTL,
    IPV6_DONTFRAG,
    IPV6_HOPLIMIT,
    IPV6_PKTINFO,
    IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    IPV6_V6ONLY,
    NETWORK_ERRNOS,
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    Address,
    SocketError,
    cmsg_int,
    cmsg_timespec,
    int_cmsg,
    pack_addr,
)
from ipsec_tunnel.linux._transport import _MAX_ERRORS, DEFAULT_BUFFER, Transport
from ipsec_tunnel.linux.pktio import native as _io

__all__ = [
    "NAT_T_PORT",
    "UDP_GRO",
    "UDP_MAX_SEGMENTS",
    "UDP_SEGMENT",
    "SocketError",
    "UdpDatagram",
    "UdpSocket",
]

SOL_UDP = 17  # linux/socket.h (IPPROTO_UDP)
UDP_SEGMENT = 103  # linux/udp.h: set the GSO segment size (Linux 4.18)
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams with the segment size in a cmsg (Linux 5.0)
UDP_MAX_SEGMENTS = 64  # linux/udp.h: the most segments one UDP GSO send may carry (128 since 6.10)
GSO_MAX_BYTES = 65535 - 8 - 40  # one UDP datagram's payload at most, under the largest IP header
_U16 = struct.Struct("=H")
_GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_GRO_ANCILLARY = socket.CMSG_SPACE(4) * 4 + 128
_SOCKADDR_HEAD = struct.Struct("=H")  # sa_family, host order; then the port and addresses in network order


class UdpDatagram(NamedTuple):
    """A received UDP datagram: outer source (packed) and port, destination (packed), TOS, UDP payload,
    and when the kernel received it (`stamp`, CLOCK_REALTIME seconds; 0.0 when not asked or unknown)."""

    src: bytes
    sport: int
    dst: bytes
    tos: int
    payload: bytes
    stamp: float = 0.0


class UdpSocket(Transport):
    """A UDP socket for ESP-in-UDP (RFC 3948), bound to ``port`` (4500; 0 picks a free one).

    IPv6 sockets are IPv6-only, so an IPv4 and an IPv6 socket can share the port.
    The datagrams are moved as they are: non-ESP markers and keepalives are the core's business.
    ``gso``: `send_burst` sends runs of equal-sized datagrams as one UDP GSO send; ``gro``: `recv_batch`
    takes coalesced UDP GRO batches. Each is used only when the kernel accepts it (the attributes of
    the same names tell which are on) and switched off at the first refusal. ``timestamps``: each
    received datagram (a GRO batch: its first) carries the kernel's receive time (SO_TIMESTAMPNS), for
    the time it waited in the socket buffer.
    """

    def __init__(
        self,
        family: int,
        port: int = NAT_T_PORT,
        bind_addr: str | None = None,
        device: str | None = None,
        *,
        rcvbuf: int | None = DEFAULT_BUFFER,
        sndbuf: int | None = DEFAULT_BUFFER,
        recverr: bool = True,
        reuse_addr: bool = False,
        reuse_port: bool = False,
        gso: bool = False,
        gro: bool = False,
        timestamps: bool = False,
    ) -> None:
        super().__init__(
            family,
            socket.SOCK_DGRAM,
            socket.IPPROTO_UDP,
            device=device,
            rcvbuf=rcvbuf,
            sndbuf=sndbuf,
            recverr=recverr,
        )
        try:
            if reuse_addr:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # a group of sockets on one port (linux.sizebpf.steer_small splits it)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self._v6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_V6ONLY, 1)
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
            else:
                self._sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                self._sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
            any_addr = "::" if self._v6 else "0.0.0.0"  # noqa: S104 - the tunnel endpoint listens on all
            self._sock.bind(self._sockaddr(bind_addr or any_addr, port))
        except BaseException:
            self.close()
            raise
        self.gso = gso
        self.gro = False
        if gro:
            try:
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
                self._ancillary = _GRO_ANCILLARY  # room for the UDP_GRO segment size as well
            except OSError:
                pass
        self.timestamps = False
        if timestamps:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timestamps = True
            except OSError:
                pass
        self._cached: tuple[object, ...] = ()
        self._one_key: tuple[object, ...] = ()  # send_one's last (dst, dport, tos, ttl, df, src, oif)
        self._one: tuple[list[tuple[int, int, bytes]], tuple[Any, ...]] = ([], ())  # cmsgs, address
        self._one_packed: tuple[bytes, bytes] | None = None  # the same packed, for `io`
        self.io = _io  # the C calls (`_pktio`) or None: the Python path (IPSEC_TUNNEL_PURE=1)
        self._cmsgs: list[tuple[int, int, bytes]] = []

    def split_small(self, small: int) -> None:
        """Of this socket's reuseport group: datagrams of at most `small` bytes to the second socket
        bound, the others to this (the first); OSError if the kernel refuses (`linux.sizebpf`)."""
        sizebpf.steer_small(self._sock, small)

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self.local_address[1]

    def recv(self) -> UdpDatagram | None:
        """The next datagram with its outer addresses, source port and TOS; None when nothing is queued."""
        got = self._recvmsg()
        if got is None:
            return None
        return self._datagram(*got)

    def _datagram(
        self, n: int, anc: list[tuple[int, int, bytes]], addr: object, *, payload: bool = True
    ) -> UdpDatagram:
        """The datagram of `n` bytes in the buffer, with what its control messages and sender say (its
        payload left in the buffer, empty here, unless `payload`)."""
        dst = bytes(16 if self._v6 else 4)
        tos = 0
        stamp = 0.0
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET:
                if kind == SCM_TIMESTAMPNS:
                    stamp = cmsg_timespec(data)
            elif self._v6 and level == socket.IPPROTO_IPV6:
                if kind == IPV6_PKTINFO and len(data) >= 16:
                    dst = data[:16]
                elif kind == IPV6_TCLASS:
                    tos = cmsg_int(data)
            elif not self._v6 and level == socket.IPPROTO_IP:
                if kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
                    dst = data[8:12]  # ipi_addr: the header's destination
                elif kind == IP_TOS and data:
                    tos = data[0]
        host, port = addr[0], addr[1]  # type: ignore[index]
        src = socket.inet_pton(self.family, str(host).split("%", 1)[0])
        body = bytes(memoryview(self._buf)[:n]) if payload else b""
        return UdpDatagram(src, int(port), dst, tos, body, stamp)

    def send(
        self,
        dst: Address,
        dport: int,
        payload: bytes | bytearray | memoryview,
        *,
        tos: int = 0,
        ttl: int | None = None,
        df: bool | None = None,
        src: Address | None = None,
        oif: str | int | None = None,
    ) -> bool:
        """Send one datagram from the bound port to ``dst``:``dport``; False if the buffer is full.

        ``tos`` is the whole outer TOS/traffic-class byte; ``ttl`` the TTL/hop limit (default: the
        system's); ``df`` sets DF (IPv4, a socket option switched only when it changes) or forbids
        local fragmentation (IPv6); None leaves it as it was (initially the kernel's default,
        path MTU discovery). ``src`` picks the outer source address, ``oif`` the outgoing
        interface for this packet.
        """
        cmsgs: list[tuple[int, int, bytes]] = []
        if self._v6:
            cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_TCLASS, tos))
            if ttl is not None:
                cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_HOPLIMIT, ttl))
            if df is not None:
                cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_DONTFRAG, int(df)))
            if src is not None or oif is not None:
                source = pack_addr(self.family, src) if src is not None else bytes(16)
                info = IN6_PKTINFO.pack(source, self.ifindex(oif))
                cmsgs.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, info))
        else:
            cmsgs.append(int_cmsg(socket.IPPROTO_IP, IP_TOS, tos))
            if ttl is not None:
                cmsgs.append(int_cmsg(socket.IPPROTO_IP, IP_TTL, ttl))
            if df is not None:
                self._set_df(df)
            if src is not None or oif is not None:
                source = pack_addr(self.family, src) if src is not None else bytes(4)
                info = IN_PKTINFO.pack(self.ifindex(oif), source, bytes(4))
                cmsgs.append((socket.IPPROTO_IP, IP_PKTINFO, info))
        address = self._sockaddr(dst, dport)
        return self._retrying(lambda: self._sock.sendmsg([payload], cmsgs, 0, address))

    def _burst_cmsgs(
        self, tos: int, ttl: int, df: bool, src: Address | None, oif: str | int | None
    ) -> list[tuple[int, int, bytes]]:
        """The control messages `send` would use (cached while they stay the same)."""
        key = (tos, ttl, df, src, oif)
        if key == self._cached:
            if not self._v6:
                self._set_df(df)
            return self._cmsgs
        cmsgs: list[tuple[int, int, bytes]] = []
        if self._v6:
            cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_TCLASS, tos))
            cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_HOPLIMIT, ttl))
            cmsgs.append(int_cmsg(socket.IPPROTO_IPV6, IPV6_DONTFRAG, int(df)))
            if src is not None or oif is not None:
                source = pack_addr(self.family, src) if src is not None else bytes(16)
                cmsgs.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(source, self.ifindex(oif))))
        else:
            cmsgs.append(int_cmsg(socket.IPPROTO_IP, IP_TOS, tos))
            cmsgs.append(int_cmsg(socket.IPPROTO_IP, IP_TTL, ttl))
            self._set_df(df)
            if src is not None or oif is not None:
                source = pack_addr(self.family, src) if src is not None else bytes(4)
                cmsgs.append(
                    (socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(self.ifindex(oif), source, bytes(4)))
                )
        self._cached, self._cmsgs = key, cmsgs
        return cmsgs

    def send_burst(
        self,
        dst: Address,
        dport: int,
        payloads: Sequence[bytes],
        *,
        tos: int = 0,
        ttl: int = 64,
        df: bool = False,
        src: Address | None = None,
        oif: str | int | None = None,
    ) -> list[tuple[int, OSError]]:
        """Send datagrams to `dst`:`dport` in order, as few UDP GSO sends as their sizes allow (one send
        per run of equal sizes, ending with at most one shorter). Datagrams the full socket buffer drops
        are lost silently, as with `send`; the others that fail are returned as (count, error),
        and the rest of the burst still goes."""
        cmsgs = self._burst_cmsgs(tos, ttl, df, src, oif)
        address = self._sockaddr(dst, dport)
        sock = self._sock
        failed: list[tuple[int, OSError]] = []
        if not self.gso:
            for p in payloads:
                try:
                    self._retrying(lambda p=p: sock.sendmsg([p], cmsgs, 0, address))  # type: ignore[misc]
                except OSError as exc:
                    failed.append((1, exc))
            return failed
        for group, size in _gso_groups(payloads):
            seg = cmsgs if len(group) == 1 else [*cmsgs, (SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
            try:
                self._retrying(lambda g=group, s=seg: sock.sendmsg(g, s, 0, address))  # type: ignore[misc]
            except OSError as exc:
                if len(group) == 1 or exc.errno not in _GSO_REFUSED:
                    failed.append((len(group), exc))
                    continue
                # Refused as a GSO send: one at a time; if that works, GSO itself was the problem.
                sent = 0
                for p in group:
                    try:
                        self._retrying(lambda p=p: sock.sendmsg([p], cmsgs, 0, address))  # type: ignore[misc]
                        sent += 1
                    except OSError as one:
                        failed.append((1, one))
                if sent:
                    self.gso = False
        return failed

    def send_one(
        self, dst: Address, dport: int, payload: bytes, tos: int, ttl: int, df: bool, src: Address | None,
        oif: str | int | None,
    ) -> OSError | None:  # fmt: skip
        """`send_burst` of one datagram with the fewest steps (a packet read alone, `daemon.lone`): the
        error that lost it, else None (a full socket buffer loses it silently, as `send_burst`)."""
        key = (dst, dport, tos, ttl, df, src, oif)
        if key != self._one_key:
            self._one = self._burst_cmsgs(tos, ttl, df, src, oif), self._sockaddr(dst, dport)
            self._one_packed = self._packed(*self._one) if self.io is not None else None
            self._one_key = key
        elif df != self._df and not self._v6:  # send_burst switched it since
            self._set_df(df)
        packed = self._one_packed
        if packed is not None:  # the same sendmsg, one C call (_pktio.c)
            error = self.io.send_udp(self._sock.fileno(), payload, *packed)  # type: ignore[union-attr]
            return None if not error or error == errno.EAGAIN else self._send_failed(payload, error, packed)
        cmsgs, address = self._one
        sock = self._sock
        try:
            sock.sendmsg([payload], cmsgs, 0, address)
        except BlockingIOError:
            return None
        except OSError as exc:  # as _retrying: a stored ICMP error fails the next send once
            if exc.errno not in NETWORK_ERRNOS:
                return exc
            try:
                sock.sendmsg([payload], cmsgs, 0, address)
            except BlockingIOError:
                return None
            except OSError as again:
                return again
            self._note(exc)
        return None

    def _packed(
        self, cmsgs: list[tuple[int, int, bytes]], address: tuple[Any, ...]
    ) -> tuple[bytes, bytes] | None:
        """`cmsgs` and `address` packed for `_pktio.send_udp` (ancillary buffer, struct sockaddr);
        None where sendmsg itself must read the address (a link-local one with a zone)."""
        assert self.io is not None
        head = _SOCKADDR_HEAD.pack(self.family)
        if self._v6:
            host, port, flow, scope = address
            if "%" in host:
                return None
            packed = head + struct.pack("!HI", port, flow) + socket.inet_pton(self.family, host)
            packed += struct.pack("=I", scope)
        else:
            host, port = address
            packed = head + struct.pack("!H", port) + socket.inet_pton(self.family, host) + bytes(8)
        return self.io.control(cmsgs), packed

    def _send_failed(self, payload: bytes, error: int, packed: tuple[bytes, bytes]) -> OSError | None:
        """`send_one`'s C send that failed with `error`: the same outcome as the Python path's (a network
        error, as one the kernel stored from an ICMP message, gets one retry; a full buffer loses it)."""
        assert self.io is not None
        first = OSError(error, os.strerror(error))  # OSError picks the subclass, as sendmsg raises it
        if error not in NETWORK_ERRNOS:
            return first
        again = self.io.send_udp(self._sock.fileno(), payload, *packed)
        if again == errno.EAGAIN:
            return None
        if again:
            return OSError(again, os.strerror(again))
        self._note(first)
        return None

    def recv_batch(self) -> tuple[UdpDatagram, list[bytes]] | None:
        """The next datagram, or the next GRO batch split back into its datagrams: (the first's
        addresses and TOS, every payload); None when nothing is queued."""
        io = self.io
        if io is not None:  # the same, one C call (_pktio.c)
            for _ in range(_MAX_ERRORS):
                try:
                    one = io.recv_udp(self._sock.fileno(), self._buf, self._v6, self._ancillary, UdpDatagram)
                except OSError as exc:
                    if self._note(exc):
                        continue
                    raise
                if one is None:
                    return None
                if one is False:  # cut short: dropped, as _recvmsg does
                    continue
                dgram, count, size = one
                if not size:
                    return dgram, [dgram.payload]
                if _native is not None:
                    return dgram, _native.split(self._buf, count, size)
                data = bytes(memoryview(self._buf)[:count])
                return dgram, [data[i : i + size] for i in range(0, count, size)]
            return None
        got = self._recvmsg()
        if got is None:
            return None
        n, anc, addr = got
        size = 0
        rest = []
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                size = _U16.unpack_from(data)[0] if len(data) < 4 else struct.unpack_from("=i", data)[0]
            else:
                rest.append((level, kind, data))
        if size <= 0 or size >= n:
            dgram = self._datagram(n, rest, addr)
            return dgram, [dgram.payload]
        first = self._datagram(n, rest, addr, payload=False)
        if _native is not None:  # the same cut in C (core/_framing.c): each datagram copied out once
            return first, _native.split(self._buf, n, size)
        data = bytes(memoryview(self._buf)[:n])  # copied out at once, then sliced: cheaper per datagram
        return first, [data[i : i + size] for i in range(0, n, size)]


def _gso_groups(payloads: Sequence[bytes]) -> Iterator[tuple[list[bytes], int]]:
    """Runs of payloads one UDP GSO send can carry: equal sizes, the last may be shorter, at most
    UDP_MAX_SEGMENTS and GSO_MAX_BYTES in all."""
    if _native is not None and isinstance(payloads, list):  # the same runs, found in C (core/_framing.c)
        runs = _native.gso_runs(payloads, UDP_MAX_SEGMENTS, GSO_MAX_BYTES)
        if runs is not None:
            for start, end, size in runs:
                yield payloads[start:end], size
            return
    i, count = 0, len(payloads)
    while i < count:
        size = len(payloads[i])
        j = i + 1
        limit = min(count, i + UDP_MAX_SEGMENTS, i + max(1, GSO_MAX_BYTES // max(size, 1)))
        while j < limit and len(payloads[j]) == size:
            j += 1
        if j < limit and len(payloads[j]) < size:
            j += 1  # a shorter one may end the run
        yield list(payloads[i:j]), size
        i = j
