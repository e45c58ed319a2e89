"""Coalescing of TCP segments into super-packets (GRO), without I/O.

`coalesce` merges consecutive in-order TCP segments of one flow into one super-packet that the kernel
accepts from a TUN queue as if its own GRO had built it (the rules of tcp_gro_receive / inet_gro_receive),
so that one write carries many segments; `gso.split` undoes it exactly.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from .framing import native as _native
from .gso import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    IP_MAXPACKET,
    NO_OFFLOAD,
    PROTO_TCP,
    TCP_CSUM_OFFSET,
    TCP_CWR,
    TCP_ECE,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TCP_URG,
    VnetHeader,
    checksum,
    packet_sums,
    pseudo_sum,
)

__all__ = ["MAX_SEGMENTS", "RUN_MIN", "coalesce"]

MAX_SEGMENTS = 64  # as the kernel's GRO (MAX_GRO_SKBS / gso_max_segs on a TUN device is 65535)
RUN_MIN = 8  # fewer packets than this are not worth the vectorised single-flow path
_nonzero = np.count_nonzero  # for "any": one C call, where ndarray.any() goes through Python first

# What segments of one super-packet share, besides the TCP options (the key of a flow).
# IPv4: TOS; DF and TTL (and the protocol); addresses and ports; acknowledgment and data offset; window.
_KEY4 = struct.Struct("!x1s4x3s3x12s4x5s1x2s").unpack_from
# IPv6: version, traffic class and flow label; hop limit; addresses and ports; then as IPv4.
_KEY6 = struct.Struct("!4s3x1s36s4x5s1x2s").unpack_from
_NO_COALESCE = TCP_SYN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR | TCP_FIN
# The columns of an IPv4 + TCP header (up to 60 bytes), and which of them a flow's segments share: all
# but total length, identification, header checksum, sequence number, flags, checksum and urgent pointer.
_HEADER = np.arange(60)
_SAME = np.ones(60, bool)
_SAME[[2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 33, 36, 37, 38, 39]] = False
# ... and which the segments of one TCP connection share: version and IHL, DF and fragment, protocol,
# addresses and ports, data offset (the other columns of _SAME may change within a connection).
_CONNECTION = np.zeros(60, bool)
_CONNECTION[[0, 6, 7, 9, *range(12, 24), 32]] = True


def coalesce(packets: list[bytes]) -> list[tuple[VnetHeader, bytes]]:
    """TCP segments merged per flow as Linux GRO would merge them, everything else unchanged, each with
    the `VnetHeader` to write it with.

    A merged packet carries GSO_TCPV4/GSO_TCPV6 with the first segment's payload size as gso_size and
    NEEDS_CSUM with the pseudo-header sum in the checksum field, as the kernel's GRO leaves it
    (CHECKSUM_PARTIAL). Segments merge when they continue the flow's sequence with the same
    acknowledgment, window, options (timestamps included), TOS, TTL or traffic class and flow label, and
    DF; carry only ACK or PSH; and every earlier segment was full-sized. PSH or a short segment closes a
    super-packet. Every segment's checksums are verified first, each alone (the sums are `packet_sums`,
    256 times the RFC 1071 sums modulo 0xFFFF, zero exactly when those are; summed per super-packet,
    two bad segments could cancel out): when one fails, the segments are written one by one, as they
    came, for the kernel to drop the bad one. IPv4 with options or
    fragments and IPv6 with extension headers pass unchanged. Order within a flow is kept.
    """
    count = len(packets)
    if count >= RUN_MIN and _native is not None:  # `_coalesce_run` in C (core/_framing.c)
        run = _native.coalesce_run(packets, NO_OFFLOAD, _run_offload)
        if run is not None:
            return run
    elif count >= RUN_MIN:
        lengths = np.fromiter(map(len, packets), np.int64, count)
        if _nonzero(lengths) == count and not _nonzero(lengths & 1):  # 16-bit words from every packet's start
            run = _coalesce_run(packets, lengths, b"".join(packets))
            if run is not None:
                return run
    return _coalesce_flows(packets)


@functools.lru_cache(maxsize=64)
def _run_offload(hl: int, mss: int) -> VnetHeader:
    """The `VnetHeader` of an IPv4 TCP super-packet of `hl` header bytes cut every `mss` bytes."""
    return VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, hl, mss, 20, TCP_CSUM_OFFSET)


def _coalesce_run(
    packets: list[bytes], lengths: np.ndarray, joined: bytes
) -> list[tuple[VnetHeader, bytes]] | None:
    """`coalesce` for the common batch, checked in a few vectorised steps: IPv4 TCP segments with DF, of
    one connection, in sequence, with nothing but ACK and PSH; None for any other batch. `lengths` are
    the packets' (even) lengths, `joined` the packets one after another.

    Such a run is cut where the flow key changes (a new timestamp, say), after each PSH or short
    segment, and wherever a super-packet is full (MAX_SEGMENTS, or 64 KiB): the pieces are those
    `_coalesce_flows` makes of it."""
    head = packets[0]
    if len(head) < 40 or head[0] != 0x45 or head[9] != PROTO_TCP or head[6] & 0x7F != 0x40 or head[7]:
        return None  # IPv4 without options, TCP, DF and not a fragment (the rest must be equal to it)
    hl = 20 + (head[32] >> 2 & 0x3C)
    if hl < 40 or int(lengths.min()) <= hl:
        return None
    count = len(packets)
    offsets = np.zeros(count, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    octets = np.frombuffer(joined, np.uint8)
    rows = octets[offsets[:, None] + _HEADER[:hl]]  # every packet's IP and TCP headers
    if (
        _nonzero((rows != rows[0]) & _CONNECTION[:hl])  # one connection
        or _nonzero((rows[:, 2].astype(np.int64) << 8 | rows[:, 3]) != lengths)  # IP length: all of it
        or _nonzero(rows[:, 33] & _NO_COALESCE)
    ):
        return None
    # Where TOS, TTL, acknowledgment, window or options (timestamps) change, another flow key begins.
    changed = ((rows[1:] != rows[:-1]) & _SAME[:hl]).any(axis=1)
    seq = np.ascontiguousarray(rows[:, 24:28]).view(">u4").ravel()
    sizes = lengths - hl
    if _nonzero((seq[1:] - seq[:-1]).astype(np.int64) != sizes[:-1]):  # in sequence (modulo 2^32)
        return None
    mss = int(sizes.max())
    short = sizes < mss
    if _nonzero(short[:-1] & short[1:]):  # short segments in a row may merge among themselves: not here
        return None
    psh = (rows[:, 33] & TCP_PSH) != 0
    cut = psh | short
    cut[:-1] |= changed
    ends = (np.flatnonzero(cut) + 1).tolist()  # a super-packet ends after each of these
    if not ends or ends[-1] != count:
        ends.append(count)
    per = min(MAX_SEGMENTS, (IP_MAXPACKET - hl) // mss)
    groups: list[tuple[int, int]] = []
    start = 0
    for end in ends:
        while start < end:
            stop = min(start + per, end)
            n = stop - start
            if stop == end - 1 and n < MAX_SEGMENTS and hl + n * mss + int(sizes[stop]) <= IP_MAXPACKET:
                stop = end  # the short last segment fits where a full one would not
            groups.append((start, stop))
            start = stop
    # Every segment's checksums verified (see coalesce()): its words' sum and its pseudo-header's, each
    # segment alone, so that two bad ones cannot cancel out in a group's sum.
    # A packet is at most 64 KiB: 2^15 words of less than 2^16 fit a 32-bit sum.
    words = np.add.reduceat(np.frombuffer(joined, "<u2"), offsets >> 1, dtype=np.uint32).astype(np.int64)
    base = (int.from_bytes(head[12:20], "big") + PROTO_TCP - 20) % 0xFFFF
    bad = ((words + ((base + lengths) << 8)) % 0xFFFF) != 0
    if _nonzero(bad):
        bad_groups = np.logical_or.reduceat(bad, [start for start, _ in groups]).tolist()
    else:  # as nearly always
        bad_groups = [False] * len(groups)
    result: list[tuple[VnetHeader, bytes]] = []
    full = hl + mss
    for (start, stop), damaged in zip(groups, bad_groups, strict=True):
        n = stop - start
        span = int(offsets[stop - 1] - offsets[start] + lengths[stop - 1])  # the group's bytes in `joined`
        if n == 1 or damaged:
            result.extend((NO_OFFLOAD, p) for p in packets[start:stop])
            continue
        whole = n if sizes[stop - 1] == mss else n - 1  # the full-sized ones lie at a fixed stride
        first = int(offsets[start])
        body: list[bytes | memoryview] = [
            octets[first : first + whole * full].reshape(whole, full)[:, hl:].tobytes()
        ]
        if whole < n:
            body.append(memoryview(packets[stop - 1])[hl:])
        size = span - (n - 1) * hl
        result.append(_super_packet(packets[start], 20, hl, size, mss, TCP_PSH if psh[stop - 1] else 0, body))
    return result


class _Flow:
    """A super-packet being built: the segments so far, in order, and what the next one must be."""

    __slots__ = (
        "bad",
        "base",
        "closed",
        "flags",
        "hl",
        "l4",
        "mss",
        "next_id",
        "next_seq",
        "packets",
        "size",
    )

    def __init__(self, packet: bytes, l4: int, hl: int, seq: int) -> None:
        self.packets = [packet]
        self.l4 = l4
        self.hl = hl
        self.mss = len(packet) - hl
        self.size = len(packet)
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.flags = packet[l4 + 13]
        self.closed = bool(self.flags & TCP_PSH)
        # IPv4 without DF: the identification must go up by one per segment, as splitting makes it go
        # (with DF it means nothing, RFC 6864 §4.1, and any may merge); -1: not checked.
        self.next_id = (
            (int.from_bytes(packet[4:6], "big") + 1) & 0xFFFF if l4 == 20 and not packet[6] & 0x40 else -1
        )
        # A segment's words (IPv4: with its header, whose valid checksum makes it sum to zero) read
        # little-endian, and its pseudo-header's big-endian sum (see coalesce()): `base` (the addresses
        # and protocol, the same for all segments) plus the segment's length (IP length minus `l4`).
        addresses = packet[12:20] if l4 == 20 else packet[8:40]
        self.base = (int.from_bytes(addresses, "big") + PROTO_TCP - l4) % 0xFFFF
        self.bad = False  # a segment whose checksums do not verify


def _coalesce_flows(packets: list[bytes], sums: list[int] | None = None) -> list[tuple[VnetHeader, bytes]]:
    """`coalesce`, one packet at a time, for any mix of flows and packets; `sums` are `packet_sums`,
    taken when a segment with data first needs them when not given (a batch of bare ACKs needs none)."""
    out: list[tuple[VnetHeader, bytes] | _Flow] = []
    flows: dict[tuple[tuple[bytes, ...], bytes], _Flow] = {}
    from_bytes = int.from_bytes
    if sums is not None and len(sums) != len(packets):
        raise ValueError("_coalesce_flows: a sum per packet")
    for i, packet in enumerate(packets):
        size = len(packet)
        b0 = packet[0] if size >= 40 else 0
        if b0 == 0x45 and packet[9] == PROTO_TCP and not packet[6] & 0x3F and not packet[7]:
            l4 = 20
        elif b0 >> 4 == 6 and packet[6] == PROTO_TCP and size >= 60:
            l4 = 40
        else:
            out.append((NO_OFFLOAD, packet))
            continue
        hl = l4 + (packet[l4 + 12] >> 2 & 0x3C)
        flags = packet[l4 + 13]
        n = size - hl
        if n <= 0 or hl < l4 + 20 or flags & _NO_COALESCE:
            out.append((NO_OFFLOAD, packet))
            continue
        if sums is None:
            sums = packet_sums(packets)
        value = sums[i]
        seq = from_bytes(packet[l4 + 4 : l4 + 8], "big")
        if l4 == 20:
            key = (_KEY4(packet), packet[40:hl])
        else:
            key = (_KEY6(packet), packet[60:hl])
            value -= from_bytes(packet[:40], "little")  # the sum starts at the TCP header
        flow = flows.get(key)
        if (
            flow is None
            or (
                flow.closed
                or flow.next_seq != seq
                or n > flow.mss
                or flow.size + n - (0 if l4 == 20 else 40) > IP_MAXPACKET  # IPv4 total / IPv6 payload length
                or len(flow.packets) >= MAX_SEGMENTS
                or (flow.next_id >= 0 and from_bytes(packet[4:6], "big") != flow.next_id)
            )
        ):
            if flow is not None:
                flow.closed = True
            flow = flows[key] = _Flow(packet, l4, hl, seq)
            out.append(flow)
        else:
            flow.packets.append(packet)
            if flow.next_id >= 0:
                flow.next_id = (flow.next_id + 1) & 0xFFFF
            flow.size += n
            flow.next_seq = (seq + n) & 0xFFFFFFFF
            flow.flags |= flags
            if n < flow.mss or flags & TCP_PSH:
                flow.closed = True
        if (value + ((flow.base + size) << 8)) % 0xFFFF:  # each segment checked alone
            flow.bad = True
    result: list[tuple[VnetHeader, bytes]] = []
    for item in out:
        if isinstance(item, tuple):
            result.append(item)
        elif len(item.packets) == 1 or item.bad:
            result.extend((NO_OFFLOAD, p) for p in item.packets)
        else:
            result.append(_merged(item.packets, item.l4, item.hl, item.size, item.mss, item.flags))
    return result


def _merged(
    packets: list[bytes], l4: int, hl: int, size: int, mss: int, psh: int
) -> tuple[VnetHeader, bytes]:
    """The super-packet of two or more segments of `hl` header bytes, `size` bytes in all, PSH if `psh`."""
    return _super_packet(packets[0], l4, hl, size, mss, psh, [memoryview(p)[hl:] for p in packets])


def _super_packet(
    head: bytes, l4: int, hl: int, size: int, mss: int, psh: int, payload: list[bytes | memoryview]
) -> tuple[VnetHeader, bytes]:
    """A super-packet of `size` bytes: `head`'s headers, lengths and checksums made whole for it, then
    the `payload` parts; PSH if `psh`."""
    tcp_len = size - l4
    flags = (head[l4 + 13] & ~TCP_PSH) | (psh & TCP_PSH)
    if l4 == 20:
        ip_wo = head[:2] + size.to_bytes(2, "big") + head[4:10] + b"\x00\x00" + head[12:20]
        ip = ip_wo[:10] + checksum(ip_wo).to_bytes(2, "big") + ip_wo[12:]
        partial = pseudo_sum(head[12:16], head[16:20], PROTO_TCP, tcp_len)
        gso = GSO_TCPV4
    else:
        ip = head[:4] + (size - 40).to_bytes(2, "big") + head[6:40]
        partial = pseudo_sum(head[8:24], head[24:40], PROTO_TCP, tcp_len)
        gso = GSO_TCPV6
    tcp = (
        head[l4 : l4 + 13]
        + bytes((flags,))
        + head[l4 + 14 : l4 + 16]
        + partial.to_bytes(2, "big")
        + head[l4 + 18 : hl]
    )
    offload = VnetHeader(F_NEEDS_CSUM, gso, hl, mss, l4, TCP_CSUM_OFFSET)
    return offload, b"".join([ip, tcp, *payload])
