"""In-memory fakes of the daemon's I/O edges, for tests without root: the manager's `Devices`, and the
data plane's whole `Kernel` (TUN queues, raw ESP, UDP and ICMP sockets on a shared in-memory network)."""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from ipsec_tunnel.core import gso, steer
from ipsec_tunnel.core.gso import NO_OFFLOAD, VnetHeader
from ipsec_tunnel.daemon.kernel import RawEdge, UdpEdge
from ipsec_tunnel.daemon.manager import Devices
from ipsec_tunnel.linux.udp import UdpDatagram


class FakeDevices(Devices):
    """Tunnel devices as a set of names, their MTUs recorded, one path MTU for every route (`path`);
    `local`: the addresses of this (fake) host, None for every address."""

    def __init__(self, local: set[str] | None = None, path: int = 1500) -> None:
        self.names: set[str] = set()
        self.mtu: dict[str, int] = {}
        self.path = path
        self.local = local

    def create(self, name: str) -> None:
        self.names.add(name)

    def remove(self, name: str) -> None:
        self.names.discard(name)

    def exists(self, name: str) -> bool:
        return name in self.names

    def set_mtu(self, name: str, mtu: int) -> None:
        self.mtu[name] = mtu

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        return self.path

    def is_local(self, address: str) -> bool:
        return self.local is None or address in self.local


# -- the data plane's kernel, in memory ----------------------------------------------------------------


class Readable:
    """A FIFO whose `fileno` (a pipe's read end) is readable exactly while the FIFO holds something, so
    the data plane's epoll loop serves a fake as it serves a socket or a TUN queue."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.items: collections.deque[Any] = collections.deque()

    def fileno(self) -> int:
        return self._r

    def put(self, item: Any) -> None:
        if not self.items:
            os.write(self._w, b"!")
        self.items.append(item)

    def take(self) -> Any:
        if not self.items:
            return None
        item = self.items.popleft()
        if not self.items:
            os.read(self._r, 1)
        return item

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1


class FakeTun:
    """A tunnel device's queue: `route` is the host's stack sending a packet into the device (the data
    plane reads it), `written` what the data plane wrote (the host's stack received it; one list for
    all the device's queues). A device that is `down` refuses writes as the kernel does (EIO).

    Made `multi_queue`, `open_queue` opens more queues, and the device steers as the TUN driver does: a
    routed packet goes to the queue its flow (`steer.key`, the same both ways) was last written
    through, to the first queue when none was (the driver hashes those); `by_queue` counts the writes
    through each queue."""

    def __init__(self, name: str, *, vnet: bool, multi_queue: bool = False) -> None:
        self._name = name
        self.vnet = vnet
        self.inbox = Readable()
        self.written: list[bytes] = []
        self.down = False
        self.persist = False
        self.closed = False
        self.multi_queue = multi_queue
        self.queues: list[FakeTun] = [self]  # the device's queues, shared by all of them
        self.flows: dict[bytes, int] = {}  # flow -> the queue it was last written through (shared)
        self.by_queue: list[int] = [0]  # writes through each queue (shared)
        self.index = 0

    @property
    def name(self) -> str:
        return self._name

    def fileno(self) -> int:
        return self.inbox.fileno()

    def route(self, packet: bytes, offload: VnetHeader | None = None) -> None:
        queue = self.queues[self.flows.get(steer.key(packet), 0)] if len(self.queues) > 1 else self
        queue.inbox.put((offload if offload is not None else NO_OFFLOAD, packet))

    def open_queue(self) -> FakeTun:
        if not self.multi_queue:
            raise ValueError("the device was opened without multi_queue")
        other = FakeTun(self._name, vnet=self.vnet, multi_queue=True)
        other.written, other.queues, other.flows, other.by_queue = (
            self.written,
            self.queues,
            self.flows,
            self.by_queue,
        )
        other.index = len(self.queues)
        self.queues.append(other)
        self.by_queue.append(0)
        return other

    def read(self) -> tuple[VnetHeader | None, bytes] | None:
        got = self.inbox.take()
        if got is None:
            return None
        offload, packet = got
        return (offload if self.vnet else None), packet

    def write(self, packet: bytes, offload: VnetHeader | None = None) -> int:
        if self.down:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        if len(self.queues) > 1:
            self.flows[steer.key(packet)] = self.index
        self.by_queue[self.index] += 1
        if offload is not None and offload.gso_type:
            self.written += gso.split(packet, offload)  # what the kernel's GRO receive path would hand on
        else:
            self.written.append(packet)
        return len(packet)

    def take(self) -> list[bytes]:
        """What was written since the last call."""
        out = list(self.written)
        self.written.clear()
        return out

    def set_persist(self, persist: bool) -> None:
        self.persist = persist

    def renamed(self, name: str) -> None:
        self._name = name

    def close(self) -> None:
        self.closed = True
        self.inbox.close()


class Datagram(NamedTuple):
    """One datagram on the fake wire: raw ESP (`dport` 0) or UDP."""

    src: bytes
    dst: bytes
    tos: int
    payload: bytes
    sport: int = 0
    dport: int = 0


class FakeNetwork:
    """The wire between fake hosts: each datagram is recorded (`wire`) and handed to the host that has its
    destination address, at its raw ESP socket or its UDP socket bound to the port."""

    def __init__(self) -> None:
        self.hosts: dict[bytes, FakeKernel] = {}
        self.wire: list[Datagram] = []

    def carry(self, d: Datagram) -> bool:
        """Deliver `d` (False: no host or socket there, as a network without a route)."""
        self.wire.append(d)
        host = self.hosts.get(d.dst)
        if host is None:
            return False
        family = 4 if len(d.dst) == 4 else 6
        if d.dport == 0:
            raw = host.raw.get(family)
            if raw is None:
                return False
            sparse_raw = host.sparse_raw.get(family)
            if sparse_raw is not None and len(d.payload) <= sparse_raw.small:
                raw = sparse_raw
            raw.inbox.put((d.src, d.dst, d.tos, d.payload))
            return True
        udp = host.udp.get((family, d.dport))
        if udp is None:
            return False
        sparse = host.sparse_udp.get((family, d.dport))
        if sparse is not None and len(d.payload) <= sparse.small:
            udp = sparse
        udp.inbox.put((UdpDatagram(d.src, d.sport, d.dst, d.tos, b""), [d.payload]))
        return True

    def replay(self, d: Datagram) -> None:
        """Send `d` again, as an attacker who recorded it would."""
        self.carry(d)


def _unreachable(count: int) -> list[tuple[int, OSError]]:
    return [(count, OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH)))] if count else []


class FakeRaw:
    """A raw ESP socket of one family on a `FakeNetwork`."""

    def __init__(self, host: FakeKernel, family: int, batch: int = 64, *, small: int = 0) -> None:
        self.host, self.family, self.batch = host, family, batch
        self.small = small  # a sparse socket (`FakeKernel.open_sparse_raw`): the ESP of at most this
        self.inbox = Readable()
        self.stamp = 0.0  # the receive time the next batches report (tests set it)
        self.errors_polled = 0  # calls of poll_errors
        self.errors_queued = 0  # what the next poll_errors reads (tests set it)

    def fileno(self) -> int:
        return self.inbox.fileno()

    def recv_batch(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        out: list[tuple[bytes, bytes, int, bytes]] = []
        while self.inbox.items and len(out) < self.batch:
            out.append(self.inbox.take())
        return out or None

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
        source = src if src is not None else self.host.address(self.family)
        lost = sum(not self.host.network.carry(Datagram(source, dst, tos, bytes(p))) for p in payloads)
        return _unreachable(lost)

    def poll_errors(self) -> int:
        self.errors_polled += 1
        queued, self.errors_queued = self.errors_queued, 0
        return queued

    def close(self) -> None:
        if self.small and self.host.sparse_raw.get(self.family) is self:
            del self.host.sparse_raw[self.family]
        self.inbox.close()


class FakeUdp:
    """A UDP socket bound to `port` on a `FakeNetwork`; each datagram arrives alone (no GRO)."""

    def __init__(self, host: FakeKernel, family: int, port: int, *, small: int = 0) -> None:
        self.host, self.family, self.port = host, family, port
        self.small = small  # a sparse socket (`FakeKernel.open_sparse_udp`): the datagrams of at most this
        self.inbox = Readable()
        self.errors_polled = 0  # calls of poll_errors
        self.errors_queued = 0  # what the next poll_errors reads (tests set it)
        self.sent_one = 0  # calls of send_one

    def fileno(self) -> int:
        return self.inbox.fileno()

    def recv_batch(self) -> tuple[UdpDatagram, list[bytes]] | None:
        got: tuple[UdpDatagram, list[bytes]] | None = self.inbox.take()
        return got

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
        source = src if src is not None else self.host.address(self.family)
        carry = self.host.network.carry
        lost = sum(not carry(Datagram(source, dst, tos, bytes(p), self.port, dport)) for p in payloads)
        return _unreachable(lost)

    def send_one(
        self, dst: bytes, dport: int, payload: bytes, tos: int, ttl: int, df: bool, src: bytes | None,
        oif: str | int | None,
    ) -> OSError | None:  # fmt: skip
        self.sent_one += 1
        failed = self.send_burst(dst, dport, [payload], tos=tos, ttl=ttl, df=df, src=src, oif=oif)
        return failed[0][1] if failed else None

    def send(self, dst: str, dport: int, payload: bytes, *, src: str | None = None) -> bool:
        source = ipaddress.ip_address(src).packed if src else self.host.address(self.family)
        self.host.network.carry(
            Datagram(source, ipaddress.ip_address(dst).packed, 0, payload, self.port, dport)
        )
        return True

    def poll_errors(self) -> int:
        self.errors_polled += 1
        queued, self.errors_queued = self.errors_queued, 0
        return queued

    def close(self) -> None:
        mine = self.host.sparse_udp if self.small else self.host.udp
        if mine.get((self.family, self.port)) is self:
            del mine[self.family, self.port]
        self.inbox.close()


class FakeIcmp:
    """Records the ICMP errors sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)

    def close(self) -> None:
        pass


class FakeKernel:
    """A host's kernel as `daemon.kernel.Kernel` sees it, in memory: tunnel devices (`tun`), one raw ESP
    socket per family (`raw`), UDP sockets by (family, port) (`udp`), ICMP senders (`icmp`), the
    host's `addresses` on `network`, other devices (`links`, up), one path MTU for every route."""

    def __init__(self, network: FakeNetwork, addresses: Sequence[str], *, path: int = 1500) -> None:
        self.network = network
        self.addresses = [ipaddress.ip_address(a).packed for a in addresses]
        for packed in self.addresses:
            network.hosts[packed] = self
        self.path = path
        self.links: set[str] = {"eth0", "lo"}
        self.up: set[str] = set()
        self.mtu: dict[str, int] = {}
        self.tun: dict[str, FakeTun] = {}
        self.raw: dict[int, FakeRaw] = {}
        self.udp: dict[tuple[int, int], FakeUdp] = {}
        self.sparse_udp: dict[tuple[int, int], FakeUdp] = {}  # small datagrams (`open_sparse_udp`)
        self.sparse_raw: dict[int, FakeRaw] = {}  # small raw ESP (`open_sparse_raw`)
        self.icmp: dict[int, FakeIcmp] = {}

    def address(self, family: int) -> bytes:
        """The host's first address of IPv`family` (the outer source the route would pick)."""
        return next(a for a in self.addresses if len(a) == (4 if family == 4 else 16))

    def open_tun(
        self, name: str, *, vnet: bool, tso: bool, txqueuelen: int, multi_queue: bool = False
    ) -> FakeTun:
        queue = FakeTun(name, vnet=vnet, multi_queue=multi_queue)
        self.tun[name] = queue
        return queue

    def open_raw(self, family: int, *, mmsg: bool, timestamps: bool = False) -> FakeRaw:
        self.raw[family] = FakeRaw(self, family)
        return self.raw[family]

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
    ) -> FakeUdp:
        if (family, port) in self.udp:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        self.udp[family, port] = FakeUdp(self, family, port)
        return self.udp[family, port]

    def open_sparse_udp(self, bulk: UdpEdge, small: int, *, timestamps: bool = False) -> FakeUdp:
        assert isinstance(bulk, FakeUdp)
        sparse = FakeUdp(self, bulk.family, bulk.port, small=small)
        self.sparse_udp[bulk.family, bulk.port] = sparse
        return sparse

    def open_sparse_raw(self, bulk: RawEdge, small: int, *, timestamps: bool = False) -> FakeRaw:
        assert isinstance(bulk, FakeRaw)
        sparse = FakeRaw(self, bulk.family, small=small)
        self.sparse_raw[bulk.family] = sparse
        return sparse

    def open_loopback(self, *, gro: bool = False, timestamps: bool = False) -> FakeUdp:
        raise OSError(errno.ENETUNREACH, "no loopback on a FakeNetwork")

    def open_icmp(self, family: int) -> FakeIcmp:
        self.icmp[family] = FakeIcmp()
        return self.icmp[family]

    def exists(self, name: str) -> bool:
        return name in self.links or (name in self.tun and not self.tun[name].closed)

    def set_mtu(self, name: str, mtu: int) -> None:
        self.mtu[name] = mtu

    def is_local(self, address: str) -> bool:
        return ipaddress.ip_address(address).packed in self.addresses

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        return self.path

    def is_up(self, name: str) -> bool:
        if not self.exists(name):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return name in self.up
