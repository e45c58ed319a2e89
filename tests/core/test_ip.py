"""IP headers, the Internet checksum, RFC 6040 ECN and ICMP errors; scapy decodes what we build, as an
independent check of every checksum and field."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from ipsec_tunnel.core import ip


def _p(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def _scapy_checksums_ok(packet: bytes) -> bool:
    """True when scapy, recomputing every checksum of `packet`, gets the bytes we built."""
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    rebuilt = parsed.copy()
    for v4_layer in (IP, ICMP, UDP):
        if rebuilt.haslayer(v4_layer) and not isinstance(rebuilt.getlayer(v4_layer), IPerror):
            del rebuilt[v4_layer].chksum
    for v6_layer in (ICMPv6PacketTooBig, ICMPv6ParamProblem):
        if rebuilt.haslayer(v6_layer):
            del rebuilt[v6_layer].cksum
    return bytes(rebuilt.__class__(bytes(rebuilt))) == packet


# ---------------------------------------------------------------------------------------------------------
# Checksum and headers


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (with end-around carry); the checksum is
    # its one's complement.
    assert ip.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_checksum_of_odd_length_pads_with_zero() -> None:
    assert ip.checksum(b"\x12\x34\x56") == ip.checksum(b"\x12\x34\x56\x00")


def test_build_ipv4_matches_scapy() -> None:
    header = ip.build_ipv4(_p("192.0.2.1"), _p("198.51.100.7"), 17, 12, tos=0xB9, ttl=33, df=True, ident=77)
    packet = header + bytes(12)
    assert ip.checksum(header) == 0
    theirs = IP(src="192.0.2.1", dst="198.51.100.7", proto=17, tos=0xB9, ttl=33, flags="DF", id=77) / Raw(
        bytes(12)
    )
    assert packet == bytes(theirs)


def test_build_ipv6_matches_scapy() -> None:
    header = ip.build_ipv6(_p("2001:db8::1"), _p("2001:db8::2"), 17, 8, tclass=0x2E, hlim=9)
    theirs = IPv6(src="2001:db8::1", dst="2001:db8::2", nh=17, tc=0x2E, hlim=9, plen=8)
    assert header == bytes(theirs)[:40]


def test_parse_ipv4_with_options_and_trailing_bytes() -> None:
    packet = bytes(IP(src="192.0.2.1", dst="192.0.2.2", tos=0x10, ttl=5, flags="DF", options=b"\x01" * 4)
                   / UDP() / Raw(b"hi"))  # fmt: skip
    hdr = ip.parse(packet + b"TFC padding")
    assert hdr is not None
    assert (hdr.version, hdr.src, hdr.dst, hdr.proto) == (4, _p("192.0.2.1"), _p("192.0.2.2"), 17)
    assert (hdr.tos, hdr.ttl, hdr.df, hdr.header_len, hdr.length) == (0x10, 5, True, 24, len(packet))


def test_parse_ipv6() -> None:
    packet = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0xB8, hlim=3) / UDP() / Raw(b"x" * 10))
    hdr = ip.parse(packet + bytes(7))
    assert hdr is not None
    assert (hdr.version, hdr.proto, hdr.tos, hdr.ttl, hdr.df, hdr.length) == (
        6,
        17,
        0xB8,
        3,
        True,
        len(packet),
    )


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45" + bytes(18),  # shorter than a header
        b"\x44" + bytes(19),  # IHL 4 (16 bytes): impossible
        bytes(IP(dst="192.0.2.1"))[:-1] + b"",  # total length says 20, only 19 bytes
        b"\x45\x00\x00\x30" + bytes(16),  # total length 48 > 20 bytes present
        b"\x45\x00\x00\x10" + bytes(16),  # total length 16 < IHL
        b"\x60" + bytes(38),
        b"\x60\x00\x00\x00\x00\x08" + bytes(34),  # payload length beyond the buffer
        b"\x50" + bytes(40),  # version 5
        b"\x00" * 60,
    ],
)
def test_parse_refuses_what_is_not_a_whole_ip_packet(packet: bytes) -> None:
    assert ip.parse(packet) is None


# ---------------------------------------------------------------------------------------------------------
# ECN, RFC 6040


NOT_ECT, ECT1, ECT0, CE = ip.ECN_NOT_ECT, ip.ECN_ECT1, ip.ECN_ECT0, ip.ECN_CE
DROP = None

# RFC 6040 §4.2 Figure 4: rows are the arriving inner header, columns the arriving outer header
# (Not-ECT, ECT(0), ECT(1), CE); entries are the departing inner header.
RFC6040_FIGURE_4 = {
    NOT_ECT: (NOT_ECT, NOT_ECT, NOT_ECT, DROP),
    ECT0: (ECT0, ECT0, ECT1, CE),
    ECT1: (ECT1, ECT1, ECT1, CE),
    CE: (CE, CE, CE, CE),
}
OUTER_COLUMNS = (NOT_ECT, ECT0, ECT1, CE)


@pytest.mark.parametrize("inner", [NOT_ECT, ECT0, ECT1, CE])
@pytest.mark.parametrize("column", range(4))
def test_decap_ecn_is_rfc6040_figure_4(inner: int, column: int) -> None:
    assert ip.decap_ecn(inner, OUTER_COLUMNS[column]) == RFC6040_FIGURE_4[inner][column]


def test_ecn_code_points_are_rfc3168() -> None:
    # RFC 3168 §5: Not-ECT 00, ECT(1) 01, ECT(0) 10, CE 11.
    assert (NOT_ECT, ECT1, ECT0, CE) == (0b00, 0b01, 0b10, 0b11)


@pytest.mark.parametrize("tos", [0x00, 0x01, 0x02, 0x03, 0xB8, 0xBB])
def test_encap_ecn_copies_the_inner_field(tos: int) -> None:
    # RFC 6040 §4.1, normal mode.
    assert ip.encap_ecn(tos) == tos & 3


@pytest.mark.parametrize("ecn", [NOT_ECT, ECT1, ECT0, CE])
def test_set_ecn_ipv4_keeps_dscp_and_fixes_the_checksum(ecn: int) -> None:
    packet = bytes(IP(src="192.0.2.1", dst="192.0.2.2", tos=0xB8 | ECT0, options=b"\x01" * 4) / UDP())
    changed = ip.set_ecn(packet, ecn)
    assert changed[1] == 0xB8 | ecn
    assert changed[2:10] == packet[2:10]
    assert changed[12:] == packet[12:]
    assert ip.checksum(changed[:24]) == 0
    assert _scapy_checksums_ok(changed)


@pytest.mark.parametrize("ecn", [NOT_ECT, ECT1, ECT0, CE])
def test_set_ecn_ipv6_changes_only_the_ecn_bits(ecn: int) -> None:
    packet = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", tc=0xB8 | ECT0, fl=0xABCDE) / UDP())
    changed = ip.set_ecn(packet, ecn)
    parsed = IPv6(changed)
    assert (parsed.tc, parsed.fl) == (0xB8 | ecn, 0xABCDE)
    assert changed[4:] == packet[4:]


# ---------------------------------------------------------------------------------------------------------
# ICMP errors


def _udp4(size: int = 100, src: str = "192.0.2.1", **fields: Any) -> bytes:
    return bytes(IP(src=src, dst="198.51.100.1", **fields) / UDP(sport=1, dport=2) / Raw(bytes(size)))


def test_icmp4_frag_needed_carries_the_mtu_and_valid_checksums() -> None:
    offending = _udp4(1400, flags="DF")
    error = ip.too_big(_p("198.51.100.1"), offending, 1372)
    assert error is not None
    parsed = IP(error)
    assert (parsed.src, parsed.dst, parsed.proto) == ("198.51.100.1", "192.0.2.1", 1)
    assert (parsed[ICMP].type, parsed[ICMP].code, parsed[ICMP].nexthopmtu) == (3, 4, 1372)  # RFC 1191 §4
    assert len(error) <= 576  # RFC 1812 §4.3.2.3
    assert error[28:] == offending[: len(error) - 28]  # the quote is the offending packet's start
    assert _scapy_checksums_ok(error)


def test_icmp4_protocol_unreachable() -> None:
    offending = _udp4(30)
    error = ip.proto_unreachable(_p("198.51.100.1"), offending)
    assert error is not None
    parsed = IP(error)
    assert (parsed[ICMP].type, parsed[ICMP].code) == (3, 2)
    assert error[28:] == offending  # a short packet is quoted whole
    assert _scapy_checksums_ok(error)


@pytest.mark.parametrize(
    ("offending", "why"),
    [
        (_udp4(10, frag=8), "a non-initial fragment (RFC 1122 §3.2.2)"),
        (_udp4(10, src="224.0.0.5"), "a multicast source"),
        (_udp4(10, src="0.0.0.0"), "an unspecified source"),
        (
            bytes(IP(src="192.0.2.1", dst="198.51.100.1") / ICMP(type=3, code=1) / Raw(bytes(28))),
            "an ICMP error",
        ),
        (bytes(IP(src="192.0.2.1", dst="198.51.100.1") / ICMP(type=11) / Raw(bytes(28))), "an ICMP error"),
        (b"\x45\x00", "not IP"),
        (bytes(IPv6(src="2001:db8::1") / UDP()), "IPv6 handed to the IPv4 builder"),
    ],
)
def test_no_icmp4_error_about(offending: bytes, why: str) -> None:
    assert ip.icmp4_error(_p("198.51.100.1"), offending, 3, 2) is None, why


def test_icmp4_error_about_an_echo_request_is_allowed() -> None:
    echo = bytes(IP(src="192.0.2.1", dst="198.51.100.1") / ICMP(type=8) / Raw(b"ping"))
    assert ip.icmp4_error(_p("198.51.100.1"), echo, 3, 2) is not None


@pytest.mark.parametrize(("mtu", "reported"), [(1400, 1400), (1280, 1280), (1000, 1280)])
def test_icmp6_packet_too_big(mtu: int, reported: int) -> None:
    # RFC 4443 §3.2; RFC 8200 §5: nothing below the IPv6 minimum link MTU is advertised.
    offending = bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / UDP() / Raw(bytes(1500)))
    error = ip.too_big(_p("2001:db8::9"), offending, mtu)
    assert error is not None
    parsed = IPv6(error)
    assert (parsed.src, parsed.dst, parsed.nh) == ("2001:db8::9", "2001:db8::1", 58)
    assert (parsed[ICMPv6PacketTooBig].type, parsed[ICMPv6PacketTooBig].mtu) == (2, reported)
    assert len(error) == 1280  # RFC 4443 §2.4 (c): as much as fits in the minimum MTU
    assert error[48:] == offending[:1232]
    assert _scapy_checksums_ok(error)


def test_icmp6_unrecognized_next_header() -> None:
    offending = bytes(IPv6(src="2001:db8::1", dst="2001:db8::9", nh=50) / Raw(bytes(40)))
    error = ip.proto_unreachable(_p("2001:db8::9"), offending)
    assert error is not None
    problem = IPv6(error)[ICMPv6ParamProblem]
    assert (problem.type, problem.code, problem.ptr) == (4, 1, 6)  # RFC 4443 §3.4: pointer to Next Header
    assert _scapy_checksums_ok(error)


@pytest.mark.parametrize(
    "offending",
    [
        bytes(IPv6(src="ff02::1", dst="2001:db8::9") / UDP()),
        bytes(IPv6(src="::", dst="2001:db8::9") / UDP()),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9", nh=58) / Raw(b"\x01\x00" + bytes(30))),  # an error
        bytes(IP(src="192.0.2.1") / UDP()),
    ],
)
def test_no_icmp6_error_about(offending: bytes) -> None:
    assert ip.icmp6_error(_p("2001:db8::9"), offending, 1, 0) is None


def test_icmp6_error_about_an_echo_request_is_allowed() -> None:
    echo = bytes(IPv6(src="2001:db8::1", dst="2001:db8::9", nh=58) / Raw(b"\x80\x00" + bytes(30)))
    assert ip.icmp6_error(_p("2001:db8::9"), echo, 1, 0) is not None


def test_struct_layouts_are_the_rfc_sizes() -> None:
    assert struct.calcsize("!BBHHHBBH4s4s") == ip.IPV4_HEADER_LEN
    assert struct.calcsize("!IHBB16s16s") == ip.IPV6_HEADER_LEN


# Protocol review finding 8: errors hidden behind IPv6 extension headers, multicast and broadcast.


@pytest.mark.parametrize(
    "offending",
    [
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrDestOpt() / ICMPv6DestUnreach()
              / Raw(bytes(28))),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
              / ICMPv6PacketTooBig() / Raw(bytes(28))),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrFragment(offset=0, m=1)
              / ICMPv6TimeExceeded() / Raw(bytes(28))),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrFragment(offset=8) / Raw(bytes(28))),
        bytes(IPv6(src="2001:db8::1", dst="ff02::1") / UDP() / Raw(bytes(28))),
        bytes(IPv6(src="2001:db8::1", dst="ff0e::9") / UDP() / Raw(bytes(1400))),
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrDestOpt(nh=60)
              / Raw(b"\x3c\x00")),  # the chain is cut short
    ],
    ids=["error-behind-dstopt", "error-behind-hbh-routing", "error-in-first-fragment", "later-fragment",
         "multicast-link", "multicast-global", "truncated-chain"],
)  # fmt: skip
def test_no_icmp6_error_behind_extension_headers_or_to_multicast(offending: bytes) -> None:
    assert ip.icmp6_error(_p("2001:db8::9"), offending, 2, 0, param=1280) is None
    assert ip.too_big(_p("2001:db8::9"), offending, 1300) is None


def test_icmp6_error_about_an_echo_behind_extension_headers_is_allowed() -> None:
    echo = bytes(IPv6(src="2001:db8::1", dst="2001:db8::9") / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest())
    assert ip.icmp6_error(_p("2001:db8::9"), echo, 2, 0, param=1280) is not None


@pytest.mark.parametrize("dst", ["224.0.0.9", "239.1.2.3", "255.255.255.255"])
def test_no_icmp4_error_about_a_datagram_to_multicast_or_broadcast(dst: str) -> None:
    """RFC 1812 §4.3.2.7; the review saw a frag-needed from 224.0.0.9."""
    offending = bytes(IP(src="192.0.2.1", dst=dst, flags="DF") / UDP() / Raw(bytes(1400)))
    assert ip.too_big(_p(dst), offending, 1300) is None
    assert ip.icmp4_error(_p("198.51.100.1"), offending, 3, 4, mtu=1300) is None
