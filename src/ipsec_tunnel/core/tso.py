"""TCP super-packets (TSO) segmented into rows of a NumPy array, each segment followed by a tail (ESP's
trailer), ready to be sealed row by row, without I/O.

The segments are byte for byte those of `gso.split` (the tests hold the two together); only where they
lie differs: one array per segment length (the full-sized ones, then a shorter last one), every header
field and checksum computed for all rows at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .gso import (
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    PROTO_TCP,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    Offload,
    OffloadError,
    chunk_sums,
    l4_offset,
    split_tcp,
)

Rows = tuple[np.ndarray, int]  # segments, each followed by its tail; and the segments' length


def _be16(values: np.ndarray) -> np.ndarray:
    """16-bit values as big-endian byte pairs, one row each."""
    return values.astype(">u2").view(np.uint8).reshape(-1, 2)


def _complement(total: np.ndarray) -> np.ndarray:
    """The Internet checksums (RFC 1071) of one's-complement sums not yet folded."""
    folded = total % 0xFFFF
    return 0xFFFF - np.where(folded == 0, 0xFFFF, folded)


def tcp_rows(packet: bytes, offload: Offload, tail: Callable[[int], bytes]) -> list[Rows]:
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
    if len(packet) < l4 + 20:
        raise OffloadError("truncated TCP header")
    doff = (packet[l4 + 12] >> 4) * 4
    hl = l4 + doff
    if doff < 20 or len(packet) < hl:
        raise OffloadError("bad TCP data offset")
    length_field = int.from_bytes(packet[2:4] if v4 else packet[4:6], "big")
    end = min(len(packet), length_field if v4 else 40 + length_field)
    if end < hl:
        raise OffloadError("IP length shorter than the headers")
    payload = end - hl
    if payload <= mss:  # one segment: split completes its checksum
        [segment] = split_tcp(packet, mss, l4)
        whole = segment + tail(len(segment))
        return [(np.frombuffer(whole, np.uint8).reshape(1, len(whole)), len(segment))]

    count = -(-payload // mss)
    index = np.arange(count, dtype=np.int64)
    sizes = np.full(count, mss, np.int64)
    sizes[-1] = payload - (count - 1) * mss
    flags = packet[l4 + 13]
    row_flags = np.full(count, flags & ~(TCP_FIN | TCP_PSH | TCP_CWR), np.int64)
    row_flags[0] = flags & ~(TCP_FIN | TCP_PSH)  # CWR on the first, FIN and PSH on the last (tcp_gso_segment)
    row_flags[-1] = flags & ~TCP_CWR
    seq = (int.from_bytes(packet[l4 + 4 : l4 + 8], "big") + index * mss) & 0xFFFFFFFF
    # TCP checksum: the payload's sum, the pseudo-header's, and the header's but for what varies per row.
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
    )  # fmt: skip
    sums = np.array(chunk_sums(packet, hl, end, mss), dtype=np.int64) % 0xFFFF
    total = sums + fixed + (seq >> 16) + (seq & 0xFFFF) + (packet[l4 + 12] << 8 | row_flags) + doff + sizes
    tcp_csum = _complement(total)
    if v4:
        ident = (int.from_bytes(packet[4:6], "big") + index) & 0xFFFF
        lengths = hl + sizes
        ip_fixed = (
            int.from_bytes(packet[0:2], "big") + int.from_bytes(packet[6:10], "big")
            + int.from_bytes(packet[12:l4], "big") % 0xFFFF
        )  # fmt: skip
        ip_csum = _complement(ip_fixed + lengths + ident)

    head = np.frombuffer(packet, np.uint8, hl)
    out: list[Rows] = []
    full = payload // mss
    for lo, hi in ((0, full), (full, count)):
        if lo == hi:
            continue
        size = int(sizes[lo])
        inner = hl + size
        trailer = tail(inner)
        rows = np.empty((hi - lo, inner + len(trailer)), np.uint8)
        rows[:, :hl] = head
        rows[:, hl:inner] = np.frombuffer(packet, np.uint8, (hi - lo) * size, hl + lo * mss).reshape(-1, size)
        rows[:, inner:] = np.frombuffer(trailer, np.uint8)
        if v4:
            rows[:, 2:4] = _be16(lengths[lo:hi])
            rows[:, 4:6] = _be16(ident[lo:hi])
            rows[:, 10:12] = _be16(ip_csum[lo:hi])
        else:
            rows[:, 4:6] = _be16(np.array([inner - 40]))
        rows[:, l4 + 4 : l4 + 8] = seq[lo:hi].astype(">u4").view(np.uint8).reshape(-1, 4)
        rows[:, l4 + 13] = row_flags[lo:hi]
        rows[:, l4 + 16 : l4 + 18] = _be16(tcp_csum[lo:hi])
        out.append((rows, inner))
    return out
