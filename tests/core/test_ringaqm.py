"""CoDel on a tunnel device's ring (`core/ringaqm.py`): the control law on the bulk flow's sojourn time
estimated from its TCP timestamps (a fake clock), CE on ECN-capable packets (checksums against scapy),
one segment dropped from the others (the last MSS of a super-packet), sparse flows and anything not
TCP never touched; `--device-aqm`'s values."""

from __future__ import annotations

import math

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsec_tunnel.core import gso, ip, ringaqm
from ipsec_tunnel.core.gso import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VnetHeader
from ipsec_tunnel.core.ringaqm import RingAqm, cut_last_segment, parse_spec, tsval

TARGET, INTERVAL = 0.002, 0.020
T0 = 1_800_000_000.0  # the daemon's clock reads like wall-clock time
OFFSET = 123_456_789  # the connection's TSval offset (random in Linux)
MSS = 1448


def _ts(now: float, sojourn: float) -> int:
    """The TSval of a segment handed down `sojourn` seconds before `now` (1 ms ticks)."""
    return (math.floor((now - sojourn) * 1000) + OFFSET) % 2**32


def _bulk(now: float, sojourn: float, *, ecn: int = ip.ECN_NOT_ECT, size: int = 1448, seq: int = 1) -> bytes:
    return bytes(
        IP(src="10.0.1.1", dst="10.0.2.1", tos=ecn)
        / TCP(sport=40000, dport=5201, seq=seq, flags="A", options=[("NOP", None), ("NOP", None),
                                                                  ("Timestamp", (_ts(now, sojourn), 7))])
        / bytes(size)
    )  # fmt: skip


def _ping() -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.1") / ICMP(id=7) / bytes(56))


def _turn(aqm: RingAqm, now: float, sojourn: float, count: int = 4) -> tuple[int, int]:
    """A turn of `count` bulk segments whose newest waited `sojourn` seconds: (marked, dropped)."""
    packets = [_bulk(now, sojourn, seq=1 + i * 1448) for i in range(count)]
    _kept, _offloads, marked, dropped = aqm.judge(packets, {}, now)
    return marked, dropped


def test_tsval_is_read_from_the_options() -> None:
    packet = _bulk(T0, 0.0)
    assert tsval(packet) == _ts(T0, 0.0)
    odd = bytes(IP() / TCP(options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (99, 0))]))
    assert tsval(odd) == 99
    v6 = bytes(IPv6() / TCP(options=[("Timestamp", (5, 1))]) / b"x")
    assert tsval(v6) == 5
    assert tsval(bytes(IP() / TCP() / b"x")) is None
    assert tsval(bytes(IP() / UDP() / bytes(30))) is None
    assert tsval(_ping()) is None


# (seconds after T0, sojourn of the turn's newest bulk segment) -> (drops, whether CoDel is dropping)
Step = tuple[float, float, int, bool]
TIMELINE: list[Step] = [
    (0.000, 0.000, 0, False),  # learns the flow's offset
    (0.010, 0.001, 0, False),  # below target
    (0.020, 0.005, 0, False),  # above target: the interval starts (RFC 8289 §5.6 first_above_time)
    (0.030, 0.005, 0, False),
    (0.039, 0.005, 0, False),  # less than an interval above
    (0.040, 0.005, 1, True),  # an interval above: the first drop; next at 0.040 + 0.020 / sqrt(1)
    (0.050, 0.005, 0, True),
    (0.059, 0.005, 0, True),
    (0.060, 0.005, 1, True),  # count 2: next 0.020 / sqrt(2) = 14.1 ms later, 0.0741
    (0.074, 0.005, 0, True),
    (0.075, 0.005, 1, True),  # count 3: next 11.5 ms later, 0.0857
    (0.085, 0.005, 0, True),
    (0.086, 0.005, 1, True),
    (0.090, 0.001, 0, False),  # below target: it stops at once
    (0.100, 0.005, 0, False),  # above again: a new interval first
    (0.119, 0.005, 0, False),
    (0.120, 0.005, 1, True),
]


def test_the_control_law_on_a_fake_clock() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    for at, sojourn, drops, dropping in TIMELINE:
        marked, dropped = _turn(aqm, T0 + at, sojourn)
        assert (marked, dropped, aqm.codel.dropping) == (0, drops, dropping), at
        assert aqm.sojourn == pytest.approx(sojourn, abs=0.001), at  # TSval ticks are 1 ms
    assert aqm.dropped == sum(step[2] for step in TIMELINE)


def test_the_offset_is_the_least_now_minus_tsval_and_is_learnt_anew() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    _turn(aqm, T0, 0.004)  # the first segment seen had waited: its offset is too high by 4 ms
    _turn(aqm, T0 + 0.01, 0.006)
    assert aqm.sojourn == pytest.approx(0.002, abs=0.001)
    _turn(aqm, T0 + 0.02, 0.0)  # a smaller one: the offset goes down
    assert aqm.sojourn == 0.0
    _turn(aqm, T0 + 0.03, 0.006)
    assert aqm.sojourn == pytest.approx(0.006, abs=0.001)
    _turn(aqm, T0 + 0.03 + ringaqm.OFFSET_WINDOW + 1, 0.006)  # too long ago: learnt again
    assert aqm.sojourn == 0.0


def _standing(aqm: RingAqm) -> float:
    """Bring `aqm` to its first drop; the time of that turn."""
    _turn(aqm, T0, 0.0)
    _turn(aqm, T0 + 0.01, 0.005)
    return T0 + 0.01 + INTERVAL


def test_an_ecn_capable_segment_gets_ce_with_a_right_checksum() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    ping = _ping()
    packets = [ping, _bulk(now, 0.005, ecn=ip.ECN_ECT0), _bulk(now, 0.005, ecn=ip.ECN_ECT0, seq=1449)]
    kept, offloads, marked, dropped = aqm.judge(packets, {}, now)
    assert (marked, dropped) == (1, 0) and offloads == {}
    assert kept[0] == ping and kept[2] == packets[2]  # one mark: the head of the bulk flow
    got = IP(kept[1])
    assert got.tos & 3 == ip.ECN_CE
    fresh = IP(kept[1])
    del fresh.chksum  # scapy recomputes it from the header as it is
    assert got.chksum == IP(bytes(fresh)).chksum
    assert ip.checksum(kept[1][:20]) == 0
    assert kept[1][:1] + kept[1][2:10] + kept[1][12:] == packets[1][:1] + packets[1][2:10] + packets[1][12:]


def test_ect1_and_ipv6_are_marked_and_ce_stays_ce() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    marked_v4 = aqm.judge([_bulk(now, 0.005, ecn=ip.ECN_ECT1), _bulk(now, 0.005, seq=1449)], {}, now)
    assert marked_v4[2:] == (1, 0) and IP(marked_v4[0][0]).tos & 3 == ip.ECN_CE
    assert aqm.marked == 1
    ce = _bulk(now, 0.005, ecn=ip.ECN_CE)
    aqm2 = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm2)
    assert aqm2.judge([ce, ce], {}, now) == ([ce, ce], {}, 1, 0)


def test_a_not_ect_segment_is_dropped_alone_and_counted() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    ping = _ping()
    packets = [_bulk(now, 0.005, seq=1), ping, _bulk(now, 0.005, seq=1449)]
    kept, offloads, marked, dropped = aqm.judge(packets, {}, now)
    assert (kept, offloads, marked, dropped) == ([ping, packets[2]], {}, 0, 1)
    assert aqm.dropped == 1


def _super(now: float, segments: int, *, v6: bool = False, last: int = MSS, flags: str = "A") -> bytes:
    payload = bytes(range(256)) * ((MSS * segments) // 256 + 1)
    payload = payload[: MSS * (segments - 1) + last]
    options = [("NOP", None), ("NOP", None), ("Timestamp", (_ts(now, 0.005), 7))]
    layer = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.1.1", dst="10.0.2.1", flags="DF")
    packet = layer / TCP(sport=40000, dport=5201, seq=1000, flags=flags, options=options) / payload
    raw = bytearray(bytes(packet))
    l4 = 40 if v6 else 20
    src, dst = (raw[8:24], raw[24:40]) if v6 else (raw[12:16], raw[16:20])
    partial = gso.pseudo_sum(bytes(src), bytes(dst), 6, len(raw) - l4)  # as the kernel leaves it
    raw[l4 + 16 : l4 + 18] = partial.to_bytes(2, "big")
    return bytes(raw)


def _offload(v6: bool = False) -> VnetHeader:
    l4 = 40 if v6 else 20
    return VnetHeader(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, l4 + 32, MSS, l4, 16)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize(("segments", "last"), [(5, MSS), (5, 100), (2, MSS), (2, 1)])
def test_a_super_packet_loses_its_last_segment_only(v6: bool, segments: int, last: int) -> None:
    packet = _super(T0, segments, v6=v6, last=last)
    offload = _offload(v6)
    cut = cut_last_segment(packet, offload)
    assert cut is not None
    before = gso.split(packet, offload)
    after = gso.split(cut, offload)
    assert after == before[:-1]  # the same segments, byte for byte, but the last
    for segment in after:  # and each one right by scapy's own checksums
        parsed = IPv6(segment) if v6 else IP(segment)
        fresh = IPv6(segment) if v6 else IP(segment)
        del fresh[TCP].chksum
        if not v6:
            del fresh.chksum
            assert parsed.chksum == IP(bytes(fresh)).chksum
        rebuilt = IPv6(bytes(fresh)) if v6 else IP(bytes(fresh))
        assert parsed[TCP].chksum == rebuilt[TCP].chksum


def test_a_one_segment_super_packet_is_not_cut() -> None:
    assert cut_last_segment(_super(T0, 1), _offload()) is None


def test_the_drop_cuts_a_super_packet_and_keeps_the_offload_headers_in_place() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    ping = _ping()
    big = _super(now, 5)
    one = _bulk(now, 0.005, seq=50000)
    offload = _offload()
    kept, offloads, marked, dropped = aqm.judge([ping, big, one], {1: offload}, now)
    assert (marked, dropped) == (0, 1)
    assert kept == [ping, cut_last_segment(big, offload), one] and offloads == {1: offload}
    # a drop of a whole one-segment packet moves the headers of the packets after it
    aqm2 = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm2)
    small = _bulk(now, 0.005, size=1000, seq=1)
    kept, offloads, _, dropped = aqm2.judge([small, ping, big], {2: offload}, now)
    assert (kept, offloads, dropped) == ([ping, big], {1: offload}, 1)


def test_sparse_flows_and_anything_not_tcp_are_never_touched() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    sparse_tcp = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=22, dport=50000, flags="PA",
                       options=[("Timestamp", (1, 1))]) / bytes(100))  # fmt: skip
    ping = _ping()
    packets = [ping, sparse_tcp, _bulk(now, 0.005), _bulk(now, 0.005, seq=1449)]
    kept, _, _, dropped = aqm.judge(packets, {}, now)
    assert dropped == 1 and ping in kept and sparse_tcp in kept
    # a turn whose biggest flow is UDP: nothing judged, whatever the state
    udp = [bytes(IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=1, dport=2) / bytes(1400))] * 3
    assert aqm.judge([*udp, ping], {}, now + 1) == ([*udp, ping], {}, 0, 0)
    # pure ACKs, SYN and FIN segments of the bulk flow are never signalled
    ack = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=40000, dport=5201, flags="A",
                options=[("Timestamp", (_ts(now, 0.005), 1))]))  # fmt: skip
    acks = [ack] * 40
    assert aqm.judge(acks, {}, now + 2) == (acks, {}, 0, 0)
    fin = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=40000, dport=5201, flags="FA",
                options=[("Timestamp", (_ts(now, 0.005), 1))]) / bytes(1448))  # fmt: skip
    assert aqm.judge([fin, fin], {}, now + 3) == ([fin, fin], {}, 0, 0)


def test_a_flow_without_timestamps_gives_no_signal() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    _standing(aqm)
    plain = [bytes(IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=1, dport=2, flags="A") / bytes(1448))] * 4
    for step in range(10):
        assert aqm.judge(plain, {}, T0 + 1 + step * INTERVAL) == (plain, {}, 0, 0)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("off", None),
        ("codel", (0.002, 0.020)),
        ("codel:5/100", (0.005, 0.1)),
        ("codel:0.5/10", (0.0005, 0.01)),
    ],
)
def test_device_aqm_values(text: str, want: tuple[float, float] | None) -> None:
    assert parse_spec(text) == want


@pytest.mark.parametrize(
    "text", ["on", "codel:", "codel:5", "codel:5/5", "codel:0/5", "codel:a/b", "codel:5/nan"]
)
def test_device_aqm_refuses_bad_values_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"^'") as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


def test_a_turn_is_judged_by_its_newest_bulk_segment() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    # the head waited 9 ms, the newest 1 ms: the ring drained below target within the turn
    packets = [_bulk(now, 0.009, seq=1), _bulk(now, 0.001, seq=1449)]
    assert aqm.judge(packets, {}, now) == (packets, {}, 0, 0)
    assert aqm.sojourn == pytest.approx(0.001, abs=0.001) and not aqm.codel.dropping


def test_a_lone_small_tcp_segment_is_sparse_even_while_dropping() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    assert _turn(aqm, now, 0.005) == (0, 1)  # dropping now
    small = [_bulk(now + 0.1, 0.005, size=1000), _ping()]  # the biggest flow, but under a quantum
    assert aqm.judge(small, {}, now + 0.1) == (small, {}, 0, 0)


def test_a_turn_that_drained_the_ring_is_below_target() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    packets = [_bulk(now, 0.009, seq=1), _bulk(now, 0.009, seq=1449)]
    assert aqm.judge(packets, {}, now, drained=True) == (packets, {}, 0, 0)
    assert not aqm.codel.dropping and aqm.codel.first_above == 0.0
    assert aqm.sojourn == pytest.approx(0.009, abs=0.001)  # still estimated
    assert aqm.judge(packets, {}, now + 0.001)[2:] == (0, 0)  # an interval must pass again


def test_a_turn_after_a_wait_signals_once_and_the_next_is_a_spacing_later() -> None:
    aqm = RingAqm(TARGET, INTERVAL)
    now = _standing(aqm)
    assert _turn(aqm, now, 0.005) == (0, 1)  # count 1, next due at now + 20 ms
    late = now + 0.1  # the daemon waited: RFC 8289's schedule would have four drops due by now
    assert _turn(aqm, late, 0.005, count=8) == (0, 1)  # one, however many were due
    assert aqm.codel.count == 2
    assert aqm.codel.drop_next == pytest.approx(late + INTERVAL / math.sqrt(2))
    assert _turn(aqm, late + 0.001, 0.005, count=8) == (0, 0)
    assert _turn(aqm, late + INTERVAL / math.sqrt(2), 0.005, count=8) == (0, 1)
