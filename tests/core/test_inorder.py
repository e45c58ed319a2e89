"""core.inorder: TCP data held from the small-datagram socket goes between the bulk datagrams of its SA
by ESP sequence number (RFC 4303 §2.2), in serial order across the 32-bit wrap."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ipsec_tunnel.core.inorder import InOrder

A, B, C = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]), bytes([192, 0, 2, 3])
SPI, OTHER = (0x1000).to_bytes(4, "big"), (0x2000).to_bytes(4, "big")


def _esp(seq: int, spi: bytes = SPI) -> bytes:
    return spi + seq.to_bytes(4, "big") + bytes(24)


def _datagrams(*seqs: int, spi: bytes = SPI, src: bytes = A) -> list[tuple[bytes, bytes, int, bytes]]:
    return [(src, B, 0, _esp(seq, spi)) for seq in seqs]


def _shape(pieces: Sequence[object]) -> list[object]:
    """Each piece as the sequence numbers of its datagrams, or the name of the held packets."""
    out: list[object] = []
    for piece in pieces:
        if isinstance(piece, dict):
            out.append(piece["t0"][0].decode())
        else:
            assert isinstance(piece, list)
            out.append([int.from_bytes(d[3][4:8], "big") for d in piece])
    return out


@pytest.mark.parametrize(
    ("held", "seqs", "expected", "left"),
    [
        ([5], [3, 4, 6, 7], [[3, 4], "5", [6, 7]], 0),  # between the older and the newer
        ([5], [6, 7], ["5", [6, 7]], 0),  # older than the whole read
        ([5], [3, 4], [[3, 4]], 1),  # newer than the whole read: still held
        ([5, 9], [3, 6, 10], [[3], "5", [6], "9", [10]], 0),  # two, each at its place
        ([5, 6], [3, 8], [[3], "5", "6", [8]], 0),  # two before the same datagram, oldest first
        ([0xFFFFFFFF], [0xFFFFFFFE, 0, 1], [[0xFFFFFFFE], str(0xFFFFFFFF), [0, 1]], 0),  # across the wrap
        ([5], [5], [[5]], 1),  # the same number (a replay in the bulk): not after it
    ],
)
def test_held_packets_go_between_the_datagrams_sent_before_and_after_them(
    held: list[int], seqs: list[int], expected: list[object], left: int
) -> None:
    order = InOrder()
    for seq in held:
        order.hold(A, B, _esp(seq), {"t0": [str(seq).encode()]})
    assert _shape(order.pieces(_datagrams(*seqs))) == expected
    assert len(order.items) == left and bool(order) == (left > 0)


def test_only_datagrams_of_the_same_sa_move_them() -> None:
    order = InOrder()
    order.hold(A, B, _esp(5), {"t0": [b"5"]})
    other_spi, other_src = _datagrams(9, spi=OTHER), _datagrams(9, src=C)
    assert order.pieces(other_spi) == [other_spi]
    assert order.pieces(other_src) == [other_src]
    assert [p["t0"] for p in order.take()] == [[b"5"]]  # the rest, when the bulk socket holds nothing
    assert not order and order.take() == []


def test_nothing_held_leaves_the_read_whole() -> None:
    got = _datagrams(1, 2, 3)
    pieces = InOrder().pieces(got)
    assert len(pieces) == 1 and pieces[0] is got


def test_lead_takes_everything_held_only_when_all_of_it_goes_before_the_datagram() -> None:
    """`lead`, the short way of a read that carries the rest of the held packets' flow: all of them before
    the datagram, oldest first; else nothing taken (another SA, another sender, or one sent after it)."""
    order = InOrder()
    for seq in (5, 9):
        order.hold(A, B, _esp(seq), {"t0": [str(seq).encode()]})
    assert order.lead(A, B, _esp(9)) is None and len(order.items) == 2  # 9 is not sent after 9
    assert order.lead(A, B, _esp(10, OTHER)) is None and len(order.items) == 2
    assert order.lead(C, B, _esp(10)) is None and len(order.items) == 2
    assert order.lead(A, B, _esp(10)) == [{"t0": [b"5"]}, {"t0": [b"9"]}]
    assert not order
    order.hold(A, B, _esp(0xFFFF_FFFE), {"t0": [b"wrap"]})
    assert order.lead(A, B, _esp(1)) == [{"t0": [b"wrap"]}]  # after, across the 32-bit wrap
