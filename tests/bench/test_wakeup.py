"""bench/wakeup's reading of tcpdump: which hop of a ping through ipsecd took how long."""

from __future__ import annotations

import pytest

from bench.wakeup import HOPS, _hop_report, _hop_times

REQUEST = "IP 10.0.1.1 > 10.0.2.1: ICMP echo request, id 7, seq 1, length 64"
REPLY = "IP 10.0.2.1 > 10.0.1.1: ICMP echo reply, id 7, seq 1, length 64"
TO_B = "IP 192.0.2.1.4500 > 192.0.2.2.4500: UDP-encap: ESP(spi=0x00001000,seq=0x1), length 100"
TO_A = "IP 192.0.2.2.4500 > 192.0.2.1.4500: UDP-encap: ESP(spi=0x00001000,seq=0x1), length 100"


def _seen(us: float, side: str, device: str, direction: str, what: str) -> tuple[float, str, str]:
    """A line as `tcpdump -i any -n -tt` prints it in namespace `side`, `us` microseconds after 10 s."""
    stamp = 10 + us / 1e6
    return stamp, side, f"{stamp:.9f} {device} {direction} {what}"


# One ping, then the start of a second whose reply never came back.
PING = [
    _seen(0, "A", "ipsec1", "Out", REQUEST),
    _seen(300, "A", "va1", "Out", TO_B),
    _seen(303, "B", "vb1", "In", TO_B),
    _seen(503, "B", "ipsec1", "In", REQUEST),
    _seen(515, "B", "ipsec1", "Out", REPLY),
    _seen(600, "B", "vb1", "Out", TO_A),
    _seen(602, "A", "va1", "In", TO_A),
    _seen(730, "A", "ipsec1", "In", REPLY),
    _seen(50_000, "A", "ipsec1", "Out", REQUEST),
    _seen(50_250, "A", "va1", "Out", TO_B),
]


def test_each_hop_is_the_time_since_the_event_before_it() -> None:
    pings = _hop_times(PING)  # the second ping never came back: not counted
    assert [{label: round(t) for label, t in hops.items()} for hops in pings] == [
        {
            HOPS["A", "wire", "Out"]: 300,
            HOPS["B", "wire", "In"]: 3,
            HOPS["B", "tun", "In"]: 200,
            HOPS["B", "tun", "Out"]: 12,
            HOPS["B", "wire", "Out"]: 85,
            HOPS["A", "wire", "In"]: 2,
            HOPS["A", "tun", "In"]: 128,
        }
    ]
    assert sum(pings[0].values()) == pytest.approx(730, abs=0.01)  # the whole round trip


def test_events_before_the_first_ping_or_after_its_reply_are_not_hops() -> None:
    stray = [_seen(-1000, "B", "vb1", "In", TO_B)]
    late = [_seen(800, "A", "va1", "In", TO_A)]
    assert _hop_times(stray + PING[:8] + late) == _hop_times(PING[:8])
    assert len(_hop_times(PING[:8])) == 1


def test_a_ping_missing_a_hop_is_left_out() -> None:
    assert _hop_times(PING[:3] + PING[4:8]) == []  # B's write into ipsec1 not seen


def test_the_report_gives_the_median_and_the_slowest_tenths_mean() -> None:
    pings = [{label: 10.0 for label in HOPS.values()} for _ in range(18)]
    slow = HOPS["A", "wire", "Out"]
    pings += [{**pings[0], slow: 1000.0}, {**pings[0], slow: 3000.0}]  # the slowest tenth: these two
    lines = _hop_report(pings)
    row = next(line for line in lines if slow in line)
    assert row.split()[-4:] == ["10.0", "us", "2000.0", "us"]
    other = next(line for line in lines if HOPS["B", "tun", "Out"] in line)
    assert other.split()[-4:] == ["10.0", "us", "10.0", "us"]
    assert "2 pings, 1.06-3.06 ms" in lines[-1]
