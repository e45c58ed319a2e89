"""Running out: sequence numbers at their maximum, lifetimes in bytes, packets and time, and memory under a
flood of garbage. An SA that runs out stops cleanly, with one event and a counter; it never wraps."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.events import EventKind
from ipsec_tunnel.core.plane import NAT_KEEPALIVE, Deliver, Outbound
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SEQ_MAX_32, SEQ_MAX_64, SEQ_MAX_SPLIT, Limits, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel

from .conftest import (
    A4,
    B4,
    DEVICE,
    NOW,
    SUITES,
    Pair,
    Suite,
    feed,
    inner_packet,
    make_config,
    make_pair,
    rx_total,
    seal_inner,
)

GCM, GCM8, CHACHA, CBC, CTR, TDES, NULL, AUTH_ONLY = SUITES
INNER = inner_packet(b"x" * 100)

# (suite, ESN, the last number it may send). RFC 4303 §3.3.3: without ESN the counter stops at 2^32-1;
# §2.2.1 with ESN at 2^64-1. Counter-mode IVs (RFC 4106 §3.1, RFC 7634 §2, RFC 3686 §3) carry the
# sequence number with the --duplex direction in the top bit (RFC 4106 §3.1), so they stop at 2^63-1.
EXHAUSTION = [
    (GCM, False, SEQ_MAX_32),
    (CBC, False, SEQ_MAX_32),
    (AUTH_ONLY, False, SEQ_MAX_32),
    (GCM, True, SEQ_MAX_SPLIT),
    (GCM8, True, SEQ_MAX_SPLIT),
    (CHACHA, True, SEQ_MAX_SPLIT),
    (CTR, True, SEQ_MAX_SPLIT),
    (CBC, True, SEQ_MAX_64),
    (TDES, True, SEQ_MAX_64),
    (NULL, True, SEQ_MAX_64),
    (AUTH_ONLY, True, SEQ_MAX_64),
]


def _pair(suite: Suite, esn: bool, start: int, reverse: bool) -> Pair:
    pair = make_pair(suite, esn=esn, start=start)
    if not reverse:
        return pair
    # the same SA the other way round: B -> A, with the opposite counter-mode direction bit
    config = pair.tx_sa.config.reversed()
    tx, rx = Engine(), Engine()
    tx.tunnels.add(Tunnel(DEVICE, local=B4, remote=A4))
    rx.tunnels.add(Tunnel(DEVICE, local=A4, remote=B4))
    tx_sa = SecurityAssociation(config, NOW, seq_out=start)
    rx_sa = SecurityAssociation(config, NOW, replay=ReplayWindow(config.replay_window, esn=esn, top=start))
    tx.sad.add(tx_sa)
    rx.sad.add(rx_sa)
    return Pair(tx, rx, tx_sa, rx_sa, tx_sa.key[1], tx_sa.key[0], False, False)


@pytest.mark.parametrize("reverse", [False, True], ids=["a-to-b", "b-to-a"])
@pytest.mark.parametrize(
    ("suite", "esn", "last"),
    EXHAUSTION,
    ids=[f"{s.id}-{'esn' if e else 'noesn'}" for s, e, _ in EXHAUSTION],
)
def test_sequence_numbers_stop_at_the_maximum(suite: Suite, esn: bool, last: int, reverse: bool) -> None:
    pair = _pair(suite, esn, last - 3, reverse)
    assert pair.tx_sa.config.seq_max == last
    split = pair.tx_sa.config.iv_split
    sent = []
    for _ in range(3):
        out = pair.send(INNER)
        seq = pair.tx_sa.seq_out
        sent.append(seq)
        assert int.from_bytes(out.payload[4:8], "big") == seq & 0xFFFFFFFF
        if split is not None:  # the IV is the sequence number with the direction in its top bit
            iv = out.payload[8:16]
            assert iv == (seq | split << 63).to_bytes(8, "big")
            assert iv[0] >> 7 == split
        result = pair.receive(out.payload)
        assert isinstance(result, Deliver) and result.packet == INNER
    assert sent == [last - 2, last - 1, last]
    assert pair.tx.take_events() == []
    # the next one would wrap (or, for counter IVs, collide with the other direction's): refused
    for _ in range(5):
        assert pair.tx.send(DEVICE, INNER, NOW) is Drop.SEQ_EXHAUSTED
    assert pair.tx_sa.seq_out == last
    assert pair.tx.tx_drops == {Drop.SEQ_EXHAUSTED: 5}
    assert pair.tx.tx_accepted == 3
    events = pair.tx.take_events()
    assert [(e.kind, e.spi, e.limit) for e in events] == [(EventKind.SEQ_EXHAUSTED, 0x1234, "sequence")]
    assert pair.tx_sa.dead
    # an engine tick changes nothing, and nothing more is raised
    pair.tx.tick(NOW + 1e6)
    assert pair.tx.take_events() == []
    assert pair.tx.send(DEVICE, INNER, NOW) is Drop.SEQ_EXHAUSTED


@pytest.mark.parametrize(("esn", "last"), [(False, SEQ_MAX_32), (True, SEQ_MAX_64)], ids=["noesn", "esn"])
def test_receiver_at_the_end_of_the_sequence_space(esn: bool, last: int) -> None:
    """A receiver whose window sits at the last sequence number: the last packets are accepted, and a
    datagram whose low 32 bits would take the number past the end (ESN: into a 2^32 block that does not
    exist) is dropped, not raised."""
    pair = make_pair(CBC, esn=esn, start=last - 3)
    packets = [pair.send(INNER).payload for _ in range(3)]
    assert pair.tx_sa.seq_out == last
    for packet in packets:
        assert isinstance(pair.receive(packet), Deliver)
    assert pair.rx_sa.replay.top == last
    spi = pair.rx_sa.config.spi
    for low in (0, 1, 2, 1000, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF):
        forged = spi.to_bytes(4, "big") + low.to_bytes(4, "big") + bytes(64)
        assert isinstance(pair.receive(forged), Drop)
        # authentic, even: a number from the start of the SA's life (the high half 0)
        assert isinstance(pair.receive(seal_inner(pair.tx_sa, low, INNER)), Drop), low
    for packet in packets:
        assert pair.receive(packet) is Drop.REPLAYED
    assert pair.rx.rx_accepted == 3
    assert rx_total(pair.rx) == 3 + 14 + 3


# -- lifetimes (RFC 4301 §4.4.2.1: soft and hard, in bytes, packets and time) ----------------------------


def _kinds(engine: Engine) -> list[tuple[EventKind, str]]:
    return [(e.kind, e.limit) for e in engine.take_events()]


def test_packet_lifetime() -> None:
    pair = make_pair(CBC, soft=Limits(packets=3), hard=Limits(packets=5))
    events: list[tuple[EventKind, str]] = []
    for n in range(1, 6):
        out = pair.send(INNER)
        assert isinstance(pair.receive(out.payload), Deliver)
        events += _kinds(pair.tx)
        assert events == ([(EventKind.SOFT_EXPIRE, "packets")] if n >= 3 else []) + (
            [(EventKind.HARD_EXPIRE, "packets")] if n == 5 else []
        )
    assert _kinds(pair.rx) == [(EventKind.SOFT_EXPIRE, "packets"), (EventKind.HARD_EXPIRE, "packets")]
    for _ in range(3):
        assert pair.tx.send(DEVICE, INNER, NOW) is Drop.EXPIRED
    assert pair.tx.tx_drops == {Drop.EXPIRED: 3} and pair.tx.tx_accepted == 5
    # the receiving SA expired on its own count: a sixth packet (sealed anyway) is refused there
    assert pair.receive(seal_inner(pair.tx_sa, 6, INNER)) is Drop.EXPIRED
    assert _kinds(pair.tx) == [] and _kinds(pair.rx) == []


def test_byte_lifetime() -> None:
    pair = make_pair(GCM, soft=Limits(bytes=500), hard=Limits(bytes=1000))
    inner = inner_packet(bytes(280))  # 300 bytes
    assert len(inner) == 300
    expected = {2: [(EventKind.SOFT_EXPIRE, "bytes")], 4: [(EventKind.HARD_EXPIRE, "bytes")]}
    for n in range(1, 5):  # 300, 600 (soft), 900, 1200 (hard: this one still goes, as in the kernel)
        out = pair.send(inner)
        assert isinstance(pair.receive(out.payload), Deliver)
        assert _kinds(pair.tx) == expected.get(n, [])
        assert _kinds(pair.rx) == expected.get(n, [])
    assert pair.tx_sa.bytes == 1200
    assert pair.tx.send(DEVICE, inner, NOW) is Drop.EXPIRED
    assert pair.tx_sa.bytes == 1200
    assert _kinds(pair.tx) == []


def test_time_lifetime_with_engine_tick() -> None:
    pair = make_pair(CTR, soft=Limits(seconds=10), hard=Limits(seconds=20))
    for dt, expected in (
        (0, []),
        (5, []),
        (9.999, []),
        (10, [(EventKind.SOFT_EXPIRE, "seconds")]),
        (15, []),
        (19.999, []),
        (20, [(EventKind.HARD_EXPIRE, "seconds")]),
        (25, []),
        (1e9, []),
    ):
        pair.tx.tick(NOW + dt)
        pair.rx.tick(NOW + dt)
        assert _kinds(pair.tx) == expected, dt
        assert _kinds(pair.rx) == expected, dt
        if dt == 15:  # dying, not dead: traffic still flows
            out = pair.send(INNER, NOW + dt)
            assert isinstance(pair.receive(out.payload, NOW + dt), Deliver)
    assert pair.tx.send(DEVICE, INNER, NOW + 21) is Drop.EXPIRED
    # seal one anyway: the receiver's own clock refuses it
    assert pair.receive(seal_inner(pair.tx_sa, pair.tx_sa.seq_out + 1, INNER), NOW + 21) is Drop.EXPIRED
    assert pair.rx.rx_drops == {Drop.EXPIRED: 1}


def test_time_lifetime_without_a_tick() -> None:
    """A send or receive past the deadline expires the SA even if the daemon's timer has not run."""
    pair = make_pair(CHACHA, hard=Limits(seconds=20))
    out = pair.send(INNER, NOW + 19)
    assert pair.tx.send(DEVICE, INNER, NOW + 20) is Drop.EXPIRED
    assert _kinds(pair.tx) == [(EventKind.HARD_EXPIRE, "seconds")]
    assert pair.receive(out.payload, NOW + 20) is Drop.EXPIRED
    assert _kinds(pair.rx) == [(EventKind.HARD_EXPIRE, "seconds")]


def test_an_expired_sa_hands_the_tunnel_to_the_next() -> None:
    """With two SAs for one tunnel (a rekey), traffic moves to the second when the first dies."""
    pair = make_pair(GCM, hard=Limits(packets=2))
    second = SecurityAssociation(make_config(CBC, spi=0x5678), NOW)
    pair.tx.sad.add(second)
    pair.rx.sad.add(SecurityAssociation(second.config, NOW))
    spis = []
    for _ in range(4):
        out = pair.send(INNER)
        spis.append(int.from_bytes(out.payload[:4], "big"))
        assert isinstance(pair.receive(out.payload), Deliver)
    assert spis == [0x1234, 0x1234, 0x5678, 0x5678]


# -- memory under a flood ------------------------------------------------------------------------------


def garbage_flood(n: int, bound: int) -> None:
    """Feed `n` hostile datagrams of every kind; memory peaks below `bound` bytes above the start, nothing
    accumulates, the counters add up, and good traffic still gets through afterwards."""
    rng = random.Random(n)
    pair = make_pair(GCM, esn=True, encap=True, window=1024)
    udp = make_pair(CBC, encap=True)
    genuine = [pair.send(INNER).payload for _ in range(50)]
    for packet in genuine:
        assert isinstance(pair.receive(packet), Deliver)
    spi = pair.rx_sa.config.spi.to_bytes(4, "big")

    def datagram(i: int) -> bytes:
        kind = i % 6
        if kind == 0:  # unknown SPI
            return rng.randbytes(rng.randrange(8, 200))
        if kind == 1:  # our SPI, forged body (auth fails or malformed)
            return spi + rng.randbytes(rng.randrange(4, 300))
        if kind == 2:  # our SPI, a sequence number far ahead (ESN inference) and a forged ICV
            return spi + rng.randbytes(4) + genuine[i % 50][8:]
        if kind == 3:  # a replay
            return genuine[i % 50]
        if kind == 4:  # NAT keepalive on the UDP port
            return NAT_KEEPALIVE
        return rng.randbytes(rng.randrange(0, 8))  # runts

    for i in range(2000):  # warm up caches, counters and the allocator
        feed(pair.rx, pair.src, pair.dst, datagram(i), udp=True)
    fed = rx_total(pair.rx)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for i in range(n):
            pair.rx.receive_udp(pair.src, pair.dst, datagram(i), NOW)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rx_total(pair.rx) == fed + n
    assert pair.rx.rx_accepted == 50
    assert peak - base < bound, f"peak {peak - base} bytes above the start"
    assert current - base < 16 * 1024, f"{current - base} bytes kept after the flood"
    assert pair.rx.take_events() == []
    assert len(pair.rx.rx_drops) <= 8 and len(pair.rx_sa.drops) <= 8
    # good traffic still flows, both ways of carrying it
    for p in (pair, udp):
        out = p.send(INNER)
        result = p.receive(out.payload)
        assert isinstance(result, Deliver) and result.packet == INNER
    assert isinstance(pair.tx.send(DEVICE, INNER, NOW), Outbound)


def test_memory_stays_bounded_under_a_garbage_flood() -> None:
    garbage_flood(20_000, 64 * 1024)
