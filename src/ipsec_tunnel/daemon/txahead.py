"""Reading a tunnel device ahead of encryption (`--tun-read-ahead`, issue 13).

Under a bulk TCP transfer the sending daemon's standing queue is the tunnel device's ring: TCP small
queues let hundreds of KB to MBs of TSO super-packets sit there (the qdisc stays empty), and a ping
read behind them waits for every batch before it. A device turn here reads up to `tun_read_ahead`
bytes ahead of what it has sealed; the sparse flows among what is held (`core.fq`) are sealed and
sent first, on their own, then the rest in chunks of `batch_packets` segments. Between chunks the
outer sockets readable then are served (the echo reply waiting in the UDP socket), and the ring is
read again up to the bound, so a ping routed meanwhile passes the bulk still held.

Packets of one flow keep the order read; sequence numbers are given at sealing, so the receiver sees
each SA's numbers in order. A turn holds at most `tun_read_ahead` bytes (plus one packet) and reads at
most twice that in all. A nested turn of a device already in its turn (an outer socket served between
chunks delivers into the device, and `DataPlane._answer` serves the devices then readable) returns at
once: the outer turn reads on.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from typing import TYPE_CHECKING

from ..core import fq, gso
from ..core.plane import Burst
from . import lone

if TYPE_CHECKING:
    from .dataplane import DataPlane
    from .kernel import TunEdge

log = logging.getLogger(__name__)

READS = 4096  # reads of one device in one turn at most
BATCHES = 4  # packets held at most, in --batch units (counted as a batch counts them): small packets
# (a TCP receiver's ACKs) would otherwise hold thousands within the byte bound

_Item = tuple[bytes, "gso.VnetHeader | None", int]  # packet, offload header asking for work, segments


def _segments(packet: bytes, offload: gso.VnetHeader | None) -> int:
    """How many packets `packet` counts for in a batch (a super-packet: about its segments), as
    `DataPlane.on_tun` counts them."""
    if offload is None or not (offload.gso_type or offload.flags):
        return 1
    return len(packet) // offload.gso_size + 1 if offload.gso_size else 1


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
    packets = [item[0] for item in chunk]
    offloads = {i: item[1] for i, item in enumerate(chunk) if item[1] is not None}
    for result in plane.engine.send_batch(name, packets, now, offloads):
        if isinstance(result, Burst):
            plane.transmit(result)
        else:
            plane.deliver_now(result)


def serve_tun(plane: DataPlane, queue: TunEdge) -> None:
    """`DataPlane.on_tun` reading ahead: up to `plane.tun_read_ahead` bytes read and not yet sealed."""
    fd = queue.fileno()
    if fd in plane.tun_turns:
        return  # nested inside this device's own turn, which reads on
    plane.tun_turns.add(fd)
    try:
        _turn(plane, queue)
    finally:
        plane.tun_turns.discard(fd)


def _turn(plane: DataPlane, queue: TunEdge) -> None:
    now = plane.clock()
    name = queue.name
    limit = plane.tun_read_ahead
    most = 1 if plane.woken else READS
    held: deque[_Item] = deque()
    size = 0  # bytes held
    total = 0  # bytes read this turn
    reads = 0
    counted = 0  # packets held, as a batch counts them
    most_held = BATCHES * plane.batch_packets
    reading = True
    fresh = False  # read since the sparse flows were last put first
    while True:
        while reading and size < limit and counted < most_held and total < 2 * limit and reads < most:
            try:
                got = queue.read()
            except OSError as exc:
                if exc.errno == errno.EBADFD:  # the device was deleted (ip link del)
                    plane.devices.gone(name)
                    return
                log.warning("read from %s failed: %s", name, exc.strerror)
                reading = False
                break
            if got is None:
                reading = False
                break
            reads += 1
            offload, packet = got
            work = offload is not None and bool(offload.gso_type or offload.flags)
            segments = _segments(packet, offload)
            held.append((packet, offload if work else None, segments))
            counted += segments
            fresh = True
            size += len(packet)
            total += len(packet)
        if not held:
            return
        count = _sparse_group(held) if fresh and plane.sparse_first and len(held) > 1 else 0
        fresh = False
        chunk: list[_Item] = []
        if count:
            chunk = [held.popleft() for _ in range(count)]
        else:
            gathered = 0
            while held and gathered < plane.batch_packets:
                item = held.popleft()
                chunk.append(item)
                gathered += item[2]
        size -= sum(len(item[0]) for item in chunk)
        counted -= sum(item[2] for item in chunk)
        _seal(plane, name, chunk, now)
        reading = reading and reads < most and total < 2 * limit
        if held or reading:  # a turn that has read all it will and sealed it ends without a look
            _serve_outer(plane)
