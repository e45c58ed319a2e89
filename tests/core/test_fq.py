"""core.fq: a device batch's sparse flows are sealed first, each flow's packets in order."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsec_tunnel.core import fq


def _tcp(seq: int, size: int = 1000, sport: int = 5001) -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=sport, dport=5201, seq=seq) / bytes(size))


def _ping(seq: int) -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.1") / ICMP(id=7, seq=seq) / bytes(56))


def test_a_ping_read_among_bulk_segments_goes_first() -> None:
    bulk = [_tcp(i * 1000) for i in range(4)]
    batch = [bulk[0], bulk[1], _ping(1), bulk[2], bulk[3]]
    assert fq.sparse_first(batch) == [2, 0, 1, 3, 4]


def test_sparse_flows_keep_their_order_and_so_do_bulk_ones() -> None:
    a = [_tcp(i * 1000) for i in range(3)]
    b = [_tcp(i * 1000, sport=6000) for i in range(3)]
    key = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=22, dport=40000) / b"k")  # a keystroke
    dns = bytes(IP(src="10.0.1.1", dst="10.0.2.9") / UDP(sport=53000, dport=53) / bytes(40))
    batch = [a[0], b[0], key, a[1], dns, b[1], a[2], _ping(1), b[2]]
    order = fq.sparse_first(batch)
    assert order is not None
    assert [batch[i] for i in order] == [key, dns, _ping(1), a[0], b[0], a[1], b[1], a[2], b[2]]


def test_a_flow_over_one_quantum_in_the_batch_is_bulk_even_in_small_packets() -> None:
    acks = [_tcp(i, size=0) for i in range(40)]  # 40 bytes each: 1,600 bytes in all
    batch = [*acks[:20], _ping(1), *acks[20:]]
    order = fq.sparse_first(batch)
    assert order is not None and order[0] == 20 and order[1:] == [*range(20), *range(21, 41)]
    assert fq.sparse_first(acks[:30]) is None  # 1,200 bytes: sparse, and nothing else to pass


def test_nothing_moves_when_the_order_read_stands() -> None:
    bulk = [_tcp(i * 1000) for i in range(3)]
    assert fq.sparse_first(bulk) is None  # no sparse flow
    assert fq.sparse_first([_ping(1), _ping(2)]) is None  # only sparse flows
    assert fq.sparse_first([_ping(1), *bulk]) is None  # already first
    assert fq.sparse_first([_ping(1)]) is None and fq.sparse_first([]) is None
    assert fq.sparse_first([bulk[0], _ping(1)], quantum=0) is None


def test_flow_keys_are_the_five_tuple() -> None:
    assert fq.flow_key(_tcp(0)) == fq.flow_key(_tcp(9000))
    assert fq.flow_key(_tcp(0)) != fq.flow_key(_tcp(0, sport=5002))
    six = [bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=s, dport=80) / bytes(10)) for s in (1, 2)]
    assert fq.flow_key(six[0]) != fq.flow_key(six[1])
    icmp6 = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=58) / bytes(8))
    assert fq.flow_key(icmp6) == bytes([58]) + icmp6[8:40]
    later = bytearray(_tcp(0))
    later[6:8] = b"\x00\x10"  # a later fragment: no ports in it, one flow per address pair
    assert fq.flow_key(bytes(later)) == later[9:10] + later[12:20]
    assert fq.flow_key(b"\x45\x00") == b"" and fq.flow_key(b"\x60" + bytes(30)) == b""


def test_tcp_and_udp_on_the_same_ports_are_two_flows() -> None:
    bulk = [_tcp(i * 1000) for i in range(3)]
    # a UDP flow with the bulk TCP flow's addresses and ports (a QUIC or RTP stream may well): sparse
    voice = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=5001, dport=5201) / bytes(160))
    assert fq.sparse_first([bulk[0], bulk[1], voice, bulk[2]]) == [2, 0, 1, 3]
    for packet in (bulk[0], voice):  # the inline key is flow_key's
        assert fq.flow_key(packet) == packet[9:10] + packet[12:24]


def test_reorder_moves_the_notes_with_their_packets() -> None:
    bulk = [_tcp(i * 1000, size=1400) for i in range(2)]
    packets, notes = fq.reorder([bulk[0], _ping(1), bulk[1]], {0: "gso0", 2: "gso2"})
    assert packets == [_ping(1), bulk[0], bulk[1]] and notes == {1: "gso0", 2: "gso2"}
    same = [bulk[0], bulk[1]]
    kept = {1: "x"}
    assert fq.reorder(same, kept) == (same, kept)


def test_short_and_garbled_packets_are_flows_of_their_own_not_errors() -> None:
    bulk = [_tcp(i * 1000) for i in range(3)]
    batch = [bulk[0], b"", b"\x45", bytes(IP(src="10.0.1.1", dst="10.0.2.1"))[:12], bulk[1], b"\x45" * 30]
    order = fq.sparse_first(batch)
    assert order == [1, 2, 3, 5, 0, 4]
