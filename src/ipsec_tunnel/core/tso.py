"""TCP super-packets (TSO) segmented into rows of a NumPy array, each segment followed by a tail (ESP's
trailer), ready to be sealed row by row, without I/O.

The segments are byte for byte those of `gso.split` (the tests hold the two together); only where they
lie differs: one array per segment length (the full-sized ones, then a shorter last one), every header
field and checksum computed for all rows at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .framing import native as _native
from .gso import (
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    PROTO_TCP,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    OffloadError,
    VnetHeader,
    chunk_sums,
    l4_offset,
    split_tcp,
    tcp_layout,
)

__all__ = ["Rows", "tcp_rows"]

Rows = tuple[np.ndarray, int]  # segments, each followed by its tail; and the segments' length


def tcp_rows(packet: bytes, offload: VnetHeader, tail: Callable[[int], bytes]) -> list[Rows]:
    """The segments `gso.split(packet, offload)` gives for a TCP super-packet, each followed by
    `tail(its length)`, as rows: one (array, length) per segment length, in order. Raises OffloadError
    where `gso.split` would, and for anything but TCP."""
    kind = offload.gso_type & ~GSO_ECN
    if kind not in (GSO_TCPV4, GSO_TCPV6) or not packet:
        raise OffloadError("not a TCP super-packet")
    v4 = packet[0] >> 4 == 4
    if v4 != (kind == GSO_TCPV4):
        raise OffloadError("GSO type does not match the IP version")
    l4 = l4_offset(packet, v4, offload, PROTO_TCP)
    mss = offload.gso_size
    doff, hl, end = tcp_layout(packet, l4)
    payload = end - hl
    if payload <= mss:  # one segment: split completes its checksum
        [segment] = split_tcp(packet, mss, l4)
        whole = segment + tail(len(segment))
        return [(np.frombuffer(whole, np.uint8).reshape(1, len(whole)), len(segment))]

    count = -(-payload // mss)
    full = payload // mss
    last_size = payload - (count - 1) * mss
    if _native is not None:  # the same rows, cut in C (core/_framing.c)
        return _native_rows(packet, l4, hl, end, mss, full, count, last_size, tail)
    flags = packet[l4 + 13]
    mid_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)  # CWR on the first, FIN and PSH on the last
    first_seq = int.from_bytes(packet[l4 + 4 : l4 + 8], "big")
    seq = np.arange(first_seq, first_seq + count * mss, mss, dtype=np.int64) & 0xFFFFFFFF
    # TCP checksum, per segment: the payload's sum, the pseudo-header's, the header's (what varies: the
    # sequence number, the flags, the length). A sum S > 0 gives the checksum 0xFFFE - (S - 1) % 0xFFFF;
    # S counts only modulo 0xFFFF, where the 32-bit sequence number is the sum of its two halves.
    if v4:
        addresses = int.from_bytes(packet[12:16], "big") + int.from_bytes(packet[16:20], "big")
    else:
        addresses = sum(int.from_bytes(packet[i : i + 2], "big") for i in range(8, 40, 2))
    fixed = (
        addresses % 0xFFFF + PROTO_TCP
        + int.from_bytes(packet[l4 : l4 + 4], "big") % 0xFFFF  # ports
        + int.from_bytes(packet[l4 + 8 : l4 + 12], "big") % 0xFFFF  # acknowledgment
        + int.from_bytes(packet[l4 + 14 : l4 + 16], "big")  # window
        + int.from_bytes(packet[l4 + 18 : hl], "big") % 0xFFFF  # urgent pointer, options
        + (packet[l4 + 12] << 8 | mid_flags) + doff + mss
    )  # fmt: skip
    total = chunk_sums(packet, hl, end, mss)
    total += seq
    total += fixed - 1
    total[0] += (flags & ~(TCP_FIN | TCP_PSH)) - mid_flags
    total[-1] += (flags & ~TCP_CWR) - mid_flags + last_size - mss
    tcp_csum = 0xFFFE - total % 0xFFFF
    row_flags = np.full(count, mid_flags, np.uint8)
    row_flags[0] = flags & ~(TCP_FIN | TCP_PSH)
    row_flags[-1] = flags & ~TCP_CWR
    if v4:
        first_id = int.from_bytes(packet[4:6], "big")
        ident = np.arange(first_id, first_id + count, dtype=np.int64) & 0xFFFF
        ip_fixed = (
            int.from_bytes(packet[0:2], "big") + int.from_bytes(packet[6:10], "big")
            + int.from_bytes(packet[12:l4], "big") % 0xFFFF - 1
        )  # fmt: skip

    head = np.frombuffer(packet, np.uint8, hl)
    out: list[Rows] = []
    for lo, hi in ((0, full), (full, count)):
        if lo == hi:
            continue
        size = mss if lo < full else last_size
        inner = hl + size
        trailer = tail(inner)
        width = inner + len(trailer)
        rows = np.empty((hi - lo, width), np.uint8)
        rows[:, :hl] = head
        rows[:, hl:inner] = np.frombuffer(packet, np.uint8, (hi - lo) * size, hl + lo * mss).reshape(-1, size)
        rows[:, inner:] = np.frombuffer(trailer, np.uint8)
        fields = rows.view(_fields(v4, l4, width)).reshape(-1)  # the varying header fields, big-endian
        if v4:
            fields["length"] = inner
            fields["ident"] = ident[lo:hi]
            fields["ip_csum"] = 0xFFFE - (ip_fixed + inner + ident[lo:hi]) % 0xFFFF
        else:
            fields["length"] = inner - 40
        fields["seq"] = seq[lo:hi]
        fields["flags"] = row_flags[lo:hi]
        fields["tcp_csum"] = tcp_csum[lo:hi]
        out.append((rows, inner))
    return out


def _native_rows(
    packet: bytes, l4: int, hl: int, end: int, mss: int, full: int, count: int, last_size: int,
    tail: Callable[[int], bytes],
) -> list[Rows]:  # fmt: skip
    """`tcp_rows`' rows of two or more segments, each group cut by `_framing.tcp_rows`."""
    assert _native is not None
    out: list[Rows] = []
    for lo, hi in ((0, full), (full, count)):
        if lo == hi:
            continue
        inner = hl + (mss if lo < full else last_size)
        trailer = tail(inner)
        cut = _native.tcp_rows(packet, l4, hl, end, mss, lo, hi, trailer)
        out.append((np.frombuffer(cut, np.uint8).reshape(hi - lo, inner + len(trailer)), inner))
    return out


@functools.lru_cache(maxsize=64)
def _fields(v4: bool, l4: int, width: int) -> np.dtype:
    """The header fields of a segment row that differ from segment to segment, at their offsets."""
    names = ["length", "seq", "flags", "tcp_csum"]
    formats = [">u2", ">u4", "u1", ">u2"]
    offsets = [2 if v4 else 4, l4 + 4, l4 + 13, l4 + 16]
    if v4:
        names += ["ident", "ip_csum"]
        formats += [">u2", ">u2"]
        offsets += [4, 10]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})
