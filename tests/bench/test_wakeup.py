"""bench/wakeup's reading of tcpdump: which hop of a ping through ipsecd took how long."""

from __future__ import annotations

import pytest

from bench.wakeup import HOPS, _hop_times

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
    hops = _hop_times(PING)
    got = {label: [round(t) for t in values] for label, values in hops.items()}
    assert got == {
        HOPS["A", "wire", "Out"]: [300, 250],
        HOPS["B", "wire", "In"]: [3],
        HOPS["B", "tun", "In"]: [200],
        HOPS["B", "tun", "Out"]: [12],
        HOPS["B", "wire", "Out"]: [85],
        HOPS["A", "wire", "In"]: [2],
        HOPS["A", "tun", "In"]: [128],
    }
    assert sum(v[0] for v in hops.values()) == pytest.approx(730, abs=0.01)  # the whole round trip


def test_events_before_the_first_ping_or_after_its_reply_are_not_hops() -> None:
    stray = [_seen(-1000, "B", "vb1", "In", TO_B)]
    late = [_seen(800, "A", "va1", "In", TO_A)]
    hops = _hop_times(stray + PING[:8] + late)
    assert all(len(values) == 1 for values in hops.values())
