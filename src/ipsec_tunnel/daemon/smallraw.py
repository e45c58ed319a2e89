"""The raw ESP socket of the small datagrams (`--flow-queues`, issue 13).

The kernel hands every raw ESP socket its own copy of each packet; two length filters split them
(`linux.sizebpf`): ESP of at most `steer.SMALL` bytes to this socket, the rest to the bulk one. A ping
read here goes into its device at once, however much the bulk socket holds. TCP data read here (a
burst's short last segment) goes at once too when the bulk socket holds nothing and is in no turn;
else it is held with its ESP sequence number and goes between the bulk datagrams of its SA sent
before it and those sent after it (`core.inorder`): before each read of the bulk socket is opened,
this socket is read if it holds anything (what it holds arrived first), and the read is cut where the
held data goes (`in_order`). Datagrams of an SA whose replay window is too narrow to open them ahead
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
    from .dataplane import DataPlane
    from .kernel import RawEdge

__all__ = ["in_order", "serve"]

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
        one = lone.receive_raw(plane, got, now, not pending)  # daemon.lone
        if one is True:
            continue
        # opened together (a bulk flow's ACKs, many a read); TCP data among them is placed as their
        # first datagram is: exact for the short segment read alone, as one mostly is
        _place(plane, bulk, got[0], plane._receive_runs(got, now) if one is False else one, pending)
    if pending:
        plane.deliver(pending)


def _place(
    plane: DataPlane,
    bulk: int,
    first: Datagram,
    packets: dict[str, list[bytes]],
    pending: dict[str, list[bytes]],
) -> None:
    """The `packets` a read gave, `first` its first datagram: TCP data held for bulk socket `bulk` when it
    holds datagrams or is in a turn, to go where `first` goes among them; the rest into `pending`."""
    if len(first[3]) >= 8 and plane._backlog(bulk):  # (one look a read, not one parse a packet)
        data, rest = steer.split_data(packets)
        if data:
            plane._inorder.setdefault(bulk, inorder.InOrder()).hold(first[0], first[1], first[3], data)
            plane.engine.sparse_held += sum(map(len, data.values()))
            packets = rest
    plane._merge(pending, packets, [])


def in_order(plane: DataPlane, fd: int, got: list[Datagram]) -> list[inorder.Piece] | None:
    """Before datagrams `got` read from bulk raw socket `fd` are opened: its small datagrams' socket
    served if readable (what it holds arrived before `got` was read), then `got` cut where the TCP
    data held for it goes; None: open `got` as it is."""
    small = plane._small_of.get(fd)
    if small is None:
        return None
    if not plane._in_sparse and plane.readable(small):
        plane._in_sparse = True
        try:
            plane._dispatch([(small, select.EPOLLIN)])
        finally:
            plane._in_sparse = False
    held = plane._inorder.get(fd)
    if not held:
        return None
    pieces = held.pieces(got)
    if not held:
        del plane._inorder[fd]
    return pieces


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
