"""CoDel (RFC 8289) over batches of one sojourn time, and the congestion signal on inner packets: ECN CE
on ECN-capable TCP (checksums right, scapy agreeing), a drop for other TCP, nothing for anything else."""

from __future__ import annotations

import itertools
import math

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsec_tunnel.core import codel, ip
from ipsec_tunnel.core.codel import CoDel, congest

TARGET, INTERVAL = 0.005, 0.100  # RFC 8289's constants, seconds


def test_constants_are_rfc_8289s() -> None:
    assert (codel.TARGET, codel.INTERVAL) == (TARGET, INTERVAL)
    assert CoDel().target == TARGET and CoDel().interval == INTERVAL


@pytest.mark.parametrize("target", [0.0, -1.0, INTERVAL, 0.2])
def test_target_must_be_positive_and_below_interval(target: float) -> None:
    with pytest.raises(ValueError, match="target < interval"):
        CoDel(target, INTERVAL)


# (now, sojourn, packets in the batch) -> drops expected, and whether CoDel is dropping afterwards
Step = tuple[float, float, int, int, bool]

TIMELINES: dict[str, list[Step]] = {
    "below target: never a drop": [(t / 100, 0.004, 64, 0, False) for t in range(50)],
    "above target for less than an interval: no drop": [
        (0.00, 0.010, 64, 0, False),  # first above: the interval starts
        (0.05, 0.010, 64, 0, False),
        (0.099, 0.010, 64, 0, False),
        (0.10, 0.001, 64, 0, False),  # below again: it starts over
        (0.15, 0.010, 64, 0, False),
        (0.20, 0.010, 64, 0, False),  # 0.05 above since 0.15
    ],
    "above target for an interval: the first drop, then interval / sqrt(count) apart": [
        (0.00, 0.010, 64, 0, False),
        (0.10, 0.010, 64, 1, True),  # count 1: the next at 0.2
        (0.15, 0.010, 64, 0, True),
        (0.20, 0.010, 64, 1, True),  # count 2: the next at 0.2 + 0.1/sqrt(2) = 0.2707
        (0.27, 0.010, 64, 0, True),
        (0.271, 0.010, 64, 1, True),  # count 3: the next at 0.2707 + 0.0577 = 0.3284
        (0.328, 0.010, 64, 0, True),
        (0.329, 0.010, 64, 1, True),
        (0.33, 0.004, 64, 0, False),  # below target: out of the dropping state at once
        (0.34, 0.010, 64, 0, False),  # above again: a new interval first
    ],
    "a late batch catches up, at most one drop per packet": [
        (0.00, 0.010, 64, 0, False),
        (0.10, 0.010, 64, 1, True),  # count 1, next at 0.2
        # At 0.5: due at 0.2, 0.2707, 0.3284, 0.3784, 0.4231, 0.4639, 0.5017: six of them have passed
        (0.50, 0.010, 64, 6, True),
        (1.00, 0.010, 2, 2, True),  # many more are due, but the batch has two packets
    ],
    "an empty batch changes nothing": [
        (0.00, 0.010, 0, 0, False),
        (0.20, 0.010, 0, 0, False),
        (0.20, 0.010, 1, 0, False),  # only now above target for the first time
    ],
}


@pytest.mark.parametrize("name", list(TIMELINES))
def test_timelines(name: str) -> None:
    queue = CoDel()
    for now, sojourn, packets, drops, dropping in TIMELINES[name]:
        assert (queue.drops(now, sojourn, packets), queue.dropping) == (drops, dropping), (now, sojourn)


def test_the_control_law_spaces_drops_by_interval_over_sqrt_count() -> None:
    queue = CoDel()
    queue.drops(0.0, 0.01, 1)
    assert queue.drops(INTERVAL, 0.01, 1) == 1
    times = [INTERVAL]
    now = INTERVAL
    while len(times) < 10:
        now += 0.0001
        if queue.drops(now, 0.01, 1):
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for count, gap in enumerate(gaps, 1):
        assert gap == pytest.approx(INTERVAL / math.sqrt(count), abs=0.00011)


def test_a_new_dropping_state_soon_after_resumes_the_last_drop_rate() -> None:
    """RFC 8289 §5.5 (Linux's variant): within 16 intervals of the last, count starts at the drops the
    last dropping state took beyond its first, so the drops come at the rate that last controlled the
    queue."""
    queue = CoDel()
    queue.drops(0.0, 0.01, 1)
    for now in (0.1, 0.2, 0.2708, 0.3285, 0.379):  # count 1 -> 5, lastcount 1
        assert queue.drops(now, 0.01, 1) == 1
    assert queue.count == 5 and queue.lastcount == 1
    queue.drops(0.38, 0.001, 1)  # below target: the dropping state ends
    queue.drops(0.40, 0.01, 1)
    assert queue.drops(0.50, 0.01, 1) == 1  # a new one, within 16 intervals: count = 5 - 1
    assert queue.count == 4
    assert queue.drop_next == pytest.approx(0.50 + INTERVAL / 2)
    long_after = CoDel()
    long_after.count, long_after.lastcount, long_after.drop_next = 5, 1, 0.4
    long_after.drops(10.0, 0.01, 1)
    assert long_after.drops(10.1, 0.01, 1) == 1 and long_after.count == 1  # 16 intervals later: afresh


# -- the signal on inner packets ---------------------------------------------------------------------------


def _v4(proto: str, ecn: int, tag: int = 0) -> bytes:
    layer = {"tcp": TCP(sport=5001, dport=40000, seq=tag, flags="A"), "udp": UDP(sport=53, dport=5353),
             "icmp": ICMP(id=tag)}[proto]  # fmt: skip
    return bytes(IP(src="10.0.0.1", dst="10.0.1.1", tos=0xB8 | ecn, id=tag) / layer / bytes(100))


def _v6(proto: str, ecn: int, tag: int = 0) -> bytes:
    layer = TCP(sport=5001, dport=40000, seq=tag, flags="A") if proto == "tcp" else UDP(sport=53, dport=5353)
    return bytes(IPv6(src="fd00::1", dst="fd00:1::1", tc=0xB8 | ecn, fl=tag) / layer / bytes(100))


@pytest.mark.parametrize("ecn", [ip.ECN_ECT0, ip.ECN_ECT1])
def test_ect_tcp_over_ipv4_gets_ce_with_a_right_checksum(ecn: int) -> None:
    packet = _v4("tcp", ecn)
    packets = [packet]
    assert congest(packets, 1) == (1, 0)
    (marked,) = packets
    assert marked[1] == 0xB8 | ip.ECN_CE  # DSCP kept
    assert ip.checksum(marked[:20]) == 0  # the header sums right
    parsed = IP(marked)
    assert parsed.tos == 0xB8 | ip.ECN_CE
    fresh = IP(marked)
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == parsed.chksum  # scapy computes the same checksum
    assert marked[:1] + marked[2:10] + marked[12:] == packet[:1] + packet[2:10] + packet[12:]  # nothing else


@pytest.mark.parametrize("ecn", [ip.ECN_ECT0, ip.ECN_ECT1])
def test_ect_tcp_over_ipv6_gets_ce_in_its_traffic_class(ecn: int) -> None:
    packet = _v6("tcp", ecn, tag=0x12345)
    packets = [packet]
    assert congest(packets, 1) == (1, 0)
    parsed = IPv6(packets[0])
    assert (parsed.tc, parsed.fl) == (0xB8 | ip.ECN_CE, 0x12345)
    assert packets[0][4:] == packet[4:]


def test_ce_already_stays_and_counts_as_marked() -> None:
    packets = [_v4("tcp", ip.ECN_CE)]
    before = list(packets)
    assert congest(packets, 1) == (1, 0)
    assert packets == before


def test_not_ect_tcp_is_dropped_and_the_rest_keeps_its_order() -> None:
    tcp = [_v4("tcp", ip.ECN_NOT_ECT, tag=i) for i in range(4)]
    v6 = _v6("tcp", ip.ECN_NOT_ECT, tag=9)
    packets = [tcp[0], v6, tcp[1], tcp[2], tcp[3]]
    assert congest(packets, 2) == (0, 2)
    assert packets == [tcp[1], tcp[2], tcp[3]]  # the first two TCP packets went, the head of the queue


def test_what_is_not_tcp_is_never_touched() -> None:
    others = [_v4("icmp", ip.ECN_NOT_ECT, 1), _v4("udp", ip.ECN_NOT_ECT), _v4("udp", ip.ECN_ECT0),
              _v6("udp", ip.ECN_NOT_ECT), _v6("udp", ip.ECN_ECT1), b"", bytes([0x45]) + bytes(8)]  # fmt: skip
    packets = list(others)
    assert congest(packets, 100) == (0, 0)
    assert packets == others
    mixed = [others[0], _v4("tcp", ip.ECN_NOT_ECT), others[1], _v4("tcp", ip.ECN_ECT0, 5), others[4]]
    assert congest(mixed, 100) == (1, 1)
    assert [p for p in mixed if not codel.is_tcp(p)] == [others[0], others[1], others[4]]
    assert len(mixed) == 4 and IP(mixed[2]).tos & ip.ECN_MASK == ip.ECN_CE


def test_no_more_than_the_limit() -> None:
    packets = [_v4("tcp", ip.ECN_ECT0, i) for i in range(5)] + [_v4("tcp", ip.ECN_NOT_ECT, 9)]
    assert congest(packets, 3) == (3, 0)
    assert [IP(p).tos & ip.ECN_MASK for p in packets] == [ip.ECN_CE] * 3 + [ip.ECN_ECT0] * 2 + [0]
    assert congest(packets, 0) == (0, 0)
