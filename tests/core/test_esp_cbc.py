"""The fast CBC + HMAC codecs (issue 13) against the one-packet codec: `esp.seal_cbc` and `esp.seal_rows_cbc`
give `esp.seal`'s packet for the IV they drew, byte for byte; `esp.open_cbc_many` gives `esp.open_packet`'s
result for every packet, forged, damaged or badly padded ones included, and verifies before it decrypts;
the IVs are fresh (RFC 3602 §2)."""

from __future__ import annotations

import itertools
import os
import random
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.algorithms import AuthTransform, find_auth, find_cipher, make_auth, make_cipher
from ipsec_tunnel.core.drops import Drop

# (cipher, key bytes, digest): AES-128 and AES-256 with SHA-256-128 (strongSwan's default), 3DES with
# SHA-1-96 (an 8-byte block, a 12-byte ICV)
SUITES = [("aes-cbc", 16, "sha256"), ("aes-cbc", 32, "sha512"), ("des_ede3-cbc", 24, "sha1")]


def _transforms(cipher: str, key_len: int, digest: str) -> tuple[Any, AuthTransform]:
    rng = random.Random(f"{cipher}{key_len}{digest}")
    alg = find_auth(digest)
    key = bytes(rng.getrandbits(8) for _ in range(key_len))
    return make_cipher(find_cipher(cipher)[0], key), make_auth(alg, os.urandom(alg.key_len))


def _ipv4(size: int) -> bytes:
    return bytes([0x45, 0, size >> 8, size & 0xFF]) + os.urandom(size - 4)


def _ipv6(size: int) -> bytes:
    return bytes([0x60, 0, 0, 0, (size - 40) >> 8, (size - 40) & 0xFF]) + os.urandom(size - 6)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_seal_cbc_is_seal_with_the_iv_it_drew(suite: tuple[str, int, str]) -> None:
    cipher, auth = _transforms(*suite)
    iv_len = cipher.iv_len
    for seq, size in enumerate((20, 21, 40, 100, 1399, 1400, 1401, 8000), start=1):
        inner = _ipv4(size)
        for nh in (esp.NH_IPV4, esp.NH_NONE):
            packet = esp.seal_cbc(0x1234, seq, cipher, auth, inner, nh)
            iv = packet[8 : 8 + iv_len]
            assert packet == esp.seal(0x1234, seq, False, cipher, auth, inner, nh, iv=iv)
            assert esp.open_packet(packet, seq, False, cipher, auth) == (inner, nh)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
@pytest.mark.parametrize("count", [1, 2, 45])
def test_seal_rows_cbc_is_seal_row_by_row(suite: tuple[str, int, str], count: int) -> None:
    cipher, auth = _transforms(*suite)
    inner = [_ipv4(1386) for _ in range(count)]
    trailer = esp.block_trailer(1386, esp.NH_IPV4, cipher.block)
    rows = np.frombuffer(b"".join(p + trailer for p in inner), np.uint8).reshape(count, -1)
    sealed = esp.seal_rows_cbc(0x1234, 7, cipher, auth, rows)
    ivs = [p[8 : 8 + cipher.iv_len] for p in sealed]
    one = [
        esp.seal(0x1234, 7 + i, False, cipher, auth, p, esp.NH_IPV4, iv=iv)
        for i, (p, iv) in enumerate(zip(inner, ivs, strict=True))
    ]
    assert sealed == one
    # interleaved with single packets, on the same CBC stream: still each its own
    packet = esp.seal_cbc(0x1234, 99, cipher, auth, inner[0], esp.NH_IPV4)
    assert packet == esp.seal(
        0x1234, 99, False, cipher, auth, inner[0], esp.NH_IPV4, iv=packet[8 : 8 + cipher.iv_len]
    )
    assert esp.seal_rows_cbc(0x1234, 7, cipher, auth, rows)[0] != sealed[0]  # a fresh IV each time


def test_ivs_are_fresh_not_chained() -> None:
    """RFC 3602 §2: unpredictable IVs. Each is E_K(Z xor the last block out) for a fresh random Z: never
    the previous packet's last ciphertext block, nor E_K of it (what a Z of zeros would give), nor
    repeated."""
    key = os.urandom(16)
    cipher, auth = make_cipher(find_cipher("aes-cbc")[0], key), make_auth(find_auth("sha256"), os.urandom(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    rows = np.zeros((300, 1392), np.uint8)
    packets = [esp.seal_cbc(1, i, cipher, auth, _ipv4(100), 4) for i in range(300)]  # past one random pool
    packets += esp.seal_rows_cbc(1, 300, cipher, auth, rows)
    ivs = [p[8:24] for p in packets]
    assert len(set(ivs)) == len(ivs)
    for before, packet in itertools.pairwise(packets):
        last = before[-32:-16]  # the last ciphertext block, before the ICV
        assert packet[8:24] != last and packet[8:24] != ecb.update(last)


def _forge(packet: bytes, index: int) -> bytes:
    out = bytearray(packet)
    out[index] ^= 0x01
    return bytes(out)


def _padded(cipher: Any, auth: AuthTransform, seq: int, plain: bytes) -> bytes:
    """An authentic packet whose decrypted payload is `plain` exactly (any trailer, good or bad)."""
    iv = os.urandom(cipher.iv_len)
    body: bytes = struct.pack("!II", 0x1234, seq) + iv + cipher.encrypt(iv, plain)
    return body + auth.sign(body)


def _one_by_one(packets: list[bytes], cipher: Any, auth: AuthTransform) -> list[object]:
    return [esp.open_packet(p, 0, False, cipher, auth) for p in packets]


def _whole(packet: bytes) -> bool:
    """Whether `packet` is a whole IPv4 (no options) or IPv6 packet, its IP length its size."""
    if packet[0] == 0x45:
        return len(packet) >= 20 and int.from_bytes(packet[2:4], "big") == len(packet)
    return (
        packet[0] >> 4 == 6 and len(packet) >= 40 and 40 + int.from_bytes(packet[4:6], "big") == len(packet)
    )


def _as_pairs(results: list[bytes | tuple[bytes, int] | Drop]) -> list[object]:
    """Bare inner packets (each must be a whole IP packet) as (packet, next header), the next header by
    IP version."""
    assert all(_whole(r) for r in results if isinstance(r, bytes))
    return [(r, 4 if r[0] >> 4 == 4 else 41) if isinstance(r, bytes) else r for r in results]


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_open_cbc_many_is_open_packet_for_every_packet(suite: tuple[str, int, str]) -> None:
    cipher, auth = _transforms(*suite)
    block = cipher.block
    good = [
        esp.seal_cbc(0x1234, i, cipher, auth, inner, nh)
        for i, (inner, nh) in enumerate(
            [(_ipv4(20), 4), (_ipv4(1400), 4), (_ipv6(40), 41), (_ipv6(1400), 41), (b"tfc", esp.NH_NONE),
             (_ipv4(100)[:60], 4), (_ipv6(100)[:80], 41), (_ipv4(100), 41), (b"\x45" + bytes(30), 4)]
        )
    ]  # fmt: skip
    damaged = [_forge(good[1], i) for i in (0, 5, 9, 30, len(good[1]) - 1)]
    damaged += [good[1][:-1], good[1] + b"\0", good[1][: 8 + block + auth.icv_len], b"", good[2][:-block]]
    rng = random.Random(13)
    padding = []
    for _ in range(200):  # any trailer: a pad length beyond the payload, padding not 1, 2, 3, ...
        size = block * rng.randint(1, 6)
        plain = bytearray(_ipv4(size) if rng.random() < 0.5 else os.urandom(size))
        plain[-2] = rng.choice([0, 1, 2, size - 2, size - 1, size, size + 5, 255, rng.randrange(256)]) & 0xFF
        plain[-1] = rng.choice([4, 41, 59])
        if rng.random() < 0.5 and plain[-2] <= size - 2:
            pad = plain[-2]
            plain[size - 2 - pad : size - 2] = bytes(range(1, pad + 1))
            if size - 2 - pad >= 4:
                plain[2:4] = (size - 2 - pad).to_bytes(2, "big")
        padding.append(_padded(cipher, auth, 1, bytes(plain)))
    packets = good + damaged + padding
    rng.shuffle(packets)
    opened, others = esp.open_cbc_many(packets, cipher, auth)
    assert _as_pairs(opened) == _one_by_one(packets, cipher, auth)
    assert others == sum(not isinstance(r, bytes) for r in opened)
    assert Drop.BAD_PADDING in opened and Drop.AUTH_FAILED in opened and Drop.MALFORMED in opened


class _Counting:
    """A cipher that counts what it decrypts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.iv_len, self.block = inner.iv_len, inner.block
        self.decrypts = 0

    def decrypt_joined(self, iv_ct: bytes) -> bytes:
        self.decrypts += 1
        result: bytes = self.inner.decrypt_joined(iv_ct)
        return result


def test_open_cbc_many_verifies_before_it_decrypts() -> None:
    cipher, auth = _transforms(*SUITES[0])
    packet = esp.seal_cbc(0x1234, 1, cipher, auth, _ipv4(300), 4)
    forged = [_forge(packet, i) for i in range(0, len(packet), 7)]
    spy = _Counting(cipher)
    opened, others = esp.open_cbc_many(forged, spy, auth)
    assert opened == [Drop.AUTH_FAILED] * len(forged) and others == len(forged) and spy.decrypts == 0
    assert esp.open_cbc_many([packet], spy, auth) == ([esp.open_packet(packet, 1, False, cipher, auth)[0]], 0)  # type: ignore[index]
    assert spy.decrypts == 1


def test_cbc_streams_refuse_partial_blocks_and_stay_in_step() -> None:
    """The long-lived CBC contexts take whole blocks only: a partial one is refused before it reaches
    them, so the packets after it are still right."""
    cipher, auth = _transforms(*SUITES[0])
    with pytest.raises(ValueError, match="whole number of blocks"):
        cipher.encrypt_fresh(b"x" * 17)
    with pytest.raises(ValueError, match="whole number of blocks"):
        cipher.decrypt_joined(b"x" * 33)
    with pytest.raises(ValueError, match="whole number of blocks"):
        cipher.encrypt_fresh_rows(np.zeros((2, 17), np.uint8))
    inner = _ipv4(77)
    packet = esp.seal_cbc(0x1234, 1, cipher, auth, inner, 4)
    assert packet == esp.seal(0x1234, 1, False, cipher, auth, inner, 4, iv=packet[8:24])
    assert esp.open_cbc_many([packet], cipher, auth) == ([inner], 0)
    iv, data = os.urandom(16), os.urandom(64)
    assert cipher.decrypt(iv, cipher.encrypt(iv, data)) == data


@pytest.mark.parametrize("seq", [5, (3 << 32) | 5, (1 << 64) - 1])
def test_seal_cbc_with_esn_is_seal_with_esn(seq: int) -> None:
    """RFC 4303 §2.8: with ESN the high 32 bits are in the ICV, not in the packet."""
    cipher, auth = _transforms(*SUITES[0])
    inner = _ipv4(300)
    packet = esp.seal_cbc(0x1234, seq, cipher, auth, inner, 4, esn=True)
    assert packet == esp.seal(0x1234, seq, True, cipher, auth, inner, 4, iv=packet[8:24])
    assert esp.open_packet(packet, seq, True, cipher, auth) == (inner, 4)
    assert packet[4:8] == (seq & 0xFFFFFFFF).to_bytes(4, "big")
    if seq >> 32:
        assert esp.open_packet(packet, seq & 0xFFFFFFFF, False, cipher, auth) is Drop.AUTH_FAILED
