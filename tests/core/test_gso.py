"""core/gso.py: TSO/USO super-packets split into wire packets and TCP segments coalesced back, checked
against scapy's independent header and checksum code."""

from __future__ import annotations

import os
import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from ipsec_tunnel.core import gro, gso
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import packed
from ipsec_tunnel.core.gso import (
    F_NEEDS_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_OFFLOAD,
    OffloadError,
    VnetHeader,
)
from ipsec_tunnel.core.plane import Burst, Deliver, Outbound, Reject
from ipsec_tunnel.core.seqstore import MemoryStore
from ipsec_tunnel.core.tunnel import Tunnel
from tests.core.test_engine import Pair, inner_packet, make_pair

TS_OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]


def reference_checksum(data: bytes) -> int:
    """RFC 1071 by the book: 16-bit words, end-around carry (independent of gso's big-integer trick)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def pseudo(packet: bytes, proto: int, length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!BBH", 0, proto, length)
    return packet[8:40] + struct.pack("!I3xB", length, proto)


def transport_valid(packet: bytes) -> bool:
    """The transport checksum verifies (the sum over pseudo-header and segment is all ones)."""
    v4 = packet[0] >> 4 == 4
    l4 = (packet[0] & 0x0F) * 4 if v4 else 40
    proto = packet[9] if v4 else packet[6]
    seg = packet[l4:]
    return reference_checksum(pseudo(packet, proto, len(seg)) + seg) == 0


def tso(inner: Packet, mss: int) -> tuple[bytes, VnetHeader]:
    """A super-packet as Linux's TCP hands it to a TSO device: IP header complete (checksum included),
    the TCP checksum field holding the pseudo-header sum (CHECKSUM_PARTIAL)."""
    raw = bytearray(bytes(inner))
    v4 = raw[0] >> 4 == 4
    l4 = 20 if v4 else 40
    partial = gso.pseudo_sum(*gso._addresses(bytes(raw), v4), 6, len(raw) - l4)
    raw[l4 + 16 : l4 + 18] = partial.to_bytes(2, "big")
    kind = GSO_TCPV4 if v4 else GSO_TCPV6
    hl = l4 + (raw[l4 + 12] >> 4) * 4
    return bytes(raw), VnetHeader(F_NEEDS_CSUM, kind, hl, mss, l4, 16)


def v4_tcp(payload: bytes, *, flags: str = "A", seq: int = 1000, ident: int = 77, df: bool = True) -> Packet:
    return (
        IP(src="10.0.1.1", dst="10.0.2.1", id=ident, flags="DF" if df else 0, tos=0x10, ttl=63)
        / TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, window=500, options=TS_OPTS)
        / payload
    )


def v6_tcp(payload: bytes, *, flags: str = "A", seq: int = 1000) -> Packet:
    return (
        IPv6(src="2001:db8:1::1", dst="2001:db8:2::1", tc=0x20, fl=0x12345, hlim=63)
        / TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, window=500, options=TS_OPTS)
        / payload
    )


# -- checksums ---------------------------------------------------------------------------------------------


@given(st.binary(max_size=3000))
def test_checksum_equals_rfc1071(data: bytes) -> None:
    assert gso.checksum(data) == reference_checksum(data)


@settings(max_examples=200)
@given(st.binary(max_size=6000), st.integers(0, 40), st.integers(1, 1500))
def test_chunk_sums_are_each_chunks_rfc1071_sum(data: bytes, start: int, size: int) -> None:
    """The vectorised sums (full chunks of odd and even sizes) agree with RFC 1071 chunk by chunk."""
    start = min(start, len(data))
    sums = gso.chunk_sums(data, start, len(data), size)
    chunks = [data[i : i + size] for i in range(start, len(data), size)] or [b""]
    assert len(sums) == len(chunks)
    assert [0xFFFF - gso.fold(s) for s in sums] == [reference_checksum(c) for c in chunks]


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=1600), max_size=40))
def test_packet_sums_are_256_times_each_packets_rfc1071_sum(packets: list[bytes]) -> None:
    """Batches of every size, with odd-sized and empty packets, agree with RFC 1071 packet by packet."""
    sums = gso.packet_sums(packets)
    assert len(sums) == len(packets)
    for value, packet in zip(sums, packets, strict=True):
        assert gso.fold(value * 256) == gso.fold(0xFFFF - reference_checksum(packet))


def test_checksum_edge_cases() -> None:
    assert gso.checksum(b"") == 0xFFFF
    assert gso.checksum(b"\0\0\0") == 0xFFFF
    assert gso.checksum(b"\xff\xff") == 0  # sum is "negative zero": RFC 1071 complements it to zero
    assert gso.checksum(b"\x12") == reference_checksum(b"\x12")


def test_complete_checksum_matches_scapy() -> None:
    pkt = bytes(v4_tcp(b"hello world!"))
    partial, offload = tso(v4_tcp(b"hello world!"), 1400)
    assert gso.split(partial, offload._replace(gso_type=GSO_NONE)) == [pkt]
    udp = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=1, dport=2) / b"abc")
    raw = bytearray(udp)
    raw[26:28] = gso.pseudo_sum(raw[12:16], raw[16:20], 17, len(raw) - 20).to_bytes(2, "big")
    assert gso.split(bytes(raw), VnetHeader(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6)) == [udp]


def test_packet_without_offload_is_untouched() -> None:
    pkt = b"\x45" + os.urandom(60)
    assert gso.split(pkt, NO_OFFLOAD) == [pkt]


# -- TCP segmentation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [v4_tcp, v6_tcp], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size,mss", [(14000, 1448), (2897, 1448), (1449, 1448), (5001, 1000), (777, 100)])
def test_tcp_split_headers_and_checksums(make, size: int, mss: int) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(size)
    flags = "PA" if make is v6_tcp else "FPA"
    sup, offload = tso(make(data, flags=flags, seq=0xFFFFFF00), mss)
    segs = gso.split(sup, offload)
    assert len(segs) == -(-size // mss)
    got = b""
    for i, seg in enumerate(segs):
        assert transport_valid(seg), f"segment {i}: bad TCP checksum"
        p = IP(seg) if make is v4_tcp else IPv6(seg)
        tcp = p[TCP]
        body = bytes(tcp.payload)
        assert len(body) == (mss if i < len(segs) - 1 else size - mss * (len(segs) - 1))
        assert tcp.seq == (0xFFFFFF00 + i * mss) & 0xFFFFFFFF  # wraps
        assert tcp.ack == 99 and tcp.window == 500 and tcp.options == make(b"").getlayer(TCP).options
        last = i == len(segs) - 1
        expected_flags = set(flags) if last else {"A"}
        assert set(str(tcp.flags)) == expected_flags
        if make is v4_tcp:
            assert p.len == len(seg) and p.id == (77 + i) & 0xFFFF and p.ttl == 63 and p.tos == 0x10
            assert str(p.flags) == "DF"
            assert reference_checksum(seg[:20]) == 0, "IPv4 header checksum"
            scapy_copy = IP(seg)
            del scapy_copy.chksum, scapy_copy[TCP].chksum
            assert bytes(scapy_copy) == seg  # scapy computes the same checksums
        else:
            assert p.plen == len(seg) - 40 and p.hlim == 63 and p.tc == 0x20 and p.fl == 0x12345
            scapy_copy6 = IPv6(seg)
            del scapy_copy6[TCP].chksum
            assert bytes(scapy_copy6) == seg
        got += body
    assert got == data


def test_tcp_split_cwr_only_on_first_segment() -> None:
    sup, offload = tso(v4_tcp(os.urandom(3000), flags="CA"), 1000)
    segs = gso.split(sup, offload._replace(gso_type=GSO_TCPV4 | gso.GSO_ECN))
    flags = [str(IP(s)[TCP].flags) for s in segs]
    assert flags == ["AC", "A", "A"]


def test_tcp_split_ip_id_wraps() -> None:
    sup, offload = tso(v4_tcp(os.urandom(3000), ident=0xFFFF), 1000)
    assert [IP(s).id for s in gso.split(sup, offload)] == [0xFFFF, 0, 1]


def test_small_tso_packet_only_gets_its_checksum() -> None:
    pkt = v4_tcp(b"x" * 100)
    sup, offload = tso(pkt, 1448)
    assert gso.split(sup, offload) == [bytes(pkt)]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p, o: (p, o._replace(gso_type=GSO_TCPV6)),  # version mismatch
        lambda p, o: (p, o._replace(gso_size=0)),
        lambda p, o: (p, o._replace(csum_start=24)),
        lambda p, o: (p[:30], o),
        lambda p, o: (p[:9] + b"\x11" + p[10:], o),  # says UDP
        lambda p, o: (b"", o),
        lambda p, o: (p, o._replace(gso_type=gso.GSO_UDP)),
    ],
)
def test_malformed_super_packets_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    sup, offload = tso(v4_tcp(os.urandom(3000)), 1000)
    packet, off = mangle(sup, offload)
    with pytest.raises(OffloadError):
        gso.split(packet, off)


# -- UDP segmentation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size,seg", [(3000, 1200), (2400, 1200), (501, 100)])
def test_udp_split(v6: bool, size: int, seg: int) -> None:
    data = os.urandom(size)
    ip = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") if v6 else IP(src="10.0.1.1", dst="10.0.2.1", id=5)
    raw = bytearray(bytes(ip / UDP(sport=4433, dport=443) / data))
    l4 = 40 if v6 else 20
    partial = gso.pseudo_sum(*gso._addresses(bytes(raw), not v6), 17, len(raw) - l4)
    raw[l4 + 6 : l4 + 8] = partial.to_bytes(2, "big")
    segs = gso.split(bytes(raw), VnetHeader(F_NEEDS_CSUM, GSO_UDP_L4, l4 + 8, seg, l4, 6))
    assert b"".join(bytes((IPv6(s) if v6 else IP(s))[UDP].payload) for s in segs) == data
    for i, s in enumerate(segs):
        assert transport_valid(s)
        p = IPv6(s) if v6 else IP(s)
        assert p[UDP].len == len(s) - l4
        if not v6:
            assert p.id == 5 + i and reference_checksum(s[:20]) == 0


# -- coalescing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [v4_tcp, v6_tcp], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size,mss", [(14000, 1448), (2896, 1448), (4001, 1000), (63000, 1400)])
def test_split_then_coalesce_round_trip(make, size: int, mss: int) -> None:  # type: ignore[no-untyped-def]
    sup, offload = tso(make(os.urandom(size), flags="PA"), mss)
    assert gro.coalesce(gso.split(sup, offload)) == [(offload, sup)]


def test_coalesced_header_is_what_the_kernel_expects() -> None:
    sup, _ = tso(v4_tcp(os.urandom(5000), flags="PA"), 1448)
    [(off, merged)] = gro.coalesce(gso.split(sup, VnetHeader(F_NEEDS_CSUM, GSO_TCPV4, 0, 1448, 20, 16)))
    assert off.flags == F_NEEDS_CSUM and off.gso_type == GSO_TCPV4 and off.gso_size == 1448
    assert off.csum_start == 20 and off.csum_offset == 16 and off.hdr_len == 20 + 32
    p = IP(merged)
    assert p.len == len(merged) == 20 + 32 + 5000 and reference_checksum(merged[:20]) == 0
    # the checksum field holds the folded pseudo-header sum over the whole TCP length, not inverted
    ph = merged[12:20] + struct.pack("!BBH", 0, 6, len(merged) - 20)
    assert p[TCP].chksum == 0xFFFF - reference_checksum(ph)


def test_coalesce_keeps_other_packets_and_order() -> None:
    data = os.urandom(4000)
    segs = gso.split(*tso(v4_tcp(data), 1000))
    other = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=1, dport=2) / b"udp")
    syn = bytes(v4_tcp(b"", flags="S"))
    out = gro.coalesce([segs[0], other, segs[1], syn, segs[2], segs[3]])
    assert [o for o, _ in out] == [out[0][0], NO_OFFLOAD, NO_OFFLOAD]
    assert out[0][0].gso_type == GSO_TCPV4 and bytes(IP(out[0][1])[TCP].payload) == data
    assert [p for _, p in out[1:]] == [other, syn]


def test_coalesce_stops_at_gaps_short_segments_and_changed_fields() -> None:
    data = os.urandom(6000)
    segs = gso.split(*tso(v4_tcp(data), 1000))
    # a gap: segment 2 missing -> [0,1] merged, then [3,4,5]
    out = gro.coalesce([segs[0], segs[1], segs[3], segs[4], segs[5]])
    assert [len(bytes(IP(p)[TCP].payload)) for _, p in out] == [2000, 3000]
    # a different ACK number does not merge
    other_ack = IP(segs[1])
    other_ack[TCP].ack = 100
    del other_ack.chksum, other_ack[TCP].chksum
    out = gro.coalesce([segs[0], bytes(other_ack), segs[2]])
    assert len(out) == 3
    # a short segment closes the super-packet
    short = bytes(v4_tcp(os.urandom(500), seq=1000 + 6000))
    after = bytes(v4_tcp(os.urandom(1000), seq=1000 + 6500))
    out = gro.coalesce([*segs, short, after])
    assert [len(bytes(IP(p)[TCP].payload)) for _, p in out] == [6500, 1000]


def test_coalesce_does_not_merge_a_bad_checksum() -> None:
    data = os.urandom(3000)
    segs = gso.split(*tso(v4_tcp(data), 1000))
    bad = bytearray(segs[1])
    bad[-1] ^= 0x01
    out = gro.coalesce([segs[0], bytes(bad), segs[2]])
    assert out == [(NO_OFFLOAD, segs[0]), (NO_OFFLOAD, bytes(bad)), (NO_OFFLOAD, segs[2])]
    bad_ip = bytearray(segs[2])
    bad_ip[8] ^= 0x01  # TTL changed, header checksum not updated: different key, but still checked
    out = gro.coalesce([segs[0], segs[1], bytes(bad_ip)])
    assert out[-1] == (NO_OFFLOAD, bytes(bad_ip))


def test_coalesce_odd_sized_last_segment() -> None:
    sup, offload = tso(v4_tcp(os.urandom(2001), flags="PA"), 1000)
    assert gro.coalesce(gso.split(sup, offload)) == [(offload, sup)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1001, 4999), st.booleans(), st.data())
def test_coalesce_never_merges_a_corrupted_segment(size: int, v6: bool, data: st.DataObject) -> None:
    make = v6_tcp if v6 else v4_tcp
    good = gso.split(*tso(make(os.urandom(size), flags="PA"), 1000))
    which = data.draw(st.integers(0, len(good) - 1))
    bad = bytearray(good[which])
    at = data.draw(st.integers(40 if v6 else 0, len(bad) - 1))  # IPv6 has no header checksum
    bad[at] ^= data.draw(st.integers(1, 255))
    out = gro.coalesce([*good[:which], bytes(bad), *good[which + 1 :]])
    for offload, packet in out:
        if offload.gso_type:  # whatever was merged is only segments that came in intact
            assert all(part in good for part in gso.split(packet, offload))
    assert (NO_OFFLOAD, bytes(bad)) in out


def test_coalesce_respects_64k_limit() -> None:
    segs = gso.split(*tso(v4_tcp(os.urandom(60000)), 1400))
    more = gso.split(*tso(v4_tcp(os.urandom(14000), seq=1000 + 60000), 1400))
    out = gro.coalesce(segs + more)
    assert all(len(p) <= 0xFFFF for _, p in out)
    assert sum(len(bytes(IP(p)[TCP].payload)) for _, p in out) == 74000


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20000), st.integers(100, 1500), st.booleans())
def test_round_trip_property(size: int, mss: int, v6: bool) -> None:
    make = v6_tcp if v6 else v4_tcp
    sup, offload = tso(make(os.urandom(size), flags="PA"), mss)
    segs = gso.split(sup, offload)
    assert all(transport_valid(s) for s in segs)
    out = gro.coalesce(segs)
    if len(segs) == 1:
        assert out == [(NO_OFFLOAD, segs[0])]
    elif len(segs) <= gro.MAX_SEGMENTS:
        assert out == [(offload, sup)]
    else:  # the kernel's GRO limit: more than one super-packet
        assert len(out) == -(-len(segs) // gro.MAX_SEGMENTS) and out[0][0].gso_type == offload.gso_type
        parse = IPv6 if v6 else IP
        assert b"".join(bytes(parse(p)[TCP].payload) for _, p in out) == bytes(parse(sup)[TCP].payload)


# -- the engine's batch APIs: the same results as packet by packet ------------------------------------------


def _twins(cipher: str = "aes-gcm") -> tuple[Pair, Pair]:
    """Two identical engine pairs (same keys, same state) for a differential test."""
    return make_pair(cipher=cipher), make_pair(cipher=cipher)


def _mixed_inner() -> list[bytes]:
    return [
        inner_packet(4, 100),
        inner_packet(4, 1400, tos=0x10),
        inner_packet(6, 300, ttl=9),
        b"\x45\x00",  # not IP
        inner_packet(4, 1400, tos=0x10) + b"trailing",  # longer than its IP length
        inner_packet(4, 3000, df=True),  # too big for the path
        inner_packet(6, 200),
        bytes(v4_tcp(os.urandom(1000))),
    ]


def _delivered(results: list[object]) -> list[bytes]:
    return [r.packet for r in results if isinstance(r, Deliver)]


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
def test_send_batch_equals_its_packets_as_batches_of_one(cipher: str) -> None:
    one, many = _twins(cipher)
    for pair in (one, many):
        pair.a.path_mtu["t0"] = 1500
    packets = _mixed_inner()
    singles = [one.a.send("t0", p, 5.0) for p in packets]
    batch = many.a.send_batch("t0", packets, 5.0)
    flat_single = [
        r.payload if isinstance(r, Outbound) else r.packet for r in singles if not isinstance(r, Drop)
    ]
    flat_batch = [x for b in batch for x in (b.payloads if isinstance(b, Burst) else [b.packet])]
    if cipher == "aes-gcm":  # counter IVs: byte-identical
        assert flat_batch == flat_single
    else:
        assert len(flat_batch) == len(flat_single)
    assert one.a.tx_accepted == many.a.tx_accepted and one.a.tx_drops == many.a.tx_drops
    assert one.a.stats_for("t0") == many.a.stats_for("t0")
    assert [type(b) for b in batch] == [Burst] * 4 + [Deliver] + [Burst] * 2  # by TOS/TTL/DF, ICMP apart
    for r in singles:  # every datagram decrypts at B, in order
        if isinstance(r, Outbound):
            assert isinstance(many.b.receive(r.src, r.dst, r.payload, 5.0, r.tos), Deliver)


@pytest.mark.parametrize("udp", [False, True])
def test_receive_batch_equals_its_datagrams_as_batches_of_one(udp: bool) -> None:
    one, many = _twins()
    a_addr, b_addr = packed(one.a_addr), packed(one.b_addr)
    wire = [r.payload for p in _mixed_inner() if isinstance(r := one.a.send("t0", p, 1.0), Outbound)]
    junk = [wire[0], b"\x00\x00\x00\x01junkjunk", wire[3][:-1] + b"\x00", b"\xff", b"\x00\x00\x00\x00ike"]
    wire = [wire[0], wire[1], *junk, wire[2], *wire[3:]]
    receive = one.b.receive_udp if udp else one.b.receive
    singles = [receive(a_addr, b_addr, w, 2.0, 0) for w in wire]
    deliver, rejects = many.b.receive_batch(a_addr, b_addr, wire, 2.0, 0, udp=udp)
    assert deliver.get("t0", []) == _delivered(list(singles))
    assert one.b.rx_accepted == many.b.rx_accepted and one.b.rx_drops == many.b.rx_drops
    assert one.b.keepalives == many.b.keepalives and one.b.stats_for("t0") == many.b.stats_for("t0")
    assert len(rejects) == sum(1 for r in singles if isinstance(r, Reject))


def test_receive_batch_slow_paths_match() -> None:
    """ECN marks on the outer header and --peer-net policies take receive()'s own path."""
    one, many = _twins()
    for pair in (one, many):
        pair.b.tunnels.remove("t0")
        pair.b.tunnels.add(Tunnel("t0", pair.b_addr, pair.a_addr, peer_nets=("192.168.1.0/24",)))
    pkts = [inner_packet(4, 100, tos=2), inner_packet(4, 100, src="192.168.9.9"), inner_packet(6, 100, tos=1)]
    wire = [r.payload for p in pkts if isinstance(r := one.a.send("t0", p, 1.0), Outbound)]
    a_addr, b_addr = packed(one.a_addr), packed(one.b_addr)
    for tos in (0, 3, 1):
        singles = [one.b.receive(a_addr, b_addr, w, 2.0, tos) for w in wire]
        deliver, _ = many.b.receive_batch(a_addr, b_addr, wire, 2.0, tos)
        assert deliver.get("t0", []) == _delivered(list(singles))
        assert one.b.rx_drops == many.b.rx_drops


@pytest.mark.parametrize("make", [v4_tcp, v6_tcp])
@pytest.mark.parametrize("mss", [1310, 1024, 1386])
def test_coalesced_packets_fit_the_ip_length_field(make: object, mss: int) -> None:
    """A super-packet's IPv4 total length (IPv6 payload length) stays within 16 bits, for every MSS,
    also those where 64 KiB of payload plus the headers would just overflow it."""
    segs: list[bytes] = []
    for k in range(2):
        extra = {"ident": 77 + 30 * k} if make is v4_tcp else {}
        sup, offload = tso(make(os.urandom(mss * 30), seq=1000 + k * mss * 30, **extra), mss)  # type: ignore[operator]
        segs += gso.split(sup, offload)
    out = gro.coalesce(segs)
    assert sum(len(p) - 52 - (20 if p[0] >> 4 == 6 else 0) for _, p in out) == mss * 60  # nothing lost
    for _offload, packet in out:
        length = len(packet) if packet[0] >> 4 == 4 else len(packet) - 40
        assert length <= 0xFFFF
    again = [seg for offload, packet in out for seg in gso.split(packet, offload)]
    assert again == segs  # the kernel's segmentation of what we wrote gives back what came


@pytest.mark.parametrize("df", [True, False])
def test_ipv4_identification_must_go_up_without_df(df: bool) -> None:
    """Without DF the identification is kept as it came: segments whose IDs do not go up by one stay
    apart (RFC 6864 §4.1: with DF it means nothing, and they merge)."""
    first = gso.split(*tso(v4_tcp(os.urandom(3000), ident=100, df=df), 1000))
    second = gso.split(*tso(v4_tcp(os.urandom(3000), seq=4000, ident=500, df=df), 1000))
    out = gro.coalesce(first + second)
    assert [len(gso.split(p, o)) for o, p in out] == ([6] if df else [3, 3])
    if not df:
        assert [seg for o, p in out for seg in gso.split(p, o)] == first + second


# -- the vectorised single-flow path against the general one -----------------------------------------------


def _segment(seq: int, size: int, *, psh: bool, ident: int, window: int = 500, tsval: int = 123456) -> bytes:
    """An IPv4 (DF) TCP segment with timestamps and valid checksums, built without scapy (fast)."""
    payload = bytes((seq + i) & 0xFF for i in range(size))
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, 654321)
    flags = 0x18 if psh else 0x10
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq & 0xFFFFFFFF, 99, 0x80, flags, window, 0, 0) + options
    src, dst = bytes([10, 0, 1, 1]), bytes([10, 0, 2, 1])
    csum = gso.checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp) + size) + tcp + payload)
    tcp = tcp[:16] + csum.to_bytes(2, "big") + tcp[18:]
    total = 20 + len(tcp) + size
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, total, ident & 0xFFFF, 0x4000, 63, 6, 0, src, dst)
    ip = ip[:10] + gso.checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + tcp + payload


def _run(segments: list[bytes]) -> list[tuple[VnetHeader, bytes]] | None:
    """The vectorised single-flow path, or None where it declines (or cannot take odd lengths)."""
    lengths = np.fromiter(map(len, segments), np.int64, len(segments))
    if (lengths & 1).any():
        return None
    return gro._coalesce_run(segments, lengths, b"".join(segments))


@st.composite
def one_flow(draw: st.DrawFn) -> list[bytes]:
    mss = draw(st.sampled_from([536, 1000, 1310, 1386, 1448]))
    count = draw(st.integers(8, 150))
    segments, seq = [], draw(st.integers(0, 0xFFFFFFFF))
    for i in range(count):
        short = draw(st.integers(0, 9)) == 0
        size = draw(st.integers(1, mss - 1)) if short else mss
        if draw(st.integers(0, 3)):  # mostly even: the vectorised path takes even lengths only
            size -= size & 1 if size > 1 else 0
        segments.append(_segment(seq, size, psh=draw(st.integers(0, 12)) == 0, ident=1000 + i))
        seq += size
    if draw(st.booleans()):  # a damaged checksum somewhere
        which = draw(st.integers(0, count - 1))
        bad = bytearray(segments[which])
        bad[-1] ^= 0x40
        segments[which] = bytes(bad)
    return segments


@settings(max_examples=150, deadline=None)
@given(one_flow())
def test_single_flow_run_merges_exactly_as_the_general_path(segments: list[bytes]) -> None:
    sums = gso.packet_sums(segments)
    run = _run(segments)
    assert run == gro._coalesce_flows(segments, sums) or run is None
    assert gro._coalesce_flows(segments) == gro._coalesce_flows(segments, sums)  # the sums taken when needed
    out = gro.coalesce(segments)
    assert [seg for o, p in out for seg in gso.split(p, o)] == segments  # GSO gives back what came


def test_seeded_bulk_batches_mostly_go_the_vectorised_way_and_agree() -> None:
    """200 seeded batches like a bulk transfer's (PSH, short segments and new timestamps here and there):
    the vectorised path takes most of them, and gives what the general path gives."""
    rng = random.Random(4303)
    taken = 0
    for _ in range(200):
        mss = rng.choice([1000, 1386, 1448])
        segments, seq = [], rng.randrange(1 << 32)
        tick = rng.randrange(10, 80)  # the timestamp option moves on every `tick` segments
        for i in range(rng.randrange(8, 120)):
            size = mss if rng.random() > 0.03 else rng.randrange(1, mss // 2) * 2
            segments.append(_segment(seq, size, psh=rng.random() < 0.02, ident=i, tsval=i // tick))
            seq += size
        run = _run(segments)
        if run is not None:
            taken += 1
            assert run == gro._coalesce_flows(segments, gso.packet_sums(segments))
    assert taken >= 150


def test_bulk_batch_takes_the_vectorised_path_with_psh_and_short_cuts() -> None:
    sizes = [1386] * 70 + [700] + [1386] * 50
    segments, seq = [], 5000
    for i, size in enumerate(sizes):
        segments.append(_segment(seq, size, psh=i == 100, ident=i))
        seq += size
    sums = gso.packet_sums(segments)
    run = _run(segments)
    assert run is not None
    assert run == gro._coalesce_flows(segments, sums)
    # 47 full segments fill 64 KiB; the short one closes the next; PSH closes one at 101; then the rest.
    assert [len(gso.split(p, o)) for o, p in run] == [47, 24, 30, 20]


@pytest.mark.parametrize("spoil", ["second flow", "sequence gap", "no DF", "SYN", "short twice"])
def test_other_batches_go_the_general_way(spoil: str) -> None:
    sizes = [1000] * 5 + ([500, 500] if spoil == "short twice" else [1000, 1000]) + [1000] * 13
    segments, seq = [], 1
    for i, size in enumerate(sizes):
        segments.append(
            _segment(seq + (1 if spoil == "sequence gap" and i == 7 else 0), size, psh=False, ident=i)
        )
        seq += size
    if spoil == "second flow":
        other = bytearray(segments[7])
        other[22:24] = (5202).to_bytes(2, "big")  # another port (its checksum no longer matters)
        segments[7] = bytes(other)
    elif spoil == "no DF":
        segments = [s[:6] + b"\x00" + s[7:10] + b"\0\0" + s[12:] for s in segments]
        segments = [s[:10] + gso.checksum(s[:20]).to_bytes(2, "big") + s[20:] for s in segments]
    elif spoil == "SYN":
        bad = bytearray(segments[3])
        bad[33] |= 0x02
        segments[3] = bytes(bad)
    sums = gso.packet_sums(segments)
    assert _run(segments) is None
    out = gro.coalesce(segments)
    assert out == gro._coalesce_flows(segments, sums) and len(out) >= 2


def test_a_new_window_or_timestamp_cuts_a_run_as_a_new_flow_key_would() -> None:
    segments, seq = [], 1
    for i in range(60):
        window = 500 if i < 20 else 600  # the window opens at 20 ...
        stamp = 1 if i < 40 else 2  # ... a new timestamp at 40
        segments.append(_segment(seq, 1386, psh=False, ident=i, window=window, tsval=stamp))
        seq += 1386
    run = _run(segments)
    assert run is not None and run == gro._coalesce_flows(segments, gso.packet_sums(segments))
    assert [len(gso.split(p, o)) for o, p in run] == [20, 20, 20]


def test_a_damaged_segment_leaves_its_super_packet_unmerged_on_the_vectorised_path() -> None:
    segments, seq = [], 1
    for i in range(100):
        segments.append(_segment(seq, 1386, psh=False, ident=i))
        seq += 1386
    bad = bytearray(segments[60])
    bad[100] ^= 1
    segments[60] = bytes(bad)
    run = _run(segments)
    assert run is not None
    kinds = [o.gso_type for o, _ in run]
    # 47 + 47 + 6: the second super-packet, with the damaged one, is written as it came, segment by segment
    assert kinds == [gso.GSO_TCPV4] + [gso.GSO_NONE] * 47 + [gso.GSO_TCPV4]
    assert [p for _, p in run[1:48]] == segments[47:94]


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
def test_receive_batch_of_one_sa_equals_batches_of_one(cipher: str) -> None:
    """A batch all of one SPI goes through `decrypt_many`: replays (also within the batch), a forged
    packet and a short one are dropped and counted exactly as one by one, and the journal keeps up."""
    one, many = _twins(cipher)
    a_addr, b_addr = packed(one.a_addr), packed(one.b_addr)
    wire = [r.payload for p in _mixed_inner() if isinstance(r := one.a.send("t0", p, 1.0), Outbound)]
    forged = wire[2][:-1] + bytes([wire[2][-1] ^ 1])
    wire = [wire[0], wire[1], wire[0], forged, *wire[2:], wire[1], wire[4][:9]]
    journals = []
    for pair in (one, many):
        sa = pair.b.sad.get(b_addr, a_addr, 0x1001)
        assert sa is not None
        journals.append(journal := MemoryStore())
        sa.attach(None, journal.slot(sa))
    singles = [one.b.receive(a_addr, b_addr, w, 2.0, 0) for w in wire]
    deliver, rejects = many.b.receive_batch(a_addr, b_addr, wire, 2.0, 0)
    assert deliver.get("t0", []) == _delivered(list(singles))
    assert one.b.rx_accepted == many.b.rx_accepted and one.b.rx_drops == many.b.rx_drops
    assert many.b.rx_drops[Drop.REPLAYED] == 3 and many.b.rx_drops[Drop.AUTH_FAILED] == 1  # the cut one too
    assert one.b.stats_for("t0") == many.b.stats_for("t0") and not rejects
    sa_one, sa_many = (p.b.sad.get(b_addr, a_addr, 0x1001) for p in (one, many))
    assert sa_one is not None and sa_many is not None
    assert (sa_one.packets, sa_one.bytes, sa_one.replay.top, sa_one.replay.bitmap) == (
        sa_many.packets, sa_many.bytes, sa_many.replay.top, sa_many.replay.bitmap,
    )  # fmt: skip
    [journal_one], [journal_many] = (j.journal.values() for j in journals)
    assert journal_one == journal_many and journal_many[0] == sa_many.replay.top and sa_many.packets > 0


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
@pytest.mark.parametrize("damage", ["none", "forged", "cut"])
def test_in_order_batch_of_one_sa_equals_batches_of_one(damage: str, cipher: str) -> None:
    """The in-order batch, the window checked and moved once for all: with a forged or cut packet among
    them, the drops, counters and window are still those of one by one."""
    one, many = _twins(cipher)
    a_addr, b_addr = packed(one.a_addr), packed(one.b_addr)
    inner = inner_packet(4, 300)
    wire = [r.payload for _ in range(40) if isinstance(r := one.a.send("t0", inner, 1.0), Outbound)]
    if damage == "forged":
        wire[17] = wire[17][:-1] + bytes([wire[17][-1] ^ 0x80])
    elif damage == "cut":
        wire[30] = wire[30][:-5]
    singles = [one.b.receive(a_addr, b_addr, w, 2.0, 0) for w in wire]
    deliver, _ = many.b.receive_batch(a_addr, b_addr, wire, 2.0, 0)
    assert deliver.get("t0", []) == _delivered(list(singles))
    assert len(deliver["t0"]) == (40 if damage == "none" else 39)
    assert one.b.rx_drops == many.b.rx_drops and one.b.stats_for("t0") == many.b.stats_for("t0")
    sa_one, sa_many = (p.b.sad.get(b_addr, a_addr, 0x1001) for p in (one, many))
    assert sa_one is not None and sa_many is not None
    assert (sa_one.packets, sa_one.bytes, sa_one.drops) == (sa_many.packets, sa_many.bytes, sa_many.drops)
    assert sa_many.packets == len(deliver["t0"])
    assert (sa_one.replay.top, sa_one.replay.bitmap) == (sa_many.replay.top, sa_many.replay.bitmap)
    # ... and the batch again is all replays
    again, _ = many.b.receive_batch(a_addr, b_addr, wire, 3.0, 0)
    assert not again and many.b.rx_drops[Drop.REPLAYED] == (40 if damage == "none" else 39)


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
@pytest.mark.parametrize("outer_tos", [0, 1])  # ECT(1) outside: each packet's ECN is looked at
def test_in_order_batch_of_mixed_inner_packets_equals_batches_of_one(outer_tos: int, cipher: str) -> None:
    """In order and all authentic, but not all whole inner packets (TFC padding, IPv6, TCP): each is
    delivered and counted exactly as one by one, and the window moves once for all."""
    one, many = _twins(cipher)
    a_addr, b_addr = packed(one.a_addr), packed(one.b_addr)
    inner = [*_mixed_inner(), *_mixed_inner()]
    wire = [r.payload for p in inner if isinstance(r := one.a.send("t0", p, 1.0), Outbound)]
    singles = [one.b.receive(a_addr, b_addr, w, 2.0, outer_tos) for w in wire]
    deliver, rejects = many.b.receive_batch(a_addr, b_addr, wire, 2.0, outer_tos)
    assert deliver.get("t0", []) == _delivered(list(singles)) and len(deliver["t0"]) == len(wire)
    assert one.b.rx_drops == many.b.rx_drops and one.b.stats_for("t0") == many.b.stats_for("t0")
    assert not rejects and one.b.rx_accepted == many.b.rx_accepted == len(wire)
    sa_one, sa_many = (p.b.sad.get(b_addr, a_addr, 0x1001) for p in (one, many))
    assert sa_one is not None and sa_many is not None
    assert (sa_one.packets, sa_one.bytes, sa_one.replay.top) == (sa_many.packets, sa_many.bytes, len(wire))


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc", "chacha20-poly1305"])
def test_an_in_order_batch_is_opened_without_decrypt(cipher: str) -> None:
    """AEAD and CBC with an HMAC (issue 13): an in-order batch of one SA is opened many at a time, not
    through `decrypt` packet by packet, and gives the inner packets themselves."""
    pair = make_pair(cipher=cipher)
    inner = [inner_packet(4, 100 + i) for i in range(20)]
    wire = [r.payload for p in inner if isinstance(r := pair.a.send("t0", p, 1.0), Outbound)]
    sa = pair.b.sad.get(packed(pair.b_addr), packed(pair.a_addr), 0x1001)
    assert sa is not None

    def one_by_one(*_args: object) -> Drop:
        raise AssertionError("decrypt called")

    sa.decrypt = one_by_one  # type: ignore[method-assign,assignment]
    assert sa.decrypt_many(wire, 2.0, lambda _e: None) == (inner, 0)
    assert (sa.packets, sa.replay.top) == (20, 20)


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
def test_a_batch_behind_a_packet_opened_first_still_takes_the_batch_way(cipher: str) -> None:
    """Read ahead (issue 13): a later packet opened first moves the window's top past a bulk batch; the
    batch, all new and inside the window, is still opened many at a time and leaves the window, the
    counters and the inner packets as one by one would; sent again, it is all replays."""
    pair = make_pair(cipher=cipher)
    inner = [inner_packet(4, 100 + i) for i in range(30)]
    wire = [r.payload for p in inner if isinstance(r := pair.a.send("t0", p, 1.0), Outbound)]
    sa = pair.b.sad.get(packed(pair.b_addr), packed(pair.a_addr), 0x1001)
    assert sa is not None
    emit = lambda _e: None  # noqa: E731
    assert sa.decrypt(wire[29], 2.0, emit) == (inner[29], 4)  # the small one, read ahead, opened first
    singles: list[object] = []

    def one_by_one(*args: object) -> object:
        singles.append(args)
        raise AssertionError("decrypt called")

    real = sa.decrypt
    sa.decrypt = one_by_one  # type: ignore[method-assign,assignment]
    assert sa.decrypt_many(wire[:29], 2.0, emit) == (inner[:29], 0)
    assert (sa.packets, sa.replay.top, sa.replay.bitmap & ((1 << 30) - 1)) == (30, 30, (1 << 30) - 1)
    sa.decrypt = real  # type: ignore[method-assign]
    again, others = sa.decrypt_many(wire[:29], 3.0, emit)
    assert again == [Drop.REPLAYED] * 29 and others == 29 and sa.packets == 30


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
def test_a_forged_packet_read_ahead_never_moves_the_window(cipher: str) -> None:
    """A forged datagram with a later sequence number opened first is dropped and leaves the window
    where it was, so the batch before it is opened the batch way with the top unchanged by the forgery."""
    pair = make_pair(cipher=cipher)
    inner = [inner_packet(4, 100 + i) for i in range(20)]
    wire = [r.payload for p in inner if isinstance(r := pair.a.send("t0", p, 1.0), Outbound)]
    sa = pair.b.sad.get(packed(pair.b_addr), packed(pair.a_addr), 0x1001)
    assert sa is not None
    forged = wire[19][:4] + (1000).to_bytes(4, "big") + wire[19][8:]  # a far later number, its old ICV
    assert sa.decrypt(forged, 2.0, lambda _e: None) == Drop.AUTH_FAILED
    assert (sa.replay.top, sa.replay.bitmap) == (0, 0)
    assert sa.decrypt_many(wire, 2.0, lambda _e: None) == (inner, 0) and sa.replay.top == 20


def test_decrypt_many_of_nothing_is_nothing() -> None:
    pair = make_pair()
    sa = pair.b.sad.get(packed(pair.a_addr), packed(pair.b_addr), 0x1001)
    assert sa is not None and sa.decrypt_many([], 1.0, lambda _e: None) == ([], 0) and sa.packets == 0


def _cancelling(count: int, v6: bool = False) -> tuple[list[bytes], list[bytes]]:
    """`count` good segments of one flow, and the same with segment 1's payload word one up and the
    last-but-one's one down, so that their checksum errors cancel out in a sum over the group."""
    make = v6_tcp if v6 else v4_tcp
    good = gso.split(*tso(make(bytes(1000 * count), flags="PA"), 1000))
    assert len(good) == count
    up, down = bytearray(good[1]), bytearray(good[-2])
    up[-1] += 1  # a zero payload: the last word goes from 0x0000 to 0x0001 ...
    down[-2:] = b"\xff\xfe"  # ... and from 0x0000 to 0xFFFE (-1 in one's complement)
    return good, [good[0], bytes(up), *good[2:-2], bytes(down), good[-1]]


@pytest.mark.parametrize("count", [1, 3, 8, 40])
def test_a_batch_of_bare_acks_passes_unchanged_without_summing_it(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ACKs a transfer's sender gets: nothing to merge, so no sums are taken (NumPy's, for 8 or more);
    the same packets as with the sums given. A data segment among them takes them, for the batch."""
    acks = [bytes(v4_tcp(b"", seq=1, ident=n)) for n in range(count)]
    summed: list[int] = []

    def counted(packets: list[bytes]) -> list[int]:
        summed.append(len(packets))
        return gso.packet_sums(packets)

    monkeypatch.setattr(gro, "packet_sums", counted)
    assert gro.coalesce(acks) == [(NO_OFFLOAD, p) for p in acks] and summed == []
    data = [*acks, bytes(v4_tcp(b"x" * 100, seq=1, ident=99)), bytes(v6_tcp(b"y" * 100))]
    assert gro.coalesce(data) == gro._coalesce_flows(data, gso.packet_sums(data)) and summed == [count + 2]


@pytest.mark.parametrize("count", [4, 16])
@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_checks_every_segment_alone(count: int, v6: bool) -> None:
    """Protocol review finding 7: two bad segments whose errors cancel out were merged into one
    NEEDS_CSUM super-packet that nobody verifies; each one must be checked alone."""
    good, damaged = _cancelling(count, v6)
    assert [transport_valid(p) for p in damaged] == [True, False] + [True] * (count - 4) + [False, True]
    out = gro.coalesce(damaged)
    for offload, packet in out:
        if offload.gso_type:
            assert all(part in good for part in gso.split(packet, offload))
    assert (NO_OFFLOAD, damaged[1]) in out and (NO_OFFLOAD, damaged[-2]) in out
    flows = gro._coalesce_flows(damaged, gso.packet_sums(damaged))  # the general path, whatever the count
    assert (NO_OFFLOAD, damaged[1]) in flows and (NO_OFFLOAD, damaged[-2]) in flows
    ((offload, merged),) = gro.coalesce(good)  # intact, they merge
    assert offload.gso_type and gso.split(merged, offload) == good


# -- the batch's header checks, made with C-level steps: the same answers as the loops they replace ----------


def _old_in_order(packets: list[bytes]) -> tuple[int, int]:
    """The loop `sa._in_order` replaces: each sequence number unpacked, the list against a range."""
    try:
        seqs = [struct.unpack_from("!I", p, 4)[0] for p in packets]
    except struct.error:
        return -1, -1
    if seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs))):
        return seqs[0], seqs[-1]
    return -1, -1


_SEQ_LISTS = st.one_of(
    st.builds(lambda first, n: list(range(first, first + n)), st.integers(0, 2**32 - 1), st.integers(1, 70)),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=70),
    st.lists(st.sampled_from([0, 1, 2, 3, 2**32 - 2, 2**32 - 1]), min_size=1, max_size=8),
)


@settings(max_examples=400, deadline=None)
@given(_SEQ_LISTS, st.lists(st.integers(0, 69), max_size=2), st.lists(st.integers(0, 7), max_size=2))
def test_in_order_answers_as_the_unpacking_loop(seqs: list[int], changes: list[int], cuts: list[int]) -> None:
    """Runs (also up to 2^32 - 1), gaps, repeats, and packets shorter than the ESP header."""
    from ipsec_tunnel.core.sa import _in_order

    packets = [struct.pack("!II", 0x1001, s % 2**32) + bytes(20) for s in seqs]  # a run may wrap
    for i in changes:  # one number moved off the run
        if i < len(packets):
            packets[i] = packets[i][:4] + struct.pack("!I", (seqs[i] + 1) % 2**32) + packets[i][8:]
    for n in cuts:
        if packets:
            packets[n % len(packets)] = packets[n % len(packets)][:n]
    assert _in_order(packets) == _old_in_order(packets)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"\x00\x00\x10\x01", b"\x00\x00\x10\x02", b"\x00\x00\x00\x00"]), min_size=2,
                max_size=40), st.lists(st.integers(0, 12), max_size=2))  # fmt: skip
def test_one_sa_answers_as_the_all_loop(spis: list[bytes], cuts: list[int]) -> None:
    """A batch goes to `decrypt_many` exactly when every datagram has the first one's SPI (not the non-ESP
    marker) and the ESP header's length."""
    from ipsec_tunnel.core.receive import _one_sa

    pair = make_pair()
    a_addr, b_addr = packed(pair.a_addr), packed(pair.b_addr)
    sa = pair.b.sad.get(b_addr, a_addr, 0x1001)
    datagrams = [spi + bytes(30) for spi in spis]
    for n in cuts:
        datagrams[n % len(datagrams)] = datagrams[n % len(datagrams)][:n]
    first = datagrams[0][:4]
    expected = (
        sa
        if len(first) == 4
        and first == b"\x00\x00\x10\x01"
        and all(d[:4] == first and len(d) >= 8 for d in datagrams)
        else None
    )
    assert _one_sa(pair.b, a_addr, b_addr, datagrams) is expected
