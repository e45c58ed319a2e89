"""The sequence store: what makes an SA's sequence numbers and lifetime counts durable before they are
used, so that no (key, nonce) pair is sent twice and no accepted packet is accepted again across a
restart, a crash or `sa del` + `sa add`, and no restart extends a lifetime.

The core only calls through this surface; the daemon owns the store (`daemon/state.py`, SQLite
reservations, and the per-packet journal of `daemon/journal.py`). `MemoryStore` keeps it all in memory,
for the core's tests and for SAs nothing has to outlive.

Two kinds of call:
- reservations (`SequenceStore.reserve`, `.reserve_volume`), rare (once per block of numbers): the store
  commits a limit before the SA goes past it; an OSError means the store cannot write, and the SA drops
  the packet (`Drop.STORE_FAILED`) rather than use an unrecorded number;
- the journal (`Slot`), with every packet: the last number sent and the highest accepted, written where a
  crash of the process does not lose them. A write is one item assignment into an array of counters (the
  daemon's is a memoryview of u64 over a shared file mapping), never a call, to keep the per-packet cost
  (a `functools.partial` of `pack_into` costs about 30 ns more per packet, the item assignment 45 ns less).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .sa import SecurityAssociation

__all__ = ["NO_LIMIT", "Counters", "Direction", "MemoryStore", "SequenceStore", "Slot"]

NO_LIMIT = 1 << 64  # a count no SA reaches

Direction = Literal["out", "in"]
"""'out': numbers this SA may send; 'in': numbers it may accept."""


class Counters(Protocol):
    """An array of unsigned 64-bit counters that keeps what is written into it (a list, a memoryview)."""

    def __setitem__(self, index: int, value: int, /) -> None: ...


@dataclass(frozen=True, slots=True)
class Slot:
    """One SA's journal: `counters[sent]` holds the last sequence number sent (written before the packet
    leaves), `counters[accepted]` the replay window's top after a packet was accepted."""

    counters: Counters
    sent: int
    accepted: int


class SequenceStore(Protocol):
    """Where reservations are committed. Each call returns only once the new limit is durable."""

    def reserve(self, sa: SecurityAssociation, direction: Direction, needed: int) -> int:
        """Record that `sa` may send ('out') or accept ('in') sequence numbers up to at least `needed`;
        the new limit. OSError when the store cannot be written."""
        ...

    def reserve_volume(self, sa: SecurityAssociation, packets: int, nbytes: int) -> tuple[int, int]:
        """Record that `sa`'s lifetime counts may reach `packets` and `nbytes`; the new (packets, bytes)
        limits. OSError when the store cannot be written."""
        ...


class MemoryStore:
    """A `SequenceStore` in memory: grants `grant` numbers (and counts) past what is asked, refuses with
    OSError while `fail` is set, and lists its calls. `slot` gives an SA a journal kept in `journal`."""

    def __init__(self, grant: int = 1 << 16, fail: bool = False) -> None:
        self.grant = grant
        self.fail = fail
        self.calls: list[tuple[str, int]] = []  # (direction or "volume", needed packets)
        self.journal: dict[tuple[bytes, bytes, int], list[int]] = {}  # SA key -> [accepted, sent]

    def reserve(self, sa: SecurityAssociation, direction: Direction, needed: int) -> int:
        """`needed` plus the grant, at most the SA's last sequence number."""
        self.calls.append((direction, needed))
        if self.fail:
            raise OSError("store refused (MemoryStore.fail)")
        return min(needed + self.grant, sa.config.seq_max)

    def reserve_volume(self, sa: SecurityAssociation, packets: int, nbytes: int) -> tuple[int, int]:
        """`packets` and `nbytes` plus the grant."""
        self.calls.append(("volume", packets))
        if self.fail:
            raise OSError("store refused (MemoryStore.fail)")
        return packets + self.grant, nbytes + self.grant

    def slot(self, sa: SecurityAssociation) -> Slot:
        """A journal for `sa`, starting at its present counters."""
        self.journal[sa.key] = [sa.replay.top, sa.seq_out]
        return Slot(self.journal[sa.key], sent=1, accepted=0)
