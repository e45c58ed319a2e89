"""CBC with an HMAC and ESN (RFC 4303 §2.2.1, Appendix A2) opened the batch way: `decrypt_many` gives
what `decrypt` of each packet in turn gives (results, drops, counters, the replay window after), on
the C and the pure-Python paths; the high 32 bits are inferred before the ICV check, the window is
checked before it and moved only after it, and a window across a 2^32 boundary, a forged ICV and a
replay inside the batch are held to the one-by-one path."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import esp, framing
from ipsec_tunnel.core import sa as sa_module
from ipsec_tunnel.core.algorithms import find_auth
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import packed
from ipsec_tunnel.core.plane import Outbound
from ipsec_tunnel.core.replay import SEQ32, ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, build_transforms
from tests.core.test_engine import inner_packet, make_pair

NOW = 5.0
# SAs opened the batch way: AES-CBC (3DES SAs carry the Sweet32 byte lifetime and go one by one)
SUITES = [("aes-cbc", 16, "sha256"), ("aes-cbc", 32, "sha512")]
CODECS = [*SUITES, ("des_ede3-cbc", 24, "sha1")]  # an 8-byte block and a 12-byte ICV for the codec


def _config(suite: tuple[str, int, str] = SUITES[0], window: int = 64) -> SAConfig:
    cipher, key_len, digest = suite
    rng = random.Random(f"{cipher}{digest}")
    auth_key = rng.randbytes(find_auth(digest).key_len)
    return SAConfig(
        0x2000, "192.0.2.2", "192.0.2.1", cipher, rng.randbytes(key_len), digest, auth_key,
        replay_window=window, esn=True,
    ).validated()  # fmt: skip


def _inner(n: int) -> bytes:
    """A whole IPv4 packet (no options) of a size that varies with `n`."""
    size = 20 + (n * 37) % 300
    return bytes([0x45, 0, size >> 8, size & 0xFF]) + (n.to_bytes(8, "big") * 40)[: size - 4]


def _sealed(config: SAConfig, seqs: list[int]) -> list[bytes]:
    """The peer's packets with the full sequence numbers `seqs` (one a dummy, next header 59)."""
    cipher, auth = build_transforms(config)
    return [
        esp.seal_cbc(config.spi, seq, cipher, auth, b"tfc" if seq % 7 == 3 else _inner(seq),
                     esp.NH_NONE if seq % 7 == 3 else esp.NH_IPV4, esn=True)
        for seq in seqs
    ]  # fmt: skip


def _forge(packet: bytes, at: int) -> bytes:
    out = bytearray(packet)
    out[at] ^= 0x20
    return bytes(out)


def _as_pairs(results: list[Any]) -> list[Any]:
    """Bare inner packets as (packet, next header): what `decrypt` gives for them."""
    return [
        (r, esp.NH_IPV4 if r[0] >> 4 == 4 else esp.NH_IPV6) if isinstance(r, bytes) else r for r in results
    ]


def _one_by_one_counted(sa: SecurityAssociation) -> list[int]:
    """The low 32 bits of the packets `sa` opens one by one (not the batch way), as it opens them."""
    calls: list[int] = []
    decrypt = sa.decrypt

    def counted(packet: bytes, *args: Any) -> Any:
        calls.append(int.from_bytes(packet[4:8], "big"))
        return decrypt(packet, *args)

    sa.decrypt = counted  # type: ignore[method-assign,assignment]
    return calls


def _twins(
    config: SAConfig, top: int, bitmap: int, packets: list[bytes]
) -> tuple[list[Any], list[Any], SecurityAssociation, SecurityAssociation, list[int]]:
    """(`decrypt_many` of `packets`, `decrypt` of each, the two SAs after, the packets the batch SA
    opened one by one), from one window (`top`, `bitmap`)."""
    events: list[object] = []
    batch, single = (
        SecurityAssociation(
            config, 0.0, replay=ReplayWindow(config.replay_window, esn=True, top=top, bitmap=bitmap)
        )
        for _ in range(2)
    )
    one_by_one = _one_by_one_counted(batch)
    opened, others = batch.decrypt_many(packets, NOW, events.append)
    assert others == sum(not isinstance(r, bytes) for r in opened)
    each = [single.decrypt(p, NOW, events.append) for p in packets]
    assert not events
    return opened, each, batch, single, one_by_one


def _same(batch: SecurityAssociation, single: SecurityAssociation) -> None:
    assert (batch.replay.top, batch.replay.bitmap) == (single.replay.top, single.replay.bitmap)
    assert (batch.packets, batch.bytes, batch.drops) == (single.packets, single.bytes, single.drops)


B = SEQ32  # 2^32
# (window top, bitmap, the full sequence numbers sent, whether the batch way takes them, how many pass)
CASES = {
    # the window spans 2^32 (RFC 4303 §A2.1 case B): numbers after the boundary, high bits 1
    "after-2^32": (B + 5, 0b101011, list(range(B + 6, B + 40)), True, 34),
    # ... and numbers just below it, still inside the window: high bits 0, accepted below the top
    "below-2^32-in-window": (B + 5, 1, list(range(B - 16, B)), True, 16),
    # the window below 2^32 (case A), the batch past it: low numbers 0.., high bits inferred 1
    "past-2^32": (B - 20, 1, list(range(B, B + 12)), True, 12),
    # a batch whose low 32 bits wrap: not one run of numbers in order, one by one
    "through-2^32": (B - 20, 1, list(range(B - 10, B + 10)), False, 20),
    # its first inferred ahead of the window (high bits + 1), its last inside it: one by one
    "split-inference": ((5 << 32) | 1000, 1, [(5 << 32) | n for n in range(900, 950)], False, 13),
    # far in: high bits 7
    "high-7": ((7 << 32) | 123456, (1 << 64) - 1, [(7 << 32) | n for n in range(123457, 123490)], True, 33),
    # a replay inside the batch: a number already received (the bitmap's bit 3: top - 3)
    "replay-in-window": (B + 50, 0b1001, list(range(B + 44, B + 60)), False, 14),
    # a replay inside the batch: one packet twice
    "replay-twice": (B + 5, 1, [B + 6, B + 7, B + 8, B + 8, B + 9], False, 4),
    # behind the window: inferred as the next 2^32 (§A2.1), ahead of the top, and their ICVs fail
    "behind-the-window": (B + 500, 1, list(range(B + 10, B + 20)), True, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[2]}")
def test_esn_batch_is_one_by_one(case: str, suite: tuple[str, int, str], path: str) -> None:
    top, bitmap, seqs, batched, passed = CASES[case]
    config = _config(suite)
    packets = _sealed(config, seqs)
    opened, each, batch, single, one_by_one = _twins(config, top, bitmap, packets)
    assert _as_pairs(opened) == each
    _same(batch, single)
    assert one_by_one == ([] if batched else [s & 0xFFFFFFFF for s in seqs])  # all the batch way, or none
    assert batch.packets == passed
    if passed and batched:
        assert any(isinstance(r, bytes) for r in opened)  # whole inner packets come bare


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[2]}")
def test_a_forged_icv_in_an_esn_batch_is_dropped_and_moves_nothing(
    suite: tuple[str, int, str], path: str
) -> None:
    config = _config(suite)
    seqs = list(range(B + 6, B + 30))
    packets = _sealed(config, seqs)
    packets[5] = _forge(packets[5], len(packets[5]) - 1)  # the ICV
    packets[9] = _forge(packets[9], 30)  # the ciphertext
    opened, each, batch, single, one_by_one = _twins(config, B + 5, 1, packets)
    assert _as_pairs(opened) == each and not one_by_one
    assert opened[5] is Drop.AUTH_FAILED and opened[9] is Drop.AUTH_FAILED
    _same(batch, single)
    bitmap = batch.replay.bitmap
    assert batch.replay.top == B + 29 and not bitmap >> (29 - 11) & 1 and not bitmap >> (29 - 15) & 1
    assert batch.drops[Drop.AUTH_FAILED] == 2 and batch.packets == len(seqs) - 2


def test_the_high_bits_are_in_the_icv(path: str) -> None:
    """Packets sent with other high 32 bits than the window infers (the same low 32 bits) all fail
    their ICV, the batch way as one by one, and the window stays where it was."""
    config = _config()
    packets = _sealed(config, [(2 << 32) | n for n in range(10, 30)])  # the window is at 1 << 32
    opened, each, batch, single, one_by_one = _twins(config, (1 << 32) | 5, 1, packets)
    assert opened == each == [Drop.AUTH_FAILED] * 20 and not one_by_one
    _same(batch, single)
    assert batch.replay.top == (1 << 32) | 5 and batch.replay.bitmap == 1


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from([0, 1, 5, SEQ32 - 1]),
    st.one_of(st.integers(0, 200), st.integers(SEQ32 - 200, SEQ32 - 1), st.integers(0, SEQ32 - 1)),
    st.sampled_from([0, 32, 64, 4096]),
    st.integers(0, (1 << 64) - 1),
    st.integers(-300, 300),
    st.integers(1, 24),
    st.lists(st.integers(0, 23), max_size=3),
    st.booleans(),
)
def test_any_window_any_batch(
    hi: int, lo: int, window: int, bits: int, offset: int, count: int, forged: list[int], pure: bool
) -> None:
    """Any window (its top's high and low bits, its size, its bitmap) and any batch near it, in order,
    some forged: the batch way and one by one agree, on both paths."""
    top = hi << 32 | lo
    first = max(1, top + offset)
    seqs = [s for s in range(first, first + count) if s < 1 << 64]
    config = _config(window=window)
    packets = _sealed(config, seqs)
    for i in forged:
        if i < len(packets):
            packets[i] = _forge(packets[i], len(packets[i]) - 2)
    with pytest.MonkeyPatch.context() as mp:
        if pure:
            mp.setattr(esp, "_native", None)
            mp.setattr(sa_module, "_native", None)
        opened, each, batch, single, _ = _twins(config, top, bits if window else 0, packets)
    assert _as_pairs(opened) == each
    _same(batch, single)


@pytest.mark.skipif(framing.available is None, reason="the C extension is not built")
@pytest.mark.parametrize("suite", CODECS, ids=lambda s: f"{s[0]}-{s[2]}")
@pytest.mark.parametrize("seq_hi", [None, 0, 1, SEQ32 - 1])
def test_open_cbc_many_with_esn_in_c_is_the_pure_open(
    suite: tuple[str, int, str], seq_hi: int | None
) -> None:
    config = _config(suite)
    cipher, auth = build_transforms(config)
    hi = seq_hi or 0
    packets = _sealed(config, [hi << 32 | n for n in range(1, 12)])
    packets += [_forge(packets[0], 0), _forge(packets[1], len(packets[1]) - 1), packets[2][:-1], b""]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(esp, "_native", None)
        pure = esp.open_cbc_many(packets, build_transforms(config)[0], auth, seq_hi)
    native = esp.open_cbc_many(packets, cipher, auth, seq_hi)
    assert native == pure
    one = [
        esp.open_packet(p, hi << 32 | (n % 11 + 1), seq_hi is not None, cipher, auth)
        for n, p in enumerate(packets)
    ]
    assert _as_pairs(native[0]) == one
    assert (native[0][0] is Drop.AUTH_FAILED) == (seq_hi is None)  # sent with ESN: the high bits in the ICV


@pytest.mark.skipif(framing.available is None, reason="the C extension is not built")
def test_open_cbc_many_in_c_refuses_high_bits_out_of_range() -> None:
    ext = framing.available
    assert ext is not None
    for bad in (-2, SEQ32):
        with pytest.raises(ValueError, match="seq_hi"):
            ext.open_cbc_many(lambda: None, 16, bytes, 16, [b""], 1, 2, repr, bad)


def test_an_engine_receives_an_esn_stream_through_2_32_the_batch_way(path: str) -> None:
    """Through the receive pipeline (`Engine.receive_batch`): a CBC+HMAC ESN stream whose numbers pass
    2^32, read in batches, is delivered whole and in order, each batch on either side of 2^32 opened
    the batch way; the one holding the boundary goes one by one; twin engines agree packet by packet."""
    pairs = [make_pair(cipher="aes-cbc", esn=True, replay_window=4096) for _ in range(2)]
    a = pairs[0].a
    sender = a.sad.get(packed(pairs[0].b_addr), packed(pairs[0].a_addr), 0x1001)
    assert sender is not None
    sender.seq_out = SEQ32 - 40  # the next number sent is 2^32 - 39
    inner = [inner_packet(size=100 + n) for n in range(80)]
    wire = [out.payload for p in inner if isinstance(out := a.send("t0", p, 1.0), Outbound)]
    src, dst = packed(pairs[0].a_addr), packed(pairs[0].b_addr)
    reads = [wire[0:30], wire[30:50], wire[50:80]]  # the second holds 2^32 - 1 and 2^32
    b_sa = pairs[0].b.sad.get(dst, src, 0x1001)
    assert b_sa is not None
    one_by_one = _one_by_one_counted(b_sa)
    got = [pairs[0].b.receive_batch(src, dst, read, NOW) for read in reads]
    twin = [pairs[1].b.receive_batch(src, dst, [p], NOW) for p in wire]
    assert [p for deliver, _ in got for p in deliver["t0"]] == inner
    assert [p for deliver, _ in twin for p in deliver["t0"]] == inner
    assert one_by_one == [n & 0xFFFFFFFF for n in range(SEQ32 - 9, SEQ32 + 11)]  # the middle read only
    twin_sa = pairs[1].b.sad.get(dst, src, 0x1001)
    assert twin_sa is not None
    assert (b_sa.replay.top, b_sa.replay.bitmap) == (twin_sa.replay.top, twin_sa.replay.bitmap)
    assert b_sa.replay.top == SEQ32 + 40 and b_sa.packets == twin_sa.packets == 80
    assert sum(pairs[0].b.rx_drops.values()) == sum(pairs[1].b.rx_drops.values()) == 0
