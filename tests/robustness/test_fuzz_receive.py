"""Hostile input on the data path: malformed, truncated, oversized, mutated, replayed and forged ESP and
ESP-in-UDP datagrams (RFC 4303, RFC 3948) fed to `Engine.receive`/`receive_udp`, and garbage read from a
tunnel device fed to `Engine.send`.

The properties, for every algorithm suite:
- no exception escapes;
- each datagram moves exactly one counter by one: accepted, one drop reason, or keepalives, so
  `rx_accepted + sum(rx_drops) + keepalives` equals the number of datagrams fed;
- a datagram is delivered only when it is an unmodified one the peer sent, byte for byte what was sent,
  and only when a model of the RFC 4303 §3.4.3 replay window says it is new;
- a forged datagram never moves the window: the genuine one it was made from still gets through.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import esp, ip
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.plane import NAT_KEEPALIVE, NON_ESP_MARKER, Deliver, Outbound, Reject, inner_mtu
from tests.support import esp_reference as reference

from .conftest import (
    DEVICE,
    SUITE_IDS,
    SUITES,
    Pair,
    Suite,
    feed,
    feed_send,
    inner_packet,
    make_pair,
    rx_total,
    seal_raw,
    tx_total,
)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_UDP_PAYLOAD = 65535  # past any datagram a socket can hand over (RFC 768 length field)

# -- the scenario ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """A change that makes a packet differ from what the peer sent."""

    kind: str  # flip | truncate | chop | extend | splice
    positions: tuple[int, ...] = ()
    data: bytes = b""
    amount: int = 0

    def apply(self, packet: bytes) -> bytes:
        """`packet` changed; never equal to it."""
        out = bytearray(packet)
        if self.kind == "flip" and out:
            for pos, x in zip(self.positions, self.data, strict=False):
                out[pos % len(out)] ^= x or 1
        elif self.kind == "truncate":
            del out[len(out) - 1 - self.amount % max(len(out), 1) :]
        elif self.kind == "chop":
            del out[: 1 + self.amount % max(len(out), 1)]
        elif self.kind == "extend":
            out += self.data or b"\x00"
            out += bytes(self.amount)
        elif self.kind == "splice" and out:
            pos = self.amount % len(out)
            out[pos : pos + len(self.data)] = self.data
        changed = bytes(out)
        if changed == packet:
            changed = packet[:-1] + bytes((packet[-1] ^ 0x80,)) if packet else b"\x01"
        return changed


@dataclass(frozen=True)
class Step:
    """One thing that happens on the wire."""

    kind: str  # genuine | replay | keepalive | non_esp | garbage | garbage_spi | crafted | oversized
    data: bytes = b""
    fate: str = "deliver"  # genuine: deliver | lose | delay
    mutations: tuple[Mutation, ...] = ()
    index: int = 0
    via_udp: bool = True
    nh: int = 0
    pad_ok: bool = True
    inner_kind: str = "ip4"


@dataclass(frozen=True)
class Scenario:
    """A peer pair's configuration and what happens on its wire."""

    esn: bool
    encap: bool
    v6: bool
    window: int
    start: int
    rx_tunnel: bool
    steps: tuple[Step, ...]


_mutation = st.one_of(
    st.builds(
        Mutation,
        kind=st.just("flip"),
        positions=st.lists(st.integers(0, 1 << 16), min_size=1, max_size=4).map(tuple),
        data=st.binary(min_size=1, max_size=4),
    ),
    st.builds(Mutation, kind=st.sampled_from(["truncate", "chop"]), amount=st.integers(0, 1 << 16)),
    st.builds(
        Mutation,
        kind=st.just("extend"),
        data=st.binary(min_size=1, max_size=40),
        amount=st.sampled_from([0, 0, 0, 16, MAX_UDP_PAYLOAD]),
    ),
    st.builds(
        Mutation, kind=st.just("splice"), data=st.binary(min_size=1, max_size=32), amount=st.integers(0, 4096)
    ),
)

_genuine = st.builds(
    Step,
    kind=st.just("genuine"),
    data=st.binary(max_size=200),
    fate=st.sampled_from(["deliver", "deliver", "deliver", "lose", "delay"]),
    mutations=st.lists(_mutation, max_size=3).map(tuple),
)
_replay = st.builds(Step, kind=st.just("replay"), index=st.integers(0, 1000), data=st.binary(max_size=40))
_step = st.one_of(  # genuine packets and replays drawn more often than the rest
    _genuine,
    _genuine,
    _genuine,
    _replay,
    _replay,
    st.builds(Step, kind=st.just("keepalive"), via_udp=st.booleans()),
    st.builds(Step, kind=st.just("non_esp"), data=st.binary(max_size=64)),
    st.builds(Step, kind=st.sampled_from(["garbage", "garbage_spi"]), data=st.binary(max_size=300)),
    st.builds(
        Step,
        kind=st.just("crafted"),
        data=st.binary(max_size=120),
        nh=st.sampled_from([esp.NH_IPV4, esp.NH_IPV6, esp.NH_NONE, ip.PROTO_UDP, 0, 255]),
        pad_ok=st.booleans(),
        inner_kind=st.sampled_from(["ip4", "ip6", "garbage"]),
        index=st.integers(0, 255),
    ),
    st.builds(Step, kind=st.just("oversized"), index=st.integers(0, 1)),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A pair configuration and a sequence of wire events."""
    esn = draw(st.booleans())
    return Scenario(
        esn=esn,
        encap=draw(st.booleans()),
        v6=draw(st.booleans()),
        window=draw(st.sampled_from([0, 4, 32, 128])),
        start=draw(st.sampled_from([0, (1 << 32) - 3])) if esn else 0,
        rx_tunnel=draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else True,
        steps=tuple(draw(st.lists(_step, min_size=1, max_size=20))),
    )


# -- the oracle --------------------------------------------------------------------------------------


class ReplayModel:
    """RFC 4303 §3.4.3 written out plainly: a set of received numbers and the highest one."""

    def __init__(self, window: int, top: int) -> None:
        self.window = window
        self.top = top
        self.seen: set[int] = set()

    def accepts(self, seq: int) -> bool:
        if self.window == 0 or seq > self.top:
            return True
        return self.top - seq < self.window and seq not in self.seen

    def accept(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


def crafted_plaintext(step: Step, block: int) -> bytes:
    """Inner bytes, RFC 4303 §2.4 padding (correct or not), pad length and next header."""
    if step.inner_kind == "garbage":
        inner = step.data
    else:
        inner = inner_packet(step.data, v6=step.inner_kind == "ip6")
    pad = reference.padding(len(inner), block)
    if not step.pad_ok:
        # wrong padding bytes when there are any, else a pad length pointing before the payload
        pad = bytes((step.index,)) * len(pad) if pad else pad
        pad_len = len(pad) if pad else (len(inner) + 3 + step.index) % 256
    else:
        pad_len = len(pad)
    return inner + pad + bytes((pad_len, step.nh))


def crafted_outcome(plaintext: bytes) -> Drop | bytes:
    """What the receiver must do with an authenticated `plaintext`: a drop, or the packet it delivers."""
    pad_len, nh = plaintext[-2], plaintext[-1]
    end = len(plaintext) - 2 - pad_len
    if end < 0 or plaintext[end : end + pad_len] != bytes(range(1, pad_len + 1)):
        return Drop.BAD_PADDING
    inner = plaintext[:end]
    if nh == esp.NH_NONE:
        return Drop.DUMMY
    if nh not in (esp.NH_IPV4, esp.NH_IPV6):
        return Drop.NOT_TUNNEL_MODE
    hdr = ip.parse(inner)
    if hdr is None or hdr.version != (4 if nh == esp.NH_IPV4 else 6):
        return Drop.MALFORMED
    return inner[: hdr.length]


@dataclass
class Run:
    """The state of one scenario as it plays."""

    pair: Pair
    sc: Scenario
    model: ReplayModel
    fed: int = 0
    sent: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (seq, inner, esp) fed
    delayed: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes, *, udp: bool | None = None) -> Any:
        self.fed += 1
        result = feed(
            self.pair.rx, self.pair.src, self.pair.dst, data, udp=self.pair.udp if udp is None else udp
        )
        if isinstance(result, Deliver):
            assert result.device == DEVICE
            self.delivered.append(result.packet)
        return result

    def forged(self, data: bytes, *, udp: bool | None = None) -> None:
        """A datagram the peer never sent: it must be dropped (or absorbed as a keepalive)."""
        via_udp = self.pair.udp if udp is None else udp
        result = self.feed(data, udp=via_udp)
        if via_udp and data == NAT_KEEPALIVE:
            assert result is None
            return
        if via_udp and data[:4] == NON_ESP_MARKER:
            assert result is Drop.NON_ESP
            return
        assert isinstance(result, Drop), f"forged {data[:16].hex()}... gave {result!r}"

    def accepted_by_sa(self, result: Any, expected_inner: bytes) -> None:
        """Check the result of a packet the SA must accept (authentic and new)."""
        if self.sc.rx_tunnel:
            assert isinstance(result, Deliver), result
            assert result.packet == expected_inner
        else:  # no tunnel and ipsec0 down: ICMP protocol unreachable to the sender, or a counted drop
            assert result is Drop.NO_TUNNEL or isinstance(result, Reject), result
            if isinstance(result, Reject):
                hdr = ip.parse(result.packet)
                assert hdr is not None and hdr.dst == self.pair.src and hdr.src == self.pair.dst

    def send(self, inner: bytes) -> tuple[int, bytes, bytes]:
        """(sequence number, inner, ESP packet): `inner` sent by the peer."""
        out = self.pair.send(inner)
        seq = self.pair.tx_sa.seq_out
        assert int.from_bytes(out.payload[4:8], "big") == seq & 0xFFFFFFFF
        return seq, inner, out.payload

    def genuine(self, seq: int, inner: bytes, packet: bytes) -> None:
        """Feed a packet the peer sent, unmodified, and check it against the replay model."""
        self.sent.append((seq, inner, packet))
        fresh = self.model.accepts(seq)
        result = self.feed(packet)
        if fresh:
            self.accepted_by_sa(result, inner)
            self.model.accept(seq)
        elif self.sc.esn:  # far outside the window ESN may infer the wrong high half: then the ICV fails
            assert result in (Drop.REPLAYED, Drop.AUTH_FAILED), result
        else:
            assert result is Drop.REPLAYED, result


def run_receive_scenario(suite: Suite, sc: Scenario) -> None:
    """Play `sc` between two engines with `suite` and check every datagram and the counters."""
    pair = make_pair(
        suite, esn=sc.esn, encap=sc.encap, v6=sc.v6, window=sc.window, start=sc.start, rx_tunnel=sc.rx_tunnel
    )
    run = Run(pair, sc, ReplayModel(sc.window, sc.start))
    spi = pair.rx_sa.config.spi.to_bytes(4, "big")
    block = max(4, pair.tx_sa.cipher.block)
    for step in sc.steps:
        if step.kind == "genuine":
            sent = run.send(inner_packet(step.data, v6=len(step.data) % 2 == 1))
            for m in step.mutations:
                run.forged(m.apply(sent[2]))
            if step.fate == "deliver":
                run.genuine(*sent)
            elif step.fate == "delay":
                run.delayed.append(sent)
        elif step.kind == "replay":
            if not run.sent:  # something to replay
                inner = inner_packet(step.data)
                run.genuine(*run.send(inner))
            run.genuine(*run.sent[step.index % len(run.sent)])
        elif step.kind == "keepalive":
            run.forged(NAT_KEEPALIVE, udp=step.via_udp)
        elif step.kind == "non_esp":
            run.forged(NON_ESP_MARKER + step.data, udp=True)
        elif step.kind == "garbage":
            run.forged(step.data)
        elif step.kind == "garbage_spi":
            run.forged(spi + step.data)
        elif step.kind == "crafted":
            plaintext = crafted_plaintext(step, block)
            pair.tx_sa.seq_out += 1  # the number is used up, as by a real send
            seq = pair.tx_sa.seq_out
            result = run.feed(seal_raw(pair.tx_sa, seq, plaintext))
            expected = crafted_outcome(plaintext)
            if isinstance(expected, Drop):
                assert result is expected, (result, expected)
            else:
                run.accepted_by_sa(result, expected)
            if expected is not Drop.BAD_PADDING:  # authenticated and unpadded: the SA took the number
                run.model.accept(seq)
        elif step.kind == "oversized":
            if step.index:  # a huge forged datagram naming our SA
                run.forged(spi + os.urandom(8) + bytes(MAX_UDP_PAYLOAD))
            else:  # a genuine packet padded out past any datagram
                inner = inner_packet(b"x" * 100, v6=sc.v6)
                out = pair.send(inner)
                run.forged(out.payload + bytes(MAX_UDP_PAYLOAD))
    for seq, inner, packet in reversed(run.delayed):
        run.genuine(seq, inner, packet)
    assert rx_total(pair.rx) == run.fed
    assert pair.rx.rx_accepted == len(run.delivered)
    assert pair.rx.take_events() == []  # no lifetime configured: hostile input raises no events


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
@FUZZ
@given(sc=scenarios())
def test_receive_hostile_datagrams(suite: Suite, sc: Scenario) -> None:
    run_receive_scenario(suite, sc)


# -- fixed cases the random search might take long to reach ------------------------------------------


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_every_truncation_and_single_bit_flip_is_dropped(suite: Suite) -> None:
    """Each prefix of a genuine packet, and each single-bit flip of it, is dropped; the genuine one passes."""
    pair = make_pair(suite)
    inner = inner_packet(b"payload" * 5)
    out = pair.send(inner)
    fed = 0
    for n in range(len(out.payload)):
        assert isinstance(pair.receive(out.payload[:n]), Drop)
        fed += 1
    for pos in range(len(out.payload)):
        for bit in range(8):
            data = bytearray(out.payload)
            data[pos] ^= 1 << bit
            result = pair.receive(bytes(data))
            assert isinstance(result, Drop), (pos, bit, result)
            fed += 1
    assert pair.rx.rx_drops[Drop.MALFORMED] >= 8  # shorter than the SPI and sequence number
    assert pair.rx.rx_drops[Drop.UNKNOWN_SA] == 32  # each flipped SPI bit
    assert pair.rx.rx_drops[Drop.AUTH_FAILED] > 0
    assert pair.rx.rx_accepted == 0
    result = pair.receive(out.payload)
    assert isinstance(result, Deliver) and result.packet == inner
    assert rx_total(pair.rx) == fed + 1


@pytest.mark.parametrize("suite", SUITES, ids=SUITE_IDS)
def test_authenticated_but_wrong_content_is_dropped_with_its_reason(suite: Suite) -> None:
    """Payloads only a key holder could send: bad padding, dummy, transport mode, not IP (RFC 4303 §2.4-6)."""
    pair = make_pair(suite)
    block = max(4, pair.tx_sa.cipher.block)
    good = inner_packet(b"hello")

    def seal(plain: bytes) -> bytes:
        pair.tx_sa.seq_out += 1
        return seal_raw(pair.tx_sa, pair.tx_sa.seq_out, plain)

    def padded(inner: bytes, nh: int) -> bytes:
        pad = reference.padding(len(inner), block)
        return inner + pad + bytes((len(pad), nh))

    # the helper itself is honest: with a valid payload it builds what the receiver accepts
    result = pair.receive(seal(padded(good, esp.NH_IPV4)))
    assert isinstance(result, Deliver) and result.packet == good
    # pad length beyond the payload
    assert pair.receive(seal(bytes(block - 2) + bytes((250, esp.NH_IPV4)))) is Drop.BAD_PADDING
    # padding bytes that are not 1, 2, 3, ...
    n = (-(len(good) + 2)) % block or block
    assert pair.receive(seal(good + b"\x09" * n + bytes((n, esp.NH_IPV4)))) is Drop.BAD_PADDING
    assert pair.receive(seal(padded(good, esp.NH_NONE))) is Drop.DUMMY
    assert pair.receive(seal(padded(good, ip.PROTO_UDP))) is Drop.NOT_TUNNEL_MODE
    assert pair.receive(seal(padded(good, esp.NH_IPV6))) is Drop.MALFORMED  # IPv4 inside, says IPv6
    assert pair.receive(seal(padded(b"\x45" + bytes(10), esp.NH_IPV4))) is Drop.MALFORMED
    assert pair.receive(seal(padded(b"", esp.NH_IPV4))) is Drop.MALFORMED
    # TFC padding after the inner packet (RFC 4303 §2.4) is cut off, the packet delivered as sent
    result = pair.receive(seal(padded(good + b"\x00" * 40, esp.NH_IPV4)))
    assert isinstance(result, Deliver) and result.packet == good
    assert rx_total(pair.rx) == 9
    assert pair.rx.rx_accepted == 2


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("rx_tunnel", [True, False], ids=["tunnel", "no-tunnel"])
def test_largest_inner_packet_round_trips_or_is_counted(v6: bool, rx_tunnel: bool) -> None:
    """An inner packet as large as IP allows (65535 bytes, 65575 for IPv6) makes an ESP packet too long
    to quote in an ICMP error header: it must still be delivered, or dropped with a count."""
    pair = make_pair(SUITES[0], v6=v6, rx_tunnel=rx_tunnel)
    payload = os.urandom(0xFFFF - (0 if v6 else ip.IPV4_HEADER_LEN))
    inner = inner_packet(payload, v6=v6)
    out = pair.send(inner)
    result = pair.receive(out.payload)
    if rx_tunnel:
        assert isinstance(result, Deliver) and result.packet == inner
    else:
        assert result is Drop.NO_TUNNEL or isinstance(result, Reject)
    assert rx_total(pair.rx) == 1


def test_keepalives_and_markers_on_the_udp_port() -> None:
    """RFC 3948 §2.2-2.3: 0xFF is a keepalive (absorbed, counted), four zero bytes mark IKE (counted)."""
    pair = make_pair(SUITES[0], encap=True)
    assert pair.receive(NAT_KEEPALIVE) is None
    assert pair.receive(NON_ESP_MARKER) is Drop.NON_ESP
    assert pair.receive(NON_ESP_MARKER + b"IKE") is Drop.NON_ESP
    assert pair.receive(b"") is Drop.MALFORMED
    assert pair.receive(b"\xff\xff") is Drop.MALFORMED
    # the same byte on the raw ESP path is just a runt
    assert feed(pair.rx, pair.src, pair.dst, NAT_KEEPALIVE, udp=False) is Drop.MALFORMED
    assert (pair.rx.keepalives, pair.rx.rx_drops[Drop.NON_ESP], pair.rx.rx_drops[Drop.MALFORMED]) == (1, 2, 3)
    assert rx_total(pair.rx) == 6


# -- send: garbage from a tunnel device --------------------------------------------------------------


@st.composite
def device_packets(draw: st.DrawFn) -> bytes:
    """What a tunnel device might hand over: garbage, or IP headers with arbitrary fields."""
    kind = draw(st.sampled_from(["garbage", "ip4", "ip6", "ip4", "ip6"]))
    body = draw(st.binary(max_size=64))
    if kind == "garbage":
        return body
    pad = bytes(draw(st.sampled_from([0, 0, 100, 1500, 3000])))
    if kind == "ip4":
        ihl = draw(st.integers(0, 15))
        length = draw(st.one_of(st.integers(0, 0xFFFF), st.just(20 + len(body) + len(pad))))
        frag = draw(st.sampled_from([0, 0x4000, 0x2000, 0x1FFF]))
        tos, ttl, proto = draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.integers(0, 255))
        head = struct.pack(
            "!BBHHHBBH4s4s", 0x40 | ihl, tos, length, 0, frag, ttl, proto, 0, b"\x0a\0\0\1", b"\x0a\0\1\1"
        )
        return head + body + pad
    plen = draw(st.one_of(st.integers(0, 0xFFFF), st.just(len(body) + len(pad))))
    first = (6 << 28) | (draw(st.integers(0, 255)) << 20) | draw(st.integers(0, 0xFFFFF))
    head = struct.pack(
        "!IHBB16s16s", first, plen, draw(st.integers(0, 255)), 64, bytes(16), bytes(15) + b"\1"
    )
    return head + body + pad


@pytest.mark.parametrize("suite", SUITES[:4], ids=SUITE_IDS[:4])
@FUZZ
@given(
    packets=st.lists(st.tuples(device_packets(), st.booleans()), min_size=1, max_size=25),
    path_mtu=st.sampled_from([None, 1280, 1500, 9000]),
)
def test_send_garbage_from_a_device(
    suite: Suite, packets: list[tuple[bytes, bool]], path_mtu: int | None
) -> None:
    pair = make_pair(suite)
    if path_mtu is not None:
        pair.tx.path_mtu[DEVICE] = path_mtu
    fed = 0
    for data, known_device in packets:
        result = feed_send(pair.tx, DEVICE if known_device else "nosuchdev", data)
        fed += 1
        hdr = ip.parse(data)
        if not known_device:
            assert result is Drop.NO_SA
        elif hdr is None:
            assert result is Drop.NOT_IP
        elif isinstance(result, Outbound):
            # too big with DF is refused, except an IPv6 packet up to IPv6's minimum MTU of 1,280 (RFC
            # 8200 §5), which leaves in outer fragments (RFC 4213 §3.2)
            fits = path_mtu is None or hdr.length <= inner_mtu(pair.tx_sa, path_mtu)
            assert fits or not hdr.df or (hdr.version == 6 and hdr.length <= ip.IPV6_MIN_MTU)
            received = pair.receive(result.payload, tos=result.tos)
            assert isinstance(received, Deliver), received
            assert received.packet == data[: hdr.length]
        elif isinstance(result, Deliver):  # too big with DF: ICMP back into the device (RFC 1191, 4443)
            assert path_mtu is not None and hdr.df
            assert result.device == DEVICE
            icmp = ip.parse(result.packet)
            assert icmp is not None and icmp.dst == hdr.src
        else:
            assert result is Drop.TOO_BIG and path_mtu is not None and hdr.df
            assert hdr.length > inner_mtu(pair.tx_sa, path_mtu)
    assert tx_total(pair.tx) == fed


@pytest.mark.parametrize("suite", SUITES[:4], ids=SUITE_IDS[:4])
def test_ipv6_between_the_tunnel_mtu_and_1280_leaves_in_outer_fragments(suite: Suite) -> None:
    """The example the fuzzer found: an IPv6 packet over the tunnel MTU of a 1,280-byte path but within
    IPv6's minimum MTU is sent (its outer packet fragmented), not refused, and arrives whole."""
    pair = make_pair(suite)
    pair.tx.path_mtu[DEVICE] = 1280
    size = inner_mtu(pair.tx_sa, 1280) + 1
    assert size <= ip.IPV6_MIN_MTU
    data = struct.pack("!IHBB16s16s", 6 << 28, size - 40, 59, 64, bytes(16), bytes(15) + b"\1") + bytes(
        size - 40
    )
    result = feed_send(pair.tx, DEVICE, data)
    assert isinstance(result, Outbound), result
    received = pair.receive(result.payload, tos=result.tos)
    assert isinstance(received, Deliver) and received.packet == data
