"""The kernel side of ipsecd: tunnel devices and outer sockets, and the loop moving packets between them
through the engine. One event loop serves the data plane and the control socket, so no state is shared
between threads. The devices and sockets are opened through the `Kernel` the data plane is given
(`daemon.kernel`: Linux's, or in-memory fakes in the tests).

Packets move in batches: what one readable event yields (up to BATCH reads) goes through the engine in
one call, leaves as UDP GSO bursts, and arrives in the tunnel device as coalesced TCP super-packets.
Every offload is asked of the kernel and dropped, for good, at its first refusal (`OffloadOptions`)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import select
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ..core import codel, fq, gro, gso, inorder, ringaqm, steer, tcpwin
from ..core.diag import RateLimit
from ..core.drops import Drop
from ..core.engine import Engine
from ..core.framing import native as _native
from ..core.plane import NON_ESP_MARKER, Burst, Deliver, Reject
from ..core.sa import NAT_T_PORT as NAT_T_PORT  # re-exported for daemon.main
from ..core.tunnel import BASE_DEVICE
from ..linux.link import DEFAULT_TXQUEUELEN
from ..linux.raw import MMSG_BATCH
from ..linux.udp import UdpDatagram
from . import lone, readahead, smallsock, txahead
from .clock import steady
from .kernel import IcmpEdge, Kernel, LinuxKernel, RawEdge, TunEdge, UdpEdge
from .manager import Devices
from .spin import Rehearsal, Spin, in_use

log = logging.getLogger(__name__)

BATCH = 64  # reads per readable event before other sources get a turn
CHUNK = 64  # packets sealed between two looks at the sparse flows' sources (with steering)
SPARSE_LIVE = 1.0  # seconds after a sparse flows' source gave a packet during which bulk turns look at them
SPARSE_EVERY = 200e-6  # seconds between two such looks at most
MAX_TURN_YIELD_US = 10_000  # --turn-yield-us upper bound: two and a half ticks of a 250 Hz kernel
BATCH_PACKETS = 256  # packets gathered from one source before they go through the engine (--batch)
IPPROTO_TCP = 6  # IPv4 protocol / IPv6 next header (RFC 9293)
READ_AHEAD = 1 << 20  # bytes an outer socket is read ahead of decryption (--read-ahead; daemon.readahead)
IDLE_EVERY = 0.25  # seconds between two runs of `run`'s idle work at least
IDLE_QUIET = 0.005  # seconds without a packet before it: longer than a LAN round trip, so the idle work
# does not fall between a request sent and its answer (it would wait behind a commit)
TUN_READ_AHEAD = 0  # --tun-read-ahead's default, off: not borne out by the measurements (txahead)


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read now (one look, no waiting)."""
    return bool(select.select([fd], [], [], 0)[0])


_Edge = TypeVar("_Edge", RawEdge, UdpEdge)


@dataclass(frozen=True)
class OffloadOptions:
    """Which kernel offloads the data plane asks for (each falls back by itself when refused)."""

    vnet: bool = True  # virtio-net headers on TUN queues: needed by everything below that touches TUN
    tso: bool = True  # TUN hands over TCP/UDP super-packets (TSO/USO), cut here (core.tso, core.gso)
    coalesce: bool = True  # TCP segments are written into TUN as GRO-style super-packets
    gso: bool = True  # ESP-in-UDP leaves as UDP GSO bursts (UDP_SEGMENT)
    gro: bool = True  # ESP-in-UDP arrives as UDP GRO batches (UDP_GRO)
    txqueuelen: int = DEFAULT_TXQUEUELEN  # the TUN devices' transmit queues, in packets
    mmsg: bool = True  # raw ESP (IPv4) is read and sent many packets per system call (recvmmsg/sendmmsg)

    @classmethod
    def none(cls) -> OffloadOptions:
        """Everything one packet at a time, as before the fast path."""
        return cls(vnet=False, tso=False, coalesce=False, gso=False, gro=False, txqueuelen=0, mmsg=False)


@dataclass(frozen=True)
class AqmOptions:
    """CoDel (RFC 8289) on what the raw ESP and ESP-in-UDP sockets received: target and interval, in
    seconds."""

    target: float = codel.TARGET
    interval: float = codel.INTERVAL


class KernelDevices(Devices):
    """Tunnel devices as the kernel's TUN interfaces (opened through the loop's `Kernel`), each queue
    registered with the event loop."""

    def __init__(self, loop: DataPlane) -> None:
        self.loop = loop
        self.tun: dict[str, TunEdge] = {}  # each device's first queue (its bulk flows', with flow queues)
        self.sparse: dict[str, TunEdge] = {}  # with flow queues: each device's second, for the other flows
        self.fds: set[int] = set()  # the queues' descriptors (DataPlane._answer looks them up per turn)

    def create(self, name: str) -> None:
        if name in self.tun:
            return
        loop, opts = self.loop, self.offloads
        two = loop.steering is not None and name != BASE_DEVICE  # ipsec0 stays single: EBUSY to a 2nd daemon
        queue = loop.kernel.open_tun(
            name, vnet=opts.vnet, tso=opts.tso, txqueuelen=opts.txqueuelen, multi_queue=two
        )
        self.tun[name] = queue
        self.fds.add(queue.fileno())
        loop.watch(queue.fileno(), functools.partial(loop.on_tun, queue))
        if two:
            try:
                sparse = queue.open_queue()
            except ValueError:  # attached to a device made with one queue (by an older ipsecd)
                log.info("%s was made with one queue: no flow queues until it is made again", name)
                return
            except OSError as exc:
                log.info("%s: no second queue (%s): no flow queues", name, exc.strerror or exc)
                return
            self.sparse[name] = sparse
            self.fds.add(sparse.fileno())
            loop.watch_sparse(sparse.fileno(), functools.partial(loop.on_tun, sparse))

    @property
    def offloads(self) -> OffloadOptions:
        return self.loop.offloads

    def remove(self, name: str) -> None:
        for queues in (self.sparse, self.tun):
            queue = queues.pop(name, None)
            if queue is not None:
                self.fds.discard(queue.fileno())
                self.loop.unwatch(queue.fileno())
                queue.close()

    def exists(self, name: str) -> bool:
        return self.loop.kernel.exists(name)

    def set_mtu(self, name: str, mtu: int) -> None:
        self.loop.kernel.set_mtu(name, mtu)

    def is_local(self, address: str) -> bool:
        return self.loop.kernel.is_local(address)

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        return self.loop.kernel.path_mtu(remote, nextdev)

    def gone(self, name: str) -> None:
        """Device `name` was deleted behind our back: stop reading it."""
        self.remove(name)

    def close_all(self) -> None:
        """Remove every device this daemon created."""
        for name in list(self.tun):
            self.remove(name)


class DataPlane:
    """The event loop: TUN devices, raw ESP and ESP-in-UDP sockets, and extra sources (the control server)."""

    def __init__(
        self,
        engine: Engine,
        *,
        kernel: Kernel | None = None,
        udp_port: int = NAT_T_PORT,
        clock: Callable[[], float] = steady,
        offloads: OffloadOptions | None = None,
        spin: float = 0.0,
        warm: float = 0.0,
        warm_loopback: bool = False,
        batch_packets: int = BATCH_PACKETS,
        aqm: AqmOptions | None = None,
        wall: Callable[[], float] = time.time,
        sparse_first: bool = True,
        read_ahead: int = 0,
        tun_read_ahead: int = 0,
        device_aqm: AqmOptions | None = None,
        tcp_queue: int = 0,
        flow_queues: bool = False,
        turn_yield: float = 0.0,
    ) -> None:
        self.engine = engine
        self.kernel: Kernel = kernel if kernel is not None else LinuxKernel()
        self.batch_packets = max(1, batch_packets)  # a small packet waits behind at most this many
        self.sparse_first = sparse_first  # a device batch's sparse flows are sealed first (core.fq)
        self.read_ahead = read_ahead  # bytes read ahead of decryption on the outer sockets (0: off)
        self.tun_read_ahead = tun_read_ahead  # bytes read ahead of encryption on the devices (0: off)
        self.tun_turns: dict[int, txahead.Turn] = {}  # the devices in a read-ahead turn now (daemon.txahead)
        self.spin = spin
        self.warm = warm  # keep the data path warm: rehearse this often while traffic flows (daemon.spin)
        self.warm_loopback = warm_loopback  # ... through a loopback UDP socket of its own (Rehearsal.wire)
        self.monotonic: Callable[[], float] = time.monotonic  # the spin budget's clock
        # while sparse flows are live, a bulk turn yields the CPU at least this often (seconds; 0: never)
        self.turn_yield = turn_yield
        self.yielded = 0.0  # when the loop last gave the CPU up (slept or yielded; `monotonic`)
        self.clock = clock
        self.offloads = offloads or OffloadOptions()
        self.aqm = aqm  # None: no AQM, the sockets' arrival times are not even asked for
        self.wall = wall  # the clock of the kernel's receive timestamps (CLOCK_REALTIME)
        self.codel: dict[int, codel.CoDel] = {}  # per raw ESP and ESP-in-UDP socket (its descriptor)
        self.device_aqm = device_aqm  # CoDel on what the devices' rings held (core.ringaqm); None: off
        self.ring_aqm: dict[int, ringaqm.RingAqm] = {}  # per TUN queue (its descriptor), made at first read
        # --tcp-queue: a local TCP sender's bytes in a device's ring bounded by its ACKs' window (core.tcpwin)
        self.window = tcpwin.WindowBound(tcp_queue) if tcp_queue else None
        # --flow-queues: bulk flows and the others through a device's two queues (core.steer)
        self.steering = steer.Steering() if flow_queues else None
        self._epoll = select.epoll()
        self._sparse = select.epoll()  # the sparse flows' sources too (`serve_sparse`), with steering
        self._sparse_fds: set[int] = set()
        self._in_sparse = False
        self.sparse_at = -math.inf  # when a sparse flows' source last gave a packet (`serve_sparse`)
        self._sparse_next = 0.0  # the next look at them between chunks (`serve_sparse`)
        self.sparse_udp: dict[int, UdpEdge] = {}
        self.sparse_raw: dict[int, RawEdge] = {}
        self._small_of: dict[int, int] = {}  # a bulk socket's descriptor -> its sparse socket's
        # per bulk socket: TCP data its sparse socket opened, to go in its order (core.inorder)
        self._inorder: dict[int, inorder.InOrder] = {}
        self._bulk_of: dict[int, int] = {}  # a sparse socket's descriptor -> its bulk socket's
        # per bulk socket: what its sparse socket read (narrow windows) while it held a backlog, for the
        # end of its first turn that leaves it empty (`release`)
        self._late: dict[int, list[Callable[[float], dict[str, list[bytes]]]]] = {}  # each opens at `now`
        self.busy: set[int] = set()  # the bulk sockets in a turn now
        self._looks: dict[int, select.epoll] = {}  # `readable`'s epoll per outer socket with a sparse one
        self.sealing: set[int] = set()  # the device queues whose turn is sealing in chunks now
        self._handlers: dict[int, Callable[[], None]] = {}  # what to call when a descriptor is readable
        self._drains: dict[int, Callable[[], int]] = {}  # what reads a socket's error queue (EPOLLERR)
        self.devices = KernelDevices(self)
        self.raw: dict[int, RawEdge] = {}
        self.udp: dict[int, UdpEdge] = {}
        self.icmp: dict[int, IcmpEdge] = {}
        self.udp_port = udp_port
        self.running = True
        self.woken = False  # this turn follows one that found nothing: each source reads once (daemon.spin)
        self.failures = 0  # handler exceptions survived (bugs)
        # Called every loop turn with time.monotonic(): runs what is due, returns the next deadline (IKE).
        self.timer: Callable[[float], float | None] | None = None
        self._failure_logged = -1.0
        self._io_errors = RateLimit()  # failed sends and device writes: one log line per cause per 10 s

    # -- sources -------------------------------------------------------------------------------------------

    def watch(self, fd: int, callback: Callable[[], None], errors: Callable[[], int] | None = None) -> None:
        """Call `callback` whenever `fd` is readable; `errors` (a socket's `poll_errors`), when given,
        whenever epoll reports EPOLLERR on it, and `callback` then only if `fd` is readable too."""
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = callback
        if errors is not None:
            self._drains[fd] = errors

    def watch_sparse(self, fd: int, callback: Callable[[], None]) -> None:
        """`watch` a source of sparse flows only (`core.steer`): served first, and between the chunks of
        a bulk source's turn (`serve_sparse`)."""
        self.watch(fd, callback)
        self._sparse.register(fd, select.EPOLLIN)
        self._sparse_fds.add(fd)

    def serve_sparse(self, since: float | None = None) -> None:
        """Serve the sparse flows' sources readable now (one look; not from within one of their turns),
        while sparse flows are live (one gave a packet within SPARSE_LIVE), at most every SPARSE_EVERY;
        and with `turn_yield`, give the CPU to whatever else is runnable (`take_turns`). `since`: a time
        of the calling turn (its start) at which they were not live means they are not (no clock read)."""
        if self._in_sparse or not self._sparse_fds:
            return
        if since is not None and since - self.sparse_at > SPARSE_LIVE:
            return
        now = self.clock()
        if now - self.sparse_at > SPARSE_LIVE:
            return
        if self.turn_yield:
            self.take_turns()
        if now < self._sparse_next:
            return
        self._sparse_next = now + SPARSE_EVERY
        ready = self._sparse.poll(0)
        if ready:
            self._in_sparse = True
            try:
                self._dispatch(ready)
            finally:
                self._in_sparse = False

    def take_turns(self) -> None:
        """Yield the CPU (sched_yield) when the loop has not given it up for `turn_yield` seconds.

        Where a bulk turn looks at the sparse flows (between its chunks, reads and writes), while they
        are live. A process that shares this CPU
        and has a ping to pass on (the application, the other end of the tunnel on the same host) would
        otherwise wait until the kernel's tick takes the CPU from a turn that never sleeps: 4 ms at
        250 Hz. With nothing else runnable the call returns at once."""
        mono = self.monotonic()
        if mono - self.yielded >= self.turn_yield:
            os.sched_yield()
            self.engine.turn_yields += 1  # for ipsecadm stats
            self.yielded = self.monotonic()

    def writable(self, fd: int, on: bool) -> None:
        """Call `fd`'s callback when it is writable (`on`) rather than readable, or back."""
        if fd in self._handlers:
            self._epoll.modify(fd, select.EPOLLOUT if on else select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd` (and forget its device AQM state, if a tunnel device's)."""
        self._drains.pop(fd, None)
        self.ring_aqm.pop(fd, None)
        if fd in self._sparse_fds:
            self._sparse_fds.discard(fd)
            try:
                self._sparse.unregister(fd)
            except (OSError, ValueError):
                pass
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):  # already closed
                pass

    def open_transports(self) -> None:
        """Open the raw ESP and UDP-encapsulation sockets for IPv4 and, where available, IPv6."""
        kernel, opts = self.kernel, self.offloads
        stamps = self.aqm is not None  # the kernel's receive times asked for
        for family in (4, 6):
            try:
                raw = kernel.open_raw(family, mmsg=opts.mmsg, timestamps=stamps)
            except OSError as exc:
                if family == 4:
                    raise
                log.warning("no IPv6 raw ESP socket: %s", exc.strerror)
                continue
            self.raw[family] = raw
            self.watch(raw.fileno(), functools.partial(self.on_raw, raw), raw.poll_errors)
            if self.aqm is not None:
                self.codel[raw.fileno()] = codel.CoDel(self.aqm.target, self.aqm.interval)
            if self.steering is not None:
                small = functools.partial(kernel.open_sparse_raw, raw, steer.SMALL, timestamps=stamps)
                opened = self._sparse_socket("raw ESP", raw.fileno(), self.on_small_raw, small)
                if opened is not None:
                    self.sparse_raw[family] = opened
                    self._small_of[raw.fileno()] = opened.fileno()
            try:
                udp = kernel.open_udp(
                    family, self.udp_port, gso=opts.gso, gro=opts.gro, timestamps=stamps,
                    sparse=self.steering is not None,
                )  # fmt: skip
            except OSError as exc:
                log.warning("no IPv%d ESP-in-UDP socket on port %d: %s", family, self.udp_port, exc.strerror)
            else:
                self.udp[family] = udp
                if self.aqm is not None:
                    self.codel[udp.fileno()] = codel.CoDel(self.aqm.target, self.aqm.interval)
                self.watch(udp.fileno(), functools.partial(self.on_udp, udp), udp.poll_errors)
                if self.steering is not None:
                    small_udp = functools.partial(kernel.open_sparse_udp, udp, steer.SMALL, timestamps=stamps)
                    sparse = self._sparse_socket("ESP-in-UDP", udp.fileno(), self.on_udp, small_udp)
                    if sparse is not None:
                        self.sparse_udp[family] = sparse
                        self._small_of[udp.fileno()] = sparse.fileno()
        self.icmp[4] = kernel.open_icmp(4)
        try:
            self.icmp[6] = kernel.open_icmp(6)
        except OSError:
            pass

    def _sparse_socket(
        self, what: str, bulk: int, serve: Callable[[_Edge], None], open_it: Callable[[], _Edge]
    ) -> _Edge | None:
        """The small datagrams' socket of bulk socket `bulk` (`--flow-queues`), opened by `open_it`,
        watched as a sparse source with `serve`; None when the kernel refuses (logged)."""
        try:
            sparse = open_it()
        except OSError as exc:
            log.info("no sparse %s socket: %s", what, exc.strerror or exc)
            return None
        self._bulk_of[sparse.fileno()] = bulk
        self.watch_sparse(sparse.fileno(), functools.partial(serve, sparse))
        for fd in (bulk, sparse.fileno()):
            self._look(fd)
        return sparse

    def close(self) -> None:
        """Close every socket and remove every device."""
        self.devices.close_all()
        edges: list[RawEdge | UdpEdge | IcmpEdge] = [
            *self.raw.values(),
            *self.udp.values(),
            *self.sparse_udp.values(),
            *self.sparse_raw.values(),
            *self.icmp.values(),
        ]
        for edge in edges:
            edge.close()
        self._epoll.close()
        self._sparse.close()
        for look in self._looks.values():
            look.close()
        self._looks.clear()

    # -- packet handlers -----------------------------------------------------------------------------------

    def on_tun(self, queue: TunEdge) -> None:
        """Encrypt and send what the kernel routed into a tunnel device, up to `batch_packets` packets;
        with `sparse_first`, the packets of the batch's sparse flows first (`core.fq`); with
        `device_aqm`, after CoDel on the ring judged the batch (`judge_ring`). With `tun_read_ahead`,
        `txahead.serve_tun` instead: the ring read further, sealed in chunks (not judged)."""
        steering = self.steering
        if steering is not None:
            if queue.fileno() in self.sealing:
                return  # its turn is sealing what it read: later packets wait for it to end
            if queue.fileno() not in self._sparse_fds:
                self.serve_sparse()  # the sparse flows first (core.steer)
        if self.tun_read_ahead:
            txahead.serve_tun(self, queue)
            return
        now = self.clock()
        name = queue.name
        packets: list[bytes] = []  # read, not yet through the engine
        offloads: dict[int, gso.VnetHeader] = {}  # the offload headers asking for work, by index in packets
        gathered = 0
        drained = False  # the ring was read until empty (EAGAIN)
        for _ in range(1 if self.woken else BATCH):
            try:
                got = queue.read()
            except OSError as exc:
                if exc.errno == errno.EBADFD:  # the device was deleted (ip link del)
                    self.devices.gone(name)
                    return
                log.warning("read from %s failed: %s", name, exc.strerror)
                break
            if got is None:
                drained = True
                break
            offload, packet = got
            if offload is None or not (offload.gso_type or offload.flags):
                gathered += 1
            else:  # a super-packet counts as about as many packets as it has segments
                offloads[len(packets)] = offload
                gathered += len(packet) // offload.gso_size + 1 if offload.gso_size else 1
            packets.append(packet)
            if gathered >= self.batch_packets:
                break
        if self.window is not None:
            for packet in packets:
                self.window.sent(packet)
        if steering is not None and packets:
            if offloads:
                for i in offloads:
                    steering.note(packets[i], now)
                self.engine.bulk_flows = steering.moved
            if queue.fileno() in self._sparse_fds:  # sparse flows are live: bulk turns look at them
                self.sparse_at = now  # (a device's: a sparse socket also carries a bulk flow's ACKs)
        if len(packets) == 1 and not offloads and lone.send(self, name, packets[0], now):
            return  # read alone: the short way (daemon.lone)
        if self.device_aqm is not None and packets:
            packets, offloads = self.judge_ring(queue, packets, offloads, now, drained)
        if self.sparse_first and len(packets) > 1:
            packets, offloads = fq.reorder(packets, offloads)
        if not packets:
            return
        if steering is None or gathered <= CHUNK or now - self.sparse_at > SPARSE_LIVE:
            self.seal_and_send(name, packets, offloads, now)
            return
        fd = queue.fileno()
        self.sealing.add(fd)  # a nested turn (an answer served between chunks) must not pass what is held
        try:
            self._seal_chunks(name, packets, offloads, now)
        finally:
            self.sealing.discard(fd)

    def _seal_chunks(
        self, name: str, packets: list[bytes], offloads: dict[int, gso.VnetHeader], now: float
    ) -> None:
        """`seal_and_send` in chunks of CHUNK packets, the sparse flows' sources served between them."""
        start = counted = 0
        for i, packet in enumerate(packets):
            off = offloads.get(i)
            counted += len(packet) // off.gso_size + 1 if off is not None and off.gso_size else 1
            if counted >= CHUNK or i == len(packets) - 1:
                chunk = {j - start: offloads[j] for j in range(start, i + 1) if j in offloads}
                self.seal_and_send(name, packets[start : i + 1], chunk, now)
                start, counted = i + 1, 0
                if start < len(packets):
                    self.serve_sparse()

    def judge_ring(
        self, queue: TunEdge, packets: list[bytes], offloads: dict[int, gso.VnetHeader], now: float,
        drained: bool,
    ) -> tuple[list[bytes], dict[int, gso.VnetHeader]]:  # fmt: skip
        """`--device-aqm`: CoDel on device `queue`'s ring (`core.ringaqm`) for a turn's `packets`
        (`drained`: read until the ring was empty); the packets to seal and their offload headers, what
        it marked and dropped counted."""
        judge = self.ring_aqm.get(queue.fileno())
        if judge is None:
            assert self.device_aqm is not None
            judge = ringaqm.RingAqm(self.device_aqm.target, self.device_aqm.interval)
            self.ring_aqm[queue.fileno()] = judge
        packets, offloads, marked, dropped = judge.judge(packets, offloads, now, drained)
        if marked:
            self.engine.tx_ce_marked += marked
        if dropped:
            self.engine.unsendable(queue.name, dropped, Drop.DEVICE_AQM)
        return packets, offloads

    def seal_and_send(
        self, name: str, packets: list[bytes], offloads: dict[int, gso.VnetHeader], now: float
    ) -> None:
        """Seal `packets` read from tunnel device `name` (`offloads`: the offload headers asking for
        work, by index) and send the bursts; what the engine hands back to a device (an ICMP error,
        say) is delivered at once."""
        for result in self.engine.send_batch(name, packets, now, offloads):
            if isinstance(result, Burst):
                self.transmit(result)
            else:
                self.deliver_now(result)

    def transmit(self, burst: Burst) -> None:
        """Send ESP datagrams to the remote peer."""
        family = 4 if len(burst.dst) == 4 else 6
        if burst.encap is None:
            raw = self.raw.get(family)
            if raw is None:
                return
            try:
                failed = raw.send_burst(
                    burst.dst, burst.payloads, tos=burst.tos, ttl=burst.ttl, df=burst.df, src=burst.src,
                    oif=burst.nextdev,
                )  # fmt: skip
            except OSError as error:
                failed = [(len(burst.payloads), error)]
            for count, why in failed:
                self._send_failed(burst, count, why)
            return
        udp = self.udp.get(family)
        if udp is None:
            return
        try:
            failed = udp.send_burst(
                burst.dst, burst.encap.dport, burst.payloads, tos=burst.tos, ttl=burst.ttl, df=burst.df,
                src=burst.src, oif=burst.nextdev,
            )  # fmt: skip
        except OSError as error:  # before anything was sent (an unknown --nextdev, say)
            failed = [(len(burst.payloads), error)]
        for count, why in failed:
            self._send_failed(burst, count, why)

    def _send_failed(self, burst: Burst, count: int, exc: OSError) -> None:
        """`count` datagrams of `burst` the kernel refused: dropped (no route, or a send error), and
        logged, at most once per cause every 10 s."""
        unreachable = exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)
        self.engine.unsent(burst, count, Drop.NO_ROUTE if unreachable else Drop.SEND_ERROR)
        held = self._io_errors.allow(("send", exc.errno), self.clock())
        if held is not None:
            dst = socket.inet_ntop(socket.AF_INET if len(burst.dst) == 4 else socket.AF_INET6, burst.dst)
            via = f" via {burst.nextdev}" if burst.nextdev else ""
            more = f"; {held} more failures since the last line" if held else ""
            log.warning("send to %s%s failed: %s (%d packets dropped%s)", dst, via,
                        exc.strerror or exc, count, more)  # fmt: skip

    def _write_failed(self, device: str, count: int, exc: OSError) -> None:
        """`count` decrypted packets device `device` refused (down: EIO): dropped, logged as sends are."""
        self.engine.undelivered(device, count, Drop.DEVICE_DOWN if exc.errno == errno.EIO else Drop.OTHER)
        held = self._io_errors.allow(("write", device, exc.errno), self.clock())
        if held is not None:
            why = "the device is down" if exc.errno == errno.EIO else exc.strerror
            more = f"; {held} more since the last line" if held else ""
            log.info("packet for %s dropped: %s%s", device, why, more)

    def deliver_now(self, d: Deliver) -> None:
        """Write one packet (an ICMP error for the sender) into its tunnel device."""
        self.deliver({d.device: [d.packet]}, counted=False)

    def deliver(self, packets: dict[str, list[bytes]], *, counted: bool = True) -> None:
        """Write inner packets into their tunnel devices, TCP segments coalesced where allowed. Those
        refused are dropped from the received counts (`counted`: they are in them). Between writes, the
        sparse flows are served as between a bulk turn's chunks (`serve_sparse`): the end of a socket's
        turn writes up to megabytes of held TCP segments, each write waking the receiving application."""
        between = bool(self._sparse_fds) and not self._in_sparse and not self.woken  # a woken turn is short
        for device, batch in packets.items():
            queue = self.devices.tun.get(device)
            if queue is None:
                continue
            if self.window is not None:
                bound, before = self.window.delivering, self.window.lowered
                batch = [bound(p) if len(p) <= tcpwin.ACK_MAX else p for p in batch]
                self.engine.tcp_windows_lowered += self.window.lowered - before
            if self.offloads.coalesce and queue.vnet and len(batch) > 1:
                items = gro.coalesce(batch)
            else:
                items = [(gso.NO_OFFLOAD, p) for p in batch]
            sparse = self.devices.sparse.get(device) if self.steering is not None else None
            for offload, packet in items:
                try:
                    if sparse is None:
                        queue.write(packet, offload)
                    else:
                        self.queue_for(queue, sparse, packet).write(packet, offload)
                except OSError as exc:
                    if offload.gso_type and exc.errno == errno.EINVAL:
                        self._refused(queue, packet, offload)
                    elif counted:
                        segments = (
                            -(-(len(packet) - offload.hdr_len) // offload.gso_size) if offload.gso_size else 1
                        )
                        self._write_failed(device, max(1, segments), exc)
                    else:
                        log.debug("write to %s failed: %s", device, exc.strerror)
                if between:
                    self.serve_sparse()

    def queue_for(self, bulk: TunEdge, sparse: TunEdge, packet: bytes) -> TunEdge:
        """The queue to write `packet` through: its flow's (`core.steer`); a super-packet makes it bulk."""
        steering = self.steering
        assert steering is not None
        now = self.clock()
        if len(packet) > fq.QUANTUM:
            steering.note(packet, now)
            self.engine.bulk_flows = steering.moved
            return bulk
        return bulk if steering.queue(packet, now) == steer.BULK else sparse

    def _refused(self, queue: TunEdge, packet: bytes, offload: gso.VnetHeader) -> None:
        """The kernel refused a super-packet: write its segments, and coalesce no more."""
        log.warning("%s refused a coalesced TCP packet: writing packets one by one from now on", queue.name)
        self.offloads = dataclasses.replace(self.offloads, coalesce=False)
        for segment in gso.split(packet, offload):
            try:
                queue.write(segment)
            except OSError as exc:
                self._write_failed(queue.name, 1, exc)

    def reject(self, r: Reject) -> None:
        """Send an ICMP error to an outer sender."""
        sender = self.icmp.get(r.packet[0] >> 4)
        if sender is None:
            return
        try:
            sender.send(r.packet)
        except OSError as exc:
            log.debug("ICMP send failed: %s", exc)

    def _merge(
        self, into: dict[str, list[bytes]], deliver: dict[str, list[bytes]], rejects: list[Reject]
    ) -> None:
        for device, batch in deliver.items():
            if device in into:
                into[device] += batch
            else:
                into[device] = batch
        for r in rejects:
            self.reject(r)

    def _receive_runs(
        self, datagrams: Iterable[tuple[bytes, bytes, int, bytes]], now: float
    ) -> dict[str, list[bytes]]:
        """Decrypt (source, destination, TOS, ESP) datagrams in runs of one outer header: the inner
        packets per device (the ICMP errors are sent)."""
        if isinstance(datagrams, list) and len(datagrams) == 1:  # read alone: the short way (core.lone)
            src, dst, tos, esp = datagrams[0]
            one = self.engine.receive_one(src, dst, esp, now, tos)
            if one is not False:
                return {} if one is True else {one.device: [one.packet]}
        pending: dict[str, list[bytes]] = {}
        receive, merge = self.engine.receive_batch, self._merge
        if _native is not None and isinstance(datagrams, list):  # one outer header, as nearly always (C)
            esps = _native.one_run(datagrams)
            if esps is not None:
                src, dst, tos, _esp = datagrams[0]
                merge(pending, *receive(src, dst, esps, now, tos))
                return pending
        group: list[bytes] = []
        key: tuple[bytes, bytes, int] | None = None
        for src, dst, tos, esp in datagrams:
            if key is None or key[0] != src or key[1] != dst or key[2] != tos:
                if key is not None:
                    merge(pending, *receive(key[0], key[1], group, now, key[2]))
                key, group = (src, dst, tos), []
            group.append(esp)
        if key is not None:
            merge(pending, *receive(key[0], key[1], group, now, key[2]))
        return pending

    def on_raw(self, raw: RawEdge) -> None:
        """Decrypt ESP packets from the raw socket (many per system call where it can), up to
        `batch_packets`; with AQM, CoDel judges each read by how long its first packet waited. With
        `read_ahead`, `readahead.serve_raw` instead; but not in a woken turn, which reads once (nothing to
        go ahead of): an idle packet read alone then takes `daemon.lone`'s direct write."""
        if self.read_ahead and not self.woken:
            readahead.serve_raw(self, raw)
            return
        fd = raw.fileno()
        now = self.clock()
        queue = self.codel.get(fd)
        if self._bulk_of:
            self.busy.add(fd)  # until its turn has delivered what it read (`_backlog`)
        pending: dict[str, list[bytes]] = {}
        for got in self.raw_reads(raw):
            if self._small_of and (pieces := smallsock.in_order(self, fd, got)) is not None:
                for piece in pieces:  # TCP data the sparse socket holds goes between (core.inorder)
                    self._merge(
                        pending, piece if isinstance(piece, dict) else self._receive_runs(piece, now), []
                    )
                continue
            one = lone.receive_raw(self, got, now, queue is None and not pending)  # daemon.lone
            if one is True:
                continue
            deliver = self._receive_runs(got, now) if one is False else one
            if (
                queue is not None
                and raw.stamp
                and deliver
                and self._signal(queue, deliver, raw.stamp, len(got))
            ):
                self._flush(pending)
            self._merge(pending, deliver, [])
            if self._sparse_fds and not self.woken:
                self.serve_sparse(now)
        if pending:
            self.deliver(pending)
        if self._bulk_of:
            self.busy.discard(fd)
            self.release(fd)

    def raw_reads(self, raw: RawEdge) -> Iterator[list[tuple[bytes, bytes, int, bytes]]]:
        """The reads of one turn of raw socket `raw`: up to `batch_packets` datagrams (one read in a woken
        turn), until it is empty or a read fails (logged)."""
        for _ in range(1 if self.woken else max(1, self.batch_packets // MMSG_BATCH)):
            try:
                got = raw.recv_batch()
            except OSError as exc:
                log.debug("raw receive failed: %s", exc)
                return
            if got is None:
                return
            yield got

    def on_small_raw(self, raw: RawEdge) -> None:
        """Decrypt ESP packets from the raw socket of the small ones (`--flow-queues`, `daemon.smallsock`)."""
        smallsock.serve(self, raw)

    def _flush(self, pending: dict[str, list[bytes]]) -> None:
        """Deliver what is pending now, before packets that follow a hole the AQM made: each side of
        the hole stays in sequence, and coalesces the fast way (`gro.coalesce`)."""
        if pending:
            self.deliver(pending)
            pending.clear()

    def _answer(self) -> None:
        """Serve the tunnel devices readable now: the answers to what was just delivered ahead (an echo
        reply) leave before the turn goes on, not after it."""
        devices = self.devices.fds
        ready = [event for event in self._epoll.poll(0) if event[0] in devices]
        if ready:
            self._dispatch(ready)

    def _others_ready(self, fd: int) -> bool:
        """Whether a source other than `fd` has something to read now (one look, no waiting)."""
        return any(ready != fd for ready, _mask in self._epoll.poll(0))

    def _deliver_ahead(self, pending: dict[str, list[bytes]], seen: dict[str, int]) -> bool:
        """Deliver now the pending packets that are not TCP (a ping, DNS, a voice packet), in order; TCP
        segments stay, to be coalesced into the fewest writes (and answered by the fewest ACKs) at the
        end of the turn. `seen` holds, per device, how much of its list was looked at before. Whether
        any packet was delivered."""
        ahead: dict[str, list[bytes]] = {}
        for device, batch in pending.items():
            start = seen.get(device, 0)
            if _native is not None and _native.all_tcp(batch, start):  # as the test below, in C
                seen[device] = len(batch)
                continue
            tail = batch[start:] if start else batch
            tcp = [p for p in tail if len(p) > 9 and p[9 if p[0] >> 4 == 4 else 6] == IPPROTO_TCP]
            if len(tcp) != len(tail):
                ahead[device] = [
                    p for p in tail if len(p) <= 9 or p[9 if p[0] >> 4 == 4 else 6] != IPPROTO_TCP
                ]
                batch[start:] = tcp
            seen[device] = len(batch)
        if ahead:
            self.deliver(ahead)
            return True
        return False

    def _signal(self, queue: codel.CoDel, deliver: dict[str, list[bytes]], stamp: float, count: int) -> bool:
        """CoDel on the inner packets of `count` datagrams the kernel received at `stamp` (its clock,
        `wall`): the TCP packets it picks get ECN CE or are dropped, counted per device. Whether any
        was dropped."""
        due = queue.drops(self.clock(), self.wall() - stamp, count)
        if not due:
            return False
        engine = self.engine
        holes = False
        for device, batch in deliver.items():
            marked, dropped = codel.congest(batch, due)
            if marked or dropped:
                engine.congested(device, marked, dropped)
                holes = holes or dropped > 0
                due -= marked + dropped
                if due <= 0:
                    break
        return holes

    def on_udp(self, udp: UdpEdge) -> None:
        """Decrypt ESP-in-UDP datagrams: up to BATCH reads. After every read, what is not TCP goes into
        its device at once and the tunnel devices then readable (its answer) are served; after every
        `batch_packets` packets, when another source is readable, that source gets its turn first. With
        AQM, CoDel judges each read by how long it waited in the socket buffer (`_signal`). With
        `read_ahead`, `readahead.serve_udp` instead: small datagrams behind the bulk read are opened first;
        but not in a woken turn, which reads once (nothing to go ahead of): an idle datagram read alone
        then takes `daemon.lone`'s direct write."""
        fd = udp.fileno()
        bulk = self._bulk_of.get(fd)  # a sparse socket's bulk socket (core.steer)
        if self.read_ahead and not self.woken and bulk is None:
            readahead.serve_udp(self, udp)
            return
        now = self.clock()
        queue = self.codel.get(fd)
        if bulk is None and self._bulk_of:
            self.busy.add(fd)  # until its turn has delivered what it read (`_backlog`)
        pending: dict[str, list[bytes]] = {}
        seen: dict[str, int] = {}  # per device, how much of its pending list holds TCP only
        gathered = 0
        for _ in range(1 if self.woken else BATCH):
            if gathered >= self.batch_packets:
                if self._others_ready(udp.fileno()):
                    break  # the rest after the other sources' turn
                gathered = 0  # nobody else is waiting: another batch saves a loop turn
            try:
                got = udp.recv_batch()
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                break
            if got is None:
                break
            d, payloads = got
            gathered += len(payloads)
            if bulk is None and self._small_of and (pieces := smallsock.in_order_udp(self, fd, d, payloads)):
                for piece in pieces:  # TCP data the sparse socket holds goes between (core.inorder)
                    self._merge(
                        pending, piece if isinstance(piece, dict) else self.open_udp(d, piece, now), []
                    )
                continue
            if bulk is not None:
                self.engine.sparse_read += len(payloads)
            # (not after an idle poll: nothing waits in the bulk socket for a small datagram to pass)
            if (
                bulk is not None
                and not self.woken
                and self._narrow(d.src, d.dst, payloads[0])
                and self._backlog(bulk)
            ):
                self._late.setdefault(bulk, []).append(functools.partial(self.open_udp, d, payloads))
                self.engine.sparse_held += len(payloads)
                continue
            backlog = None
            if bulk is not None and len(payloads) > 1:
                backlog = self._backlog(bulk)
                if backlog:  # each placed by its own number (`smallsock.place_each`)
                    smallsock.place_each(self, bulk, d, payloads, now, pending)
                    if pending and self._deliver_ahead(pending, seen):  # as below
                        self._answer()
                    continue
            one = lone.receive(self, d, payloads, now, queue is None and not pending)  # daemon.lone
            if one is True:
                continue
            deliver, rejects = one or self.engine.receive_batch(
                d.src, d.dst, payloads, now, d.tos, udp=True, sport=d.sport
            )
            if bulk is not None:  # TCP data held to go in the bulk socket's order, the rest at once
                smallsock.place(self, bulk, d.src, d.dst, payloads[0], deliver, pending, backlog)
                for r in rejects:
                    self.reject(r)
            else:
                if (
                    queue is not None
                    and d.stamp
                    and deliver
                    and self._signal(queue, deliver, d.stamp, len(payloads))
                ):
                    self._flush(pending)
                    seen.clear()
                self._merge(pending, deliver, rejects)
            if pending and self._deliver_ahead(pending, seen):
                self._answer()
            if self._sparse_fds and bulk is None and not self.woken:
                self.serve_sparse(now)
        if pending:
            self.deliver(pending)
        if bulk is None and self._bulk_of:
            self.busy.discard(fd)
            self.release(fd)

    def open_udp(self, d: UdpDatagram, payloads: list[bytes], now: float) -> dict[str, list[bytes]]:
        """The inner packets of one UDP read, per device (the ICMP errors are sent); a datagram read
        alone takes the short way (`core.lone`) where it can."""
        if len(payloads) == 1 and (one := self.engine.receive_one(d.src, d.dst, payloads[0], now, d.tos,
                                                                   d.sport)) is not False:  # fmt: skip
            return {} if one is True else {one.device: [one.packet]}
        deliver, rejects = self.engine.receive_batch(
            d.src, d.dst, payloads, now, d.tos, udp=True, sport=d.sport
        )
        for r in rejects:
            self.reject(r)
        return deliver

    def _narrow(self, src: bytes, dst: bytes, esp: bytes) -> bool:
        """Whether a datagram read from a sparse socket belongs to an SA whose replay window is too
        narrow to open it ahead of the bulk socket's backlog (which could then fall behind the window)."""
        if len(esp) < 8 or esp[:4] == NON_ESP_MARKER:
            return False
        sa = self.engine.sad.get(dst, src, int.from_bytes(esp[:4], "big"))
        return sa is not None and 0 < sa.replay.size < steer.AHEAD_WINDOW

    def readable(self, fd: int) -> bool:
        """Whether `fd` has something to read now (one look, no waiting): through an epoll of its own for
        the outer sockets (`_look`, less than half select's cost), else select."""
        look = self._looks.get(fd)
        return bool(look.poll(0)) if look is not None else _readable(fd)

    def _look(self, fd: int) -> None:
        """An epoll of outer socket `fd` alone, for `readable`: it is asked between the reads of every
        turn (`daemon.smallsock.in_order`)."""
        look = select.epoll()
        look.register(fd, select.EPOLLIN)
        self._looks[fd] = look

    def _backlog(self, bulk: int) -> bool:
        """Whether bulk socket `bulk` holds datagrams, or its turn datagrams not yet delivered (one look)."""
        return bulk in self.busy or self.readable(bulk)

    def release(self, fd: int) -> None:
        """At the end of a turn of bulk socket `fd`, which delivered all it read: what its sparse socket
        kept back goes, in order, if the socket holds nothing more (else after a later turn)."""
        if (fd not in self._late and not self._inorder.get(fd)) or self.readable(fd):
            return
        late = self._late.pop(fd, None)
        held: dict[str, list[bytes]] = {}
        placed = self._inorder.pop(fd, None)
        for packets in placed.take() if placed else ():
            self._merge(held, packets, [])
        now = self.clock()
        for opened in late or ():
            self._merge(held, opened(now), [])
        if held:
            self.deliver(held)

    # -- the loop ------------------------------------------------------------------------------------------

    def periodic(self) -> None:
        """Once a second: time-based lifetimes, the base device's state, events to the log; what a
        sparse socket kept back for a bulk socket that has had no turn since (an error, not data, made
        it readable) goes if that socket is empty."""
        self.engine.tick(self.clock())
        for fd in {*self._late, *self._inorder}:
            self.release(fd)
        try:
            self.engine.tunnels.base_up = self.kernel.is_up(BASE_DEVICE)
        except OSError:
            self.engine.tunnels.base_up = False
        for event in self.engine.take_events():
            log.warning(
                "SA %#x %s -> %s: %s (%s)", event.spi, event.src, event.dst, event.kind.value, event.limit
            )
        self.diagnose()

    def diagnose(self) -> None:
        """NAT-keepalives due, and what the engine has to say: drops (rate-limited), learned ports."""
        for burst in self.engine.keepalives_due(self.clock()):
            self.send_keepalive(burst)
        for line in self.engine.drop_log.take_lines():
            log.info("%s", line)
        nat = self.engine.nat
        for line in nat.notices:
            log.info("%s", line)
        nat.notices.clear()

    def send_keepalive(self, burst: Burst) -> None:
        """Send a NAT-keepalive; a failure is logged as failed sends are, and counted nowhere."""
        udp = self.udp.get(4 if len(burst.dst) == 4 else 6)
        if udp is None or burst.encap is None:
            return
        try:
            failed = udp.send_burst(
                burst.dst, burst.encap.dport, burst.payloads, src=burst.src, oif=burst.nextdev
            )
        except OSError as error:
            failed = [(1, error)]
        for _count, exc in failed:
            if self._io_errors.allow(("keepalive", exc.errno), self.clock()) is not None:
                log.warning(
                    "NAT-keepalive to %s failed: %s",
                    socket.inet_ntop(socket.AF_INET if len(burst.dst) == 4 else socket.AF_INET6, burst.dst),
                    exc.strerror,
                )

    def poll(self, timeout: float = 0.0) -> int:
        """Wait up to `timeout` seconds for ready sources and serve each once; how many were ready (one
        turn of `run`, without its timers: for tests that drive the loop themselves)."""
        events = self._epoll.poll(timeout)
        self._dispatch(events)
        return len(events)

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        """Call the handler of each ready source (for EPOLLERR on a socket with an error queue, read the
        queue, and call the handler only if the socket is readable too or the queue held nothing: the
        error is then the socket's pending one, which a read returns and clears); one that raises is
        counted and logged, not fatal."""
        handlers = self._handlers
        for fd, mask in events:
            handler = handlers.get(fd)  # None: unwatched by an earlier handler of this round
            if handler is None:
                continue
            try:
                if (
                    mask & select.EPOLLERR
                    and (drain := self._drains.get(fd)) is not None
                    and drain()
                    and not mask & select.EPOLLIN
                ):
                    continue  # errors read, nothing else; an error the queue did not hold: the read takes it
                handler()
            except Exception:  # a bug must not take every tunnel down: what it was handling is lost
                self.busy.discard(fd)  # a bulk socket's turn ended (its sparse socket holds no more for it)
                self.failures += 1
                if time.monotonic() - self._failure_logged >= 1.0:
                    self._failure_logged = time.monotonic()
                    log.exception("data plane handler failed (%d so far)", self.failures)

    def run(self, every: Callable[[], None] | None = None, idle: Callable[[], object] | None = None) -> None:
        """Serve until `running` turns false. After each turn that served something the loop keeps
        polling, without sleeping but yielding the CPU, for `spin` seconds (`daemon.spin`): what follows
        within that time is taken without a wake-up. With `warm`, while traffic flows the loop wakes at
        least that often and rehearses the data path when nothing came. `every` runs about once a second;
        `idle` at most every IDLE_EVERY seconds, when a poll found nothing to do and none had for
        IDLE_QUIET seconds (never under a steady load). The loop wakes to nothing that soon only with
        `warm` (the default); else at its longest sleep."""
        last = last_idle = 0.0
        spin = Spin(self.spin, self.monotonic, warm=self.warm)
        rehearse = Rehearsal(self._loopback()) if self.warm else None
        moved: dict[str, int] = {}  # packets per tunnel at the last look (spin.in_use)
        poll, dispatch = self._epoll.poll, self._dispatch
        served = True  # the last turn served something, or ran the once-a-second work
        timer_due = 0.0  # when `timer` is next due (time.monotonic); it also runs after a served turn
        while self.running:
            timeout = spin.timeout()
            timer = self.timer
            if timer is not None:
                now = time.monotonic()
                if served or now >= timer_due:  # only a served turn can have given IKE work or timers
                    due = timer(now)
                    timer_due = math.inf if due is None else due
                if timer_due < math.inf:
                    timeout = min(timeout, max(0.0, timer_due - now))
            events = poll(timeout)
            if not events and not timeout:
                os.sched_yield()  # whatever else is runnable here (the other end, an application) goes first
            self.woken = spin.woken()
            if not events or self.woken:
                self.yielded = self.monotonic()  # the CPU was given up: a yield, or a sleep in the poll
            dispatch(events)
            self.woken = False
            served = bool(events)
            if spin.turn(len(events)) and rehearse is not None:
                rehearse(self.clock())
            mono = time.monotonic()
            if idle is not None and not events and mono - last_idle >= IDLE_EVERY and spin.quiet(IDLE_QUIET):
                last_idle = mono
                idle()
            if mono - last >= 1.0:
                last = mono
                self.periodic()
                if every is not None:
                    every()
                served = True
                if rehearse is not None and (config := in_use(self.engine, moved)) is not None:
                    rehearse.follow(config)  # the algorithms and encapsulation of the busiest tunnel
        if rehearse is not None:
            rehearse.close()

    def _loopback(self) -> UdpEdge | None:
        """The rehearsal's loopback socket with `warm_loopback` (opened as the encapsulation sockets
        are, so it runs the same receive code); None without, or when there is none."""
        if not self.warm_loopback:
            return None
        try:
            return self.kernel.open_loopback(gro=self.offloads.gro, timestamps=self.aqm is not None)
        except OSError as exc:
            log.info("warm rehearsal in memory: no loopback socket (%s)", exc.strerror or exc)
            return None
