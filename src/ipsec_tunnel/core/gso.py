"""Segmentation of IP super-packets and the checksums it needs, without I/O.

A TUN device with offloads hands the daemon TCP super-packets of up to 64 KiB (TSO) or UDP ones (USO)
whose transport checksum is only partial; `split` turns such a packet into the wire-sized packets the
kernel would have sent, each with complete and correct IP and transport headers, exactly as Linux's
software GSO does (tcp_gso_segment, __udp_gso_segment). The other direction is `gro.coalesce`.

Offload metadata travels as `VnetHeader`, the fields of struct virtio_net_hdr (linux/virtio_net.h) that
precedes each packet on a TUN queue opened with IFF_VNET_HDR.

Checksums are RFC 1071 one's-complement sums. The sum of a byte string's 16-bit big-endian words is
congruent, modulo 0xFFFF, to the string read as one big-endian integer (2^16 = 1 mod 0xFFFF), so one
`int.from_bytes` and one remainder, both in C, replace a Python loop over the words; the many sums of a
super-packet or a batch are taken in one NumPy call (`chunk_sums`, `packet_sums`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "IPV4_DF",
    "IPV4_MF_OFFSET",
    "IP_MAXPACKET",
    "NO_OFFLOAD",
    "PROTO_TCP",
    "PROTO_UDP",
    "TCP_ACK",
    "TCP_CSUM_OFFSET",
    "TCP_CWR",
    "TCP_ECE",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "TCP_URG",
    "UDP_CSUM_OFFSET",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "OffloadError",
    "VnetHeader",
    "checksum",
    "chunk_sums",
    "complete_checksum",
    "fold",
    "l4_offset",
    "ones_sum",
    "packet_sums",
    "pseudo_sum",
    "split",
    "split_tcp",
    "split_udp",
    "tcp_layout",
    "tcp_option",
    "tcp_packet",
]

# struct virtio_net_hdr, linux/virtio_net.h (also include/uapi/linux/virtio_net.h)
F_NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum at csum_start + csum_offset is partial
F_DATA_VALID = 2  # VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified
GSO_NONE = 0  # VIRTIO_NET_HDR_GSO_NONE
GSO_TCPV4 = 1  # VIRTIO_NET_HDR_GSO_TCPV4
GSO_UDP = 3  # VIRTIO_NET_HDR_GSO_UDP (UFO: IP fragmentation; never asked for)
GSO_TCPV6 = 4  # VIRTIO_NET_HDR_GSO_TCPV6
GSO_UDP_L4 = 5  # VIRTIO_NET_HDR_GSO_UDP_L4 (USO, Linux 6.2)
GSO_ECN = 0x80  # VIRTIO_NET_HDR_GSO_ECN: the TCP packet had CWR set (RFC 3168)
VNET_HDR = struct.Struct("=BBHHHH")  # the legacy layout, in native byte order on a TUN device
VNET_HDR_LEN = VNET_HDR.size  # 10

PROTO_TCP = 6  # IANA protocol numbers
PROTO_UDP = 17
IPV4_DF = 0x4000  # RFC 791 §3.1 flags/fragment-offset word: don't fragment
IPV4_MF_OFFSET = 0x3FFF  # more fragments and fragment offset
IP_MAXPACKET = 0xFFFF  # RFC 791 total length / RFC 8200 payload length: 16 bits
TCP_CSUM_OFFSET = 16  # RFC 9293 §3.1: the checksum's offset in the TCP header
UDP_CSUM_OFFSET = 6  # RFC 768
# RFC 9293 §3.1 control bits (byte 13 of the TCP header)
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = 1, 2, 4, 8, 16, 32, 64, 128


class VnetHeader(NamedTuple):
    """struct virtio_net_hdr (legacy layout): how a packet read from or written to TUN is offloaded."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0


NO_OFFLOAD = VnetHeader()


class OffloadError(ValueError):
    """A super-packet that cannot be segmented as its offload header says."""


# -- checksums -----------------------------------------------------------------------------------------


def fold(total: int) -> int:
    """A non-negative sum of 16-bit words reduced to its one's-complement value (0 only for a zero sum)."""
    return total % 0xFFFF or (0xFFFF if total else 0)


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 one's-complement sum of `data` (a trailing odd byte padded with zero), folded."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return fold(value)


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The RFC 1071 Internet checksum of `data`: the complement of its one's-complement sum."""
    return 0xFFFF - ones_sum(data)


def pseudo_sum(src: bytes | bytearray, dst: bytes | bytearray, proto: int, length: int) -> int:
    """The one's-complement sum of the pseudo-header (RFC 9293 §3.1, RFC 768; RFC 8200 §8.1 for IPv6)."""
    return fold(int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length)


def _addresses(packet: bytes | memoryview, v4: bool) -> tuple[bytes, bytes]:
    if v4:
        return bytes(packet[12:16]), bytes(packet[16:20])
    return bytes(packet[8:24]), bytes(packet[24:40])


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int, *, udp: bool = False) -> bytes:
    """`packet` with the partial checksum at `csum_start + csum_offset` completed (what a NIC does for
    CHECKSUM_PARTIAL): the field holds the pseudo-header sum, the sum runs from `csum_start` to the end.

    A UDP checksum that computes to zero is sent as 0xFFFF (RFC 768); other protocols keep zero.
    """
    at = csum_start + csum_offset
    if csum_start < 0 or at + 2 > len(packet):
        raise OffloadError(f"checksum offset {csum_start}+{csum_offset} beyond a {len(packet)}-byte packet")
    csum = checksum(packet[csum_start:])
    if udp and csum == 0:
        csum = 0xFFFF
    return packet[:at] + csum.to_bytes(2, "big") + packet[at + 2 :]


# -- segmentation ------------------------------------------------------------------------------------------


def split(packet: bytes, offload: VnetHeader) -> list[bytes]:
    """The wire packets of a packet read with `offload`: the segments of a TSO/USO super-packet, else the
    packet itself with any partial checksum completed. Raises OffloadError for a malformed super-packet."""
    gso = offload.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if offload.flags & F_NEEDS_CSUM:
            udp = (
                offload.csum_offset == UDP_CSUM_OFFSET and _l4_proto(packet, offload.csum_start) == PROTO_UDP
            )
            return [complete_checksum(packet, offload.csum_start, offload.csum_offset, udp=udp)]
        return [packet]
    if not packet:
        raise OffloadError("empty super-packet")
    v4 = packet[0] >> 4 == 4
    if gso in (GSO_TCPV4, GSO_TCPV6):
        if v4 != (gso == GSO_TCPV4):
            raise OffloadError("GSO type does not match the IP version")
        return split_tcp(packet, offload.gso_size, l4_offset(packet, v4, offload, PROTO_TCP))
    if gso == GSO_UDP_L4:
        return split_udp(packet, offload.gso_size, l4_offset(packet, v4, offload, PROTO_UDP))
    raise OffloadError(f"unsupported GSO type {offload.gso_type}")


def _l4_proto(packet: bytes, l4: int) -> int:
    """The transport protocol of a packet whose transport header starts at `l4` (0 when unknown)."""
    if not packet:
        return 0
    if packet[0] >> 4 == 4:
        return packet[9] if len(packet) >= 20 else 0
    return packet[6] if len(packet) >= 40 and l4 == 40 else 0


def l4_offset(packet: bytes, v4: bool, offload: VnetHeader, proto: int) -> int:
    """Where the transport header starts, checked against the IP header and the offload header."""
    if v4:
        if len(packet) < 20 or packet[9] != proto:
            raise OffloadError("super-packet is not of the protocol its GSO type says")
        l4 = (packet[0] & 0x0F) * 4
        if l4 < 20 or int.from_bytes(packet[6:8], "big") & IPV4_MF_OFFSET:
            raise OffloadError("bad IPv4 header in a super-packet")
    else:
        if len(packet) < 40:
            raise OffloadError("short IPv6 super-packet")
        # Extension headers: trust csum_start (the kernel sets it to the transport header), else none.
        l4 = offload.csum_start if offload.flags & F_NEEDS_CSUM and offload.csum_start >= 40 else 40
        if l4 == 40 and packet[6] != proto:
            raise OffloadError("super-packet is not of the protocol its GSO type says")
    if offload.flags & F_NEEDS_CSUM and offload.csum_start != l4:
        raise OffloadError("csum_start does not point at the transport header")
    if offload.gso_size <= 0:
        raise OffloadError("GSO packet with gso_size 0")
    return l4


def chunk_sums(data: bytes, start: int, end: int, size: int) -> np.ndarray:
    """The one's-complement sums, not folded (each congruent modulo 0xFFFF to the RFC 1071 sum), of
    `data[start:end]` cut into `size`-byte chunks, the last one possibly shorter; int64.

    The full-sized chunks are summed in one vectorised call, as little-endian 16-bit words (an odd-sized
    chunk padded with a zero byte), whose sum is congruent to 256 times the big-endian sum wanted (2^16 =
    1 modulo 0xFFFF), which is therefore congruent to 256 times it (256 * 256 = 2^16)."""
    if end <= start:
        return np.zeros(1, np.int64)
    full = (end - start) // size
    count = -(-(end - start) // size)
    sums = np.empty(count, np.int64)
    done = 0
    if full > 1:
        if size % 2:
            raw = np.frombuffer(data, np.uint8, full * size, start).reshape(full, size)
            padded = np.zeros((full, size + 1), np.uint8)
            padded[:, :size] = raw
            words = padded.view("<u2")
        else:
            words = np.frombuffer(data, "<u2", full * size // 2, start).reshape(full, size // 2)
        # A chunk is at most 64 KiB: 2^15 words of less than 2^16 fit a 32-bit sum.
        np.left_shift(np.add.reduce(words, axis=1, dtype=np.uint32), 8, out=sums[:full], dtype=np.int64)
        done = full
    for i in range(done, count):
        off = start + i * size
        chunk = data[off : min(off + size, end)]
        value = int.from_bytes(chunk, "big")
        sums[i] = (value << 8 if len(chunk) & 1 else value) % 0xFFFF
    return sums


def packet_sums(packets: list[bytes]) -> list[int]:
    """Per packet, a number congruent modulo 0xFFFF to the packet read as one little-endian integer, and
    so to its little-endian 16-bit word sum (an odd last byte padded with zero) and to 256 times its
    RFC 1071 sum. Enough packets are summed in one vectorised call."""
    if len(packets) < 8:
        return [int.from_bytes(p, "little") % 0xFFFF for p in packets]
    lengths = np.fromiter(map(len, packets), np.int64, len(packets))
    if (lengths & 1).any() or not lengths.all():  # words need even, non-empty packets: zeros added
        packets = [p + b"\0" if len(p) & 1 else p or b"\0\0" for p in packets]
        lengths = np.fromiter(map(len, packets), np.int64, len(packets))
    starts = np.zeros(len(packets), np.int64)
    np.cumsum(lengths[:-1] >> 1, out=starts[1:])
    words = np.frombuffer(b"".join(packets), "<u2")
    sums: list[int] = np.add.reduceat(words, starts, dtype=np.uint64).tolist()
    return sums


def _folded_complement(total: int) -> int:
    return 0xFFFF - (total % 0xFFFF or 0xFFFF)


def tcp_layout(packet: bytes, l4: int) -> tuple[int, int, int]:
    """(TCP header length, headers' length, where the IP length says the packet ends) of a TCP packet
    whose header starts at `l4`; OffloadError where they do not fit."""
    if len(packet) < l4 + 20:
        raise OffloadError("truncated TCP header")
    doff = (packet[l4 + 12] >> 4) * 4
    hl = l4 + doff
    if doff < 20 or len(packet) < hl:
        raise OffloadError("bad TCP data offset")
    if packet[0] >> 4 == 4:
        end = min(len(packet), int.from_bytes(packet[2:4], "big"))
    else:
        end = min(len(packet), 40 + int.from_bytes(packet[4:6], "big"))
    if end < hl:
        raise OffloadError("IP length shorter than the headers")
    return doff, hl, end


def tcp_packet(packet: bytes) -> tuple[int, int, int] | None:
    """(TCP header offset, headers' length, where the IP length says the packet ends) of an IPv4 or
    IPv6 TCP packet (IPv6 without extension headers, IPv4 not a fragment); None for anything else."""
    n = len(packet)
    if n < 40:
        return None
    if packet[0] >> 4 == 4:
        if packet[9] != PROTO_TCP or packet[6] & 0x3F or packet[7]:  # a fragment
            return None
        l4 = (packet[0] & 0x0F) * 4
        end = int.from_bytes(packet[2:4], "big")
    elif packet[0] >> 4 == 6:
        if n < 60 or packet[6] != PROTO_TCP:
            return None
        l4 = 40  # RFC 8200 §3
        end = l4 + int.from_bytes(packet[4:6], "big")
    else:
        return None
    if l4 < 20 or n < l4 + 20:  # RFC 791 §3.1: at least 20
        return None
    hl = l4 + (packet[l4 + 12] >> 4) * 4
    end = min(end, n)
    if hl < l4 + 20 or end < hl:
        return None
    return l4, hl, end


def tcp_option(packet: bytes, l4: int, hl: int, kind: int, length: int) -> int | None:
    """Where the value of the TCP option `kind` of `length` bytes starts, in the TCP header at `l4`
    whose options end at `hl` (RFC 9293 §3.1: end of list 0, no-operation 1, else kind and length);
    None when it has none."""
    i = l4 + 20
    while i < hl:
        kind_at = packet[i]
        if kind_at == 0:  # end of options
            return None
        if kind_at == 1:  # NOP
            i += 1
            continue
        if i + 1 >= hl or packet[i + 1] < 2:
            return None
        if kind_at == kind and packet[i + 1] == length and i + length <= hl:
            return i + 2
        i += packet[i + 1]
    return None


def _ipv4_parts(packet: bytes, l4: int) -> tuple[bytes, bytes, bytes, int, int]:
    """An IPv4 header's unchanging parts around total length, identification and checksum; the
    identification; and the parts' word sum (for each segment's header checksum)."""
    a, b, c = packet[:2], packet[6:10], packet[12:l4]
    total = int.from_bytes(a, "big") + int.from_bytes(b, "big") + int.from_bytes(c, "big")
    return a, b, c, int.from_bytes(packet[4:6], "big"), total


def split_tcp(packet: bytes, mss: int, l4: int) -> list[bytes]:
    """Segment a TCP super-packet (TSO) into packets of at most `mss` payload bytes, as tcp_gso_segment:
    sequence numbers advance, FIN and PSH stay on the last segment, CWR on the first, the IPv4
    identification increments, lengths and every checksum are recomputed."""
    doff, hl, end = tcp_layout(packet, l4)
    v4 = packet[0] >> 4 == 4
    if end - hl <= mss:  # nothing to split: a single packet whose checksum is partial
        return [complete_checksum(packet[:end], l4, TCP_CSUM_OFFSET)]
    src, dst = _addresses(packet, v4)
    from_bytes = int.from_bytes
    seq = from_bytes(packet[l4 + 4 : l4 + 8], "big")
    flags = packet[l4 + 13]
    off_byte = packet[l4 + 12]
    # The TCP header but for sequence number, flags and checksum: its words' sum is the same throughout.
    ports, ack_off = packet[l4 : l4 + 4], packet[l4 + 8 : l4 + 13]
    window, rest = packet[l4 + 14 : l4 + 16], packet[l4 + 18 : hl]
    th_sum = (
        from_bytes(src, "big") + from_bytes(dst, "big") + PROTO_TCP
        + from_bytes(ports, "big") + from_bytes(packet[l4 + 8 : l4 + 12], "big")
        + from_bytes(window, "big") + from_bytes(rest, "big")
    )  # fmt: skip
    first_flags = flags & ~(TCP_FIN | TCP_PSH)
    mid_flags = first_flags & ~TCP_CWR
    last_flags = flags & ~TCP_CWR
    sums = chunk_sums(packet, hl, end, mss).tolist()
    last = len(sums) - 1
    view = memoryview(packet)
    join = b"".join
    out: list[bytes] = []
    append = out.append
    if v4:
        ip_a, ip_b, ip_c, ident, ip_sum = _ipv4_parts(packet, l4)
        pack = struct.Struct(f"!2sHH4sH{l4 - 12}s4sI5sB2sH").pack
    else:
        ip6_a, ip6_b = packet[:4], packet[6:l4]
        pack6 = struct.Struct(f"!4sH{l4 - 6}s4sI5sB2sH").pack
    for i, value in enumerate(sums):
        off = hl + i * mss
        n = mss if i < last else end - off
        tcp_len = doff + n
        f = mid_flags if 0 < i < last else first_flags if i == 0 else last_flags
        total = value + th_sum + (seq >> 16) + (seq & 0xFFFF) + (off_byte << 8 | f) + tcp_len
        csum = 0xFFFF - (total % 0xFFFF or 0xFFFF)
        if v4:
            length = l4 + tcp_len
            total = ip_sum + length + ident
            ipc = 0xFFFF - (total % 0xFFFF or 0xFFFF)
            head = pack(ip_a, length, ident, ip_b, ipc, ip_c, ports, seq, ack_off, f, window, csum)
            ident = (ident + 1) & 0xFFFF
        else:
            head = pack6(ip6_a, l4 - 40 + tcp_len, ip6_b, ports, seq, ack_off, f, window, csum)
        append(join((head, rest, view[off : off + n])))
        seq = (seq + n) & 0xFFFFFFFF
    return out


def split_udp(packet: bytes, size: int, l4: int) -> list[bytes]:
    """Segment a UDP super-packet (USO, UDP_SEGMENT) into datagrams of at most `size` payload bytes, as
    __udp_gso_segment: each with its own UDP length and checksum, the IPv4 identification incrementing."""
    if len(packet) < l4 + 8:
        raise OffloadError("truncated UDP header")
    v4 = packet[0] >> 4 == 4
    from_bytes = int.from_bytes
    end = min(len(packet), from_bytes(packet[2:4], "big") if v4 else 40 + from_bytes(packet[4:6], "big"))
    hl = l4 + 8
    if end < hl:
        raise OffloadError("IP length shorter than the headers")
    src, dst = _addresses(packet, v4)
    ports = packet[l4 : l4 + 4]
    base = from_bytes(src, "big") + from_bytes(dst, "big") + PROTO_UDP + from_bytes(ports, "big")
    if v4:
        ip_a, ip_b, ip_c, ident, ip_sum = _ipv4_parts(packet, l4)
        pack = struct.Struct(f"!2sHH4sH{l4 - 12}s4sHH").pack
    else:
        ip6_a, ip6_b = packet[:4], packet[6:l4]
        pack6 = struct.Struct(f"!4sH{l4 - 6}s4sHH").pack
    view = memoryview(packet)
    out: list[bytes] = []
    for i, value in enumerate(chunk_sums(packet, hl, end, size).tolist()):
        off = hl + i * size
        n = max(0, min(size, end - off))
        ulen = 8 + n
        # The UDP length counts in the pseudo-header and in the header. RFC 768: a computed zero is sent
        # as all ones.
        csum = _folded_complement(value + base + 2 * ulen) or 0xFFFF
        if v4:
            length = l4 + ulen
            ipc = _folded_complement(ip_sum + length + ident)
            head = pack(ip_a, length, ident, ip_b, ipc, ip_c, ports, ulen, csum)
            ident = (ident + 1) & 0xFFFF
        else:
            head = pack6(ip6_a, l4 - 40 + ulen, ip6_b, ports, ulen, csum)
        out.append(head + view[off : off + n])
    return out
