"""Security associations: configuration checks, the never-wrapping sequence counter, lifetimes, the
reserve hook, keys kept out of repr(), and the direction bit that keeps a shared key's nonces apart."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.events import EventKind, SAEvent
from ipsec_tunnel.core.sa import (
    SEQ_MAX_32,
    SEQ_MAX_64,
    SEQ_MAX_SPLIT,
    SWEET32_BYTES,
    Limits,
    SAConfig,
    SAError,
    SecurityAssociation,
    UdpEncap,
)
from ipsec_tunnel.core.seqstore import MemoryStore

AES_KEY = bytes(range(0x40, 0x50))
SHA_KEY = bytes(range(0x60, 0x80))
GCM_KEY = bytes(range(0x20, 0x34))  # 16-byte AES key + 4-byte salt


def cbc_config(**changes: object) -> SAConfig:
    fields: dict[str, object] = {
        "spi": 0x1234, "dst": "10.0.0.2", "src": "10.0.0.1", "cipher": "aes-cbc", "cipher_key": AES_KEY,
        "digest": "sha256", "digest_key": SHA_KEY,
    }  # fmt: skip
    fields.update(changes)
    return SAConfig(**fields).validated()  # type: ignore[arg-type]


def gcm_config(**changes: object) -> SAConfig:
    fields: dict[str, object] = {
        "spi": 0x1234, "dst": "10.0.0.2", "src": "10.0.0.1", "cipher": "aes-gcm", "cipher_key": GCM_KEY,
    }  # fmt: skip
    fields.update(changes)
    return SAConfig(**fields).validated()  # type: ignore[arg-type]


class Events:
    """A fake `emit` that records what it is given."""

    def __init__(self) -> None:
        self.seen: list[SAEvent] = []

    def __call__(self, event: SAEvent) -> None:
        self.seen.append(event)

    def kinds(self) -> list[tuple[EventKind, str]]:
        return [(e.kind, e.limit) for e in self.seen]


# ---------------------------------------------------------------------------------------------------------
# The sequence counter never wraps (RFC 4303 §3.3.3)


@pytest.mark.parametrize(
    ("make", "esn", "last"),
    [
        (cbc_config, False, SEQ_MAX_32),
        (cbc_config, True, SEQ_MAX_64),
        (gcm_config, False, SEQ_MAX_32),
        (gcm_config, True, SEQ_MAX_SPLIT),  # the top IV bit is the --duplex direction
    ],
    ids=["cbc", "cbc-esn", "gcm", "gcm-esn"],
)
def test_sequence_is_exhausted_not_wrapped(make: object, esn: bool, last: int) -> None:
    config = make(esn=esn)  # type: ignore[operator]
    assert config.seq_max == last
    sa = SecurityAssociation(config, 0.0, seq_out=last - 2)
    events = Events()
    sent = [sa.encrypt(b"inner", 4, 1.0, events) for _ in range(2)]
    assert [p[4:8] for p in sent if isinstance(p, bytes)] == [
        (last - 1).to_bytes(8, "big")[4:],
        last.to_bytes(8, "big")[4:],
    ]
    assert sa.seq_out == last
    for _ in range(3):
        assert sa.encrypt(b"inner", 4, 2.0, events) is Drop.SEQ_EXHAUSTED
    assert sa.seq_out == last  # nothing was ever sent past the last number
    assert events.kinds() == [(EventKind.SEQ_EXHAUSTED, "sequence")]  # exactly once
    assert events.seen[0] == SAEvent(EventKind.SEQ_EXHAUSTED, "10.0.0.2", "10.0.0.1", 0x1234, "sequence", 2.0)
    assert sa.drops[Drop.SEQ_EXHAUSTED] == 3
    assert sa.dead


def test_sequence_numbers_are_never_reused() -> None:
    sa = SecurityAssociation(cbc_config(), 0.0)
    seqs = []
    for _ in range(50):
        packet = sa.encrypt(b"x", 4, 0.0, Events())
        assert isinstance(packet, bytes)
        seqs.append(int.from_bytes(packet[4:8], "big"))
    assert seqs == list(range(1, 51))  # RFC 4303 §3.3.3: the first packet is number 1


def test_exhausted_sa_is_skipped_by_dead() -> None:
    sa = SecurityAssociation(cbc_config(), 0.0, seq_out=SEQ_MAX_32)
    sa.encrypt(b"x", 4, 0.0, Events())
    assert sa.dead == "sequence numbers exhausted"


# ---------------------------------------------------------------------------------------------------------
# Lifetimes


def _traffic(
    sa: SecurityAssociation, receiver: SecurityAssociation | None, n: int, events: Events
) -> list[object]:
    out: list[object] = []
    for _ in range(n):
        packet = sa.encrypt(b"x" * 40, 4, 5.0, events)
        out.append(packet)
        if receiver is not None and isinstance(packet, bytes):
            out.append(receiver.decrypt(packet, 5.0, events))
    return out


@pytest.mark.parametrize(("unit", "limit"), [("packets", 3), ("bytes", 120)])
def test_soft_lifetime_by_volume_fires_once_and_traffic_goes_on(unit: str, limit: int) -> None:
    sa = SecurityAssociation(cbc_config(soft=Limits(**{unit: limit})), 0.0)
    events = Events()
    _traffic(sa, None, 2, events)
    assert events.seen == []
    _traffic(sa, None, 1, events)  # the third 40-byte packet reaches both limits
    assert events.kinds() == [(EventKind.SOFT_EXPIRE, unit)]
    assert events.seen[0].now == 5.0
    assert all(isinstance(p, bytes) for p in _traffic(sa, None, 5, events))
    assert len(events.seen) == 1
    assert not sa.dead


@pytest.mark.parametrize(("unit", "limit"), [("packets", 3), ("bytes", 120)])
def test_hard_lifetime_by_volume_kills_the_sa(unit: str, limit: int) -> None:
    sa = SecurityAssociation(cbc_config(hard=Limits(**{unit: limit})), 0.0)
    events = Events()
    sent = _traffic(sa, None, 3, events)
    assert all(isinstance(p, bytes) for p in sent)
    assert events.kinds() == [(EventKind.HARD_EXPIRE, unit)]
    assert sa.encrypt(b"x" * 40, 4, 6.0, events) is Drop.EXPIRED
    assert sa.decrypt(sent[0], 6.0, events) is Drop.EXPIRED  # type: ignore[arg-type]
    assert sa.drops[Drop.EXPIRED] == 2
    assert len(events.seen) == 1


def test_hard_lifetime_counts_received_traffic_too() -> None:
    sender = SecurityAssociation(cbc_config(), 0.0)
    receiver = SecurityAssociation(cbc_config(hard=Limits(packets=2)), 0.0)
    events = Events()
    packets = [sender.encrypt(b"y", 4, 0.0, events) for _ in range(3)]
    results = [receiver.decrypt(p, 1.0, events) for p in packets if isinstance(p, bytes)]
    assert results == [(b"y", 4), (b"y", 4), Drop.EXPIRED]
    assert events.kinds() == [(EventKind.HARD_EXPIRE, "packets")]


def test_lifetimes_in_seconds_fire_from_now() -> None:
    config = cbc_config(soft=Limits(seconds=10), hard=Limits(seconds=20))
    sa = SecurityAssociation(config, 100.0)
    events = Events()
    sa.tick(109.9, events)
    assert events.seen == []
    sa.tick(110.0, events)
    assert events.kinds() == [(EventKind.SOFT_EXPIRE, "seconds")]
    assert events.seen[0].now == 110.0
    sa.tick(115.0, events)
    assert isinstance(sa.encrypt(b"x", 4, 119.9, events), bytes)
    assert len(events.seen) == 1
    assert sa.encrypt(b"x", 4, 120.0, events) is Drop.EXPIRED  # the data path checks `now` itself
    assert events.kinds()[-1] == (EventKind.HARD_EXPIRE, "seconds")
    assert events.seen[-1].now == 120.0
    sa.tick(500.0, events)
    assert len(events.seen) == 2


def test_seconds_count_from_created_when_restored() -> None:
    config = cbc_config(hard=Limits(seconds=60))
    sa = SecurityAssociation(config, 1000.0, created=950.0)
    events = Events()
    sa.tick(1009.0, events)
    assert events.seen == []
    sa.tick(1010.0, events)
    assert events.kinds() == [(EventKind.HARD_EXPIRE, "seconds")]


def test_expired_sa_refuses_receive() -> None:
    sender = SecurityAssociation(cbc_config(), 0.0)
    receiver = SecurityAssociation(cbc_config(hard=Limits(seconds=5)), 0.0)
    packet = sender.encrypt(b"z", 4, 0.0, Events())
    assert isinstance(packet, bytes)
    events = Events()
    assert receiver.decrypt(packet, 5.0, events) is Drop.EXPIRED
    assert events.kinds() == [(EventKind.HARD_EXPIRE, "seconds")]


# ---------------------------------------------------------------------------------------------------------
# The sequence store


def test_reserve_is_called_when_the_send_limit_is_passed() -> None:
    sa = SecurityAssociation(cbc_config(), 0.0)
    sa.seq_limit = 5
    reserve = MemoryStore(grant=10)
    sa.attach(reserve)
    for _ in range(5):
        assert isinstance(sa.encrypt(b"x", 4, 0.0, Events()), bytes)
    assert reserve.calls == []
    assert isinstance(sa.encrypt(b"x", 4, 0.0, Events()), bytes)
    assert reserve.calls == [("out", 6)]
    assert sa.seq_limit == 16
    for _ in range(10):  # 7 .. 16: within the grant
        sa.encrypt(b"x", 4, 0.0, Events())
    assert reserve.calls == [("out", 6)]
    sa.encrypt(b"x", 4, 0.0, Events())
    assert reserve.calls == [("out", 6), ("out", 17)]


def test_reserve_failure_is_a_counted_drop_and_burns_no_number() -> None:
    sa = SecurityAssociation(cbc_config(), 0.0)
    sa.seq_limit = 2
    reserve = MemoryStore(fail=True)
    sa.attach(reserve)
    sa.encrypt(b"x", 4, 0.0, Events())
    sa.encrypt(b"x", 4, 0.0, Events())
    assert sa.encrypt(b"x", 4, 0.0, Events()) is Drop.STORE_FAILED
    assert sa.encrypt(b"x", 4, 0.0, Events()) is Drop.STORE_FAILED
    assert sa.drops[Drop.STORE_FAILED] == 2
    assert sa.seq_out == 2
    reserve.fail = False
    packet = sa.encrypt(b"x", 4, 0.0, Events())
    assert isinstance(packet, bytes)
    assert packet[4:8] == (3).to_bytes(4, "big")


def test_reserve_granting_too_little_or_missing_is_a_drop() -> None:
    sa = SecurityAssociation(cbc_config(), 0.0)
    sa.seq_limit = 0
    assert sa.encrypt(b"x", 4, 0.0, Events()) is Drop.STORE_FAILED  # no hook at all
    sa.attach(MemoryStore(grant=-1))
    assert sa.encrypt(b"x", 4, 0.0, Events()) is Drop.STORE_FAILED
    assert sa.seq_out == 0


def test_reserve_on_receive() -> None:
    sender = SecurityAssociation(cbc_config(), 0.0)
    receiver = SecurityAssociation(cbc_config(), 0.0)
    receiver.in_limit = 2
    reserve = MemoryStore(grant=5, fail=True)
    receiver.attach(reserve)
    packets = [sender.encrypt(b"r", 4, 0.0, Events()) for _ in range(4)]
    assert isinstance(packets[0], bytes) and isinstance(packets[2], bytes)
    assert receiver.decrypt(packets[0], 0.0, Events()) == (b"r", 4)
    assert receiver.decrypt(packets[2], 0.0, Events()) is Drop.STORE_FAILED  # store failed: not accepted
    assert receiver.replay.top == 1  # ... and the window did not move
    reserve.fail = False
    assert receiver.decrypt(packets[2], 0.0, Events()) == (b"r", 4)
    assert reserve.calls == [("in", 3), ("in", 3)]
    assert receiver.in_limit == 8


# ---------------------------------------------------------------------------------------------------------
# Keys stay secret


def test_keys_never_appear_in_repr() -> None:
    config = cbc_config()
    sa = SecurityAssociation(config, 0.0)
    for text in (repr(config), str(config), repr(sa), str(sa)):
        for key in (AES_KEY, SHA_KEY):
            assert key.hex() not in text
            assert repr(key) not in text
            assert key.hex().upper() not in text
    assert "0x1234" in repr(sa)
    assert "aes-cbc" in repr(sa)


def test_record_round_trip_keeps_everything() -> None:
    config = cbc_config(
        esn=True, encap=UdpEncap(4500, 4501), soft=Limits(1, 2, 3), hard=Limits(4, 5, 6), replay_window=0
    )
    assert SAConfig.from_record(config.to_record()) == config
    gcm = gcm_config()
    assert SAConfig.from_record(gcm.to_record()) == gcm


# ---------------------------------------------------------------------------------------------------------
# Configuration checks


@pytest.mark.parametrize("spi", [0, 1, 255, 1 << 32])
def test_reserved_spis_are_refused(spi: int) -> None:
    # RFC 4303 §2.1: 1-255 are reserved by IANA; 0 is for local use only.
    with pytest.raises(SAError, match="reserved or out of range"):
        cbc_config(spi=spi)


@pytest.mark.parametrize("spi", [256, 0xFFFFFFFF])
def test_spi_range_edges_are_allowed(spi: int) -> None:
    assert cbc_config(spi=spi).spi == spi


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cipher_key": bytes(15)}, r"Bad key: aes-cbc needs a key of 16 bytes"),
        ({"cipher_key": bytes(40)}, r"Key too long: aes-cbc"),
        ({"digest_key": bytes(20)}, r"Bad key: hmac\(sha256\) needs a key of 32 bytes"),
        ({"cipher": "3des", "cipher_key": bytes.fromhex("0101010101010101") + bytes(range(1, 17))},
         "weak or semi-weak DES key"),
        ({"cipher": "3des", "cipher_key": bytes(range(8, 16)) * 2 + bytes(range(16, 24))},
         r"degenerates to single DES \(K1 = K2"),
        ({"cipher": "aes-gcm", "cipher_key": GCM_KEY}, "authenticates by itself"),
        ({"cipher": "null", "cipher_key": b"", "digest": None, "digest_key": b""}, "protects nothing"),
        ({"cipher": None, "cipher_key": b"", "digest": None, "digest_key": b""}, "needs a cipher, a digest"),
        ({"cipher": "rot13"}, "Unknown cipher or digest"),
        ({"digest": "crc32"}, "Unknown cipher or digest"),
        ({"dst": "10.0.0.1"}, "must differ"),
        ({"dst": "2001:db8::1"}, "both be IPv4 or both IPv6"),
        ({"dst": "224.0.0.1"}, "Wildcard or multicast destination"),
        ({"src": "0.0.0.0"}, "Wildcard or multicast source"),
        ({"dst": "255.255.255.255"}, "Wildcard or multicast"),
        ({"dst": "not-an-address"}, "Bad destination address"),
        ({"replay_window": -1}, "Replay window must be 0"),
        ({"replay_window": (1 << 20) + 1}, "Replay window must be 0"),
        ({"encap": UdpEncap(0, 4500)}, "ports must be 1 to 65535"),
        ({"soft": Limits(packets=-1)}, "soft lifetimes must not be negative"),
        ({"hard": Limits(seconds=-1)}, "hard lifetimes must not be negative"),
        ({"digest_bits": 64}, "must be 128 bits \\(RFC 4868"),
    ],
)  # fmt: skip
def test_bad_configurations_are_refused_with_a_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(SAError, match=message) as info:
        cbc_config(**changes)
    assert info.value.errno == "EINVAL"


def test_validated_canonicalises_names_and_addresses() -> None:
    config = SAConfig(0x100, " 2001:DB8::2 ", "2001:db8:0::1", "rfc4106(gcm(aes))", GCM_KEY).validated()
    assert (config.cipher, config.dst, config.src) == ("aes-gcm", "2001:db8::2", "2001:db8::1")
    assert config.digest_bits == 128
    assert config.family == 6
    assert config.key[2] == 0x100
    short = SAConfig(0x100, "10.0.0.2", "10.0.0.1", "aes-gcm-8", GCM_KEY).validated()
    assert short.digest_bits == 64
    assert SecurityAssociation(short, 0.0).cipher.icv_len == 8


def test_validated_is_idempotent() -> None:
    for config in (cbc_config(), gcm_config(), gcm_config(cipher="aes-gcm-12")):
        assert config.validated() == config


# ---------------------------------------------------------------------------------------------------------
# Counter-mode IVs of a --duplex pair


def _ivs(config: SAConfig, count: int) -> list[bytes]:
    sa = SecurityAssociation(config, 0.0)
    iv_len = sa.cipher.iv_len
    out = []
    for _ in range(count):
        packet = sa.encrypt(b"inner", 4, 0.0, Events())
        assert isinstance(packet, bytes)
        out.append(packet[8 : 8 + iv_len])
    return out


@pytest.mark.parametrize(
    ("cipher", "key", "digest", "digest_key"),
    [
        ("aes-gcm", GCM_KEY, None, b""),
        ("aes-gcm-12", GCM_KEY, None, b""),
        ("chacha20-poly1305", bytes(36), None, b""),
        ("aes-ctr", GCM_KEY, "sha256", SHA_KEY),
    ],
    ids=["aes-gcm", "aes-gcm-12", "chacha20-poly1305", "aes-ctr"],
)
@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize(
    ("dst", "src"),
    [("10.0.0.2", "10.0.0.1"), ("10.0.0.1", "10.0.0.2"), ("fe80::2", "::1")],
    ids=["v4-up", "v4-down", "v6"],
)
def test_duplex_directions_never_share_an_iv(
    cipher: str, key: bytes, digest: str | None, digest_key: bytes, esn: bool, dst: str, src: str
) -> None:
    config = SAConfig(0x2000, dst, src, cipher, key, digest, digest_key, esn=esn).validated()
    reverse = config.reversed()
    assert reverse.validated() == reverse  # the flipped bit is what validating the reverse derives
    assert {config.iv_split, reverse.iv_split} == {0, 1}
    forward_ivs = _ivs(config, 64)
    reverse_ivs = _ivs(reverse, 64)
    assert len(set(forward_ivs)) == 64
    assert not set(forward_ivs) & set(reverse_ivs)
    # The counter IV is the sequence number with the direction in the top bit (RFC 4106 §3.1).
    for seq in (1, 64):
        fwd, rev = forward_ivs[seq - 1], reverse_ivs[seq - 1]
        assert int.from_bytes(fwd, "big") & ((1 << 63) - 1) == seq
        assert int.from_bytes(rev, "big") & ((1 << 63) - 1) == seq
        assert (fwd[0] ^ rev[0]) == 0x80


def test_cbc_has_no_direction_bit() -> None:
    config = cbc_config()
    assert config.iv_split is None
    assert config.reversed().iv_split is None


@pytest.mark.parametrize(
    ("cipher", "key", "digest", "digest_key"),
    [
        ("aes-gcm", GCM_KEY, None, b""),
        ("chacha20-poly1305", bytes(36), None, b""),
        ("aes-ctr", GCM_KEY, "sha256", SHA_KEY),
    ],
    ids=["aes-gcm", "chacha20-poly1305", "aes-ctr"],
)
def test_duplex_counter_mode_over_udp_is_refused(
    cipher: str, key: bytes, digest: str | None, digest_key: bytes
) -> None:
    """Behind a NAT the two hosts' SAs name different addresses, so both may derive the same direction
    bit (newcomer trial finding 1): --duplex, counter mode and --encap=udp together are refused, naming
    the safe alternative."""
    base = SAConfig(0x1000, "203.0.113.2", "10.1.0.2", cipher, key, digest, digest_key)
    with pytest.raises(SAError, match=r"^--duplex with .* --encap=udp is refused.*one SA per direction"):
        replace(base, duplex=True, encap=UdpEncap()).validated()
    # Each alone is fine: one SA per direction over UDP, or --duplex on raw ESP (no NAT rewrites it).
    assert replace(base, encap=UdpEncap()).validated().encap == UdpEncap()
    assert replace(base, duplex=True).validated().reversed().duplex


def test_duplex_cbc_over_udp_is_allowed_but_ambiguous() -> None:
    """CBC has no direction bit: --duplex is allowed (the seed's line) and says it is ambiguous."""
    config = cbc_config(duplex=True, encap=UdpEncap())
    assert config.ambiguous_duplex and config.reversed().ambiguous_duplex
    assert not gcm_config(duplex=True).ambiguous_duplex
    assert not cbc_config().ambiguous_duplex


def test_duplex_survives_the_state_record() -> None:
    config = gcm_config(duplex=True)
    assert SAConfig.from_record(config.to_record()).validated() == config
    old = config.to_record()
    del old["duplex"]  # a record written before the field existed
    assert not SAConfig.from_record(old).duplex


@pytest.mark.parametrize(
    ("cipher", "key"),
    [("des_ede3-cbc", bytes(range(1, 25))), ("blowfish-cbc", bytes(16)), ("cast5-cbc", bytes(16))],
)
@pytest.mark.parametrize(("asked", "enforced"), [(0, SWEET32_BYTES), (1 << 40, SWEET32_BYTES), (5000, 5000)])
def test_64_bit_block_ciphers_get_a_hard_byte_lifetime(
    cipher: str, key: bytes, asked: int, enforced: int
) -> None:
    """Sweet32: a 64-bit block cipher's hard byte lifetime is at most 2^30 bytes, whatever was asked."""
    config = cbc_config(cipher=cipher, cipher_key=key, hard=Limits(bytes=asked))
    assert config.hard.bytes == enforced
    assert config.validated() == config
    assert cbc_config(hard=Limits(bytes=asked)).hard.bytes == asked  # AES: a 128-bit block, as asked
    sa = SecurityAssociation(replace(config, hard=Limits(bytes=40)), 0.0)
    events = Events()
    for _ in range(3):
        sa.encrypt(bytes(20), 4, 0.0, events)
    assert sa.encrypt(bytes(20), 4, 0.0, events) is Drop.EXPIRED
