"""The anti-replay window (RFC 4303 §3.4.3) with Extended Sequence Numbers (RFC 4303 Appendix A).

`check` runs before the ICV is verified and changes nothing; `accept` runs only after the ICV passed, so a
forged packet can never move the window.

The bits live in a ring of bytes indexed by the sequence number itself (RFC 6479 §2, with 8-bit blocks):
`check` and `accept` of one number touch one byte, whatever the window's size, and moving the window
forward clears only the blocks it passes.
"""

from __future__ import annotations

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "SEQ32", "ReplayWindow"]

SEQ32 = 1 << 32  # RFC 4303 §2.2: the transmitted sequence number is the low 32 bits
MAX_WINDOW = 1 << 20  # largest window accepted (RFC 4303 §3.4.3 sets no upper bound)
# RFC 4303 §3.4.3 lets the receiver choose a window larger than the minimum of 32. A wide one lets
# ipsecd open a small datagram read ahead of a bulk backlog first (ipsecd --read-ahead) without pushing
# the backlog out of the window; 4096 is the most Linux's xfrm takes (with ESN bitmaps), wireguard-go
# keeps 8128. The ring costs one bit per number, and check and accept touch one byte whatever the size.
DEFAULT_WINDOW = 4096


_BLOCK_BITS = 3  # RFC 6479 §2: a block of 2^3 = 8 sequence numbers, one byte of the ring
_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))  # each byte's bits in reverse order


class ReplayWindow:
    """Which sequence numbers have been received; `size` 0 turns the replay check off.

    `top` may be set directly only together with `bitmap` (set `top` first): the ring is kept relative
    to the sequence numbers themselves."""

    __slots__ = ("_blocks", "_mask", "_ring", "esn", "size", "top")

    def __init__(
        self, size: int = DEFAULT_WINDOW, *, esn: bool = False, top: int = 0, bitmap: int = 0
    ) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0 (off) to {MAX_WINDOW} packets")
        self.size = size
        self.esn = esn
        self.top = top  # highest authenticated sequence number (64-bit with ESN)
        self._mask = (1 << size) - 1 if size else 0
        # RFC 6479 §2: one block more than the window needs, so the block holding `top` never shares a
        # byte with one that fell out of the window. Bits above `top` are always 0.
        self._blocks = (size + 7) // 8 + 1 if size else 1
        self._ring = bytearray(self._blocks)
        if bitmap:
            self.bitmap = bitmap

    @property
    def bitmap(self) -> int:
        """The window as one number: bit i set when sequence number top - i was received (i < size)."""
        if not self.size:
            return 0
        split = (self.top >> _BLOCK_BITS) % self._blocks + 1
        ordered = (self._ring[split:] + self._ring[:split]).translate(_REVERSED)  # oldest block first
        return (int.from_bytes(ordered, "big") >> (7 - (self.top & 7))) & self._mask

    @bitmap.setter
    def bitmap(self, value: int) -> None:
        if not self.size:
            return
        n = self._blocks
        ordered = (((value & self._mask) << (7 - (self.top & 7))).to_bytes(n, "big")).translate(_REVERSED)
        split = n - ((self.top >> _BLOCK_BITS) % n + 1)
        self._ring[:] = ordered[split:] + ordered[:split]

    def infer(self, seq_lo: int) -> int:
        """The full sequence number for the received low 32 bits (RFC 4303 Appendix A2.1)."""
        if not self.esn:
            return seq_lo
        w = self.size if self.size else 1 << 31  # no window: nearest to top in either direction
        tl = self.top & (SEQ32 - 1)
        th = self.top >> 32
        if tl >= w - 1:  # Case A: window within one 2^32 subspace
            seqh = th if seq_lo >= tl - w + 1 else th + 1
            if seqh >= SEQ32:  # no subspace after the last: an old number (robustness tests: it overflowed)
                seqh = th
        else:  # Case B: window spans two subspaces
            seqh = th - 1 if seq_lo >= (tl - w + 1) % SEQ32 else th
            if seqh < 0:
                seqh = 0
        return (seqh << 32) | seq_lo

    def check(self, seq: int) -> bool:
        """True when the full sequence number `seq` is new and inside the window (changes nothing)."""
        if seq == 0:
            return False  # RFC 4303 §3.3.3: the first packet sent has sequence number 1
        if not self.size or seq > self.top:
            return True
        if self.top - seq >= self.size:
            return False
        return not self._ring[(seq >> _BLOCK_BITS) % self._blocks] >> (seq & 7) & 1

    def check_run(self, first: int, last: int) -> bool:
        """True when every full sequence number from `first` to `last` is new and inside the window:
        `check` of each, answered for all at once (changes nothing). A run behind a later number that
        was opened first (read ahead of it: `accept` moved the top past the run) may pass."""
        if first <= 0 or last < first:
            return False
        if not self.size or first > self.top:
            return True
        if self.top - first >= self.size:
            return False
        return not self._any_set(first, min(last, self.top))

    def _any_set(self, lo: int, hi: int) -> bool:
        """Whether a bit of `lo` to `hi` (within the window) is set."""
        ring, n = self._ring, self._blocks
        lb, hb = lo >> _BLOCK_BITS, hi >> _BLOCK_BITS
        if lb == hb:
            return bool(ring[lb % n] & (((1 << (hi - lo + 1)) - 1) << (lo & 7)))
        if ring[lb % n] & (0xFF << (lo & 7)) & 0xFF or ring[hb % n] & ((1 << ((hi & 7) + 1)) - 1):
            return True
        count = hb - lb - 1
        if not count:
            return False
        start = (lb + 1) % n
        end = start + count
        if end <= n:
            return ring.count(0, start, end) != count
        return ring.count(0, start) != n - start or ring.count(0, 0, end - n) != end - n

    def _clear_after_top(self, seq: int) -> None:
        """Clear the blocks after the one holding `top`, up to the one holding `seq` (RFC 6479 §2)."""
        first, last = (self.top >> _BLOCK_BITS) + 1, seq >> _BLOCK_BITS
        n = self._blocks
        count = last - first + 1
        if count <= 0:
            return
        ring = self._ring
        if count >= n:
            ring[:] = bytes(n)
            return
        start = first % n
        end = start + count
        if end <= n:
            ring[start:end] = bytes(count)
        else:
            ring[start:] = bytes(n - start)
            ring[: end - n] = bytes(end - n)

    def accept(self, seq: int) -> None:
        """Record `seq` as received; call only after its ICV verified."""
        if seq > self.top:
            if self.size:
                if seq >> _BLOCK_BITS != self.top >> _BLOCK_BITS:
                    self._clear_after_top(seq)
                self._ring[(seq >> _BLOCK_BITS) % self._blocks] |= 1 << (seq & 7)
            self.top = seq
        elif self.size and self.top - seq < self.size:
            self._ring[(seq >> _BLOCK_BITS) % self._blocks] |= 1 << (seq & 7)

    def accept_run(self, first: int, last: int) -> None:
        """Record `first` to `last`, all new and inside the window (`check_run`), as received: what
        `accept` of each in turn does."""
        if self.size:
            self._clear_after_top(last)
            self._set_run(max(first, last - self.size + 1), last)
        if last > self.top:
            self.top = last

    def _set_run(self, lo: int, hi: int) -> None:
        """Set the bits of `lo` to `hi` (fewer than the ring holds)."""
        ring, n = self._ring, self._blocks
        lb, hb = lo >> _BLOCK_BITS, hi >> _BLOCK_BITS
        if lb == hb:
            ring[lb % n] |= ((1 << (hi - lo + 1)) - 1) << (lo & 7)
            return
        ring[lb % n] |= (0xFF << (lo & 7)) & 0xFF
        ring[hb % n] |= (1 << ((hi & 7) + 1)) - 1
        count = hb - lb - 1
        if count:
            start = (lb + 1) % n
            end = start + count
            if end <= n:
                ring[start:end] = b"\xff" * count
            else:
                ring[start:] = b"\xff" * (n - start)
                ring[: end - n] = b"\xff" * (end - n)

    def seen_all_up_to(self, seq: int) -> None:
        """Mark every sequence number up to `seq` as received (restored state after a restart)."""
        if seq > self.top:
            self.top = seq
        self.bitmap = self._mask
