"""ike.message: codec round trips, strict length checks, critical payloads, and a fuzz of the whole input
path (`Ike.datagram_received`: any bytes give a counted drop, never an exception)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.ike import Ike, PeerConfig, Send
from ipsec_tunnel.ike import message as m
from ipsec_tunnel.ike.constants import Exchange, Flag, Notify, Payload, Protocol
from ipsec_tunnel.ike.proposals import parse

from .pair import Pair


def test_header_round_trip_and_checks() -> None:
    data = m.encode_message(1, 2, Exchange.IKE_AUTH, Flag.INITIATOR, 7, [(Payload.NONCE, b"n" * 16)])
    h = m.parse_header(data)
    assert (h.spi_i, h.spi_r, h.exchange, h.mid, h.length, h.next_payload) == (1, 2, 35, 7, len(data), 40)
    assert h.from_initiator and not h.is_response
    with pytest.raises(m.Malformed, match="length"):
        m.parse_header(data + b"x")
    with pytest.raises(m.Malformed, match="short"):
        m.parse_header(data[:27])
    with pytest.raises(m.Malformed, match="version"):
        m.parse_header(data[:17] + b"\x30" + data[18:])


def test_chain_round_trip_and_strict_lengths() -> None:
    payloads = [(Payload.NONCE, b"n" * 32), (Payload.VENDOR, b"v"), (Payload.NOTIFY, m.encode_notify(16384))]
    first, chain = m.encode_chain(payloads)
    got = m.parse_chain(chain, first)
    assert [(p.ptype, p.body) for p in got.payloads] == payloads
    with pytest.raises(m.Malformed):
        m.parse_chain(chain[:-1], first)
    with pytest.raises(m.Malformed):
        m.parse_chain(chain + b"\0", first)
    bad = bytearray(chain)
    bad[3] = 3  # payload length below the generic header
    with pytest.raises(m.Malformed):
        m.parse_chain(bytes(bad), first)


def test_unknown_payloads_critical_and_not() -> None:
    """§2.5: unknown non-critical payloads are skipped, critical ones refused."""
    body = b"whatever"
    skip = struct.pack("!BBH", Payload.NONE, 0x00, 4 + len(body)) + body
    assert m.parse_chain(skip, 200).payloads == ()
    crit = struct.pack("!BBH", Payload.NONE, 0x80, 4 + len(body)) + body
    with pytest.raises(m.UnsupportedCritical) as exc:
        m.parse_chain(crit, 200)
    assert exc.value.ptype == 200


def test_sa_round_trip() -> None:
    specs = parse("default", Protocol.IKE) + parse("aes256-sha256", Protocol.ESP)
    proposals = [
        s.to_proposal(i + 1, b"\1\2\3\4" if s.protocol == Protocol.ESP else b"") for i, s in enumerate(specs)
    ]
    assert m.decode_sa(m.encode_sa(proposals)) == proposals
    enc = m.encode_sa(proposals)
    with pytest.raises(m.Malformed):
        m.decode_sa(enc[:-1])


def test_ts_delete_notify_round_trip() -> None:
    ts = [m.TrafficSelector(7, 0, 0, 65535, bytes([10, 1, 0, 0]), bytes([10, 1, 255, 255]))]
    ts.append(m.TrafficSelector(8, 6, 80, 80, bytes(16), b"\xff" * 16))
    assert m.decode_ts(m.encode_ts(ts)) == ts
    assert m.decode_delete(m.encode_delete(Protocol.ESP, [b"abcd", b"efgh"])) == (3, [b"abcd", b"efgh"])
    assert m.decode_delete(m.encode_delete(Protocol.IKE)) == (1, [])
    n = m.decode_notify(m.encode_notify(Notify.COOKIE, b"c" * 8))
    assert (n.ntype, n.data, n.spi) == (Notify.COOKIE, b"c" * 8, b"")
    for bad in (b"\x01\0\0\0" + b"\x07\0\0\x10" + bytes(8), b"", b"\x02\0\0\0"):
        with pytest.raises(m.Malformed):
            m.decode_ts(bad)
    with pytest.raises(m.Malformed):
        m.decode_nonce(b"short")


def test_init_request_with_critical_unknown_payload_answered() -> None:
    """§2.5: an IKE_SA_INIT request with an unknown critical payload gets UNSUPPORTED_CRITICAL_PAYLOAD."""
    ike = Ike()
    ike.add_peer(PeerConfig("p", "198.51.100.2", "198.51.100.1", b"k"))
    body = b"x" * 4
    chain = struct.pack("!BBH", 0, 0x80, 8) + body
    data = m.encode_header(5, 0, 201, Exchange.IKE_SA_INIT, Flag.INITIATOR, 0, 28 + len(chain)) + chain
    ike.datagram_received(data, ("198.51.100.2", 500), ("198.51.100.1", 500), 0.0)
    (reply,) = [e for e in ike.events() if isinstance(e, Send)]
    hdr = m.parse_header(reply.data)
    (note,) = m.parse_chain(reply.data, hdr.next_payload, 28).payloads
    n = m.decode_notify(note.body)
    assert hdr.is_response and n.ntype == Notify.UNSUPPORTED_CRITICAL_PAYLOAD and n.data == bytes([201])
    assert ike.drops["unsupported_critical"] == 1


def _fuzz_target() -> tuple[Ike, list[bytes]]:
    """An established responder and the messages it saw, to mutate."""
    p = Pair()
    p.a.initiate("tob", 0.0)
    p.pump()
    return p.b, [s.data for who, s in p.wire if who == "a"]


_TARGET = _fuzz_target()


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_any_bytes(data: bytes) -> None:
    ike, _ = _TARGET
    before = sum(ike.drops.values())
    ike.datagram_received(data, ("198.51.100.2", 500), ("198.51.100.1", 500), 1.0)
    ike.events()
    assert sum(ike.drops.values()) == before + 1  # every such datagram is one counted drop
    assert ike.drops["internal_error"] == 0


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_messages(data: st.DataObject) -> None:
    """Real messages with bytes flipped, cut or inserted: never an exception, the SA stays established."""
    ike, msgs = _TARGET
    msg = bytearray(data.draw(st.sampled_from(msgs)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(msg)))
        if op == "flip" and pos < len(msg):
            msg[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del msg[pos:]
        else:
            msg[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    ike.datagram_received(bytes(msg), ("198.51.100.2", 500), ("198.51.100.1", 500), 1.0)
    ike.events()
    assert ike.peers()[0].state == "established"
    assert ike.drops["internal_error"] == 0


_transform = st.builds(
    m.Transform,
    st.integers(1, 5),
    st.integers(0, 65535),
    st.one_of(st.none(), st.integers(0, 65535)),
)
_proposal = st.builds(
    m.Proposal,
    st.integers(1, 255),
    st.integers(1, 3),
    st.binary(max_size=8),
    st.lists(_transform, min_size=1, max_size=6).map(tuple),
)
_port = st.integers(0, 65535)
_v4, _v6 = st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)
_ts = st.one_of(
    st.builds(m.TrafficSelector, st.just(7), st.integers(0, 255), _port, _port, _v4, _v4),
    st.builds(m.TrafficSelector, st.just(8), st.integers(0, 255), _port, _port, _v6, _v6),
)


@given(st.lists(_proposal, min_size=1, max_size=4))
def test_sa_codec_round_trip_property(proposals: list[m.Proposal]) -> None:
    assert m.decode_sa(m.encode_sa(proposals)) == proposals


@given(st.lists(_ts, max_size=5))
def test_ts_codec_round_trip_property(selectors: list[m.TrafficSelector]) -> None:
    assert m.decode_ts(m.encode_ts(selectors)) == selectors


@given(st.lists(st.tuples(st.sampled_from([p for p in Payload if p not in (Payload.NONE, Payload.SK)]),
                          st.binary(max_size=40)), max_size=6))  # fmt: skip
def test_chain_round_trip_property(payloads: list[tuple[int, bytes]]) -> None:
    first, chain = m.encode_chain(payloads)
    assert [(p.ptype, p.body) for p in m.parse_chain(chain, first).payloads] == payloads
