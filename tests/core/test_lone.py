"""The lone packet's short way (core/lone.py) against the batch pipelines: twin engines with the same
keys, one fed through `send_one` / `receive_one` (the batch only where they decline), the other through
`send_batch` / `receive_batch`, must give the same bytes on the wire, the same inner packets, and the
same counters, drop reasons, drop log, SA state, reservations and journal, packet after packet. Where
the short way declines it must have changed nothing (the batch then decides, and the twins still
agree)."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any, cast

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.framing import native
from ipsec_tunnel.core.plane import Burst, Deliver, Reject
from ipsec_tunnel.core.sa import Limits, SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.seqstore import MemoryStore
from ipsec_tunnel.core.tunnel import Tunnel

A, B = "192.0.2.1", "192.0.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"
KEYS = {"aes-gcm": bytes(range(20)), "chacha20-poly1305": bytes(range(36)), "aes-cbc": bytes(range(16))}
NOW = 10.0


def _config(cipher: str, dst: str, src: str, **extra: Any) -> SAConfig:
    digest = "sha256" if cipher == "aes-cbc" else None
    return SAConfig(
        0x1234, dst, src, cipher, KEYS[cipher], digest, bytes(range(32)) if digest else b"", **extra
    ).validated()


def _engine(config: SAConfig, local: str, remote: str, store: MemoryStore | None, **tunnel: Any) -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", local, remote, **tunnel))
    sa = SecurityAssociation(dataclasses.replace(config), 0.0)
    if store is not None:
        sa.seq_limit = sa.in_limit = 0  # every number reserved through the store, as ipsecd does
        sa.attach(store, store.slot(sa))
    engine.sad.add(sa)
    back = dataclasses.replace(config, spi=config.spi + 1, dst=config.src, src=config.dst)
    engine.sad.add(SecurityAssociation(back, 0.0))  # the other direction (NAT traversal looks at it)
    return engine


def _state(engine: Engine) -> tuple[object, ...]:
    """Everything either path may change: counters, drops, the drop log, events, NAT, each SA."""
    sas = [
        (sa.seq_out, sa.seq_limit, sa.in_limit, sa.packets, sa.bytes, dict(sa.drops), sa.dead, sa.used,
         sa.soft_fired, sa.replay.top, sa.replay.bitmap)
        for sa in engine.sad
    ]  # fmt: skip
    return (
        engine.tx_accepted, engine.rx_accepted, dict(engine.tx_drops), dict(engine.rx_drops),
        {name: dataclasses.asdict(stats) for name, stats in engine.tunnel_stats.items()},
        list(engine.drop_log.ring), engine.drop_log.lines, list(engine.events), dict(engine.nat.ports),
        engine.keepalives, engine.rx_from, sas,
    )  # fmt: skip


def v4(size: int = 64, *, df: bool = False, tos: int = 0, ttl: int = 64, src: str = "10.0.1.1") -> bytes:
    return bytes(
        IP(src=src, dst="10.0.2.1", tos=tos, ttl=ttl, flags="DF" if df else 0) / UDP() / Raw(bytes(size))
    )


def v6(size: int = 64, *, tc: int = 0) -> bytes:
    return bytes(IPv6(src="fd00:1::1", dst="fd00:2::1", tc=tc, hlim=9) / UDP() / Raw(bytes(size)))


def _layout(burst: Burst) -> Burst:
    """`burst` with each payload's SPI and sequence number kept, the rest (random IV on) zeroed."""
    return dataclasses.replace(burst, payloads=[p[:8] + bytes(len(p) - 8) for p in burst.payloads])


def _python_framing(engine: Engine) -> None:
    """Have `engine`'s SAs seal one AEAD packet with core/esp.py's Python (`seal_aead16`), not
    core/_framing.c's `seal_aead16_one` (the short way's twin keeps it where the extension is in use)."""
    for sa in engine.sad:
        sa._seal_one = None


class Twins:
    """Two senders and two receivers with the same SAs: `lone` on one of each, the batch on the other."""

    def __init__(
        self, cipher: str = "aes-gcm", *, udp: bool = False, six: bool = False, **extra: Any
    ) -> None:
        a, b = (A6, B6) if six else (A, B)
        config = _config(cipher, b, a, encap=UdpEncap() if udp else None, **extra)
        self.config = config
        self.udp = udp
        self.stores = [MemoryStore(grant=3) for _ in range(4)]
        self.senders = [_engine(config, a, b, self.stores[i]) for i in range(2)]
        self.receivers = [_engine(config, b, a, self.stores[2 + i]) for i in range(2)]
        self.handled = 0  # what the short way took (did not decline)
        for engine in (self.senders[1], self.receivers[1]):
            _python_framing(engine)  # the batch twin seals in Python (esp.seal_aead16)

    def send(self, inner: bytes, now: float = NOW) -> list[Burst]:
        """`inner` sent by both senders; the bursts (equal), after checking the states are equal."""
        lone, batch = self.senders
        got = lone.send_one("t0", inner, now)
        if got is False:
            out = lone.send_batch("t0", [inner], now)
        else:
            self.handled += 1
            out = [got] if isinstance(got, Burst) else []
        expected = batch.send_batch("t0", [inner], now)
        if self.config.cipher == "aes-cbc":  # a random IV (RFC 3602): the rest must agree
            assert [_layout(b) for b in out if isinstance(b, Burst)] == [
                _layout(b) for b in expected if isinstance(b, Burst)
            ]
            assert len(out) == len(expected)
        else:
            assert out == expected
        assert _state(lone) == _state(batch)
        assert self.stores[0].calls == self.stores[1].calls
        assert list(self.stores[0].journal.values()) == list(self.stores[1].journal.values())
        return [b for b in expected if isinstance(b, Burst)]

    def receive(
        self,
        esp_: bytes,
        now: float = NOW,
        tos: int = 0,
        sport: int | None = None,
        *,
        udp: bool | None = None,
    ) -> tuple[dict[str, list[bytes]], list[Reject]]:
        """`esp_` received by both receivers; what the batch gives (equal), after the states."""
        udp = self.udp
        port = (sport or 4500) if udp else None
        lone, batch = self.receivers
        src, dst = packed(self.config.src), packed(self.config.dst)
        got = lone.receive_one(src, dst, esp_, now, tos, port)
        if got is False:
            out = lone.receive_batch(src, dst, [esp_], now, tos, udp=udp, sport=port)
        else:
            self.handled += 1
            out = ({got.device: [got.packet]}, []) if isinstance(got, Deliver) else ({}, [])
        expected = batch.receive_batch(src, dst, [esp_], now, tos, udp=udp, sport=port)
        assert out == expected
        assert _state(lone) == _state(batch)
        assert self.stores[2].calls == self.stores[3].calls
        assert list(self.stores[2].journal.values()) == list(self.stores[3].journal.values())
        return expected

    def sealed(self, inner: bytes) -> bytes:
        """One ESP datagram for `inner` from the senders (by the batch path on both)."""
        burst = self.send(inner)
        return burst[0].payloads[0]


AEAD = ["aes-gcm", "chacha20-poly1305"]


@pytest.mark.parametrize("cipher", AEAD)
@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("six", [False, True])
def test_sent_alone_the_same_bytes_counters_and_reservations(cipher: str, udp: bool, six: bool) -> None:
    twins = Twins(cipher, udp=udp, six=six)
    packets = [v4(), v6(), v4(100, df=True, tos=0xB8, ttl=3), v6(7, tc=0x2E), v4(0) + b"trailing"] * 3
    for inner in packets:
        [burst] = twins.send(inner)
        assert len(burst.payloads) == 1
    assert twins.handled == len(packets)  # every one the short way
    assert twins.senders[0].sad.find()[0].seq_out == len(packets)
    assert len(twins.stores[0].calls) > 3  # reservations went through the store, three numbers at a time


def test_sent_alone_with_cbc_the_same_layout_and_counters() -> None:
    twins = Twins("aes-cbc")
    lone, batch = twins.senders
    for inner in (v4(), v6(33)):
        got = lone.send_one("t0", inner, NOW)
        [expected] = batch.send_batch("t0", [inner], NOW)
        assert isinstance(got, Burst) and isinstance(expected, Burst)
        assert got.payloads[0][:8] == expected.payloads[0][:8]  # SPI and sequence number; the IV is random
        assert len(got.payloads[0]) == len(expected.payloads[0])
        assert dataclasses.replace(got, payloads=[]) == dataclasses.replace(expected, payloads=[])
        assert _state(lone) == _state(batch)
        # and the peer opens it
        assert twins.receive(got.payloads[0])[0] == {"t0": [inner]}


def test_send_declines_what_the_batch_decides_and_changes_nothing() -> None:
    twins = Twins()
    options = bytes([0x46]) + v4()[1:] + bytes(4)  # IPv4 with a header of 24 bytes
    lies = v4()[:30]  # shorter than its IP length
    for inner in (options, lies, b"\x00" * 40, b""):
        assert twins.send(inner) == [] or inner is options
    assert twins.handled == 0
    for engine in twins.senders:  # too big for the path with DF: the ICMP error is the batch's
        engine.path_mtu["t0"] = 600
    assert twins.handled == 0
    out = twins.senders[0].send_batch("t0", [v4(1000, df=True)], NOW)
    assert out and not isinstance(out[0], Burst)
    twins.senders[1].send_batch("t0", [v4(1000, df=True)], NOW)
    assert twins.senders[0].send_one("t0", v4(1000, df=True), NOW) is False
    assert isinstance(twins.senders[0].send_one("t0", v4(1000), NOW), Burst)  # no DF: it goes, fragmented
    twins.senders[1].send_batch("t0", [v4(1000)], NOW)
    assert _state(twins.senders[0]) == _state(twins.senders[1])
    assert twins.senders[0].send_one("t1", v4(), NOW) is False  # no such tunnel


def test_send_drops_alone_as_the_batch_does() -> None:
    """An expired SA, the end of the sequence numbers, a reservation the store refuses: the same drop
    reasons, counters, drop log and events, and no packet."""
    twins = Twins(hard=Limits(packets=4))
    for _ in range(6):
        twins.send(v4())
    assert twins.senders[0].tx_drops[Drop.EXPIRED] == 2
    twins = Twins()
    for engine in twins.senders:
        engine.sad.find()[0].seq_out = engine.sad.find()[0].config.seq_max - 1
    for _ in range(3):
        twins.send(v4())
    assert twins.senders[0].tx_drops[Drop.SEQ_EXHAUSTED] == 2
    assert twins.senders[0].events  # the exhaustion event, once
    twins = Twins()
    twins.send(v4())
    for store in twins.stores[:2]:
        store.fail = True
    for _ in range(5):  # the numbers granted (1 + 3) go first, then every packet is refused
        twins.send(v4())
    assert twins.senders[0].tx_drops[Drop.STORE_FAILED] == 2
    assert twins.handled == 6
    sa = twins.senders[0].sad.find()[0]
    assert sa.seq_out <= sa.seq_limit  # never a number the store did not grant


@pytest.mark.parametrize("cipher", [*AEAD, "aes-cbc"])
@pytest.mark.parametrize("udp", [False, True])
def test_received_alone_the_same_packets_counters_and_window(cipher: str, udp: bool) -> None:
    twins = Twins(cipher, udp=udp)
    inners = [v4(), v6(), v4(5, tos=2)] * 3
    sealed = [twins.sealed(inner) for inner in inners]
    twins.receive(sealed[0])  # ESP-in-UDP: the first teaches NAT traversal the port (the batch's work)
    before = twins.handled
    for inner, datagram in zip(inners[1:], sealed[1:], strict=True):
        assert twins.receive(datagram) == ({"t0": [inner]}, [])
    assert twins.handled - before == len(inners) - 1  # every one the short way
    assert twins.receivers[0].sad.find()[0].replay.top == len(inners)


@pytest.mark.parametrize("cipher", [*AEAD, "aes-cbc"])
def test_replayed_and_forged_alone_are_dropped_before_the_window_moves(cipher: str) -> None:
    twins = Twins(cipher)
    first, second, third = (twins.sealed(v4()) for _ in range(3))
    twins.receive(second)
    assert twins.receive(second) == ({}, [])  # replayed
    forged = third[:-20] + bytes([third[-20] ^ 1]) + third[-19:]
    assert twins.receive(forged) == ({}, [])  # the ICV fails: the window stays
    sa = twins.receivers[0].sad.find()[0]
    assert sa.replay.top == 2
    assert twins.receive(third) == ({"t0": [v4()]}, [])  # the genuine one still goes
    assert twins.receive(first) == ({"t0": [v4()]}, [])  # late, within the window
    assert twins.receive(first) == ({}, [])
    drops = twins.receivers[0].rx_drops
    assert drops[Drop.REPLAYED] == 2 and drops[Drop.AUTH_FAILED] == 1
    assert twins.handled >= 9  # all of them the short way (three sends, six receives)


def test_receive_store_refusal_expiry_and_inner_faults_alone() -> None:
    peer = Twins()  # the same keys and SPI, no lifetime
    twins = Twins(hard=Limits(packets=6))
    datagrams = [peer.sealed(v4()) for _ in range(10)]
    # dummy packets (RFC 4303 §2.6: next header 59) and one with TFC padding, sealed by hand
    sa, emit = peer.senders[0].sad.find()[0], peer.senders[0].emit
    dummy = sa.encrypt(b"\x00" * 8, esp.NH_NONE, NOW, emit)  # 11
    padded = sa.encrypt(v4() + bytes(12), esp.NH_IPV4, NOW, emit)  # 12
    dummy2 = sa.encrypt(b"\x00" * 8, esp.NH_NONE, NOW, emit)  # 13
    assert isinstance(dummy, bytes) and isinstance(padded, bytes) and isinstance(dummy2, bytes)
    twins.receive(datagrams[0])  # 1; numbers up to 4 reserved
    for store in twins.stores[2:]:
        store.fail = True
    assert twins.receive(dummy) == ({}, [])  # past the reservation, refused: before the window moves
    for store in twins.stores[2:]:
        store.fail = False
    assert twins.receive(padded) == ({"t0": [v4()]}, [])  # the padding after the IP length trimmed
    assert twins.receive(dummy2) == ({}, [])
    results = [twins.receive(d) for d in datagrams[1:]]  # late ones, until the hard limit (6 packets)
    assert results[:3] == [({"t0": [v4()]}, [])] * 3 and results[3:] == [({}, [])] * 6
    drops = twins.receivers[0].rx_drops
    assert (drops[Drop.STORE_FAILED], drops[Drop.DUMMY], drops[Drop.EXPIRED]) == (1, 1, 6)
    assert twins.handled == 13  # all the short way


def test_receive_declines_what_the_batch_decides_and_changes_nothing() -> None:
    twins = Twins(udp=True)
    datagrams = [twins.sealed(v4()) for _ in range(6)]
    twins.handled = 0
    lone = twins.receivers[0]
    src, dst = packed(A), packed(B)
    before = _state(lone)
    assert lone.receive_one(src, dst, datagrams[0], NOW, 0, 4500) is False  # the port not learned yet
    assert lone.receive_one(src, dst, datagrams[0], NOW, 0, None) is False  # raw ESP for a UDP SA
    assert lone.receive_one(src, dst, b"\xff", NOW, 0, 4500) is False  # a NAT-keepalive
    assert lone.receive_one(src, dst, b"\x00\x00\x00\x00ike", NOW, 0, 4500) is False  # non-ESP marker
    assert lone.receive_one(src, dst, b"\x00\x00\x12\x99" + datagrams[0][4:], NOW, 0, 4500) is False
    assert _state(lone) == before
    twins.receive(datagrams[0])  # learns the port 4500
    before = _state(lone)
    assert lone.receive_one(src, dst, datagrams[1], NOW, 3, 4500) is False  # outer CE: RFC 6040
    assert lone.receive_one(src, dst, datagrams[1], NOW, 0, 4501) is False  # a new port: floating
    assert _state(lone) == before
    twins.receive(datagrams[1], tos=3)  # and the batch's answers, on both
    twins.receive(datagrams[2], sport=4501)
    assert lone.nat.ports[(src, dst)] == 4501
    twins.receive(datagrams[3], sport=4501)  # the short way again, on the new port
    assert twins.handled == 1


def test_receive_with_peer_networks_declines() -> None:
    config = _config("aes-gcm", B, A)
    sender = _engine(config, A, B, None)
    receiver = _engine(config, B, A, None, peer_nets=("10.0.1.0/24",))
    [burst] = sender.send_batch("t0", [v4()], NOW)
    assert isinstance(burst, Burst)
    assert receiver.receive_one(packed(A), packed(B), burst.payloads[0], NOW) is False
    assert receiver.rx_accepted == 0


@pytest.mark.parametrize("cipher", AEAD)
@pytest.mark.parametrize("duplex", [False, True])
def test_sealed_alone_in_c_as_in_python(cipher: str, duplex: bool) -> None:
    """The short way's twin seals in one C call (`_framing.seal_aead16_one`) where the extension is in
    use, the batch twin in Python: every padding length, both IP versions, the IV's direction bit of
    --duplex; and both open alike what they sealed, a forged ICV, a bad padding under a good ICV, a
    runt, a replay."""
    twins = Twins(cipher, duplex=duplex, iv_split=1 if duplex else None)
    lone_tx = twins.senders[0].sad.find()[0]
    if native is not None:  # else (IPSEC_TUNNEL_PURE=1, no extension) both twins run the Python
        assert lone_tx._seal_one is not None
    packets = [v4(n) for n in range(4)] + [v6(n) for n in (0, 1, 2, 3, 1200)] + [v4(1400, df=True)]
    datagrams = [twins.sealed(inner) for inner in packets]
    for inner, datagram in zip(packets, datagrams, strict=True):
        assert twins.receive(datagram) == ({"t0": [inner]}, [])
    assert twins.receive(datagrams[0]) == ({}, [])  # replayed
    late = twins.sealed(v4())
    assert twins.receive(late[:-1] + bytes([late[-1] ^ 0x80])) == ({}, [])  # forged: the ICV fails
    assert twins.receive(late[:31]) == ({}, [])  # a runt: malformed
    # a good ICV over a bad padding (sealed by hand under the next sequence number, never used again)
    sender = twins.senders[1].sad.find()[0]
    seq = sender.seq_out + 1
    sender.seq_out = seq
    twins.senders[0].sad.find()[0].seq_out = seq
    header = struct.pack("!II", sender.config.spi, seq)
    iv = struct.pack("!Q", seq | (1 << 63 if duplex and sender._iv_split else 0))
    body = v4(4) + bytes([1, 9, 2, esp.NH_IPV4])  # padding 1, 9: not 1, 2
    assert sender._aead_encrypt is not None
    bad = header + iv + sender._aead_encrypt(sender._salt + iv, body, header)
    assert twins.receive(bad) == ({}, [])
    assert twins.receive(late) == ({"t0": [v4()]}, [])  # the window did not move for any of them
    drops = twins.receivers[0].rx_drops
    kinds = (Drop.REPLAYED, Drop.AUTH_FAILED, Drop.BAD_PADDING, Drop.MALFORMED)
    assert [drops[kind] for kind in kinds] == [1, 1, 1, 1]
    assert twins.handled == 2 * len(packets) + 6  # all the short way


@pytest.mark.parametrize("src,dst", [(A, B), (B, A)])
def test_sealed_in_c_as_in_python_both_ways_of_duplex(src: str, dst: str) -> None:
    """--duplex: each direction's IVs carry its own top bit (RFC 4106 §3.1 counter, ipsecd's split); the C
    seal sets it as the Python one does."""
    config = _config("aes-gcm", dst, src, duplex=True)
    c, python = SecurityAssociation(config, 0.0), SecurityAssociation(config, 0.0)
    python._seal_one = None
    assert c._split == (config.iv_split == 1)
    assert c._seal_one is not None or native is None
    for n in range(6):
        inner = v4(n)
        assert c.encrypt(inner, esp.NH_IPV4, NOW, print) == python.encrypt(inner, esp.NH_IPV4, NOW, print)
    other = c.encrypt(cast(bytes, bytearray(v6())), esp.NH_IPV6, NOW, print)  # not bytes: the Python seal
    assert other == python.encrypt(v6(), esp.NH_IPV6, NOW, print)


def test_duplex_covers_both_iv_bits() -> None:
    assert {_config("aes-gcm", d, s, duplex=True).iv_split for s, d in ((A, B), (B, A))} == {0, 1}
