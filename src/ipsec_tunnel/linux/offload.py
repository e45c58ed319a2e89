"""Kernel offloads for the data plane: ESP-in-UDP sent as UDP GSO bursts and received as UDP GRO
batches, TUN queues carrying virtio-net headers (TSO/USO super-packets in, coalesced TCP out), the TUN
transmit queue length, and batched raw ESP I/O (recvmmsg/sendmmsg).

Each helper says whether the kernel accepted it, so the caller can fall back to one packet at a time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import cast

from ipsec_tunnel.core.gso import VNET_HDR, Offload
from ipsec_tunnel.core.ip import IPV4_HEADER
from ipsec_tunnel.linux._sockopt import (
    IN6_PKTINFO,
    IN_PKTINFO,
    IP_PKTINFO,
    IP_TOS,
    IP_TTL,
    IPV6_DONTFRAG,
    IPV6_HOPLIMIT,
    IPV6_PKTINFO,
    IPV6_TCLASS,
    MSG_TRUNC,
    Address,
    int_cmsg,
    pack_addr,
)
from ipsec_tunnel.linux.sockets import RawEsp, UdpDatagram, UdpEncap
from ipsec_tunnel.linux.tun import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    VIRTIO_NET_HDR_LEN,
    TunDevice,
    open_tun,
)

__all__ = [
    "MMSG_BATCH",
    "UDP_GRO",
    "UDP_MAX_SEGMENTS",
    "UDP_SEGMENT",
    "OffloadUdp",
    "RawBatch",
    "TunQueue",
    "open_offload_tun",
    "set_txqueuelen",
]

SOL_UDP = 17  # linux/socket.h (IPPROTO_UDP)
UDP_SEGMENT = 103  # linux/udp.h: set the GSO segment size (Linux 4.18)
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams with the segment size in a cmsg (Linux 5.0)
UDP_MAX_SEGMENTS = 64  # linux/udp.h: the most segments one UDP GSO send may carry (128 since 6.10)
GSO_MAX_BYTES = 65535 - 8 - 40  # one UDP datagram's payload at most, under the largest IP header
SIOCSIFTXQLEN = 0x8943  # linux/sockios.h
DEFAULT_TXQUEUELEN = 5000
_VNET = VNET_HDR
_NO_VNET = bytes(VIRTIO_NET_HDR_LEN)
_NONE = Offload()
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_SOCKADDR_IN = struct.Struct("=HH4s")  # struct sockaddr_in: family (native), port, address
_GSO_REFUSED = frozenset({errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_GRO_ANCILLARY = socket.CMSG_SPACE(4) * 4 + 128


def set_txqueuelen(name: str, length: int = DEFAULT_TXQUEUELEN) -> bool:
    """Set device `name`'s transmit queue length (SIOCSIFTXQLEN); False if the kernel refused."""
    ifreq = struct.pack("16si20x", name.encode(), length)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCSIFTXQLEN, ifreq)
        except OSError:
            return False
    return True


class TunQueue:
    """A TUN queue read and written packet by packet, with or without virtio-net headers.

    `read` gives (Offload, packet); with `tso` the kernel may hand over TCP (and UDP, with `uso`)
    super-packets for `core.gso.split`. `write` takes an Offload from `core.gro.coalesce`.
    """

    def __init__(self, dev: TunDevice, *, tso: bool, uso: bool) -> None:
        self.dev = dev
        self.fd = dev.fileno()
        self.vnet = dev.vnet_hdr
        self.tso = self.uso = False
        if self.vnet:
            flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 if tso else 0
            if tso and uso and dev.set_offload(flags | TUN_F_USO4 | TUN_F_USO6):
                self.tso = self.uso = True
            elif dev.set_offload(flags):
                self.tso = tso
            else:
                dev.set_offload(0)
        self._size = 65536 + VIRTIO_NET_HDR_LEN

    @property
    def name(self) -> str:
        """The device's name."""
        return self.dev.name

    def read(self) -> tuple[Offload | None, bytes] | None:
        """The next packet with its offload header (None without vnet headers); None when none is queued."""
        try:
            data = os.read(self.fd, self._size)
        except BlockingIOError:
            return None
        if not self.vnet:
            return None, data
        if len(data) < VIRTIO_NET_HDR_LEN:
            return Offload(), b""
        if data.startswith(_NO_VNET):  # the common case: a plain packet
            return _NONE, data[VIRTIO_NET_HDR_LEN:]
        hdr = Offload._make(_VNET.unpack_from(data))
        return hdr, data[VIRTIO_NET_HDR_LEN:]

    def write(self, packet: bytes, offload: Offload | None = None) -> int:
        """Hand one packet (or a GSO super-packet described by `offload`) to the kernel."""
        if not self.vnet:
            return os.write(self.fd, packet)
        head = (
            _NO_VNET if offload is None or not (offload.flags or offload.gso_type) else _VNET.pack(*offload)
        )
        return os.writev(self.fd, (head, packet))


def open_offload_tun(name: str, *, vnet: bool) -> TunDevice:
    """Open TUN device `name` with virtio-net headers when `vnet` and the kernel allows, else without."""
    if vnet:
        try:
            return open_tun(name, vnet_hdr=True)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    return open_tun(name)


class OffloadUdp(UdpEncap):
    """The ESP-in-UDP socket with UDP GSO for bursts and UDP GRO for receiving, each used only when the
    kernel accepts it (`gso`, `gro` tell which are on) and switched off at the first refusal."""

    _ancillary = _GRO_ANCILLARY  # room for the UDP_GRO segment size as well

    def __init__(self, family: int, port: int, *, gso: bool, gro: bool, buffer: int) -> None:
        super().__init__(family, port, rcvbuf=buffer, sndbuf=buffer)
        self.gso = gso
        self.gro = False
        if gro:
            try:
                self.socket.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self._view = memoryview(self._buf)
        self._cached: tuple[object, ...] = ()
        self._cmsgs: list[tuple[int, int, bytes]] = []

    def _burst_cmsgs(
        self, tos: int, ttl: int, df: bool, src: Address | None, oif: str | int | None
    ) -> list[tuple[int, int, bytes]]:
        """The control messages UdpEncap.send would use (cached while they stay the same)."""
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
        are lost silently, as with UdpEncap.send; the others that fail are returned as (count, error),
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

    def recv_batch(self) -> tuple[UdpDatagram, list[bytes]] | None:
        """The next datagram, or the next GRO batch split back into its datagrams: (the first's
        addresses and TOS, every payload); None when nothing is queued."""
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
        data = bytes(memoryview(self._buf)[:n])  # copied out at once, then sliced: cheaper per datagram
        return self._datagram(n, rest, addr, payload=False), [data[i : i + size] for i in range(0, n, size)]


def _gso_groups(payloads: Sequence[bytes]) -> Iterator[tuple[list[bytes], int]]:
    """Runs of payloads one UDP GSO send can carry: equal sizes, the last may be shorter, at most
    UDP_MAX_SEGMENTS and GSO_MAX_BYTES in all."""
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


MMSG_BATCH = 64  # datagrams per recvmmsg/sendmmsg call
_MMSG_SLOT = 65536  # room for the largest IPv4 datagram (RFC 791 total length: 16 bits)
_MSG_DONTWAIT = 0x40  # sys/socket.h
_IPV4 = IPV4_HEADER
_IP_DF = 0x4000  # RFC 791: don't fragment
_ESP = 50  # IANA protocol number of ESP (RFC 4303)
_MSG_LEN = _Mmsghdr.len.offset
_MSG_FLAGS = _Mmsghdr.hdr.offset + _Msghdr.flags.offset
_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)


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


class RawBatch:
    """Batched I/O on an IPv4 raw ESP socket (`RawEsp` with IP_HDRINCL): many datagrams per system call,
    with the same results as its `recv` and `send` one at a time. `available` is False where libc lacks
    recvmmsg/sendmmsg or the socket is IPv6; callers then use the socket packet by packet."""

    def __init__(self, raw: RawEsp, batch: int = MMSG_BATCH) -> None:
        self.raw = raw
        self.batch = batch
        self._recvmmsg = _libc_call("recvmmsg")
        self._sendmmsg = _libc_call("sendmmsg")
        self.available = raw.family == socket.AF_INET and None not in (self._recvmmsg, self._sendmmsg)
        if not self.available:
            return
        self._fd = raw.fileno()
        self._rx = ctypes.create_string_buffer(batch * _MMSG_SLOT)
        self._tx = ctypes.create_string_buffer(batch * _MMSG_SLOT)
        self._rx_view = memoryview(self._rx).cast("B")
        self._tx_view = memoryview(self._tx).cast("B")
        self._rx_iov = (_Iovec * batch)()
        self._tx_iov = (_Iovec * batch)()
        self._rx_msgs = (_Mmsghdr * batch)()
        self._tx_msgs = (_Mmsghdr * batch)()
        self._rx_hdrs = memoryview(self._rx_msgs).cast("B")
        self._name = ctypes.create_string_buffer(16)  # struct sockaddr_in
        self._name_view = memoryview(self._name).cast("B")
        rx_base, tx_base = ctypes.addressof(self._rx), ctypes.addressof(self._tx)
        for i in range(batch):
            self._rx_iov[i].base = rx_base + i * _MMSG_SLOT
            self._rx_iov[i].len = _MMSG_SLOT
            self._rx_msgs[i].hdr.iov = ctypes.pointer(self._rx_iov[i])
            self._rx_msgs[i].hdr.iovlen = 1
            self._tx_iov[i].base = tx_base + i * _MMSG_SLOT
            self._tx_msgs[i].hdr.iov = ctypes.pointer(self._tx_iov[i])
            self._tx_msgs[i].hdr.iovlen = 1
            self._tx_msgs[i].hdr.name = ctypes.addressof(self._name)
            self._tx_msgs[i].hdr.namelen = 16

    def recv(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        """The queued ESP packets, up to `batch`, as (outer source, outer destination, outer TOS, ESP);
        None when nothing is queued. Raises OSError as `RawEsp.recv` does."""
        raw = self.raw
        assert self._recvmmsg is not None
        for _ in range(256):  # the kernel sets each message's msg_len and msg_flags
            n = self._recvmmsg(self._fd, ctypes.addressof(self._rx_msgs), self.batch, _MSG_DONTWAIT, None)
            if n > 0:
                break
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                raw.poll_errors()
                return None
            if err == errno.EINTR:
                continue
            exc = OSError(err, os.strerror(err))
            if raw._note(exc):  # an ICMP error stored on the socket: the RawEsp.recv way
                continue
            raise exc
        else:
            return None
        out: list[tuple[bytes, bytes, int, bytes]] = []
        view, hdrs = self._rx_view, self._rx_hdrs
        unpack = _U32.unpack_from
        for i in range(n):
            at = i * _MMSG_SIZE
            size = unpack(hdrs, at + _MSG_LEN)[0]
            if unpack(hdrs, at + _MSG_FLAGS)[0] & MSG_TRUNC:  # a plain int: socket's enum is slow
                continue
            off = i * _MMSG_SLOT
            b0 = view[off]
            if size < 20 or b0 >> 4 != 4:
                continue
            ihl = (b0 & 0x0F) * 4
            total = view[off + 2] << 8 | view[off + 3]
            if ihl < 20 or size < ihl:
                continue
            end = total if ihl <= total <= size else size
            out.append(
                (
                    view[off + 12 : off + 16].tobytes(),
                    view[off + 16 : off + 20].tobytes(),
                    view[off + 1],
                    view[off + ihl : off + end].tobytes(),
                )
            )
        return out

    def send(
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
        """Send ESP packets to `dst` in order, as `RawEsp.send` would one by one (a packet the full
        socket buffer refuses is lost silently); the others that fail are returned as (count, error),
        and the rest still goes. Packed addresses."""
        failed: list[tuple[int, OSError]] = []
        if oif is not None:  # IP_PKTINFO per message: left to the one-by-one path
            return self._one_by_one(dst, payloads, 0, len(payloads), tos, ttl, df, src, oif)
        assert self._sendmmsg is not None
        _SOCKADDR_IN.pack_into(self._name_view, 0, socket.AF_INET, 0, dst)
        saddr = src if src is not None else bytes(4)
        frag = _IP_DF if df else 0
        view, iov = self._tx_view, self._tx_iov
        pack_into = _IPV4.pack_into
        i, count = 0, len(payloads)
        while i < count:
            k = 0
            while i + k < count and k < self.batch:
                esp = payloads[i + k]
                size = 20 + len(esp)
                if size > _MMSG_SLOT - 1:
                    break
                off = k * _MMSG_SLOT
                # ID 0 and checksum 0: the kernel fills in both, as in RawEsp.send
                pack_into(view, off, 0x45, tos, size, 0, frag, ttl, _ESP, 0, saddr, dst)
                view[off + 20 : off + size] = esp
                iov[k].len = size
                k += 1
            sent = self._sendmmsg(self._fd, ctypes.addressof(self._tx_msgs), k, 0) if k else 0
            if sent < 0:
                sent = 0
            i += sent
            if sent < k or k == 0:  # the packet that stopped the batch goes the one-by-one way
                failed += self._one_by_one(dst, payloads, i, i + 1, tos, ttl, df, src, oif)
                i += 1
        return failed

    def _one_by_one(
        self,
        dst: bytes,
        payloads: Sequence[bytes],
        start: int,
        stop: int,
        tos: int,
        ttl: int,
        df: bool,
        src: bytes | None,
        oif: str | int | None,
    ) -> list[tuple[int, OSError]]:
        failed: list[tuple[int, OSError]] = []
        for esp in payloads[start:stop]:
            try:
                self.raw.send(dst, esp, tos=tos, ttl=ttl, df=df, src=src, oif=oif)
            except OSError as exc:
                failed.append((1, exc))
        return failed
