"""What the data plane asks of the kernel, as small protocols, and `LinuxKernel`, the real one.

`DataPlane` is given a `Kernel` (by `daemon.main`: `LinuxKernel`; by the tests: the in-memory fakes of
`tests/support/fakes.py`) and opens through it every object it reads and writes: the tunnel devices'
TUN queues (`TunEdge`), the raw ESP sockets (`RawEdge`), the ESP-in-UDP sockets (`UdpEdge`) and the
ICMP error senders (`IcmpEdge`); it also asks it about links (exists, MTUs, local addresses, up).
Each edge has a `fileno` the event loop waits on. The data plane keeps the objects it was given and
calls their bound methods directly: the protocols cost nothing per packet.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from ..core.gso import VnetHeader
from ..linux import link
from ..linux.icmp import IcmpSocket
from ..linux.qdisc import Qdisc
from ..linux.raw import RawEsp
from ..linux.tun import TunQueue, open_offload_tun
from ..linux.udp import UdpDatagram, UdpSocket

__all__ = [
    "SOCKET_BUFFER",
    "IcmpEdge",
    "Kernel",
    "LinuxKernel",
    "RawEdge",
    "TunEdge",
    "UdpEdge",
]

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 << 20  # outer socket buffers (SO_*BUFFORCE): what a TCP window needs; a flood drains fast
LOOPBACK = "127.0.0.1"  # RFC 1122 §3.2.1.3: this host, never on the wire


class TunEdge(Protocol):
    """One queue of a tunnel device: packets routed into the device are read, decrypted ones written."""

    vnet: bool  # packets carry virtio-net headers: `write` may be given a coalesced super-packet

    @property
    def name(self) -> str:
        """The device's name."""
        ...

    def fileno(self) -> int:
        """What the event loop waits on: readable while a packet is queued."""
        ...

    def read(self) -> tuple[VnetHeader | None, bytes] | None:
        """The next packet and its offload header (None without vnet headers); None when none is queued."""
        ...

    def write(self, packet: bytes, offload: VnetHeader | None = None) -> int:
        """Hand a packet (or a super-packet `offload` describes) to the kernel's stack; OSError if refused."""
        ...

    def set_persist(self, persist: bool) -> None:
        """Keep the device when the queue closes, or stop keeping it."""
        ...

    def open_queue(self) -> TunEdge:
        """Another queue of the same device (it was opened `multi_queue`); ValueError if it was not,
        OSError if the kernel refuses."""
        ...

    def renamed(self, name: str) -> None:
        """The device is now called `name`."""
        ...

    def close(self) -> None:
        """Close the queue (the device goes with it unless it persists)."""
        ...


class RawEdge(Protocol):
    """A raw ESP socket (IP protocol 50) of one address family. `stamp`: the kernel's receive time of
    the first packet of the last `recv_batch` (wall-clock seconds; 0.0 when unknown or not asked)."""

    stamp: float

    def fileno(self) -> int:
        """What the event loop waits on."""
        ...

    def recv_batch(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        """Queued ESP packets as (outer source, outer destination, outer TOS, ESP); None when none."""
        ...

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
        """Send ESP packets to `dst` in order; those that failed as (count, error)."""
        ...

    def poll_errors(self) -> int:
        """Drain the socket's error queue (ICMP errors from the path); how many were read. The loop calls
        it when epoll reports EPOLLERR, and only then."""
        ...

    def close(self) -> None:
        """Close the socket."""
        ...


class UdpEdge(Protocol):
    """A UDP socket: ESP-in-UDP (RFC 3948) on the encapsulation port, or IKE on port 500."""

    def fileno(self) -> int:
        """What the event loop waits on."""
        ...

    def recv_batch(self) -> tuple[UdpDatagram, list[bytes]] | None:
        """The next datagrams of one sender: (the first's addresses, port, TOS and arrival time; the
        payloads)."""
        ...

    def send_burst(
        self,
        dst: bytes,
        dport: int,
        payloads: Sequence[bytes],
        *,
        tos: int = 0,
        ttl: int = 64,
        df: bool = False,
        src: bytes | None = None,
        oif: str | int | None = None,
    ) -> list[tuple[int, OSError]]:
        """Send datagrams to `dst`:`dport` in order; those that failed as (count, error)."""
        ...

    def send_one(
        self, dst: bytes, dport: int, payload: bytes, tos: int, ttl: int, df: bool, src: bytes | None,
        oif: str | int | None,
    ) -> OSError | None:  # fmt: skip
        """`send_burst` of one datagram (a packet read alone): the error that lost it, else None."""
        ...

    @property
    def port(self) -> int:
        """The bound UDP port."""
        ...

    def send(self, dst: str, dport: int, payload: bytes, *, src: str | None = None) -> bool:
        """Send one datagram; False if the socket buffer is full."""
        ...

    def poll_errors(self) -> int:
        """Drain the socket's error queue (ICMP errors from the path); how many were read. The loop calls
        it when epoll reports EPOLLERR, and only then."""
        ...

    def close(self) -> None:
        """Close the socket."""
        ...


class IcmpEdge(Protocol):
    """Sends ICMP errors (whole IP packets) to outer senders."""

    def send(self, packet: bytes) -> None:
        """Send `packet` to the destination in its IP header."""
        ...

    def close(self) -> None:
        """Close the socket."""
        ...


class Kernel(Protocol):
    """Everything the data plane and its devices open or ask of the kernel."""

    def open_tun(
        self, name: str, *, vnet: bool, tso: bool, txqueuelen: int, multi_queue: bool = False
    ) -> TunEdge:
        """Create (or attach to) tunnel device `name` and open its queue; `multi_queue`: so that
        `TunEdge.open_queue` can open more, unless the device exists without (made single-queue)."""
        ...

    def open_raw(self, family: int, *, mmsg: bool, timestamps: bool = False) -> RawEdge:
        """The raw ESP socket of IPv`family` (4 or 6); OSError when there is none. `timestamps`: it
        notes the kernel's receive times where it can (`RawEdge.stamp`)."""
        ...

    def open_udp(
        self,
        family: int,
        port: int,
        *,
        gso: bool = False,
        gro: bool = False,
        buffer: int | None = None,
        timestamps: bool = False,
        sparse: bool = False,
    ) -> UdpEdge:
        """A UDP socket of IPv`family` bound to `port`; OSError when it cannot be. `timestamps`: its
        datagrams carry the kernel's receive time where it can (`UdpDatagram.stamp`). `sparse`: it can
        be joined by `open_sparse_udp`."""
        ...

    def open_sparse_udp(self, bulk: UdpEdge, small: int, *, timestamps: bool = False) -> UdpEdge:
        """A second socket on `bulk`'s port (opened `sparse`) that receives the datagrams of at most
        `small` bytes, `bulk` the others; OSError when the kernel refuses."""
        ...

    def open_sparse_raw(self, bulk: RawEdge, small: int, *, timestamps: bool = False) -> RawEdge:
        """A second raw ESP socket of `bulk`'s family that receives the ESP packets of at most `small`
        bytes, `bulk` from then on only the others; OSError when the kernel refuses."""
        ...

    def open_loopback(self, *, gro: bool = False, timestamps: bool = False) -> UdpEdge:
        """A UDP socket of its own on 127.0.0.1 (a free port), opened as `open_udp` opens the
        encapsulation socket but never watched by the loop: the warm rehearsal (`daemon.spin`) sends
        its ESP-in-UDP datagram to itself through it. OSError when there is none (no loopback)."""
        ...

    def open_icmp(self, family: int) -> IcmpEdge:
        """The ICMP error sender of IPv`family`; OSError when there is none."""
        ...

    def exists(self, name: str) -> bool:
        """Whether a network device `name` exists."""
        ...

    def set_mtu(self, name: str, mtu: int) -> None:
        """Set device `name`'s MTU."""
        ...

    def is_local(self, address: str) -> bool:
        """Whether `address` is an address of this host."""
        ...

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        """The MTU of the route to `remote` (through `nextdev`); None when there is none."""
        ...

    def is_up(self, name: str) -> bool:
        """Whether device `name` is up; OSError when it does not exist."""
        ...


class LinuxKernel:
    """`Kernel` on Linux: TUN devices (`linux.tun`), raw ESP (`linux.raw`), UDP (`linux.udp`) and ICMP
    (`linux.icmp`) sockets, link questions (`linux.link`); every new device gets `qdisc`, every outer
    socket buffers of `socket_buffer` bytes."""

    def __init__(self, *, qdisc: Qdisc | None = None, socket_buffer: int = SOCKET_BUFFER) -> None:
        self.qdisc = qdisc or Qdisc()
        self.socket_buffer = socket_buffer

    def open_tun(
        self, name: str, *, vnet: bool, tso: bool, txqueuelen: int, multi_queue: bool = False
    ) -> TunQueue:
        dev = open_offload_tun(name, vnet=vnet, multi_queue=multi_queue)
        try:
            link.no_ipv6_autoconf(name)
            if txqueuelen and not link.set_txqueuelen(name, txqueuelen):
                log.warning("cannot set the transmit queue length of %s", name)
            self.qdisc.apply(name)
            queue = TunQueue(dev, tso=tso, uso=tso)
        except BaseException:
            dev.close()
            raise
        if tso and not queue.tso:
            log.info("%s: the kernel refused TSO on TUN; reading packets one by one", name)
        return queue

    def open_raw(self, family: int, *, mmsg: bool, timestamps: bool = False) -> RawEsp:
        size = self.socket_buffer
        return RawEsp(family, rcvbuf=size, sndbuf=size, mmsg=mmsg, timestamps=timestamps)

    def open_udp(
        self,
        family: int,
        port: int,
        *,
        gso: bool = False,
        gro: bool = False,
        buffer: int | None = None,
        timestamps: bool = False,
        sparse: bool = False,
    ) -> UdpSocket:
        size = self.socket_buffer if buffer is None else buffer
        return UdpSocket(
            family, port, gso=gso, gro=gro, rcvbuf=size, sndbuf=size, timestamps=timestamps, reuse_port=sparse
        )

    def open_sparse_udp(self, bulk: UdpEdge, small: int, *, timestamps: bool = False) -> UdpSocket:
        assert isinstance(bulk, UdpSocket)
        family = 6 if bulk.family == socket.AF_INET6 else 4
        size = self.socket_buffer  # --socket-buffer, as the bulk socket's
        sparse = UdpSocket(
            family, bulk.port, gro=bulk.gro, timestamps=timestamps, reuse_port=True, rcvbuf=size, sndbuf=size
        )
        try:
            bulk.split_small(small)
        except BaseException:
            sparse.close()
            raise
        return sparse

    def open_sparse_raw(self, bulk: RawEdge, small: int, *, timestamps: bool = False) -> RawEsp:
        assert isinstance(bulk, RawEsp)
        size = self.socket_buffer
        # ICMP errors reach every raw ESP socket: the bulk one reads them (recverr), this one never sends
        sparse = RawEsp(bulk.family, rcvbuf=size, sndbuf=None, recverr=False, mmsg=bulk.batched,
                        timestamps=timestamps)  # fmt: skip
        try:
            sparse.keep_sizes(small, smalls=True)
            bulk.keep_sizes(small, smalls=False)
        except BaseException:
            sparse.close()
            raise
        return sparse

    def open_loopback(self, *, gro: bool = False, timestamps: bool = False) -> UdpSocket:
        return UdpSocket(4, 0, LOOPBACK, gro=gro, timestamps=timestamps, rcvbuf=None, sndbuf=None)

    def open_icmp(self, family: int) -> IcmpSocket:
        return IcmpSocket(family)

    def exists(self, name: str) -> bool:
        return link.exists(name)

    def set_mtu(self, name: str, mtu: int) -> None:
        link.set_mtu(name, mtu)

    def is_local(self, address: str) -> bool:
        return link.is_local_address(address)

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        try:
            return link.route_mtu(remote, oif=nextdev)
        except OSError:
            return None

    def is_up(self, name: str) -> bool:
        return link.is_up(name)
