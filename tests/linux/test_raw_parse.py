"""The one parse of a received outer IPv4 header (linux/raw.py `_esp_in_ipv4`, used by `RawEsp.recv` and
by the recvmmsg batch alike), without a socket: what it keeps, what it refuses."""

from __future__ import annotations

import ctypes
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import framing
from ipsec_tunnel.core.ip import IPV4_HEADER
from ipsec_tunnel.linux import raw
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


# -- the recvmmsg / sendmmsg batches in C (core/_framing.c) against the Python loops ---------------------

_ext = framing.available
_needs_ext = pytest.mark.skipif(_ext is None, reason="the C extension is not built")
_SLOT = 2048  # a smaller slot than the socket's: the functions take it as an argument


@_needs_ext
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=80), st.integers(0, 3), st.integers(0, 0xFFFF), st.integers(0, 120)),
        max_size=12,
    )
)
def test_batch_parse_in_c_is_the_python_parse(messages: list[tuple[bytes, int, int, int]]) -> None:
    """Any bytes, lengths and flags (MSG_TRUNC among them) in a recvmmsg batch: the same datagrams out."""
    assert _ext is not None
    n = len(messages)
    msgs = (raw._Mmsghdr * max(n, 1))()
    buffer = bytearray(max(n, 1) * _SLOT)
    for i, (data, flags, total, size) in enumerate(messages):
        packet = bytearray(data)
        if flags & 1 and len(packet) >= 4:  # mostly IPv4-looking, with a total length of any kind
            packet[0] = 0x40 | packet[0] & 0x0F
            packet[2:4] = total.to_bytes(2, "big")
        buffer[i * _SLOT : i * _SLOT + len(packet)] = packet
        msgs[i].len = min(size, _SLOT)
        msgs[i].hdr.flags = socket.MSG_TRUNC if flags & 2 else 0
    view, hdrs = memoryview(buffer), memoryview(msgs).cast("B")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raw, "_MMSG_SLOT", _SLOT)
        expected = raw._parse_batch(view, hdrs, n)
    got = _ext.esp_in_ipv4_batch(
        view, hdrs, n, _SLOT, raw._MMSG_SIZE, raw._MSG_LEN, raw._MSG_FLAGS, socket.MSG_TRUNC
    )
    assert got == expected


@_needs_ext
def test_batch_parse_in_c_refuses_counts_beyond_its_buffers() -> None:
    assert _ext is not None
    msgs = (raw._Mmsghdr * 2)()
    with pytest.raises(ValueError, match="beyond"):
        _ext.esp_in_ipv4_batch(bytes(2 * _SLOT), memoryview(msgs).cast("B"), 3, _SLOT, raw._MMSG_SIZE,
                               raw._MSG_LEN, raw._MSG_FLAGS, socket.MSG_TRUNC)  # fmt: skip


def _gathered(
    payloads: list[bytes], start: int, batch: int, tos: int, frag: int, native: bool
) -> tuple[int, bytes, list[tuple[int, int]], list[bytes]]:
    """A sendmmsg batch gathered by C or Python: the count, the header buffer, each iovec as (offset in
    the header buffer, length) for a header, and the bytes each payload iovec points at."""
    headers = ctypes.create_string_buffer(batch * 20)
    view = memoryview(headers).cast("B")
    iov = (raw._Iovec * (2 * batch))()
    if native:
        assert _ext is not None
        k = _ext.ipv4_gather(view, payloads, start, batch, tos, frag, 63, SRC, DST, memoryview(iov).cast("B"),
                             raw._IOVEC_SIZE, raw._IOVEC_BASE, raw._IOVEC_LEN)  # fmt: skip
    else:
        k = raw._gather(view, iov, payloads, start, batch, tos, frag, 63, SRC, DST)
    base = ctypes.addressof(headers)
    heads = [(iov[2 * i].base - base, iov[2 * i].len) for i in range(k)]
    bodies = [ctypes.string_at(iov[2 * i + 1].base, iov[2 * i + 1].len) for i in range(k)]
    return k, bytes(view), heads, bodies


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=100),
            st.just(bytes(0xFFFF - 20)),  # the largest that fits an IPv4 datagram
            st.just(bytes(0xFFFF - 19)),  # one byte too many: stops the batch
            st.binary(max_size=20).map(bytearray),  # not bytes: stops the batch
        ),
        max_size=10,
    ),
    st.integers(0, 4),
    st.integers(1, 6),
    st.integers(0, 255),
    st.booleans(),
)
def test_burst_gather_points_at_each_payload_behind_its_header(
    payloads: list[bytes], start: int, batch: int, tos: int, df: bool
) -> None:
    """Python (and C, byte for byte): message k is its header at 20k, then the payload itself; the batch
    stops before a payload that is too big or not bytes, which goes the one-by-one way."""
    frag = raw._IP_DF if df else 0
    got = _gathered(payloads, start, batch, tos, frag, native=False)
    if _ext is not None:
        assert _gathered(payloads, start, batch, tos, frag, native=True) == got
    k, headers, heads, bodies = got
    fits = [type(p) is bytes and len(p) <= 0xFFFF - 20 for p in payloads[start:]]
    assert k == min(batch, [*fits, False].index(False))
    assert bodies == payloads[start : start + k]
    assert heads == [(20 * i, 20) for i in range(k)]
    for i, esp in enumerate(bodies):
        header = IPV4_HEADER.unpack_from(headers, 20 * i)
        assert header == (0x45, tos, 20 + len(esp), 0, frag, 63, 50, 0, SRC, DST)


@_needs_ext
def test_burst_gather_in_c_refuses_arguments_beyond_its_buffers() -> None:
    assert _ext is not None
    iov = (raw._Iovec * 4)()
    with pytest.raises(ValueError, match="beyond"):  # 3 messages: 60 bytes of headers, 6 iovecs
        _ext.ipv4_gather(bytearray(40), [b"x"] * 3, 0, 3, 0, 0, 64, SRC, DST, memoryview(iov).cast("B"),
                         raw._IOVEC_SIZE, raw._IOVEC_BASE, raw._IOVEC_LEN)  # fmt: skip
    with pytest.raises(ValueError, match="beyond"):  # the base and the length overlapping
        _ext.ipv4_gather(bytearray(40), [b"x"], 0, 1, 0, 0, 64, SRC, DST, memoryview(iov).cast("B"),
                         raw._IOVEC_SIZE, raw._IOVEC_LEN, raw._IOVEC_LEN)  # fmt: skip
