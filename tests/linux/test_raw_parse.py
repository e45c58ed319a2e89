"""The one parse of a received outer IPv4 header (linux/raw.py `_esp_in_ipv4`, used by `RawEsp.recv` and
by the recvmmsg batch alike), without a socket: what it keeps, what it refuses."""

from __future__ import annotations

import struct

import pytest

from ipsec_tunnel.linux.raw import _esp_in_ipv4

SRC, DST = bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2))


def _ipv4(payload: bytes, *, tos: int = 0, ihl: int = 5, total: int | None = None) -> bytes:
    options = bytes(4 * (ihl - 5))
    length = 4 * ihl + len(payload) if total is None else total
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, length, 0, 0, 64, 50, 0, SRC, DST)
    return header + options + payload


def _parse(data: bytes, off: int = 0, size: int | None = None) -> tuple[bytes, bytes, int, bytes] | None:
    return _esp_in_ipv4(memoryview(bytearray(data)), off, len(data) - off if size is None else size)


def test_addresses_tos_and_payload() -> None:
    assert _parse(_ipv4(b"esp!" * 10, tos=0x2A)) == (SRC, DST, 0x2A, b"esp!" * 10)


def test_options_are_skipped() -> None:
    assert _parse(_ipv4(b"payload", ihl=7)) == (SRC, DST, 0, b"payload")


def test_a_packet_at_an_offset_in_a_batch_buffer() -> None:
    packet = _ipv4(b"second")
    assert _parse(bytes(100) + packet + bytes(50), 100, len(packet)) == (SRC, DST, 0, b"second")


def test_trailing_bytes_beyond_the_total_length_are_not_esp() -> None:
    assert _parse(_ipv4(b"abcd", total=22) + b"pad") == (SRC, DST, 0, b"ab")


def test_a_total_length_beyond_what_arrived_keeps_what_arrived() -> None:
    assert _parse(_ipv4(b"abcd", total=1000)) == (SRC, DST, 0, b"abcd")


@pytest.mark.parametrize(
    "data",
    [
        _ipv4(b"x")[:19],  # shorter than a header
        b"\x60" + _ipv4(b"payload")[1:],  # version 6
        b"\x44" + _ipv4(b"payload")[1:],  # IHL 4: a header shorter than 20 bytes
        _ipv4(b"", ihl=15)[:40],  # IHL 15 (60 bytes) in 40
    ],
    ids=["short", "not-ipv4", "ihl-too-small", "ihl-beyond-packet"],
)
def test_what_is_not_an_ipv4_packet_is_refused(data: bytes) -> None:
    assert _parse(data) is None
