"""RFC 4303 computations written out plainly, for tests that build ESP packets by hand (to forge what
no honest sender would send). The core inlines its own; tests/core/test_esp.py checks the core's against
the RFC directly, so a mistake here shows as a test failing elsewhere, not as a wrong pass."""

from __future__ import annotations

_PAD = bytes(range(1, 256))  # RFC 4303 §2.4: padding bytes 1, 2, 3, ...


def padding(length: int, block: int) -> bytes:
    """The RFC 4303 §2.4 padding for `length` bytes of payload: the fewest bytes aligning payload+2."""
    return _PAD[: (-(length + 2)) % block]


def counter_iv(seq: int, split: int | None) -> bytes:
    """The 8-byte counter IV (RFC 4106 §3.1): the 64-bit sequence number, the top bit set when `split`."""
    if split:
        seq |= 1 << 63
    return seq.to_bytes(8, "big")
