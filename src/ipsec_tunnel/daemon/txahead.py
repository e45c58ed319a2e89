"""Reading a tunnel device ahead of encryption (`--tun-read-ahead`, issue 13).

Under a bulk TCP transfer the sending daemon's standing queue is the tunnel device's ring: TCP small
queues do not hold back a local sender (the TUN driver orphans what it queues): under one stream the
ring held up to 1.4-2.8 MB of TSO super-packets (`bench/ring`; the qdisc stays empty), and a ping
read behind them waits for every batch before it. A device turn here reads up to `tun_read_ahead`
bytes ahead of what it has sealed; the sparse flows among what is held (`core.fq`) are sealed and
sent first, on their own, then the rest in chunks of `batch_packets` segments. Between chunks the
outer sockets readable then are served (the echo reply waiting in the UDP socket), and the ring is
read again up to the bound, so a ping routed meanwhile passes the bulk still held.

Packets of one flow keep the order read; sequence numbers are given at sealing, so the receiver sees
each SA's numbers in order. A turn holds at most `tun_read_ahead` bytes (plus one packet) and reads at
most twice that in all (a nested turn may read on within the bounds on what is held). A nested turn of
a device already in its turn (an outer socket served between chunks delivers into the device, and
`DataPlane._answer` serves the devices then readable) reads within those bounds and seals only the
sparse flows among what the turn holds (an echo reply), at once: the bulk it read is sealed by the
outer turn, in order.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core import fq, gso
from . import lone

if TYPE_CHECKING:
    from .dataplane import DataPlane
    from .kernel import TunEdge

log = logging.getLogger(__name__)

READS = 4096  # reads of one device in one turn at most
BATCHES = 4  # packets held at most, in --batch units (counted as a batch counts them): small packets
# (a TCP receiver's ACKs) would otherwise hold thousands within the byte bound

_BULK = bytes(fq.QUANTUM + 1)  # a stand-in bulk packet (`_sparse_lead`)

_Item = tuple[bytes, "gso.VnetHeader | None", int]  # packet, offload header asking for work, segments


def _segments(packet: bytes, work: gso.VnetHeader | None) -> int:
    """How many packets `packet` counts for in a batch (a super-packet: about its segments), as
    `DataPlane.on_tun` counts them; `work`: its offload header when that asks for work, else None."""
    if work is None:
        return 1
    return len(packet) // work.gso_size + 1 if work.gso_size else 1


def _sparse_group(held: deque[_Item]) -> int:
    """Put the sparse flows of `held` first (`fq.sparse_first`, each flow in its order); how many
    packets lead (0: the order stands, nothing to send ahead)."""
    order = fq.sparse_first([item[0] for item in held])
    if order is None:
        return 0
    items = list(held)
    held.clear()
    held.extend(items[i] for i in order)
    # the sparse indices come first in ascending order, then the others in ascending order, one of
    # which is below the last sparse one (else the order would stand): the first step down ends them
    return next(k for k in range(1, len(order)) if order[k] < order[k - 1])


def _serve_outer(plane: DataPlane) -> None:
    """Serve the outer sockets readable now (one look, no waiting): an answer waiting there goes
    before the rest of the bulk is sealed."""
    outer = {raw.fileno() for raw in plane.raw.values()} | {udp.fileno() for udp in plane.udp.values()}
    ready = [event for event in plane._epoll.poll(0) if event[0] in outer]
    if ready:
        plane._dispatch(ready)


def _seal(plane: DataPlane, name: str, chunk: list[_Item], now: float) -> None:
    if len(chunk) == 1 and chunk[0][1] is None and lone.send(plane, name, chunk[0][0], now):
        return  # alone: the short way (daemon.lone)
    offloads = {i: item[1] for i, item in enumerate(chunk) if item[1] is not None}
    plane.seal_and_send(name, [item[0] for item in chunk], offloads, now)


@dataclass(eq=False)
class Turn:
    """A device's read-ahead turn in progress: what it holds and has read."""

    limit: int  # bytes held at most (tun_read_ahead)
    most: int  # reads at most
    most_held: int  # packets held at most, as a batch counts them
    held: deque[_Item] = field(default_factory=deque)
    size: int = 0  # bytes held
    total: int = 0  # bytes read this turn
    reads: int = 0
    counted: int = 0  # packets held, as a batch counts them
    reading: bool = True  # the ring may hold more and the turn's bounds allow reading it
    fresh: bool = False  # read since the sparse flows were last put first

    def take(self, count: int) -> list[_Item]:
        """The first `count` held packets, out of the turn."""
        chunk = [self.held.popleft() for _ in range(count)]
        self.size -= sum(len(item[0]) for item in chunk)
        self.counted -= sum(item[2] for item in chunk)
        return chunk


def serve_tun(plane: DataPlane, queue: TunEdge) -> None:
    """`DataPlane.on_tun` reading ahead: up to `plane.tun_read_ahead` bytes read and not yet sealed. A
    turn of a device already in its turn (`_nested`) seals only the sparse flows it finds."""
    fd = queue.fileno()
    turn = plane.tun_turns.get(fd)
    if turn is not None:
        _nested(plane, queue, turn)
        return
    limit = plane.tun_read_ahead
    turn = Turn(limit, 1 if plane.woken else READS, BATCHES * plane.batch_packets)
    plane.tun_turns[fd] = turn
    try:
        _turn(plane, queue, turn)
    finally:
        del plane.tun_turns[fd]


def _read(plane: DataPlane, queue: TunEdge, turn: Turn, bytes_: int, packets: int, reads: int) -> bool:
    """Read the ring into `turn.held` while it holds less than `bytes_` and `packets` (as a batch counts
    them) and fewer than `reads` reads were made; False when the device is gone."""
    while turn.size < bytes_ and turn.counted < packets and reads > 0:
        try:
            got = queue.read()
        except OSError as exc:
            if exc.errno == errno.EBADFD:  # the device was deleted (ip link del)
                plane.devices.gone(queue.name)
                return False
            log.warning("read from %s failed: %s", queue.name, exc.strerror)
            turn.reading = False
            return True
        if got is None:
            turn.reading = False
            return True
        reads -= 1
        turn.reads += 1
        offload, packet = got
        if plane.window is not None:
            plane.window.sent(packet)
        work = offload if offload is not None and (offload.gso_type or offload.flags) else None
        segments = _segments(packet, work)
        turn.held.append((packet, work, segments))
        turn.counted += segments
        turn.fresh = True
        turn.size += len(packet)
        turn.total += len(packet)
    return True


def _nested(plane: DataPlane, queue: TunEdge, turn: Turn) -> None:
    """A turn of a device whose own turn is serving the outer sockets between chunks (an answer
    delivered there, `DataPlane._answer` finding the device readable): read the ring as far as the
    turn's bounds on what it holds allow (at most a batch of reads), and seal at once the packets of
    the sparse flows among all held (an echo reply), which would otherwise wait for the rest of the
    outer socket's turn. The bulk stays held, in order, for the outer turn."""
    reading = turn.reading  # the outer turn's own decision stands
    gone = not _read(plane, queue, turn, turn.limit, turn.most_held, plane.batch_packets)
    turn.reading = reading
    if gone:
        return
    if not turn.fresh or not plane.sparse_first:
        return
    turn.fresh = False
    count = _sparse_lead(turn.held)
    if count:
        _seal(plane, queue.name, turn.take(count), plane.clock())


def _sparse_lead(held: deque[_Item]) -> int:
    """Put the packets of the sparse flows of `held` first (each flow in its order); how many lead (0:
    none is sparse; all of them when all are)."""
    if len(held) == 1:
        return 1 if len(held[0][0]) <= fq.QUANTUM else 0
    count = _sparse_group(held)
    if count:
        return count
    # the order stood: no sparse flow, only sparse flows, or the sparse ones already first. With a
    # bulk packet put in front (a flow of its own, more than a quantum), the sparse ones, if any, are
    # not first: as many lead as come before that packet in the order given
    order = fq.sparse_first([_BULK, *(item[0] for item in held)])
    return 0 if order is None else order.index(0)


def _turn(plane: DataPlane, queue: TunEdge, turn: Turn) -> None:
    now = plane.clock()
    name = queue.name
    limit = turn.limit
    held = turn.held
    while True:
        if turn.reading and turn.total < 2 * limit and turn.reads < turn.most:
            most_bytes = min(limit, turn.size + 2 * limit - turn.total)  # held, and read in the turn
            if not _read(plane, queue, turn, most_bytes, turn.most_held, turn.most - turn.reads):
                return
        if not held:
            return
        count = _sparse_group(held) if turn.fresh and plane.sparse_first and len(held) > 1 else 0
        turn.fresh = False
        if count:
            chunk = turn.take(count)
        else:
            gathered = taken = 0
            for item in held:
                if gathered >= plane.batch_packets:
                    break
                gathered += item[2]
                taken += 1
            chunk = turn.take(taken)
        _seal(plane, name, chunk, now)
        turn.reading = turn.reading and turn.reads < turn.most and turn.total < 2 * limit
        if held or turn.reading:  # a turn that has read all it will and sealed it ends without a look
            _serve_outer(plane)
