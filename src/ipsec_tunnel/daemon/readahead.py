"""Reading the outer sockets ahead of decryption (`--read-ahead`, issue 13).

Under a bulk transfer the standing queue is in the receiving socket: a ping's datagram waits there until
everything before it is decrypted. Reading costs a fraction of opening, so a socket's turn reads up to
`read_ahead` bytes ahead of what it has opened; a small datagram found behind the bulk it read
(`SMALL` bytes at most, and over UDP alone in its read: not part of a UDP GRO batch) is opened at once,
what it carries that is not TCP is delivered and its answer served (`DataPlane._answer`); then the bulk
is opened, in the order read, one read at a time. Inner TCP packets keep the order they were read in,
whichever datagram was opened first.

Opening a later sequence number first moves the replay window's top (RFC 4303 §3.4.3). A small datagram
is opened ahead only when the oldest datagram of its SA still waiting stays inside the SA's window, so
the bulk behind is never refused as too old (else it waits for its turn, as without read-ahead); the
bulk is then still opened many at a time (`ReplayWindow.check_run`). A forged datagram read ahead fails
its ICV and moves nothing, as any other.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..core import inorder
from ..core.framing import native as _native
from ..core.replay import SEQ32
from ..linux.udp import UdpDatagram
from . import smallsock

if TYPE_CHECKING:
    from ..core.sad import SADatabase
    from .dataplane import DataPlane
    from .kernel import RawEdge, UdpEdge

log = logging.getLogger(__name__)

SMALL = 512  # bytes of ESP: a ping, a keystroke, a DNS query, a voice packet; not a full-sized segment
READS = 64  # reads (UDP GRO batches, recvmmsg batches) in one turn at most, as without read-ahead
JOIN = 64  # raw ESP datagrams of consecutive reads opened together at most: one full recvmmsg batch
IPPROTO_TCP = 6  # IPv4 protocol / IPv6 next header (RFC 9293)
_SPI_SEQ = struct.Struct("!II")  # RFC 4303 §2: an ESP packet opens with its SPI and sequence number
_NON_ESP = bytes(4)  # RFC 3948 §2.2: the non-ESP marker (IKE) where an SPI would be
_Got = TypeVar("_Got")  # what one read gives: a UDP read, or a recvmmsg batch of raw ESP


@dataclass(eq=False, slots=True)  # one a read: slots make it 40% cheaper to build
class _Read:
    """What one read gave, waiting to be opened: the datagrams (a UDP read: `udp` and its payloads; raw
    ESP: `raw`), or, for a small datagram opened ahead, its inner TCP packets (`opened`), kept for
    their place in the order read."""

    udp: UdpDatagram | None = None
    payloads: list[bytes] = field(default_factory=list)
    raw: list[tuple[bytes, bytes, int, bytes]] = field(default_factory=list)
    opened: dict[str, list[bytes]] | None = None
    size: int = 0  # bytes
    big: int = 0  # datagrams (or UDP GRO batches) longer than SMALL: the bulk a small one may go ahead of
    stamp: float = 0.0  # when the kernel received the read (AQM)
    small: bool = False  # a small datagram that could not go ahead yet (the replay window)


def _is_tcp(p: bytes) -> bool:
    return len(p) > 9 and p[9 if p[0] >> 4 == 4 else 6] == IPPROTO_TCP


def _split(deliver: dict[str, list[bytes]]) -> tuple[dict[str, list[bytes]], dict[str, list[bytes]]]:
    """(what is not TCP, the TCP packets), per device, each in order."""
    ahead: dict[str, list[bytes]] = {}
    tcp: dict[str, list[bytes]] = {}
    for device, batch in deliver.items():
        rest = [p for p in batch if not _is_tcp(p)]
        if rest:
            ahead[device] = rest
        if len(rest) != len(batch):
            tcp[device] = [p for p in batch if _is_tcp(p)]
    return ahead, tcp


def _follows(last: tuple[bytes, bytes, int, bytes], first: tuple[bytes, bytes, int, bytes]) -> bool:
    """Whether raw ESP datagram `first` is the next of `last`'s SA: the same outer header and SPI, the
    next sequence number (RFC 4303 §2.2; the low 32 bits, so a wrap with ESN joins nothing)."""
    if len(last[3]) < 8 or len(first[3]) < 8:
        return False  # cut short: opened apart, and dropped as malformed
    spi, seq = _SPI_SEQ.unpack_from(last[3])
    next_spi, next_seq = _SPI_SEQ.unpack_from(first[3])
    return (
        next_seq == seq + 1
        and next_spi == spi
        and last[0] == first[0]
        and last[1] == first[1]
        and last[2] == first[2]
    )


def _first_key(entry: _Read) -> tuple[bytes, bytes, bytes] | None:
    """(source, destination, ESP) of the oldest datagram of `entry` still to open."""
    if entry.opened is not None:
        return None
    if entry.udp is not None:
        return (entry.udp.src, entry.udp.dst, entry.payloads[0]) if entry.payloads else None
    return (entry.raw[0][0], entry.raw[0][1], entry.raw[0][3]) if entry.raw else None


def _before(sorted_positions: list[int], start: int) -> int:
    """How many of `sorted_positions` are below `start`."""
    return bisect.bisect_left(sorted_positions, start)


def inside(sad: SADatabase, waiting: deque[_Read], src: bytes, dst: bytes, esp: bytes) -> bool:
    """Whether opening `esp` now keeps the oldest waiting datagram of its SA inside the SA's replay
    window (RFC 4303 §3.4.3): the sequence numbers from it to `esp`'s span fewer than the window."""
    if len(esp) < 8 or esp[:4] == _NON_ESP:
        return True
    spi = esp[:4]
    for entry in waiting:
        key = _first_key(entry)
        if key is not None and key[0] == src and key[1] == dst and key[2][:4] == spi and len(key[2]) >= 8:
            oldest = int.from_bytes(key[2][4:8], "big")
            break
    else:
        return True  # nothing of its SA waits
    sa = sad.get(dst, src, int.from_bytes(spi, "big"))
    if sa is None or not sa.replay.size:
        return True  # dropped anyway, or no window
    ahead = (int.from_bytes(esp[4:8], "big") - oldest) % SEQ32
    return ahead < sa.replay.size or ahead >= SEQ32 // 2  # ahead by less than the window, or behind


class _Turn:
    """One socket's turn: what was read and not yet opened, and what is opened and pending delivery."""

    def __init__(self, plane: DataPlane, fd: int) -> None:
        self.plane = plane
        self.fd = fd
        self.now = plane.clock()
        self.waiting: deque[_Read] = deque()
        self.held = 0  # bytes read, not yet opened
        self.big = 0  # of which datagrams longer than SMALL (UDP: reads)
        self.smalls = 0  # small datagrams waiting because the window did not allow them ahead yet
        self.pending: dict[str, list[bytes]] = {}
        self.seen: dict[str, int] = {}  # per device, how much of its pending list holds TCP only
        self.reads = 0
        self.most = 1 if plane.woken else READS
        self.reading = True
        self.gathered = 0
        self.codel = plane.codel.get(fd)

    def ahead(self, deliver: dict[str, list[bytes]]) -> bool:
        """A small datagram's inner packets, opened ahead: what is not TCP delivered now, TCP kept at
        its place in the order read. Whether anything was delivered."""
        now_out, tcp = _split(deliver)
        if tcp:
            if self.waiting:
                self.waiting.append(_Read(opened=tcp))
            else:
                self.plane._merge(self.pending, tcp, [])
        if now_out:
            self.plane.deliver(now_out)
            return True
        return False

    def opened(self, deliver: dict[str, list[bytes]], stamp: float, count: int) -> None:
        """A read's inner packets, opened in turn: CoDel (with AQM), then pending; what is not TCP goes
        at once and the answers are served (as `DataPlane.on_udp`)."""
        plane = self.plane
        if self.codel is not None and stamp and deliver and plane._signal(self.codel, deliver, stamp, count):
            plane._flush(self.pending)
            self.seen.clear()
        plane._merge(self.pending, deliver, [])
        if self.pending and plane._deliver_ahead(self.pending, self.seen):
            plane._answer()
        self.gathered += count
        if self.gathered >= plane.batch_packets:
            if plane._others_ready(self.fd):
                self.reading = False  # open what was read, then the other sources get their turn
            else:
                self.gathered = 0

    def wait(self, entry: _Read) -> None:
        """Keep `entry`, read, to be opened in turn."""
        self.waiting.append(entry)
        self.held += entry.size
        self.big += entry.big
        self.smalls += entry.small

    def now_inside(self) -> list[_Read]:
        """The small datagrams kept waiting that the window now lets go ahead (left in their place:
        `ahead_in_place` once opened)."""
        sad = self.plane.engine.sad
        ready = []
        for entry in self.waiting:
            if entry.small:
                src, dst, esp = _first_key(entry) or (b"", b"", b"")
                if inside(sad, self.waiting, src, dst, esp):
                    ready.append(entry)
        return ready

    def ahead_in_place(self, entry: _Read, deliver: dict[str, list[bytes]]) -> bool:
        """`ahead` for a small datagram kept waiting and now opened: its TCP packets stay at its place."""
        self.held -= entry.size
        self.smalls -= 1
        entry.small = False
        now_out, entry.opened = _split(deliver)
        if now_out:
            self.plane.deliver(now_out)
            return True
        return False

    def next_waiting(self) -> _Read | None:
        """The oldest read still waiting (a small datagram's TCP packets go into pending on the way),
        with the raw ESP reads right behind it joined to it (`_join`)."""
        while self.waiting:
            entry = self.waiting.popleft()
            if entry.opened is None:
                self._taken(entry)
                if entry.udp is None and not entry.small and self.waiting:
                    self._join(entry)
                return entry
            self.plane._merge(self.pending, entry.opened, [])
        return None

    def _taken(self, entry: _Read) -> None:
        """`entry` leaves the reads waiting, to be opened."""
        self.held -= entry.size
        self.big -= entry.big
        self.smalls -= entry.small

    def _join(self, entry: _Read) -> None:
        """Append to raw ESP read `entry` the raw bulk reads waiting right behind it that go on its
        sequence, up to JOIN datagrams: a burst the socket gave a few datagrams a read is opened many at
        a time (still the batch way), in the order read. A small datagram kept waiting, or one's TCP
        packets, ends the join, as does a gap (one taken ahead, or lost)."""
        waiting = self.waiting
        raw: list[tuple[bytes, bytes, int, bytes]] | None = None
        count = len(entry.raw)
        while waiting:
            after = waiting[0]
            if after.opened is not None or after.small or after.udp is not None:
                break  # a small datagram's place (kept waiting, or its TCP packets opened ahead)
            if count + len(after.raw) > JOIN or not _follows((raw or entry.raw)[-1], after.raw[0]):
                break
            waiting.popleft()
            self._taken(after)
            if raw is None:
                raw = entry.raw.copy()
            raw += after.raw
            count += len(after.raw)
        if raw is not None:
            entry.raw = raw  # the stamp stays the first read's: CoDel judges by the longest wait

    def finish(self) -> None:
        if self.pending:
            self.plane.deliver(self.pending)
        plane = self.plane
        if plane._bulk_of:
            plane.busy.discard(self.fd)
            plane.release(self.fd)


def _open(plane: DataPlane, entry: _Read, now: float) -> dict[str, list[bytes]]:
    """The inner packets of a waiting read, per device: a UDP read, or raw ESP datagrams by outer header."""
    if entry.udp is not None:
        return plane.open_udp(entry.udp, entry.payloads, now)
    return plane._receive_runs(entry.raw, now)


def _in_order(
    plane: DataPlane, fd: int, entry: _Read
) -> list[list[bytes] | dict[str, list[bytes]]] | list[inorder.Piece] | None:
    """`daemon.smallsock`'s cut of a waiting read of bulk socket `fd` (None: open it as it is)."""
    if entry.udp is not None:
        return smallsock.in_order_udp(plane, fd, entry.udp, entry.payloads)
    return smallsock.in_order(plane, fd, entry.raw)


def _open_piece(plane: DataPlane, entry: _Read, piece: list[Any], now: float) -> dict[str, list[bytes]]:
    """The inner packets of a piece of a waiting read: UDP payloads, or raw ESP datagrams."""
    if entry.udp is not None:
        return plane.open_udp(entry.udp, piece, now)
    return plane._receive_runs(piece, now)


def _take_udp(turn: _Turn, got: tuple[UdpDatagram, list[bytes]]) -> bool:
    """Keep one UDP read waiting, or open it now: a small datagram alone in its read behind the bulk,
    inside its SA's window. Whether anything was delivered."""
    plane = turn.plane
    d, payloads = got
    size = sum(map(len, payloads))
    small = turn.big > 0 and len(payloads) == 1 and size <= SMALL  # alone in its read, behind bulk
    if small and inside(plane.engine.sad, turn.waiting, d.src, d.dst, payloads[0]):
        return turn.ahead(plane.open_udp(d, payloads, turn.now))
    turn.wait(_Read(udp=d, payloads=payloads, size=size, big=size > SMALL, stamp=d.stamp, small=small))
    return False


def _take_raw(turn: _Turn, got: list[tuple[bytes, bytes, int, bytes]], stamp: float) -> bool:
    """Keep one recvmmsg batch waiting, cut where a small datagram behind the bulk was taken out: opened
    now when inside its SA's window, else kept waiting alone. Whether anything was delivered."""
    plane = turn.plane
    found = _native.small_ones(got, SMALL) if _native is not None else None
    if found is not None and not found[1] and got:  # no small one, the common case (in C)
        turn.wait(_Read(raw=got, size=found[0], big=len(got), stamp=stamp))
        return False
    answered = False
    sizes = [len(datagram[3]) for datagram in got]
    smalls = [i for i, n in enumerate(sizes) if n <= SMALL]
    start = 0  # the first datagram of `got` not yet waiting or opened
    for k, i in enumerate(smalls):
        if not turn.big and i == k:
            continue  # only small ones so far: nothing to go ahead of
        if i > start:
            part = sizes[start:i]
            turn.wait(_Read(raw=got[start:i], size=sum(part), big=sum(n > SMALL for n in part), stamp=stamp))
        start = i + 1
        src, dst, _tos, esp = datagram = got[i]
        if inside(plane.engine.sad, turn.waiting, src, dst, esp):
            answered = turn.ahead(plane._receive_runs([datagram], turn.now)) or answered
        else:  # not inside the window yet
            turn.wait(_Read(raw=[datagram], size=len(esp), stamp=stamp, small=True))
    if start < len(got):
        rest = sizes[start:] if start else sizes
        turn.wait(
            _Read(
                raw=got[start:] if start else got,
                size=sum(rest),
                big=len(rest) - (len(smalls) - _before(smalls, start)),
                stamp=stamp,
            )
        )
    return answered


def _serve(plane: DataPlane, fd: int, what: str, recv: Callable[[], _Got | None],
           take: Callable[[_Turn, _Got], bool]) -> None:  # fmt: skip
    """One socket's turn reading ahead: `recv` reads (None: nothing more), `take` keeps what it read
    waiting or opens it ahead; the small datagrams the window now lets go are opened, the answers
    served, then the oldest read waiting is opened; until nothing waits."""
    turn = _Turn(plane, fd)
    if plane._bulk_of:
        plane.busy.add(fd)  # until the turn has delivered what it read (`DataPlane._backlog`)
    limit = plane.read_ahead
    while True:
        answered = False
        while turn.reading and turn.held < limit and turn.reads < turn.most:
            try:
                got = recv()
            except OSError as exc:
                log.debug("%s receive failed: %s", what, exc)
                turn.reading = False
                break
            if got is None:
                break
            turn.reads += 1
            answered = take(turn, got) or answered
        if turn.smalls:
            for late in turn.now_inside():
                answered = turn.ahead_in_place(late, _open(plane, late, turn.now)) or answered
        if answered:
            plane._answer()
        entry = turn.next_waiting()
        if entry is None:
            break
        if plane._small_of and (pieces := _in_order(plane, fd, entry)) is not None:
            for piece in pieces:  # TCP data the sparse socket holds goes between (core.inorder)
                if isinstance(piece, dict):
                    plane._merge(turn.pending, piece, [])
                else:
                    turn.opened(_open_piece(plane, entry, piece, turn.now), entry.stamp, len(piece))
        else:
            count = len(entry.payloads) if entry.udp is not None else len(entry.raw)
            turn.opened(_open(plane, entry, turn.now), entry.stamp, count)
        if plane._sparse_fds:
            plane.serve_sparse(turn.now)
    turn.finish()


def serve_udp(plane: DataPlane, udp: UdpEdge) -> None:
    """`DataPlane.on_udp` reading ahead: up to `plane.read_ahead` bytes read and not yet opened."""
    _serve(plane, udp.fileno(), "UDP", udp.recv_batch, _take_udp)


def serve_raw(plane: DataPlane, raw: RawEdge) -> None:
    """`DataPlane.on_raw` reading ahead: up to `plane.read_ahead` bytes read and not yet opened. A
    recvmmsg batch is cut where a small datagram was taken out ahead of it, so each part stays in
    sequence (and is opened many at a time)."""
    _serve(plane, raw.fileno(), "raw", raw.recv_batch, lambda turn, got: _take_raw(turn, got, raw.stamp))
