"""The outer transports: raw ESP (IP protocol 50) and ESP-in-UDP on port 4500 (RFC 3948).

Owns the sockets that carry encrypted packets between the tunnel endpoints: how they are opened,
bound (address, device), sized, read and written, with the outer addresses, TOS/traffic class,
TTL/hop limit and DF chosen per packet, and how asynchronous (ICMP) errors are collected.
All sockets are non-blocking: ``recv`` returns None when nothing is queued. Sending returns False
when the socket buffer is full and raises OSError for anything else (EMSGSIZE: too big for the path;
ENETUNREACH/EHOSTUNREACH: no route), so the caller can count a drop reason.
Parsing of what is inside (SPI, non-ESP marker, keepalives) belongs to the core.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import NamedTuple

from ipsec_tunnel.core.ip import IPV4_HEADER
from ipsec_tunnel.core.sa import NAT_T_PORT
from ipsec_tunnel.linux._sockopt import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_HDRINCL,
    IP_PKTINFO,
    IP_RECVTOS,
    IP_TOS,
    IP_TTL,
    IPPROTO_ESP,
    IPV6_DONTFRAG,
    IPV6_HOPLIMIT,
    IPV6_PKTINFO,
    IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    IPV6_V6ONLY,
    Address,
    SocketError,
    attach_drop_all,
    cmsg_int,
    int_cmsg,
    pack_addr,
)
from ipsec_tunnel.linux._transport import DEFAULT_BUFFER, Transport

__all__ = [
    "IPPROTO_ESP",
    "NAT_T_PORT",
    "EspDatagram",
    "RawEsp",
    "SocketError",
    "UdpDatagram",
    "UdpEncap",
]

_IPV4_HEADER = IPV4_HEADER
_IP_DF = 0x4000  # RFC 791: flags bit 1, don't fragment
_IP_MF = 0x2000  # RFC 791: flags bit 2, more fragments


class EspDatagram(NamedTuple):
    """A received ESP packet: outer source and destination (packed), outer TOS/traffic class, ESP bytes."""

    src: bytes
    dst: bytes
    tos: int
    esp: bytes


class UdpDatagram(NamedTuple):
    """A received UDP datagram: outer source (packed) and port, destination (packed), TOS, UDP payload."""

    src: bytes
    sport: int
    dst: bytes
    tos: int
    payload: bytes


class RawEsp(Transport):
    """A raw socket for IP protocol 50 (ESP, RFC 4303), IPv4 or IPv6.

    It receives every ESP packet addressed to this host (restricted by ``bind_addr``/``device``),
    whether or not the kernel also handles ESP itself. IPv4 packets are sent with IP_HDRINCL and an
    outer header built here; IPv6 ones with per-packet control messages. ``send_only`` (with
    ``device``, for ``--nextdev``) drops everything it would receive, so only one socket reads.
    ICMP errors about ESP packets reach every raw ESP socket, whichever sent the packet; they are
    collected (``pop_errors``) when ``recverr`` is on, by default on all but ``send_only`` sockets.
    """

    def __init__(
        self,
        family: int,
        *,
        bind_addr: str | None = None,
        device: str | None = None,
        send_only: bool = False,
        rcvbuf: int | None = DEFAULT_BUFFER,
        sndbuf: int | None = DEFAULT_BUFFER,
        recverr: bool | None = None,
    ) -> None:
        super().__init__(
            family,
            socket.SOCK_RAW,
            IPPROTO_ESP,
            device=device,
            rcvbuf=None if send_only else rcvbuf,
            sndbuf=sndbuf,
            recverr=not send_only if recverr is None else recverr,
        )
        try:
            if send_only:
                attach_drop_all(self._sock)
            if self._v6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
            else:
                self._sock.setsockopt(socket.IPPROTO_IP, IP_HDRINCL, 1)
                self._strip_ip = True
            if bind_addr is not None:
                self._sock.bind(self._sockaddr(bind_addr))
        except BaseException:
            self.close()
            raise
        self.send_only = send_only
        self._ident = int.from_bytes(os.urandom(2), "big")

    def recv(self) -> EspDatagram | None:
        """The next ESP packet with its outer addresses and TOS; None when nothing is queued."""
        while True:
            got = self._recvmsg()
            if got is None:
                return None
            n, anc, addr = got
            if self._v6:
                dst = bytes(16)
                tclass = 0
                for level, kind, data in anc:
                    if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
                        dst = data[:16]
                    elif level == socket.IPPROTO_IPV6 and kind == IPV6_TCLASS:
                        tclass = cmsg_int(data)
                src = socket.inet_pton(socket.AF_INET6, str(addr[0]).split("%", 1)[0])  # type: ignore[index]
                return EspDatagram(src, dst, tclass, bytes(self._buf[:n]))
            buf = self._buf
            if n < 20 or buf[0] >> 4 != 4:
                continue
            ihl = (buf[0] & 0x0F) * 4
            total = int.from_bytes(buf[2:4], "big")
            if ihl < 20 or n < ihl:
                continue
            end = total if ihl <= total <= n else n
            return EspDatagram(bytes(buf[12:16]), bytes(buf[16:20]), buf[1], bytes(buf[ihl:end]))

    def send(
        self,
        dst: Address,
        esp: bytes | bytearray | memoryview,
        *,
        tos: int = 0,
        ttl: int = 64,
        df: bool = False,
        src: Address | None = None,
        oif: str | int | None = None,
    ) -> bool:
        """Send one ESP packet to ``dst``; False if the socket buffer is full (the packet is dropped).

        ``tos`` is the whole outer TOS/traffic-class byte (DSCP and ECN). ``df``: IPv4 sets the DF
        bit, IPv6 forbids local fragmentation; either way EMSGSIZE above the path MTU (the route's
        or one learnt from ICMP). Without ``df`` bigger packets are fragmented: IPv6 by the kernel
        at the path MTU; IPv4 here, above the device MTU (the kernel refuses bigger IP_HDRINCL
        packets), while below it a DF-less packet leaves whole for routers to fragment.
        ``src`` picks the outer source (default: the route's), ``oif`` the outgoing interface
        for this packet (as ``--nextdev``; an index is cheaper than a name).
        """
        if len(esp) > 65535 - 20:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        send = self._send6 if self._v6 else self._send4
        return self._retrying(lambda: send(dst, esp, tos, ttl, df, src, oif))

    def _send6(
        self,
        dst: Address,
        esp: bytes | bytearray | memoryview,
        tos: int,
        ttl: int,
        df: bool,
        src: Address | None,
        oif: str | int | None,
    ) -> None:
        self._set_df(df)  # IPV6_DONTFRAG is ignored on raw sockets other than IPPROTO_RAW
        cmsgs = [
            int_cmsg(socket.IPPROTO_IPV6, IPV6_TCLASS, tos),
            int_cmsg(socket.IPPROTO_IPV6, IPV6_HOPLIMIT, ttl),
        ]
        if src is not None or oif is not None:
            source = pack_addr(self.family, src) if src is not None else bytes(16)
            cmsgs.append((socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(source, self.ifindex(oif))))
        self._sock.sendmsg([esp], cmsgs, 0, self._sockaddr(dst))

    def _send4(
        self,
        dst: Address,
        esp: bytes | bytearray | memoryview,
        tos: int,
        ttl: int,
        df: bool,
        src: Address | None,
        oif: str | int | None,
    ) -> None:
        daddr = pack_addr(self.family, dst)
        saddr = pack_addr(self.family, src) if src is not None else bytes(4)
        address = self._sockaddr(daddr)
        cmsgs = []
        if oif is not None:
            cmsgs.append(
                (socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(self.ifindex(oif), bytes(4), bytes(4)))
            )
        # ID 0 and checksum 0: the kernel fills in both (the ID only without DF, RFC 6864 section 4).
        frag = _IP_DF if df else 0
        header = _IPV4_HEADER.pack(0x45, tos, 20 + len(esp), 0, frag, ttl, IPPROTO_ESP, 0, saddr, daddr)
        try:
            self._sock.sendmsg([header, esp], cmsgs, 0, address)
            return
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE or df:
                raise
        self._send_fragments(daddr, saddr, bytes(esp), tos, ttl, oif, cmsgs)

    def _send_fragments(
        self,
        daddr: bytes,
        saddr: bytes,
        esp: bytes,
        tos: int,
        ttl: int,
        oif: str | int | None,
        cmsgs: list[tuple[int, int, bytes]],
    ) -> None:
        """Send ``esp`` as IPv4 fragments (RFC 791 section 3.2) that fit the route's MTU."""
        mtu = self.path_mtu(daddr, oif)
        if mtu is None:
            raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))
        chunk = (mtu - 20) // 8 * 8
        if chunk < 8:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        self._ident = (self._ident + 1) & 0xFFFF or 1
        address = self._sockaddr(daddr)
        for offset in range(0, len(esp), chunk):
            piece = esp[offset : offset + chunk]
            more = _IP_MF if offset + chunk < len(esp) else 0
            header = _IPV4_HEADER.pack(
                0x45, tos, 20 + len(piece), self._ident, more | offset // 8, ttl, IPPROTO_ESP, 0, saddr, daddr
            )
            self._sock.sendmsg([header, piece], cmsgs, 0, address)


class UdpEncap(Transport):
    """A UDP socket for ESP-in-UDP (RFC 3948), bound to ``port`` (4500; 0 picks a free one).

    IPv6 sockets are IPv6-only, so an IPv4 and an IPv6 socket can share the port.
    The datagrams are moved as they are: non-ESP markers and keepalives are the core's business.
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
        for level, kind, data in anc:
            if self._v6 and level == socket.IPPROTO_IPV6:
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
        return UdpDatagram(src, int(port), dst, tos, bytes(memoryview(self._buf)[:n]) if payload else b"")

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
