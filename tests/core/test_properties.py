"""Properties over random input (hypothesis): every algorithm round-trips any inner packet; no single
flipped bit, truncation or garbage is ever delivered, and each is a counted drop, never an exception."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import ip
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Deliver, Outbound, Reject
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel


@dataclass(frozen=True)
class Suite:
    cipher: str
    key_len: int
    digest: str | None
    digest_key_len: int = 0

    def __str__(self) -> str:
        return f"{self.cipher}/{self.key_len}/{self.digest}"


_DIGESTS = (("md5", 16), ("sha1", 20), ("sha256", 32), ("sha384", 48), ("sha512", 64))
SUITES = tuple(
    [Suite(c, k, d, dk) for c, k in (("aes-cbc", 16), ("aes-cbc", 24), ("aes-cbc", 32), ("aes-ctr", 20),
                                     ("aes-ctr", 36), ("3des", 24), ("blowfish", 16), ("cast5", 16),
                                     ("null", 0)) for d, dk in _DIGESTS]
    + [Suite(c, k, None) for c, k in (("aes-gcm", 20), ("aes-gcm", 28), ("aes-gcm", 36), ("aes-gcm-12", 20),
                                      ("aes-gcm-8", 20), ("chacha20-poly1305", 36))]
)  # fmt: skip

A, B = "10.0.0.1", "10.0.0.2"


def _key(length: int, salt: int) -> bytes:
    key = bytes((i * 7 + salt) & 0xFF for i in range(length))
    if length == 24:  # 3DES: three distinct, non-weak thirds
        key = bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123")
    return key


def _config(suite: Suite, esn: bool) -> SAConfig:
    return SAConfig(
        0x4242, B, A, suite.cipher, _key(suite.key_len, 1), suite.digest,
        _key(suite.digest_key_len, 2) if suite.digest else b"", esn=esn,
    ).validated()  # fmt: skip


def _inner(version: int, payload: bytes) -> bytes:
    if version == 4:
        return ip.build_ipv4(packed("192.168.1.1"), packed("192.168.2.1"), 17, len(payload)) + payload
    return ip.build_ipv6(packed("fd00::1"), packed("fd00::2"), 17, len(payload)) + payload


def _pair(suite: Suite, esn: bool) -> tuple[Engine, Engine]:
    config = _config(suite, esn)
    a, b = Engine(), Engine()
    a.tunnels.add(Tunnel("t0", A, B))
    b.tunnels.add(Tunnel("t0", B, A))
    a.sad.add(SecurityAssociation(config, 0.0))
    b.sad.add(SecurityAssociation(config, 0.0))
    return a, b


suites = st.sampled_from(SUITES)
payloads = st.binary(min_size=0, max_size=300)


@given(
    suites, st.booleans(), st.integers(min_value=0, max_value=(1 << 62)), st.sampled_from([4, 6]), payloads
)
@settings(max_examples=200, deadline=None)
def test_round_trip_every_algorithm(
    suite: Suite, esn: bool, start: int, version: int, payload: bytes
) -> None:
    config = _config(suite, esn)
    start = start if esn else start & 0x7FFFFFFF
    sender = SecurityAssociation(config, 0.0, seq_out=start)
    receiver = SecurityAssociation(
        config, 0.0, replay=ReplayWindow(config.replay_window, esn=esn, top=start, bitmap=1)
    )
    inner = _inner(version, payload)
    nh = 4 if version == 4 else 41
    for _ in range(2):
        packet = sender.encrypt(inner, nh, 0.0, lambda _e: None)
        assert isinstance(packet, bytes)
        assert receiver.decrypt(packet, 0.0, lambda _e: None) == (inner, nh)
    assert receiver.replay.top == start + 2


def _sealed(suite: Suite, esn: bool, payload: bytes) -> tuple[Engine, Engine, Outbound]:
    a, b = _pair(suite, esn)
    out = a.send("t0", _inner(4, payload), 0.0)
    assert isinstance(out, Outbound)
    return a, b, out


@given(suites, st.booleans(), payloads, st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_flipped_bit_is_a_counted_drop(
    suite: Suite, esn: bool, payload: bytes, data: st.DataObject
) -> None:
    _a, b, out = _sealed(suite, esn, payload)
    bit = data.draw(st.integers(min_value=0, max_value=len(out.payload) * 8 - 1), label="bit")
    flipped = bytearray(out.payload)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    result = b.receive(out.src, out.dst, bytes(flipped), 0.0)
    assert isinstance(result, Drop), f"bit {bit} of {len(out.payload)} bytes was delivered"
    assert result in (Drop.AUTH_FAILED, Drop.UNKNOWN_SA, Drop.REPLAYED, Drop.MALFORMED)
    assert sum(b.rx_drops.values()) == 1
    assert b.rx_accepted == 0
    # The genuine packet still gets through afterwards: the forgery moved nothing.
    assert isinstance(b.receive(out.src, out.dst, out.payload, 0.0), Deliver)


@given(suites, st.booleans(), payloads, st.data())
@settings(max_examples=200, deadline=None)
def test_any_truncation_is_a_counted_drop(
    suite: Suite, esn: bool, payload: bytes, data: st.DataObject
) -> None:
    _a, b, out = _sealed(suite, esn, payload)
    cut = data.draw(st.integers(min_value=0, max_value=len(out.payload) - 1), label="cut")
    result = b.receive(out.src, out.dst, out.payload[:cut], 0.0)
    assert isinstance(result, Drop)
    assert sum(b.rx_drops.values()) == 1
    extended = b.receive(out.src, out.dst, out.payload + data.draw(st.binary(min_size=1, max_size=40)), 0.0)
    assert isinstance(extended, Drop)
    assert sum(b.rx_drops.values()) == 2


@given(suites, st.booleans(), st.binary(max_size=400), st.booleans())
@settings(max_examples=300, deadline=None)
def test_garbage_is_a_counted_drop(suite: Suite, esn: bool, garbage: bytes, known_spi: bool) -> None:
    _a, b = _pair(suite, esn)
    if known_spi:
        garbage = (0x4242).to_bytes(4, "big") + garbage  # reach the SA, not just the lookup
    for receive in (b.receive, b.receive_udp):
        result = receive(packed(A), packed(B), garbage, 0.0)
        if receive == b.receive_udp and garbage == b"\xff":
            assert result is None
            continue
        assert isinstance(result, Drop | Reject)
        assert not isinstance(result, Deliver)
    assert b.rx_accepted == 0
    assert sum(b.rx_drops.values()) == 2 - b.keepalives


@given(st.binary(max_size=200), st.booleans())
@settings(max_examples=200, deadline=None)
def test_garbage_from_a_device_never_raises(garbage: bytes, ip_like: bool) -> None:
    a, _b = _pair(SUITES[0], False)
    if ip_like and garbage:
        garbage = bytes([0x45]) + garbage[1:]
    result = a.send("t0", garbage, 0.0)
    if isinstance(result, Drop):
        assert a.tx_drops[result] == 1
    else:
        assert isinstance(result, Outbound | Deliver)
        assert ip.parse(garbage) is not None
