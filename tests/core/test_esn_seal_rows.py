"""SAs with ESN (RFC 4303 §2.2.1, §3.3.2.1, Appendix A) sealed the batch way, CBC with an HMAC and AEAD
(AES-GCM, ChaCha20-Poly1305): `esp.seal_rows_cbc` and `esp.seal_rows` with `esn`, and
`SecurityAssociation.encrypt_rows`, give byte for byte what `esp.seal` and `encrypt` give packet by packet
(for CBC, with the same IVs), on the C and the pure-Python paths: each CBC packet's ICV covers its own high
32 bits and each AEAD packet's AAD carries them (RFC 4106 §5), never sent, also where a batch crosses a
multiple of 2^32; the sequence numbers are reserved through the store once for the batch; and scapy's ESP
(an independent implementation) opens every packet of a super-packet sealed so."""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers import ipsec as scapy_ipsec
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

from ipsec_tunnel.core import algorithms, esp, framing, gso, send
from ipsec_tunnel.core import sa as sa_module
from ipsec_tunnel.core.algorithms import find_auth, find_cipher, make_auth, make_cipher
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.plane import Burst
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.seqstore import MemoryStore
from tests.core.test_engine import Pair, make_pair
from tests.core.test_gso import tso as make_tso
from tests.core.test_gso import v4_tcp

ext = framing.available
B = 1 << 32
# (cipher, key bytes, digest): an AES block with SHA-256-128 and SHA-512-256, 3DES's 8-byte block with
# SHA-1-96
SUITES = [("aes-cbc", 16, "sha256"), ("aes-cbc", 32, "sha512"), ("des_ede3-cbc", 24, "sha1")]
SA_SUITES = SUITES[:2]  # 3DES SAs carry the Sweet32 byte lifetime and seal one by one
# first full sequence numbers: below, across and after a multiple of 2^32, far in
FIRSTS = [1, B - 3, B - 1, B, (7 << 32) - 40, (0xFFFF << 32) | 0xFFFFFFF0]
NOW = 1.0


class _Stream:
    """A deterministic stand-in for `algorithms.random_bytes`: one byte stream, however it is cut."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, n: int) -> bytes:
        return self.rng.randbytes(n)


def _rows(inner: list[bytes], nh: int, block: int) -> Any:
    """Inner packets of one size, each followed by its trailer, as rows."""
    trailer = esp.block_trailer(len(inner[0]), nh, block)
    return np.frombuffer(b"".join(p + trailer for p in inner), np.uint8).reshape(len(inner), -1)


def _ipv4(size: int, n: int) -> bytes:
    return bytes([0x45, 0, size >> 8, size & 0xFF]) + (n.to_bytes(8, "big") * (size // 8 + 1))[: size - 4]


def _transforms(cipher: str, key_len: int, digest: str) -> tuple[Any, Any]:
    rng = random.Random(f"{cipher}{key_len}{digest}")
    alg = find_auth(digest)
    return make_cipher(find_cipher(cipher)[0], rng.randbytes(key_len)), make_auth(
        alg, rng.randbytes(alg.key_len)
    )


# -- the codec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", FIRSTS, ids=hex)
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_seal_rows_cbc_with_esn_is_seal_with_esn_row_by_row(
    suite: tuple[str, int, str], first: int, path: str
) -> None:
    cipher, auth = _transforms(*suite)
    count = 9
    inner = [_ipv4(1386, first + i) for i in range(count)]
    sealed = esp.seal_rows_cbc(0x1234, first, cipher, auth, _rows(inner, 4, cipher.block), esn=True)
    assert len(sealed) == count
    for i, (packet, p) in enumerate(zip(sealed, inner, strict=True)):
        seq = first + i
        iv = packet[8 : 8 + cipher.iv_len]
        assert packet == esp.seal(0x1234, seq, True, cipher, auth, p, 4, iv=iv)
        assert packet[4:8] == (seq & 0xFFFFFFFF).to_bytes(4, "big")  # only the low 32 bits are sent
        assert esp.open_packet(packet, seq, True, cipher, auth) == (p, 4)
        # the ICV covers this packet's own high bits: any other high bits fail it
        for other in (seq - B, seq + B):
            if 0 <= other < 1 << 64:
                assert esp.open_packet(packet, other, True, cipher, auth) is Drop.AUTH_FAILED
    # and the receiver's batch way opens them, run by run of equal high bits (RFC 4303 §A2.1)
    cut = next((i for i in range(count) if (first + i) >> 32 != first >> 32), count)
    for part, plain, seq in ((sealed[:cut], inner[:cut], first), (sealed[cut:], inner[cut:], first + cut)):
        if part:
            assert esp.open_cbc_many(part, cipher, auth, seq >> 32) == (plain, 0)


@pytest.mark.parametrize("suite", SUITES[:1], ids=lambda s: f"{s[0]}-{s[2]}")
def test_seal_rows_cbc_without_esn_is_unchanged(suite: tuple[str, int, str], path: str) -> None:
    """No ESN: the ICV covers header, IV and ciphertext alone, as before."""
    cipher, auth = _transforms(*suite)
    inner = [_ipv4(300, i) for i in range(4)]
    sealed = esp.seal_rows_cbc(0x1234, B - 4, cipher, auth, _rows(inner, 4, cipher.block))
    for i, packet in enumerate(sealed):
        assert packet == esp.seal(0x1234, B - 4 + i, False, cipher, auth, inner[i], 4, iv=packet[8:24])


@pytest.mark.parametrize(
    ("first", "count", "esn", "fits"),
    [
        (B - 2, 2, False, True),
        (B - 1, 2, False, False),  # past 2^32 - 1 without ESN
        (B - 1, 2, True, True),
        ((1 << 64) - 2, 2, True, True),
        ((1 << 64) - 1, 2, True, False),  # past 2^64 - 1
        ((1 << 64) - 1, 1, True, True),
    ],
)
def test_seal_rows_cbc_refuses_numbers_past_the_end(
    first: int, count: int, esn: bool, fits: bool, path: str
) -> None:
    cipher, auth = _transforms(*SUITES[0])
    rows = _rows([_ipv4(100, i) for i in range(count)], 4, cipher.block)
    if fits:
        assert len(esp.seal_rows_cbc(1, first, cipher, auth, rows, esn)) == count
    else:
        with pytest.raises(ValueError, match="out of range"):
            esp.seal_rows_cbc(1, first, cipher, auth, rows, esn)


class _StubCbc:
    """A CBC cipher whose `encrypt_fresh_rows` is deterministic (IV = the row's index, ciphertext = the
    row), so that the C and the Python loops around it can be compared byte for byte."""

    iv_len = block = 16

    def encrypt_fresh_rows(self, rows: Any) -> bytes:
        return b"".join(i.to_bytes(16, "big") + row.tobytes() for i, row in enumerate(rows))


@pytest.mark.skipif(ext is None, reason="the C extension is not built (IPSEC_REQUIRE_EXT=1 fails)")
@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 90).map(lambda n: 16 * n),
    st.integers(0, 0xFFFFFFFF).flatmap(
        lambda hi: st.tuples(
            st.just(hi), st.one_of(st.integers(0, 1 << 20), st.integers(0xFFFFFFE0, 0xFFFFFFFF))
        )
    ),
    st.sampled_from(["sha256", "sha1", "sha512"]),
)
def test_seal_rows_cbc_with_esn_in_c_are_the_pure_rows(
    count: int, width: int, hi_lo: tuple[int, int], digest: str
) -> None:
    hi, lo = hi_lo
    first = hi << 32 | lo
    count = min(count, (1 << 64) - first)
    alg = find_auth(digest)
    auth = make_auth(alg, os.urandom(alg.key_len))
    rows = np.frombuffer(os.urandom(count * width), np.uint8).reshape(count, width)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(esp, "_native", None)
        pure = esp.seal_rows_cbc(0x4321, first, _StubCbc(), auth, rows, True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(esp, "_native", ext)
        native = esp.seal_rows_cbc(0x4321, first, _StubCbc(), auth, rows, True)
    assert native == pure and all(type(p) is bytes for p in native)
    for i, packet in enumerate(native):  # each ICV over its own high bits
        seq = first + i
        assert auth.sign(packet[: -auth.icv_len], (seq >> 32).to_bytes(4, "big")) == packet[-auth.icv_len :]


# -- the SA: encrypt_rows against encrypt ----------------------------------------------------------------


def _config(suite: tuple[str, int, str], **extra: Any) -> SAConfig:
    cipher, key_len, digest = suite
    rng = random.Random(f"{cipher}{digest}")
    return SAConfig(
        0x2000, "192.0.2.2", "192.0.2.1", cipher, rng.randbytes(key_len), digest,
        rng.randbytes(find_auth(digest).key_len), esn=True, **extra,
    ).validated()  # fmt: skip


def _sealed_both_ways(
    config: SAConfig, seq_out: int, groups: list[tuple[list[bytes], int]], mp: pytest.MonkeyPatch
) -> tuple[list[bytes], list[bytes], SecurityAssociation, SecurityAssociation]:
    """(`encrypt_rows` of the groups, `encrypt` of each packet, the two SAs after), each SA from
    `seq_out` and the same random byte stream."""
    events: list[object] = []
    batch = SecurityAssociation(config, 0.0, seq_out=seq_out)
    single = SecurityAssociation(config, 0.0, seq_out=seq_out)
    assert batch.seals_rows
    mp.setattr(algorithms, "random_bytes", _Stream(7))
    arrays = [(_rows(inner, 4, batch.cipher.block), len(inner[0])) for inner, _ in groups]
    rowed = batch.encrypt_rows(arrays, NOW, events.append)
    assert rowed is not None
    mp.setattr(algorithms, "random_bytes", _Stream(7))
    each = [single.encrypt(p, 4, NOW, events.append) for inner, _ in groups for p in inner]
    assert not events
    return rowed, each, batch, single  # type: ignore[return-value]


@pytest.mark.parametrize("seq_out", [0, B - 5, B - 1, (3 << 32) - 30, (1 << 64) - 50], ids=hex)
@pytest.mark.parametrize("suite", SA_SUITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_encrypt_rows_with_esn_is_encrypt_byte_for_byte(
    suite: tuple[str, int, str], seq_out: int, path: str
) -> None:
    config = _config(suite)
    groups = [([_ipv4(1386, seq_out + i) for i in range(20)], 1386), ([_ipv4(333, 99)], 333)]
    with pytest.MonkeyPatch.context() as mp:
        rowed, each, batch, single = _sealed_both_ways(config, seq_out, groups, mp)
    assert rowed == each
    assert (batch.seq_out, batch.packets, batch.bytes) == (single.seq_out, single.packets, single.bytes)
    assert batch.seq_out == seq_out + 21
    # a receiver whose window is just below the first opens them all, one by one and the batch way
    receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, esn=True, top=seq_out))
    plain = [p for inner, _ in groups for p in inner]
    assert [receiver.decrypt(p, NOW, print) for p in rowed] == [(p, 4) for p in plain]
    receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, esn=True, top=seq_out))
    cut = next((i for i in range(len(rowed)) if (seq_out + 1 + i) >> 32 != (seq_out + 1) >> 32), len(rowed))
    opened = [r for part in (rowed[:cut], rowed[cut:]) for r in receiver.decrypt_many(part, NOW, print)[0]]
    assert opened == plain and receiver.replay.top == seq_out + 21 and not receiver.drops


def test_encrypt_rows_with_esn_reserves_once_and_journals_the_last(path: str) -> None:
    """The numbers come from the store once for the batch, as without ESN; none is used twice."""
    config = _config(SUITES[0])
    sa = SecurityAssociation(config, 0.0, seq_out=B - 10)
    store = MemoryStore(grant=100)
    sa.seq_limit = B - 5
    sa.attach(store)
    inner = [_ipv4(500, i) for i in range(30)]
    out = sa.encrypt_rows([(_rows(inner, 4, sa.cipher.block), 500)], NOW, print)
    assert out is not None and len(out) == 30
    assert store.calls == [("out", B + 20)] and sa.seq_out == B + 20 and sa.seq_limit == B + 120
    lows = [int.from_bytes(p[4:8], "big") for p in out]
    assert lows == [*range(B - 9, B), *range(21)]
    more = sa.encrypt_rows([(_rows(inner[:3], 4, sa.cipher.block), 500)], NOW, print)
    assert more is not None and [int.from_bytes(p[4:8], "big") for p in more] == [21, 22, 23]
    ivs = [p[8:24] for p in out + more]
    assert len(set(ivs)) == len(ivs)  # fresh IVs (RFC 3602 §2)


def test_encrypt_rows_with_esn_declines_past_the_end(path: str) -> None:
    """A batch that would pass the last sequence number, or the store's reservation, is declined with
    nothing used up (`encrypt` then decides packet by packet)."""
    config = _config(SUITES[0])
    inner = [_ipv4(200, i) for i in range(5)]
    sa = SecurityAssociation(config, 0.0, seq_out=(1 << 64) - 4)
    assert sa.encrypt_rows([(_rows(inner, 4, sa.cipher.block), 200)], NOW, print) is None
    assert sa.seq_out == (1 << 64) - 4 and sa.packets == 0
    sa = SecurityAssociation(config, 0.0, seq_out=B - 2)
    sa.seq_limit = B
    sa.attach(MemoryStore(fail=True))
    assert sa.encrypt_rows([(_rows(inner, 4, sa.cipher.block), 200)], NOW, print) is None
    assert sa.seq_out == B - 2 and sa.packets == 0


# -- the send pipeline, and an independent implementation ------------------------------------------------


def _tso_pair(seq_out: int) -> Pair:
    pair = make_pair(4, "aes-cbc", esn=True)
    for engine in (pair.a, pair.b):
        for sa in engine.sad:
            sa.seq_out = seq_out
            sa.replay = ReplayWindow(64, esn=True, top=seq_out)
    return pair


def _burst(pair: Pair, packet: bytes, offload: Any) -> Burst | None:
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    return send._rows(pair.a, "t0", tunnel, pair.a.sa_for(tunnel), packet, offload, NOW, [], [])


def test_a_tso_super_packet_on_an_esn_sa_goes_as_rows_across_2_to_the_32(path: str) -> None:
    """The rows branch takes an ESN CBC SA: the same packets as `gso.split` then `send_batch` for the
    same IVs, and the peer's receive path takes them all."""
    packet, offload = make_tso(v4_tcp(os.urandom(30000), flags="PA"), 1386)
    segments = gso.split(packet, offload)
    rows_pair, plain_pair = _tso_pair(B - 7), _tso_pair(B - 7)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(algorithms, "random_bytes", _Stream(3))
        burst = _burst(rows_pair, packet, offload)
        mp.setattr(algorithms, "random_bytes", _Stream(3))
        reference = plain_pair.a.send_batch("t0", segments, NOW)
    assert isinstance(burst, Burst) and len(burst.payloads) == len(segments) > 7
    assert burst.payloads == [p for b in reference if isinstance(b, Burst) for p in b.payloads]
    deliver, rejects = rows_pair.b.receive_batch(burst.src, burst.dst, burst.payloads, NOW)
    assert not rejects and deliver == {"t0": segments}


def _scapy_opens(pair: Pair, burst: Burst, first: int) -> list[bytes]:
    """scapy's ESP (`scapy.layers.ipsec`, esn_en with each packet's high 32 bits) opening the burst."""
    src, dst = (str(ipaddress.ip_address(a)) for a in (burst.src, burst.dst))
    new_sa: Callable[..., Any] = scapy_ipsec.SecurityAssociation
    theirs = new_sa(
        ESP, spi=pair.ab.spi, crypt_algo="AES-CBC", crypt_key=pair.ab.cipher_key, auth_algo="SHA2-256-128",
        auth_key=pair.ab.digest_key, tunnel_header=IP(src=src, dst=dst),
    )  # fmt: skip
    return [
        bytes(
            theirs.decrypt(
                IP(bytes(IP(src=src, dst=dst, proto=50) / Raw(p))), esn_en=True, esn=(first + i) >> 32
            )
        )
        for i, p in enumerate(burst.payloads)
    ]


@pytest.mark.parametrize("seq_out", [B - 7, (5 << 32) + 100], ids=hex)
def test_scapy_opens_an_esn_super_packet_sealed_as_rows(seq_out: int, path: str) -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(20000), flags="PA"), 1386)
    pair = _tso_pair(seq_out)
    burst = _burst(pair, packet, offload)
    assert burst is not None
    assert _scapy_opens(pair, burst, seq_out + 1) == gso.split(packet, offload)
    # and the high bits are in the ICV: scapy with the wrong ones refuses the first packet
    with pytest.raises(scapy_ipsec.IPSecIntegrityError):
        _scapy_opens(
            pair, Burst(burst.dst, burst.src, 0, 64, False, None, None, burst.payloads[:1]), seq_out + B
        )


# -- AEAD (AES-GCM, ChaCha20-Poly1305) with ESN ----------------------------------------------------------

AEADS = [("aes-gcm", 20), ("chacha20-poly1305", 36)]


def _aead_config(cipher: str, key_len: int, reverse: bool = False) -> SAConfig:
    """An ESN SA of a counter-mode AEAD; its IVs carry the direction bit (`iv_split` 1) when `reverse`."""
    key = random.Random(cipher).randbytes(key_len)
    dst, src = ("192.0.2.1", "192.0.2.2") if reverse else ("192.0.2.2", "192.0.2.1")
    config = SAConfig(0x3000, dst, src, cipher, key, esn=True).validated()
    assert config.iv_split == int(reverse)
    return config


def _aead_rows(inner: list[bytes]) -> Any:
    trailer = esp.aead16_trailer(len(inner[0]), 4)
    return np.frombuffer(b"".join(p + trailer for p in inner), np.uint8).reshape(len(inner), -1)


@pytest.mark.parametrize("first", FIRSTS, ids=hex)
@pytest.mark.parametrize("split", [None, 0, 1])
@pytest.mark.parametrize("aead", AEADS, ids=lambda a: a[0])
def test_seal_rows_with_esn_is_seal_with_esn_row_by_row(
    aead: tuple[str, int], split: int | None, first: int, path: str
) -> None:
    config = _aead_config(*aead)
    sa = SecurityAssociation(config, 0.0)
    cipher = sa.cipher
    inner = [_ipv4(1386, first + i) for i in range(9)]
    sealed = esp.seal_rows(
        0x3000, first, split, cipher.full_icv_encrypt, cipher.salt, _aead_rows(inner),
        cipher.full_icv_encrypt_into, True,
    )  # fmt: skip
    one = [esp.seal(0x3000, first + i, True, cipher, None, p, 4, iv_split=split) for i, p in enumerate(inner)]
    assert sealed == one
    for i, packet in enumerate(sealed):
        seq = first + i
        assert packet[4:8] == (seq & 0xFFFFFFFF).to_bytes(4, "big")  # only the low 32 bits are sent
        assert esp.open_packet(packet, seq, True, cipher, None) == (inner[i], 4)
        if seq >> 32:  # the high bits are in the AAD
            assert esp.open_packet(packet, seq - B, True, cipher, None) is Drop.AUTH_FAILED


@pytest.mark.parametrize(
    ("first", "count", "split", "fits"),
    [
        (B - 1, 2, None, True),
        ((1 << 64) - 2, 2, None, True),
        ((1 << 64) - 1, 2, None, False),  # past 2^64 - 1
        ((1 << 63) - 2, 2, 1, True),
        ((1 << 63) - 1, 2, 1, False),  # into the IV's direction bit (RFC 4106 §3.1: no counter twice)
    ],
)
def test_seal_rows_with_esn_refuses_numbers_past_the_end(
    first: int, count: int, split: int | None, fits: bool, path: str
) -> None:
    cipher = SecurityAssociation(_aead_config(*AEADS[0]), 0.0).cipher
    args = (cipher.full_icv_encrypt, cipher.salt, _aead_rows([_ipv4(100, i) for i in range(count)]))
    if fits:
        assert len(esp.seal_rows(1, first, split, *args, cipher.full_icv_encrypt_into, True)) == count
    else:
        with pytest.raises(ValueError, match="out of range"):
            esp.seal_rows(1, first, split, *args, cipher.full_icv_encrypt_into, True)


@pytest.mark.skipif(ext is None, reason="the C extension is not built (IPSEC_REQUIRE_EXT=1 fails)")
@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(AEADS),
    st.integers(1, 30),
    st.integers(1, 400).map(lambda n: 4 * n),
    st.integers(0, 0x7FFFFFFF),
    st.one_of(st.integers(0, 1 << 20), st.integers(0xFFFFFFE0, 0xFFFFFFFF)),
    st.sampled_from([None, 0, 1]),
)
@example(AEADS[0], 2, 4, 0x7FFFFFFF, 0xFFFFFFFF, 1)  # the last number before the duplex bit, and one past
def test_seal_rows_with_esn_in_c_are_the_pure_rows(
    aead: tuple[str, int], count: int, width: int, hi: int, lo: int, split: int | None
) -> None:
    cipher = SecurityAssociation(_aead_config(*aead), 0.0).cipher
    rows = np.frombuffer(os.urandom(count * width), np.uint8).reshape(count, width)
    first = hi << 32 | lo
    args = (
        0x4321,
        first,
        split,
        cipher.full_icv_encrypt,
        cipher.salt,
        rows,
        cipher.full_icv_encrypt_into,
        True,
    )

    def sealed(native: object) -> list[bytes] | str:
        """The rows sealed by one path, or its refusal (numbers into the duplex bit or past 2^64 - 1)."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(esp, "_native", native)
            try:
                return esp.seal_rows(*args)
            except ValueError as exc:
                return str(exc)

    pure, native = sealed(None), sealed(ext)
    assert native == pure
    top = (1 << 63) - 1 if split else (1 << 64) - 1
    if first + count - 1 <= top:
        assert isinstance(native, list) and all(type(p) is bytes for p in native)
    else:
        assert isinstance(native, str) and "out of range" in native


@pytest.mark.parametrize("seq_out", [0, B - 5, (3 << 32) - 30, (1 << 63) - 50], ids=hex)
@pytest.mark.parametrize("aead", AEADS, ids=lambda a: a[0])
def test_aead_encrypt_rows_with_esn_is_encrypt_byte_for_byte(
    aead: tuple[str, int], seq_out: int, path: str
) -> None:
    config = _aead_config(*aead)
    batch = SecurityAssociation(config, 0.0, seq_out=seq_out)
    single = SecurityAssociation(config, 0.0, seq_out=seq_out)
    assert batch.seals_rows
    inner = [_ipv4(1386, seq_out + i) for i in range(20)]
    rowed = batch.encrypt_rows([(_aead_rows(inner), 1386), (_aead_rows(inner[:1]), 1386)], NOW, print)
    each = [single.encrypt(p, 4, NOW, print) for p in [*inner, inner[0]]]
    assert rowed == each
    assert (batch.seq_out, batch.packets, batch.bytes) == (single.seq_out, single.packets, single.bytes)
    receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, esn=True, top=seq_out))
    assert [receiver.decrypt(p, NOW, print) for p in rowed] == [(p, 4) for p in [*inner, inner[0]]]


def test_aead_encrypt_rows_with_esn_stops_below_the_direction_bit(path: str) -> None:
    """An SA whose IVs carry the direction bit seals rows up to 2^63 - 1 and declines past it."""
    config = _aead_config("aes-gcm", 20, reverse=True)
    inner = [_ipv4(200, i) for i in range(5)]
    sa = SecurityAssociation(config, 0.0, seq_out=(1 << 63) - 5)
    assert sa.encrypt_rows([(_aead_rows(inner), 200)], NOW, print) is None
    assert sa.seq_out == (1 << 63) - 5 and sa.packets == 0
    sa = SecurityAssociation(config, 0.0, seq_out=(1 << 63) - 6)
    out = sa.encrypt_rows([(_aead_rows(inner), 200)], NOW, print)
    assert out is not None and sa.seq_out == (1 << 63) - 1
    assert [int.from_bytes(p[8:16], "big") for p in out] == [
        (1 << 63) | ((1 << 63) - 5 + i) for i in range(5)
    ]


def test_a_short_icv_aead_with_esn_takes_no_rows() -> None:
    config = SAConfig(0x3000, "192.0.2.2", "192.0.2.1", "aes-gcm-12", bytes(20), esn=True).validated()
    assert not SecurityAssociation(config, 0.0).seals_rows


def _aead_tso_pair(cipher: str, seq_out: int) -> Pair:
    pair = make_pair(4, cipher, esn=True)
    for engine in (pair.a, pair.b):
        for sa in engine.sad:
            sa.seq_out = seq_out
            sa.replay = ReplayWindow(64, esn=True, top=seq_out)
    return pair


@pytest.mark.parametrize("cipher", ["aes-gcm", "chacha20-poly1305"])
def test_an_esn_aead_super_packet_goes_as_rows_across_2_to_the_32(cipher: str, path: str) -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(30000), flags="PA"), 1386)
    segments = gso.split(packet, offload)
    rows_pair, plain_pair = _aead_tso_pair(cipher, B - 7), _aead_tso_pair(cipher, B - 7)
    burst = _burst(rows_pair, packet, offload)
    reference = plain_pair.a.send_batch("t0", segments, NOW)
    assert isinstance(burst, Burst) and len(burst.payloads) == len(segments) > 7
    assert burst.payloads == [p for b in reference if isinstance(b, Burst) for p in b.payloads]
    deliver, rejects = rows_pair.b.receive_batch(burst.src, burst.dst, burst.payloads, NOW)
    assert not rejects and deliver == {"t0": segments}


@pytest.mark.parametrize("cipher", ["aes-gcm", "chacha20-poly1305"])
def test_scapy_opens_an_esn_aead_super_packet_sealed_as_rows(cipher: str, path: str) -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(20000), flags="PA"), 1386)
    seq_out = B - 7
    pair = _aead_tso_pair(cipher, seq_out)
    burst = _burst(pair, packet, offload)
    assert burst is not None
    src, dst = (str(ipaddress.ip_address(a)) for a in (burst.src, burst.dst))
    new_sa: Callable[..., Any] = scapy_ipsec.SecurityAssociation
    algo = "AES-GCM" if cipher == "aes-gcm" else "CHACHA20-POLY1305"
    theirs = new_sa(
        ESP,
        spi=pair.ab.spi,
        crypt_algo=algo,
        crypt_key=pair.ab.cipher_key,
        tunnel_header=IP(src=src, dst=dst),
    )
    opened = [
        bytes(
            theirs.decrypt(
                IP(bytes(IP(src=src, dst=dst, proto=50) / Raw(p))), esn_en=True, esn=(seq_out + 1 + i) >> 32
            )
        )
        for i, p in enumerate(burst.payloads)
    ]
    assert opened == gso.split(packet, offload)
    with pytest.raises(scapy_ipsec.IPSecIntegrityError):  # the high bits are in the AAD
        theirs.decrypt(
            IP(bytes(IP(src=src, dst=dst, proto=50) / Raw(burst.payloads[-1]))), esn_en=True, esn=0
        )


# -- a lone AEAD packet with ESN: esp.seal_aead16_esn and the C seal_aead16_one ---------------------------


@pytest.mark.parametrize("first", [1, B - 2, (9 << 32) | 77, (1 << 63) - 4], ids=hex)
@pytest.mark.parametrize("reverse", [False, True], ids=["split0", "split1"])
@pytest.mark.parametrize("aead", AEADS, ids=lambda a: a[0])
def test_esn_aead_encrypt_is_seal_with_esn(
    aead: tuple[str, int], reverse: bool, first: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`encrypt` of an ESN AEAD SA gives `esp.seal`'s packet without calling it: in one C call for bytes
    (the Python `seal_aead16_esn` on the pure path and for other buffers)."""
    config = _aead_config(*aead, reverse=reverse)
    sa = SecurityAssociation(config, 0.0, seq_out=first - 1)
    cipher = sa.cipher
    assert (sa._seal_one is not None) == (sa_module._SEAL_ONE is not None)  # None: IPSEC_TUNNEL_PURE=1
    if path == "pure":
        sa._seal_one = None
    calls: list[int] = []
    seal = esp.seal

    def counted(*args: Any, **kwargs: Any) -> bytes:
        calls.append(args[1])
        return seal(*args, **kwargs)

    monkeypatch.setattr(esp, "seal", counted)
    inner = [_ipv4(20 + 97 * i, i) for i in range(4)]
    packets = [sa.encrypt(p if i % 2 else bytearray(p), 4, NOW, print) for i, p in enumerate(inner)]  # type: ignore[arg-type]
    assert not calls
    monkeypatch.setattr(esp, "seal", seal)
    for i, (packet, p) in enumerate(zip(packets, inner, strict=True)):
        seq = first + i
        assert packet == esp.seal(0x3000, seq, True, cipher, None, p, 4, iv_split=config.iv_split)
        assert isinstance(packet, bytes) and esp.open_packet(packet, seq, True, cipher, None) == (p, 4)


@pytest.mark.skipif(ext is None, reason="the C extension is not built (IPSEC_REQUIRE_EXT=1 fails)")
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(AEADS),
    st.one_of(st.integers(0, 1 << 33), st.integers(B - 50, B + 50), st.integers(0, (1 << 64) - 1)),
    st.sampled_from([None, 0, 1]),
    st.binary(max_size=300),
    st.sampled_from([4, 41, 59]),
)
def test_seal_one_with_esn_in_c_is_the_python_seal(
    aead: tuple[str, int], seq: int, split: int | None, inner: bytes, nh: int
) -> None:
    assert ext is not None
    cipher = SecurityAssociation(_aead_config(*aead), 0.0).cipher
    encrypt, salt = cipher.full_icv_encrypt, cipher.salt
    if split and seq >> 63:  # into the IV's direction bit: refused, both ways
        with pytest.raises(ValueError, match="out of range"):
            ext.seal_aead16_one(encrypt, 0x3000, seq, True, salt, inner, nh, True)
        with pytest.raises(ValueError, match="out of range"):
            esp.seal_aead16_esn(0x3000, seq, split, encrypt, salt, inner, nh)
        return
    packet = ext.seal_aead16_one(encrypt, 0x3000, seq, bool(split), salt, inner, nh, True)
    assert packet == esp.seal_aead16_esn(0x3000, seq, split, encrypt, salt, inner, nh)
    assert packet == esp.seal(0x3000, seq, True, cipher, None, inner, nh, iv_split=split)


def test_seal_one_with_esn_refuses_numbers_past_the_end() -> None:
    cipher = SecurityAssociation(_aead_config(*AEADS[0]), 0.0).cipher
    args = (cipher.full_icv_encrypt, 1)
    for seq, split in (((1 << 64), None), (-1, None), ((1 << 63), 1)):
        with pytest.raises(ValueError, match="out of range"):
            esp.seal_aead16_esn(1, seq, split, cipher.full_icv_encrypt, cipher.salt, b"x", 4)
        if ext is not None:
            with pytest.raises((ValueError, OverflowError)):
                ext.seal_aead16_one(*args, seq, bool(split), cipher.salt, b"x", 4, True)
    if ext is not None:  # without ESN, 32 bits as before
        with pytest.raises(ValueError, match="out of range"):
            ext.seal_aead16_one(cipher.full_icv_encrypt, 1, B, False, cipher.salt, b"x", 4)
        with pytest.raises(ValueError, match="out of range"):
            ext.seal_aead16_one(cipher.full_icv_encrypt, 1, B, False, cipher.salt, b"x", 4, False)
