"""core/gro.py `open_tail`: which last packets of a batch make up a super-packet that segments read
later could still join (held back by the data plane when a capped read cut a flow short)."""

from __future__ import annotations

import os

from scapy.layers.inet import IP, TCP, UDP

from ipsec_tunnel.core import gro, gso

MSS = 1000  # 64 segments of it fit in 64 KiB: a full super-packet is MAX_SEGMENTS long


def segments(n: int, *, flags: str = "A", sport: int = 40000, mss: int = MSS, extra: int = 0) -> list[bytes]:
    """`n` in-sequence TCP segments of one flow (`extra` more payload bytes make a short last one), as
    the kernel's TSO would cut them (from super-packets of up to 32); PSH on the last only with "PA"."""
    out: list[bytes] = []
    seq = 1
    while len(out) < n:
        count = min(32, n - len(out))
        last = len(out) + count == n
        data = os.urandom(count * mss + (extra if last else 0))
        tcp = TCP(sport=sport, dport=5201, seq=seq, ack=99, flags=flags if last else "A", window=500)
        raw = bytearray(bytes(IP(src="10.0.1.1", dst="10.0.2.1", flags="DF", id=1 + len(out)) / tcp / data))
        raw[36:38] = gso.pseudo_sum(raw[12:16], raw[16:20], 6, len(raw) - 20).to_bytes(2, "big")
        out += gso.split(bytes(raw), gso.Offload(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, mss, 20, 16))
        seq += len(data)
    return out


def tail(packets: list[bytes]) -> int:
    return gro.open_tail(packets, gro.coalesce(packets))


def test_the_segments_after_the_last_full_super_packet_are_its_open_tail() -> None:
    segs = segments(70)
    assert len(gro.coalesce(segs)) == 2  # 64 + 6
    assert tail(segs) == 6
    assert tail(segs[:10]) == 10  # the whole batch (the data plane holds a packet back at most once)
    assert tail(segs[:65]) == 1  # a lone full segment after a full super-packet


def test_a_closed_or_full_super_packet_is_no_open_tail() -> None:
    assert tail(segments(64)) == 0  # MAX_SEGMENTS
    assert tail(segments(10, flags="PA")) == 0  # PSH closes it
    assert tail(segments(9, extra=300)) == 0  # a short last segment closes it
    big = segments(50, mss=1300)  # 50 * 1300 + 40: no room for another in 64 KiB
    assert len(gro.coalesce(big)) == 1 and tail(big) == 0


def test_no_open_tail_after_other_packets_or_flows() -> None:
    segs = segments(10)
    other = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=1, dport=2) / b"x")
    assert tail([*segs, other]) == 0
    pure_ack = bytes(IP(src="10.0.1.1", dst="10.0.2.1", flags="DF") / TCP(sport=40000, dport=5201, flags="A"))
    assert tail([*segs, pure_ack]) == 0
    # Two flows interleaved: the last super-packet (of flow y) is not made of the last packets.
    x, y = segments(3), segments(2, sport=40001)
    batch = [x[0], y[0], x[1], y[1], x[2]]
    items = gro.coalesce(batch)
    assert [len(p) for _, p in items] == [3 * MSS + 40, 2 * MSS + 40]
    assert gro.open_tail(batch, items) == 0
    assert tail([*y, *x]) == 3  # one after the other: x's three are the tail


def test_a_damaged_tail_is_not_mistaken_for_the_super_packet() -> None:
    segs = segments(20)
    items = gro.coalesce(segs)
    changed = bytearray(segs[-1])
    changed[-1] ^= 1  # not the bytes the super-packet carries
    assert gro.open_tail([*segs[:-1], bytes(changed)], items) == 0
    assert gro.open_tail(segs, items) == 20
