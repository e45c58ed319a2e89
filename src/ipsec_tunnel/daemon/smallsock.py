"""The small datagrams' sockets (`--flow-queues`, issue 13): raw ESP's, and how TCP data read from
either keeps its place in its flow.

The kernel hands every raw ESP socket its own copy of each packet; two length filters split them
(`linux.sizebpf`): ESP of at most `steer.SMALL` bytes to the small datagrams' socket, the rest to the
bulk one (ESP-in-UDP: a reuseport program picks one of two sockets by size). A ping read there goes
into its device at once, however much the bulk socket holds. TCP data read there (a burst's short last
segment) goes at once too when the bulk socket holds nothing and is in no turn; else it is held with
its ESP sequence number and goes between the bulk datagrams of its SA sent before it and those sent
after it (`core.inorder`, `place`; a read of several is then opened one by one, each placed by its own
number): before each read of the bulk socket is opened, the small one is read if it holds anything
(what it holds arrived first), and the read is cut where the held data goes (`in_order`,
`in_order_udp`). Datagrams of an SA whose replay window is too narrow to open them ahead
of the bulk go after the bulk socket's backlog, unopened (`DataPlane._narrow`).
"""

from __future__ import annotations

import functools
import logging
import select
from typing import TYPE_CHECKING

from ..core import inorder, steer
from . import lone

if TYPE_CHECKING:
    from ..linux.udp import UdpDatagram
    from .dataplane import DataPlane
    from .kernel import RawEdge

__all__ = ["in_order", "in_order_udp", "look", "place", "place_each", "serve"]

log = logging.getLogger(__name__)

Datagram = inorder.Datagram


def serve(plane: DataPlane, raw: RawEdge) -> None:
    """A turn of the small datagrams' raw socket `raw`: what is not TCP data goes into its device at once;
    TCP data too when the bulk raw socket holds nothing and is in no turn, else it is held to go in that
    socket's order."""
    bulk = plane._bulk_of[raw.fileno()]
    now = plane.clock()
    pending: dict[str, list[bytes]] = {}
    for got in plane.raw_reads(raw):
        plane.engine.sparse_read += len(got)
        if not plane.woken and not (got := _hold_narrow(plane, bulk, got)):
            continue
        backlog = None
        if len(got) > 1:
            backlog = plane._backlog(bulk)
            if backlog:
                # opened one by one, so that TCP data among them is placed by its own datagram's number
                # (a ping then a short segment, with bulk segments sent between them, read together)
                for datagram in got:
                    src, dst, _tos, esp = datagram
                    place(plane, bulk, src, dst, esp, plane._receive_runs([datagram], now), pending, True)
                continue
        one = lone.receive_raw(plane, got, now, not pending)  # daemon.lone
        if one is True:
            continue
        # alone, or nothing to place among (a bulk flow's ACKs, many a read): opened together
        src, dst, _tos, esp = got[0]
        packets = plane._receive_runs(got, now) if one is False else one
        place(plane, bulk, src, dst, esp, packets, pending, backlog)
    if pending:
        plane.deliver(pending)


def place(
    plane: DataPlane,
    bulk: int,
    src: bytes,
    dst: bytes,
    esp: bytes,
    packets: dict[str, list[bytes]],
    pending: dict[str, list[bytes]],
    backlog: bool | None = None,
) -> None:
    """The `packets` one read of a small datagrams' socket gave, `esp` its first datagram (from `src` to
    `dst`): TCP data held for bulk socket `bulk` when it holds datagrams or is in a turn (`backlog`, when
    already looked at for this read), to go where `esp` goes among them; the rest into `pending`."""
    # (one look a read, not one parse a packet)
    if len(esp) >= 8 and (plane._backlog(bulk) if backlog is None else backlog):
        data, rest = steer.split_data(packets)
        if data:
            plane._inorder.setdefault(bulk, inorder.InOrder()).hold(src, dst, esp, data)
            plane.engine.sparse_held += sum(map(len, data.values()))
            packets = rest
    plane._merge(pending, packets, [])


def place_each(
    plane: DataPlane,
    bulk: int,
    d: UdpDatagram,
    payloads: list[bytes],
    now: float,
    pending: dict[str, list[bytes]],
) -> None:
    """`place` for each of `payloads`, one read of a small datagrams' UDP socket (from `d`'s sender) while
    bulk socket `bulk` holds datagrams or is in a turn: each opened alone, so that TCP data among them
    goes where its own datagram goes."""
    for esp in payloads:
        deliver, rejects = plane.engine.receive_batch(
            d.src, d.dst, [esp], now, d.tos, udp=True, sport=d.sport
        )
        place(plane, bulk, d.src, d.dst, esp, deliver, pending, True)
        for r in rejects:
            plane.reject(r)


def look(plane: DataPlane, fd: int) -> inorder.InOrder | None:
    """Before a read of bulk socket `fd` is opened: its small datagrams' socket served if readable (what
    it holds arrived before the read); what is then held for `fd` to go among its datagrams (None:
    nothing, or `fd` has no such socket)."""
    small = plane._small_of.get(fd)
    if small is None:
        return None
    if not plane._in_sparse and plane.readable(small):
        plane._in_sparse = True
        try:
            plane._dispatch([(small, select.EPOLLIN)])
        finally:
            plane._in_sparse = False
    return plane._inorder.get(fd) or None


def _lead(
    plane: DataPlane, fd: int, held: inorder.InOrder, src: bytes, dst: bytes, esp: bytes
) -> list[dict[str, list[bytes]]] | None:
    """The common case, a read that carries the rest of the held packets' flow from its first datagram
    `esp` on: all that is held for bulk socket `fd`, to go before the read whole (`InOrder.lead`)."""
    if len(esp) < 8 or (lead := held.lead(src, dst, esp)) is None:
        return None
    del plane._inorder[fd]
    return lead


def _cut(plane: DataPlane, fd: int, held: inorder.InOrder, got: list[Datagram]) -> list[inorder.Piece]:
    pieces = held.pieces(got)
    if not held:
        del plane._inorder[fd]
    return pieces


def in_order(plane: DataPlane, fd: int, got: list[Datagram]) -> list[inorder.Piece] | None:
    """Before datagrams `got` read from bulk raw socket `fd` are opened (`look`): `got` cut where the TCP
    data held for it goes; None: open `got` as it is."""
    held = look(plane, fd)
    if held is None:
        return None
    src, dst, _tos, esp = got[0]
    if (lead := _lead(plane, fd, held, src, dst, esp)) is not None:
        return [*lead, got]
    return _cut(plane, fd, held, got)


def in_order_udp(
    plane: DataPlane, fd: int, d: UdpDatagram, payloads: list[bytes]
) -> list[list[bytes] | dict[str, list[bytes]]] | None:
    """`in_order` for one read of bulk ESP-in-UDP socket `fd` (`payloads`, from `d`'s sender): the
    pieces, each payloads to open as a read (`DataPlane.open_udp`) or held packets; None: open the read
    as it is."""
    held = look(plane, fd)
    if held is None:
        return None
    if (lead := _lead(plane, fd, held, d.src, d.dst, payloads[0])) is not None:
        return [*lead, payloads]
    pieces = _cut(plane, fd, held, [(d.src, d.dst, d.tos, esp) for esp in payloads])
    return [piece if isinstance(piece, dict) else [esp for *_, esp in piece] for piece in pieces]


def _hold_narrow(plane: DataPlane, bulk: int, got: list[Datagram]) -> list[Datagram]:
    """Of the datagrams read: those of SAs whose replay window is too narrow to open them ahead of bulk
    socket `bulk`'s backlog are kept for after it (`DataPlane.release`); the others."""
    narrow: list[Datagram] = []
    rest: list[Datagram] = []
    key, is_narrow = None, False
    for datagram in got:  # a read is mostly of one SA (a bulk flow's ACKs): looked up once
        src, dst, _tos, esp = datagram
        if key is None or key[0] != esp[:4] or key[1] != src or key[2] != dst:
            key, is_narrow = (esp[:4], src, dst), plane._narrow(src, dst, esp)
        (narrow if is_narrow else rest).append(datagram)
    if not narrow or not plane._backlog(bulk):
        return got
    plane._late.setdefault(bulk, []).append(functools.partial(plane._receive_runs, narrow))
    plane.engine.sparse_held += len(narrow)
    return rest
