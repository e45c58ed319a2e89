"""TCP data that a small-datagram socket opened, put back in the bulk socket's order (`--flow-queues`).

Over raw ESP the kernel splits arrivals by size between two sockets (`linux.sizebpf`): a burst's short
last segment lands in the small-datagram socket while the bulk socket may still hold older segments of
the same flow, or newer ones. Delivered before the older ones, or after the newer ones, it would reach
the receiving TCP out of order. Held here with the ESP sequence number it came with (RFC 4303 §2.2),
it goes between the bulk datagrams of its SA sent before it and those sent after it (`pieces`).
"""

from __future__ import annotations

from typing import NamedTuple

from .replay import SEQ32

__all__ = ["Datagram", "Held", "InOrder", "Piece"]

Datagram = tuple[bytes, bytes, int, bytes]  # outer source, outer destination, TOS, ESP
Piece = list[Datagram] | dict[str, list[bytes]]  # bulk datagrams to open, or held packets per device


class Held(NamedTuple):
    """Packets per device opened from one ESP datagram of SA (`src`, `dst`, `spi`) numbered `seq`."""

    src: bytes
    dst: bytes
    spi: bytes
    seq: int
    packets: dict[str, list[bytes]]


def _after(seq: int, held: int) -> bool:
    """Whether sequence number `seq` was sent after `held` (the low 32 bits, serial order)."""
    return 0 < (seq - held) % SEQ32 < SEQ32 // 2


class InOrder:
    """The packets held for one bulk socket, oldest first."""

    def __init__(self) -> None:
        self.items: list[Held] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def hold(self, src: bytes, dst: bytes, esp: bytes, packets: dict[str, list[bytes]]) -> None:
        """Hold `packets`, opened from datagram `esp` (at least 8 bytes) of `src` -> `dst`."""
        self.items.append(Held(src, dst, esp[:4], int.from_bytes(esp[4:8], "big"), packets))

    def lead(self, src: bytes, dst: bytes, esp: bytes) -> list[dict[str, list[bytes]]] | None:
        """When every held packet goes before datagram `esp` (at least 8 bytes) of `src` -> `dst`, as
        when its read carries the rest of their flow: all of them, oldest first, taken out of the hold;
        else None and nothing taken (`pieces` then cuts the read)."""
        spi, seq = esp[:4], int.from_bytes(esp[4:8], "big")
        items = self.items
        if all(h.spi == spi and h.src == src and h.dst == dst and _after(seq, h.seq) for h in items):
            out = [h.packets for h in items]
            items.clear()
            return out
        return None

    def pieces(self, datagrams: list[Datagram]) -> list[Piece]:
        """`datagrams` (read from the bulk socket, in order) cut where held packets go between them: the
        pieces in order, each a list of datagrams or held packets (taken out of the hold)."""
        out: list[Piece] = []
        start = 0
        for i, (src, dst, _tos, esp) in enumerate(datagrams):
            if not self.items:
                break
            spi = esp[:4]
            due = [
                h
                for h in self.items
                if h.spi == spi
                and h.src == src
                and h.dst == dst
                and _after(int.from_bytes(esp[4:8], "big"), h.seq)
            ]
            if due:
                if i > start:
                    out.append(datagrams[start:i])
                    start = i
                for h in due:
                    self.items.remove(h)
                    out.append(h.packets)
        if start < len(datagrams):
            out.append(datagrams[start:] if start else datagrams)
        return out

    def take(self) -> list[dict[str, list[bytes]]]:
        """All that is held, oldest first (the bulk socket holds nothing more)."""
        out = [h.packets for h in self.items]
        self.items.clear()
        return out
