"""The anti-replay window (RFC 4303 §3.4.3) with Extended Sequence Numbers (RFC 4303 Appendix A).

`check` runs before the ICV is verified and changes nothing; `accept` runs only after the ICV passed, so a
forged packet can never move the window.
"""

from __future__ import annotations

__all__ = ["DEFAULT_WINDOW", "MAX_WINDOW", "SEQ32", "ReplayWindow"]

SEQ32 = 1 << 32  # RFC 4303 §2.2: the transmitted sequence number is the low 32 bits
MAX_WINDOW = 1 << 20  # largest window accepted (RFC 4303 §3.4.3 sets no upper bound)
DEFAULT_WINDOW = 128


class ReplayWindow:
    """Which sequence numbers have been received; `size` 0 turns the replay check off."""

    __slots__ = ("_mask", "bitmap", "esn", "size", "top")

    def __init__(
        self, size: int = DEFAULT_WINDOW, *, esn: bool = False, top: int = 0, bitmap: int = 0
    ) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0 (off) to {MAX_WINDOW} packets")
        self.size = size
        self.esn = esn
        self.top = top  # highest authenticated sequence number (64-bit with ESN)
        self._mask = (1 << size) - 1 if size else 0
        self.bitmap = bitmap & self._mask  # bit i set: sequence number top - i was received

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
        diff = self.top - seq
        if diff >= self.size:
            return False
        return not (self.bitmap >> diff) & 1

    def accept(self, seq: int) -> None:
        """Record `seq` as received; call only after its ICV verified."""
        if seq > self.top:
            if self.size:
                shift = seq - self.top
                if shift != 1 or self.bitmap != self._mask:  # in order with nothing missing: stays full
                    self.bitmap = ((self.bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        elif self.size:
            self.bitmap |= 1 << (self.top - seq)

    def accept_run(self, first: int, last: int) -> None:
        """Record `first` to `last`, all above the top, as received: what `accept` of each in turn does."""
        if self.size:
            ones = (1 << min(last - first + 1, self.size)) - 1
            shift = last - self.top
            self.bitmap = ((self.bitmap << shift) | ones) & self._mask if shift < self.size else ones
        self.top = last

    def seen_all_up_to(self, seq: int) -> None:
        """Mark every sequence number up to `seq` as received (restored state after a restart)."""
        if seq > self.top:
            self.top = seq
        self.bitmap = self._mask
