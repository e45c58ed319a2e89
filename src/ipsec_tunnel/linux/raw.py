"""The raw ESP socket: IP protocol 50 (RFC 4303), IPv4 or IPv6, and its batched I/O (recvmmsg/sendmmsg).

Owns the socket that carries ESP between the tunnel endpoints without UDP: how it is opened, bound,
read and written, the outer IPv4 header built here (IP_HDRINCL) and parsed on receipt (`_esp_in_ipv4`,
the one parse), the fragments sent when a DF-less packet is too big, and many datagrams per system call
where libc and the family allow (`mmsg`). Non-blocking: ``recv`` returns None when nothing is queued.
Sending returns False when the socket buffer is full and raises OSError for anything else, so the
caller can count a drop reason. Parsing of what is inside (SPI, sequence number) belongs to the core.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from ipsec_tunnel.core.framing import native as _native
from ipsec_tunnel.core.ip import IPV4_HEADER
from ipsec_tunnel.linux import sizebpf
from ipsec_tunnel.linux._sockopt import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_PKTINFO,
    IPV6_HOPLIMIT,
    IPV6_PKTINFO,
    IPV6_RECVPKTINFO,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    MSG_TRUNC,
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    Address,
    SocketError,
    attach_drop_all,
    cmsg_int,
    cmsg_timespec,
    int_cmsg,
    pack_addr,
)
from ipsec_tunnel.linux._transport import DEFAULT_BUFFER, Transport

__all__ = [
    "IPPROTO_ESP",
    "MMSG_BATCH",
    "EspDatagram",
    "RawEsp",
    "SocketError",
]

IPPROTO_ESP = 50  # IANA protocol number of ESP, RFC 4303
IP_HDRINCL = 3  # linux/in.h: the caller builds the IPv4 header
MMSG_BATCH = 64  # datagrams per recvmmsg/sendmmsg call
_IPV4_HEADER = IPV4_HEADER
_IP_DF = 0x4000  # RFC 791: flags bit 1, don't fragment
_IP_MF = 0x2000  # RFC 791: flags bit 2, more fragments


def _esp_in_ipv4(view: memoryview, off: int, size: int) -> tuple[bytes, bytes, int, bytes] | None:
    """The IPv4 packet of `size` bytes at `off` in `view` as (source, destination, TOS, ESP); None when
    it is not IPv4 or its header is cut short. A total length beyond what arrived is ignored (RFC 791)."""
    b0 = view[off]
    if size < 20 or b0 >> 4 != 4:
        return None
    ihl = (b0 & 0x0F) * 4
    total = view[off + 2] << 8 | view[off + 3]
    if ihl < 20 or size < ihl:
        return None
    end = total if ihl <= total <= size else size
    return (
        view[off + 12 : off + 16].tobytes(),
        view[off + 16 : off + 20].tobytes(),
        view[off + 1],
        view[off + ihl : off + end].tobytes(),
    )


class EspDatagram(NamedTuple):
    """A received ESP packet: outer source and destination (packed), outer TOS/traffic class, ESP bytes."""

    src: bytes
    dst: bytes
    tos: int
    esp: bytes


class RawEsp(Transport):
    """A raw socket for IP protocol 50 (ESP, RFC 4303), IPv4 or IPv6.

    It receives every ESP packet addressed to this host (restricted by ``bind_addr``/``device``),
    whether or not the kernel also handles ESP itself. IPv4 packets are sent with IP_HDRINCL and an
    outer header built here; IPv6 ones with per-packet control messages. ``send_only`` (with
    ``device``, for ``--nextdev``) drops everything it would receive, so only one socket reads.
    ICMP errors about ESP packets reach every raw ESP socket, whichever sent the packet; they are
    collected (``pop_errors``) when ``recverr`` is on, by default on all but ``send_only`` sockets.
    ``mmsg``: `recv_batch` and `send_burst` move many datagrams per system call (recvmmsg/sendmmsg,
    IPv4 only, where libc has them; ``batched`` says whether they do), else one at a time.
    ``timestamps``: after `recv_batch`, `stamp` is the kernel's receive time of the batch's first
    packet (SO_TIMESTAMPNS, CLOCK_REALTIME seconds; 0.0 when unknown).
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
        mmsg: bool = False,
        batch: int = MMSG_BATCH,
        timestamps: bool = False,
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
        self.timestamps = False
        self.stamp = 0.0
        if timestamps and not send_only:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.timestamps = True
            except OSError:
                pass
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._view = memoryview(self._buf)
        self.batch = batch
        self._mmsg = _Mmsg(self, batch) if mmsg and not self._v6 and _Mmsg.supported() else None

    def keep_sizes(self, small: int, *, smalls: bool) -> None:
        """Receive only the ESP packets of at most `small` bytes (`smalls`), or only the others: the
        two raw ESP sockets of `--flow-queues` (`linux.sizebpf`). OSError if the kernel refuses."""
        # an IPv4 raw socket's filter sees the IP header too (one without options); IPv6's the ESP only
        sizebpf.keep_sizes(self._sock, small if self._v6 else small + _IPV4_HEADER.size, smalls=smalls)

    @property
    def batched(self) -> bool:
        """Whether `recv_batch` and `send_burst` use recvmmsg/sendmmsg."""
        return self._mmsg is not None

    def recv(self) -> EspDatagram | None:
        """The next ESP packet with its outer addresses and TOS; None when nothing is queued."""
        while True:
            got = self._recvmsg()
            if got is None:
                return None
            n, anc, addr = got
            if self.timestamps:
                stamps = [
                    cmsg_timespec(d) for lv, k, d in anc if lv == socket.SOL_SOCKET and k == SCM_TIMESTAMPNS
                ]
                self.stamp = stamps[0] if stamps else 0.0
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
            got4 = _esp_in_ipv4(self._view, 0, n)
            if got4 is not None:
                return EspDatagram(*got4)

    def recv_batch(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        """Up to `batch` queued ESP packets as (outer source, outer destination, outer TOS, ESP); None when
        nothing is queued. An error after some were read ends the batch early, and is raised otherwise."""
        if self._mmsg is not None:
            return self._mmsg.recv()
        out: list[tuple[bytes, bytes, int, bytes]] = []
        first = 0.0
        for _ in range(self.batch):
            try:
                got = self.recv()
            except OSError:
                if out:
                    break
                raise
            if got is None:
                break
            if not out:
                first = self.stamp
            out.append(got)
        self.stamp = first
        return out or None

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

    def send_burst(
        self,
        dst: bytes,
        payloads: Sequence[bytes],
        *,
        tos: int = 0,
        ttl: int = 64,
        df: bool = False,
        src: bytes | None = None,
        oif: str | int | None = None,
    ) -> list[tuple[int, OSError]]:
        """Send ESP packets to `dst` in order, as `send` would one by one (a packet the full socket buffer
        refuses is lost silently); the others that fail are returned as (count, error), and the rest
        still goes. Packed addresses."""
        if self._mmsg is not None and oif is None:  # IP_PKTINFO per message: left to the one-by-one way
            return self._mmsg.send(dst, payloads, tos, ttl, df, src)
        return self._one_by_one(dst, payloads, tos, ttl, df, src, oif)

    def _one_by_one(
        self,
        dst: bytes,
        payloads: Sequence[bytes],
        tos: int,
        ttl: int,
        df: bool,
        src: bytes | None,
        oif: str | int | None,
    ) -> list[tuple[int, OSError]]:
        failed: list[tuple[int, OSError]] = []
        for esp in payloads:
            try:
                self.send(dst, esp, tos=tos, ttl=ttl, df=df, src=src, oif=oif)
            except OSError as exc:
                failed.append((1, exc))
        return failed

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


# -- batched raw ESP I/O (recvmmsg/sendmmsg, Linux 2.6.33/3.0) -------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))  # struct iovec, sys/uio.h


class _Msghdr(ctypes.Structure):
    _fields_ = (  # struct msghdr, sys/socket.h
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))  # struct mmsghdr, sys/socket.h


_MMSG_SLOT = 65536  # room for the largest IPv4 datagram (RFC 791 total length: 16 bits)
_MSG_DONTWAIT = 0x40  # sys/socket.h
_U32 = struct.Struct("=I")
_SOCKADDR_IN = struct.Struct("=HH4s")  # struct sockaddr_in: family (native), port, address
_MSG_LEN = _Mmsghdr.len.offset
_MSG_FLAGS = _Mmsghdr.hdr.offset + _Msghdr.flags.offset
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_IOVEC_SIZE = ctypes.sizeof(_Iovec)
_IOVEC_LEN = _Iovec.len.offset
_IOVEC_BASE = _Iovec.base.offset


def _libc_call(name: str) -> Callable[..., int] | None:
    """recvmmsg(fd, msgvec, vlen, flags, timeout) or sendmmsg(fd, msgvec, vlen, flags) from libc."""
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    args: list[type] = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    if name == "recvmmsg":
        args.append(ctypes.c_void_p)  # struct timespec *timeout: NULL
    func.restype = ctypes.c_int
    func.argtypes = args
    return cast("Callable[..., int]", func)


class _Mmsg:
    """The buffers and message vectors of `RawEsp`'s batched I/O on an IPv4 socket (IP_HDRINCL)."""

    @staticmethod
    def supported() -> bool:
        """Whether libc has recvmmsg and sendmmsg."""
        return _RECVMMSG is not _missing and _SENDMMSG is not _missing

    def __init__(self, raw: RawEsp, batch: int) -> None:
        self.raw = raw
        self.batch = batch
        self._fd = raw.fileno()
        self._rx = ctypes.create_string_buffer(batch * _MMSG_SLOT)
        self._rx_view = memoryview(self._rx).cast("B")
        self._rx_iov = (_Iovec * batch)()
        # sending: each message is two iovecs, its outer header here and the payload's own bytes
        self._headers = ctypes.create_string_buffer(batch * 20)
        self._headers_view = memoryview(self._headers).cast("B")
        self._tx_iov = (_Iovec * (2 * batch))()
        self._rx_msgs = (_Mmsghdr * batch)()
        self._tx_msgs = (_Mmsghdr * batch)()
        self._rx_hdrs = memoryview(self._rx_msgs).cast("B")
        self._tx_iov_bytes = memoryview(self._tx_iov).cast("B")
        self._name = ctypes.create_string_buffer(16)  # struct sockaddr_in
        self._name_view = memoryview(self._name).cast("B")
        # the first message's control data: its receive time (SO_TIMESTAMPNS), when asked for
        self._control = ctypes.create_string_buffer(_CONTROL_ROOM)
        self._control_view = memoryview(self._control).cast("B")
        if raw.timestamps:
            self._rx_msgs[0].hdr.control = ctypes.addressof(self._control)
        rx_base = ctypes.addressof(self._rx)
        for i in range(batch):
            self._rx_iov[i].base = rx_base + i * _MMSG_SLOT
            self._rx_iov[i].len = _MMSG_SLOT
            self._rx_msgs[i].hdr.iov = ctypes.pointer(self._rx_iov[i])
            self._rx_msgs[i].hdr.iovlen = 1
            self._tx_msgs[i].hdr.iov = ctypes.pointer(self._tx_iov[2 * i])
            self._tx_msgs[i].hdr.iovlen = 2
            self._tx_msgs[i].hdr.name = ctypes.addressof(self._name)
            self._tx_msgs[i].hdr.namelen = 16

    def recv(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        """The queued ESP packets, up to `batch`, as `RawEsp.recv_batch` gives them."""
        raw = self.raw
        first = self._rx_msgs[0].hdr
        for _ in range(256):  # the kernel sets each message's msg_len and msg_flags
            if raw.timestamps:
                first.controllen = _CONTROL_ROOM  # the kernel sets it to what it wrote
            n = _RECVMMSG(self._fd, ctypes.addressof(self._rx_msgs), self.batch, _MSG_DONTWAIT, None)
            if n > 0:
                break
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):  # the error queue is left to poll_errors
                return None
            if err == errno.EINTR:
                continue
            exc = OSError(err, os.strerror(err))
            if raw._note(exc):  # an ICMP error stored on the socket: the RawEsp.recv way
                continue
            raise exc
        else:
            return None
        if raw.timestamps:
            raw.stamp = _first_timestamp(self._control_view, first.controllen)
        view, hdrs = self._rx_view, self._rx_hdrs
        if _native is not None:  # the same parse in C (core/_framing.c)
            parsed = _native.esp_in_ipv4_batch
            return parsed(view, hdrs, n, _MMSG_SLOT, _MMSG_SIZE, _MSG_LEN, _MSG_FLAGS, MSG_TRUNC)
        return _parse_batch(view, hdrs, n)

    def send(
        self, dst: bytes, payloads: Sequence[bytes], tos: int, ttl: int, df: bool, src: bytes | None
    ) -> list[tuple[int, OSError]]:
        """`RawEsp.send_burst` without an outgoing interface, `batch` datagrams per sendmmsg."""
        raw = self.raw
        failed: list[tuple[int, OSError]] = []
        _SOCKADDR_IN.pack_into(self._name_view, 0, socket.AF_INET, 0, dst)
        saddr = src if src is not None else bytes(4)
        frag = _IP_DF if df else 0
        headers, iov = self._headers_view, self._tx_iov
        i, count = 0, len(payloads)
        while i < count:
            # the iovecs point into these payloads: held here until sendmmsg has returned
            held = payloads[i : i + self.batch]
            if _native is not None:  # the same headers and iovecs in C (core/_framing.c)
                k = _native.ipv4_gather(
                    headers, held, 0, self.batch, tos, frag, ttl, saddr, dst, self._tx_iov_bytes, _IOVEC_SIZE,
                    _IOVEC_BASE, _IOVEC_LEN,
                )  # fmt: skip
            else:
                k = _gather(headers, iov, held, 0, self.batch, tos, frag, ttl, saddr, dst)
            sent = _SENDMMSG(self._fd, ctypes.addressof(self._tx_msgs), k, 0) if k else 0
            del held
            if sent < 0:
                sent = 0
            i += sent
            if sent < k or k == 0:  # the packet that stopped the batch goes the one-by-one way
                failed += raw._one_by_one(dst, payloads[i : i + 1], tos, ttl, df, src, None)
                i += 1
        return failed


def _parse_batch(view: memoryview, hdrs: memoryview, n: int) -> list[tuple[bytes, bytes, int, bytes]]:
    """The first `n` messages of a recvmmsg batch (`hdrs`: the struct mmsghdr array, `view`: their
    slots) parsed by `_esp_in_ipv4`, truncated ones (MSG_TRUNC) and what it refuses left out."""
    out: list[tuple[bytes, bytes, int, bytes]] = []
    unpack, parse = _U32.unpack_from, _esp_in_ipv4
    for i in range(n):
        at = i * _MMSG_SIZE
        if unpack(hdrs, at + _MSG_FLAGS)[0] & MSG_TRUNC:  # a plain int: socket's enum is slow
            continue
        got = parse(view, i * _MMSG_SLOT, unpack(hdrs, at + _MSG_LEN)[0])
        if got is not None:
            out.append(got)
    return out


def _gather(
    headers: memoryview, iov: ctypes.Array[_Iovec], payloads: Sequence[bytes], start: int, batch: int,
    tos: int, frag: int, ttl: int, saddr: bytes, dst: bytes,
) -> int:  # fmt: skip
    """A sendmmsg batch of `payloads[start:]`, up to `batch`: message k's outer IPv4 header written at
    k * 20 in `headers`, `iov[2k]` pointing at it and `iov[2k + 1]` at the payload's own bytes (not
    copied: the caller holds the payloads until the send returns); stops before a payload that is not
    bytes or does not fit an IPv4 datagram. How many it wrote."""
    pack_into = _IPV4_HEADER.pack_into
    base = ctypes.addressof(ctypes.c_char.from_buffer(headers))
    k, count = 0, len(payloads)
    while start + k < count and k < batch:
        esp = payloads[start + k]
        if type(esp) is not bytes or len(esp) > 0xFFFF - 20:
            break
        # ID 0 and checksum 0: the kernel fills in both, as in RawEsp.send
        pack_into(headers, 20 * k, 0x45, tos, 20 + len(esp), 0, frag, ttl, IPPROTO_ESP, 0, saddr, dst)
        iov[2 * k].base = base + 20 * k
        iov[2 * k].len = 20
        iov[2 * k + 1].base = ctypes.cast(ctypes.c_char_p(esp), ctypes.c_void_p).value
        iov[2 * k + 1].len = len(esp)
        k += 1
    return k


_CMSGHDR = struct.Struct("@Nii")  # struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type
_CONTROL_ROOM = socket.CMSG_SPACE(16) * 2  # a struct timespec, with room to spare


def _first_timestamp(control: memoryview, length: int) -> float:
    """The SCM_TIMESTAMPNS time among the control messages in `control[:length]` (0.0: none)."""
    at = 0
    while at + _CMSGHDR.size <= length:
        size, level, kind = _CMSGHDR.unpack_from(control, at)
        if size < _CMSGHDR.size or at + size > length:
            break
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
            return cmsg_timespec(bytes(control[at + _CMSGHDR.size : at + size]))
        at += socket.CMSG_SPACE(size - _CMSGHDR.size)
    return 0.0


def _missing(*_args: object) -> int:
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))


_RECVMMSG: Callable[..., int] = _libc_call("recvmmsg") or _missing
_SENDMMSG: Callable[..., int] = _libc_call("sendmmsg") or _missing
