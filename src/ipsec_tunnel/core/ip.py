"""IPv4 and IPv6 headers: parse, build, the Internet checksum, ECN (RFC 6040) and ICMP errors."""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DF",
    "ECN_CE",
    "ECN_ECT0",
    "ECN_ECT1",
    "ECN_MASK",
    "ECN_NOT_ECT",
    "ICMP6_DEST_UNREACH",
    "ICMP6_PACKET_TOO_BIG",
    "ICMP6_PARAM_PROBLEM",
    "ICMP6_UNRECOGNIZED_NH",
    "ICMP_DEST_UNREACH",
    "ICMP_FRAG_NEEDED",
    "ICMP_PROTO_UNREACH",
    "IPV4_HEADER",
    "IPV4_HEADER_LEN",
    "IPV4_MIN_MTU",
    "IPV6_EXTENSIONS",
    "IPV6_FRAGMENT",
    "IPV6_HEADER_LEN",
    "IPV6_MIN_MTU",
    "PROTO_ESP",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_IPIP",
    "PROTO_IPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "IPHeader",
    "build_ipv4",
    "build_ipv6",
    "checksum",
    "decap_ecn",
    "encap_ecn",
    "icmp4_error",
    "icmp6_error",
    "parse",
    "proto_unreachable",
    "set_ecn",
    "too_big",
]

PROTO_ICMP = 1  # IANA protocol numbers
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_ESP = 50  # RFC 4303 §2
PROTO_ICMPV6 = 58
IPV4_HEADER_LEN = 20  # RFC 791 §3.1, without options
IPV6_HEADER_LEN = 40  # RFC 8200 §3
IPV4_MIN_MTU = 576  # RFC 791: the datagram every host must accept (RFC 1191 §3 floor: 68)
IPV6_MIN_MTU = 1280  # RFC 8200 §5
DF = 0x4000  # RFC 791 §3.1: Don't Fragment flag in the flags/fragment-offset word
ICMP_DEST_UNREACH = 3  # RFC 792
ICMP_PROTO_UNREACH = 2  # RFC 792: code "protocol unreachable"
ICMP_FRAG_NEEDED = 4  # RFC 1191 §4: code "fragmentation needed and DF set", MTU in the header
ICMP6_DEST_UNREACH = 1  # RFC 4443 §3.1
ICMP6_PACKET_TOO_BIG = 2  # RFC 4443 §3.2
ICMP6_PARAM_PROBLEM = 4  # RFC 4443 §3.4
ICMP6_UNRECOGNIZED_NH = 1  # RFC 4443 §3.4 code 1: unrecognized next header
# RFC 8200 §4: extension headers an ICMPv6 error may hide behind (hop-by-hop, routing, fragment,
# destination options); RFC 7045 §2 lists the IANA ones, of which these share the generic layout.
IPV6_EXTENSIONS = frozenset({0, 43, 44, 60})
IPV6_FRAGMENT = 44  # RFC 8200 §4.5: a fixed 8-byte header
ECN_MASK = 0x03  # RFC 3168 §5: the low two bits of the TOS/traffic class octet
ECN_NOT_ECT, ECN_ECT1, ECN_ECT0, ECN_CE = 0, 1, 2, 3

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")  # RFC 791 §3.1, no options (the linux/ sockets use it too)
_V4 = IPV4_HEADER
_V6 = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class IPHeader:
    """The fields of an IP header the tunnel uses; `length` is the whole packet's length."""

    version: int
    src: bytes  # packed address, 4 or 16 bytes
    dst: bytes
    proto: int  # IPv4 protocol, or IPv6 first next header
    tos: int  # IPv4 TOS / IPv6 traffic class: DSCP << 2 | ECN
    ttl: int  # TTL or hop limit
    df: bool  # IPv4 DF flag (always True for IPv6: routers never fragment it)
    header_len: int
    length: int


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(packet: bytes) -> IPHeader | None:
    """The header of an IPv4 or IPv6 packet, or None when it is not a well-formed one."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER_LEN:
            return None
        vihl, tos, length, _ident, frag, ttl, proto, _csum, src, dst = _V4.unpack_from(packet)
        ihl = (vihl & 0x0F) * 4
        if ihl < IPV4_HEADER_LEN or length < ihl or length > len(packet):
            return None
        return IPHeader(4, src, dst, proto, tos, ttl, bool(frag & DF), ihl, length)
    if version == 6:
        if len(packet) < IPV6_HEADER_LEN:
            return None
        vtcfl, plen, nh, hlim, src, dst = _V6.unpack_from(packet)
        length = IPV6_HEADER_LEN + plen
        if length > len(packet):
            return None
        return IPHeader(6, src, dst, nh, (vtcfl >> 20) & 0xFF, hlim, True, IPV6_HEADER_LEN, length)
    return None


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    *,
    tos: int = 0,
    ttl: int = 64,
    df: bool = False,
    ident: int = 0,
) -> bytes:
    """A 20-byte IPv4 header with a correct checksum."""
    hdr = _V4.pack(0x45, tos, IPV4_HEADER_LEN + payload_len, ident, DF if df else 0, ttl, proto, 0, src, dst)
    return hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]


def build_ipv6(
    src: bytes, dst: bytes, nh: int, payload_len: int, *, tclass: int = 0, hlim: int = 64
) -> bytes:
    """A 40-byte IPv6 header."""
    return _V6.pack((6 << 28) | (tclass << 20), payload_len, nh, hlim, src, dst)


def encap_ecn(inner_tos: int) -> int:
    """The outer ECN field at encapsulation, RFC 6040 §4.1 normal mode: a copy of the inner."""
    return inner_tos & ECN_MASK


def decap_ecn(inner_ecn: int, outer_ecn: int) -> int | None:
    """The inner ECN field after decapsulation, RFC 6040 §4.2 Figure 4; None means drop."""
    if outer_ecn == ECN_CE:
        return None if inner_ecn == ECN_NOT_ECT else ECN_CE
    if outer_ecn == ECN_ECT1 and inner_ecn == ECN_ECT0:
        return ECN_ECT1
    return inner_ecn


def set_ecn(packet: bytes, ecn: int) -> bytes:
    """`packet` with its ECN bits set to `ecn` (the IPv4 checksum updated)."""
    if packet[0] >> 4 == 4:
        tos = (packet[1] & ~ECN_MASK) | ecn
        head = packet[:1] + bytes((tos,)) + packet[2:10] + b"\x00\x00" + packet[12 : (packet[0] & 0x0F) * 4]
        csum = checksum(head)
        return head[:10] + csum.to_bytes(2, "big") + head[12:] + packet[len(head) :]
    first = int.from_bytes(packet[:4], "big")
    first = (first & ~(ECN_MASK << 20)) | (ecn << 20)
    return first.to_bytes(4, "big") + packet[4:]


def _icmp_body(offending: bytes, limit: int) -> bytes:
    return offending[:limit]


def _single_host4(addr: bytes) -> bool:
    """Whether IPv4 `addr` names one host: not 0.0.0.0, loopback, multicast, class E or broadcast."""
    return addr[0] not in (0, 127) and addr[0] < 224


def icmp4_error(src: bytes, offending: bytes, icmp_type: int, code: int, *, mtu: int = 0) -> bytes | None:
    """An ICMPv4 error from `src` about `offending` (RFC 792, RFC 1191 §4), or None where one is not allowed.

    RFC 1122 §3.2.2 and RFC 1812 §4.3.2.7: never about an ICMP error, a non-initial fragment, a datagram
    to a broadcast or multicast destination, or from a source that is not a single host.
    """
    hdr = parse(offending)
    if hdr is None or hdr.version != 4:
        return None
    frag_word = int.from_bytes(offending[6:8], "big")
    if frag_word & 0x1FFF:
        return None
    if not _single_host4(hdr.src) or not _single_host4(hdr.dst) or not _single_host4(src):
        return None
    if (
        hdr.proto == PROTO_ICMP
        and len(offending) > hdr.header_len
        and offending[hdr.header_len] not in (0, 8, 13, 15, 17)
    ):
        return None  # offending packet is itself an ICMP error (only echo/query types are answered)
    quoted = _icmp_body(offending[: hdr.length], IPV4_MIN_MTU - IPV4_HEADER_LEN - 8)
    rest = mtu & 0xFFFF if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED else 0
    icmp = struct.pack("!BBHI", icmp_type, code, 0, rest) + quoted
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    return build_ipv4(src, hdr.src, PROTO_ICMP, len(icmp), ttl=64) + icmp


def icmp6_error(src: bytes, offending: bytes, icmp_type: int, code: int, *, param: int = 0) -> bytes | None:
    """An ICMPv6 error from `src` about `offending` (RFC 4443 §2.4, §3), or None where one is not allowed."""
    hdr = parse(offending)
    if hdr is None or hdr.version != 6:
        return None
    if hdr.src[0] == 0xFF or hdr.src == bytes(16) or hdr.src == _LOOPBACK6:
        return None  # RFC 4443 §2.4 (e.6): not to a multicast or unspecified source
    if hdr.dst[0] == 0xFF or src[0] == 0xFF:
        # RFC 4443 §2.4 (e.2)-(e.3) and §2.2: a multicast destination gets at most a PTB, and that must
        # come from a unicast address of ours, which the core does not know: none at all
        return None
    proto, offset = _upper_layer6(offending[: hdr.length])
    if proto is None or (proto == PROTO_ICMPV6 and len(offending) > offset and offending[offset] < 128):
        return None  # RFC 4443 §2.4 (e.1): never about an ICMPv6 error message, behind headers too
    quoted = _icmp_body(offending[: hdr.length], IPV6_MIN_MTU - IPV6_HEADER_LEN - 8)
    icmp = struct.pack("!BBHI", icmp_type, code, 0, param) + quoted
    pseudo = src + hdr.src + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    icmp = icmp[:2] + checksum(pseudo + icmp).to_bytes(2, "big") + icmp[4:]
    return build_ipv6(src, hdr.src, PROTO_ICMPV6, len(icmp), hlim=64) + icmp


_LOOPBACK6 = bytes(15) + b"\x01"


def _upper_layer6(packet: bytes) -> tuple[int | None, int]:
    """(upper-layer protocol, its offset) of an IPv6 packet, past its extension headers (RFC 8200 §4);
    protocol None when the chain is cut short or a non-first fragment hides it."""
    nh, offset = packet[6], IPV6_HEADER_LEN
    for _ in range(16):  # a bound on the chain; a longer one is not answered
        if nh not in IPV6_EXTENSIONS:
            return nh, offset
        if len(packet) < offset + 8:
            return None, offset
        if nh == IPV6_FRAGMENT:
            if int.from_bytes(packet[offset + 2 : offset + 4], "big") & 0xFFF8:  # not the first fragment
                return None, offset
            nh, offset = packet[offset], offset + 8
        else:
            nh, offset = packet[offset], offset + 8 + packet[offset + 1] * 8  # RFC 8200 §4.3: 8-octet units
    return None, offset


def too_big(src: bytes, offending: bytes, mtu: int) -> bytes | None:
    """ICMP fragmentation-needed (RFC 1191 §4) or ICMPv6 packet-too-big (RFC 4443 §3.2) carrying `mtu`."""
    if offending and offending[0] >> 4 == 6:
        return icmp6_error(src, offending, ICMP6_PACKET_TOO_BIG, 0, param=max(mtu, IPV6_MIN_MTU))
    return icmp4_error(src, offending, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu=mtu)


def proto_unreachable(src: bytes, offending: bytes) -> bytes | None:
    """ICMP protocol-unreachable (RFC 792), or ICMPv6 parameter problem, unrecognized next header."""
    if offending and offending[0] >> 4 == 6:
        return icmp6_error(src, offending, ICMP6_PARAM_PROBLEM, ICMP6_UNRECOGNIZED_NH, param=6)
    return icmp4_error(src, offending, ICMP_DEST_UNREACH, ICMP_PROTO_UNREACH)
