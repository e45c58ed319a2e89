"""core.steer: the flow key is the same both ways, as the TUN driver's symmetric hash; a flow is bulk
from its first super-packet until `hold` seconds pass without one; everything else is sparse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from ipsec_tunnel.core import steer
from ipsec_tunnel.core.fq import QUANTUM


def _v4(src: str, dst: str, l4: object, payload: bytes = b"") -> bytes:
    return bytes(IP(src=src, dst=dst) / l4 / payload)


def _v6(src: str, dst: str, l4: object, payload: bytes = b"") -> bytes:
    return bytes(IPv6(src=src, dst=dst) / l4 / payload)


@pytest.mark.parametrize(
    ("there", "back"),
    [
        (_v4("10.0.1.1", "10.0.2.1", TCP(sport=40000, dport=5201)),
         _v4("10.0.2.1", "10.0.1.1", TCP(sport=5201, dport=40000))),
        (_v4("10.0.1.1", "10.0.2.1", UDP(sport=53, dport=53000)),
         _v4("10.0.2.1", "10.0.1.1", UDP(sport=53000, dport=53))),
        (_v4("10.0.1.1", "10.0.2.1", ICMP(type=8)), _v4("10.0.2.1", "10.0.1.1", ICMP(type=0))),
        (_v6("2001:db8::1", "2001:db8::2", TCP(sport=1, dport=2)),
         _v6("2001:db8::2", "2001:db8::1", TCP(sport=2, dport=1))),
        (_v6("2001:db8::1", "2001:db8::2", UDP(sport=7, dport=9)),
         _v6("2001:db8::2", "2001:db8::1", UDP(sport=9, dport=7))),
    ],
)  # fmt: skip
def test_a_flow_has_one_key_both_ways(there: bytes, back: bytes) -> None:
    assert steer.key(there) == steer.key(back) != b""


def test_keys_tell_flows_apart() -> None:
    flows = [
        _v4("10.0.1.1", "10.0.2.1", TCP(sport=40000, dport=5201)),
        _v4("10.0.1.1", "10.0.2.1", TCP(sport=40001, dport=5201)),
        _v4("10.0.1.1", "10.0.2.1", UDP(sport=40000, dport=5201)),
        _v4("10.0.1.1", "10.0.2.2", TCP(sport=40000, dport=5201)),
        _v4("10.0.1.1", "10.0.2.1", ICMP()),
        _v6("2001:db8::1", "2001:db8::2", TCP(sport=40000, dport=5201)),
    ]
    assert len({steer.key(p) for p in flows}) == len(flows)


def test_a_later_fragment_has_the_key_without_ports() -> None:
    first = _v4("10.0.1.1", "10.0.2.1", UDP(sport=1, dport=2), bytes(100))
    later = bytes(IP(src="10.0.1.1", dst="10.0.2.1", proto=17, frag=100) / bytes(100))
    assert steer.key(later) != steer.key(first)
    assert len(steer.key(later)) == 1 + 8  # protocol and the two addresses


@given(st.binary(max_size=60))
def test_any_bytes_give_a_key(data: bytes) -> None:
    key = steer.key(data)
    assert isinstance(key, bytes)
    if len(data) < 20:
        assert key == b""


def _bulk_and_ack() -> tuple[bytes, bytes]:
    data = _v4("10.0.1.1", "10.0.2.1", TCP(sport=40000, dport=5201, flags="A"), bytes(QUANTUM))
    ack = _v4("10.0.2.1", "10.0.1.1", TCP(sport=5201, dport=40000, flags="A"))
    return data, ack


def test_a_super_packet_makes_its_flow_bulk_until_the_hold_passes() -> None:
    s = steer.Steering(hold=1.0)
    data, ack = _bulk_and_ack()
    assert s.queue(ack, 0.0) == steer.SPARSE
    s.note(ack, 0.0)  # small: changes nothing
    assert s.queue(ack, 0.0) == steer.SPARSE
    s.note(data, 10.0)
    assert s.moved == 1
    assert s.queue(ack, 10.5) == steer.BULK  # its ACKs go the bulk way: the flow's packets follow
    assert s.queue(data, 11.0) == steer.BULK
    s.note(data, 11.0)
    assert s.moved == 1  # still the same bulk flow
    assert s.queue(ack, 11.9) == steer.BULK
    assert s.queue(ack, 12.1) == steer.SPARSE  # no super-packet for over a second: sparse again
    assert s.bulk == {}


def test_other_flows_stay_sparse() -> None:
    s = steer.Steering()
    data, _ack = _bulk_and_ack()
    s.note(data, 0.0)
    ping = _v4("10.0.2.1", "10.0.1.1", ICMP(type=0))
    other = _v4("10.0.2.1", "10.0.1.1", TCP(sport=22, dport=40000))
    assert s.queue(ping, 0.1) == steer.SPARSE
    assert s.queue(other, 0.1) == steer.SPARSE


def test_the_table_is_bounded_and_forgets_stale_flows_first() -> None:
    s = steer.Steering(hold=1.0, limit=4)
    flows = [_v4("10.0.1.1", "10.0.2.1", TCP(sport=port, dport=5201), bytes(QUANTUM)) for port in range(1, 7)]
    for flow in flows[:4]:
        s.note(flow, 0.0)
    s.note(flows[4], 0.5)  # full of live flows: not taken
    assert len(s.bulk) == 4 and s.queue(flows[4], 0.5) == steer.SPARSE
    s.note(flows[5], 2.0)  # the stale ones make room
    assert s.queue(flows[5], 2.0) == steer.BULK
    assert len(s.bulk) == 1


@pytest.mark.parametrize(
    ("packet", "data"),
    [
        (_v4("10.0.2.1", "10.0.1.1", TCP(flags="A")), False),
        (_v4("10.0.2.1", "10.0.1.1", TCP(flags="A", options=[("Timestamp", (1, 2)), ("NOP", None)])), False),
        (_v4("10.0.2.1", "10.0.1.1", TCP(flags="PA"), b"x"), True),
        (_v6("2001:db8::2", "2001:db8::1", TCP(flags="A")), False),
        (_v6("2001:db8::2", "2001:db8::1", TCP(flags="A"), b"xyz"), True),
        (_v4("10.0.2.1", "10.0.1.1", UDP()), True),  # not TCP: taken as data
        (b"\x45\x00", True),
    ],
)  # fmt: skip
def test_pure_acks_carry_no_data(packet: bytes, data: bool) -> None:
    assert steer.carries_data(packet) is data


@pytest.mark.parametrize(
    ("packet", "data"),
    [
        (_v4("10.0.2.1", "10.0.1.1", TCP(flags="A")), False),  # a pure ACK
        (_v4("10.0.2.1", "10.0.1.1", TCP(flags="PA"), b"x"), True),
        (_v6("2001:db8::2", "2001:db8::1", TCP(flags="A"), b"xyz"), True),
        (_v6("2001:db8::2", "2001:db8::1", TCP(flags="A")), False),
        (_v4("10.0.2.1", "10.0.1.1", UDP(), b"voice"), False),  # not TCP at all
        (_v4("10.0.2.1", "10.0.1.1", ICMP(), b"ping"), False),
        (b"\x45\x00", False),  # too short to say: not TCP
    ],
)  # fmt: skip
def test_tcp_data_is_tcp_that_carries_data(packet: bytes, data: bool) -> None:
    assert steer.tcp_data(packet) is data


def test_split_data_keeps_each_devices_order() -> None:
    data1 = _v4("10.0.2.1", "10.0.1.1", TCP(flags="PA", seq=1), b"x")
    data2 = _v4("10.0.2.1", "10.0.1.1", TCP(flags="PA", seq=2), b"y")
    ack = _v4("10.0.2.1", "10.0.1.1", TCP(flags="A"))
    ping = _v4("10.0.2.1", "10.0.1.1", ICMP(), b"ping")
    data, rest = steer.split_data({"t0": [data1, ping, data2, ack], "t1": [data1], "t2": [ping]})
    assert data == {"t0": [data1, data2], "t1": [data1]}
    assert rest == {"t0": [ping, ack], "t2": [ping]}
