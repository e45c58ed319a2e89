"""core/_framing.c's AEAD loops (`seal_rows_aead`, `open_aead16_many`: the `cryptography` calls made
from C) against the pure-Python loops of core/esp.py they replace: the same packets, results, drops and
count of others, for good and bad input."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import esp, framing
from ipsec_tunnel.core.algorithms import find_auth, find_cipher, make_auth, make_cipher
from ipsec_tunnel.core.drops import Drop

ext = framing.available
needs_ext = pytest.mark.skipif(ext is None, reason="the C extension is not built (IPSEC_REQUIRE_EXT=1 fails)")
AEADS: dict[str, Callable[[], Any]] = {
    "gcm": lambda: AESGCM(os.urandom(16)),
    "chacha": lambda: ChaCha20Poly1305(os.urandom(32)),
}


def _pure(call: Any, *args: Any) -> Any:
    """`call(*args)` on the pure-Python path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(esp, "_native", None)
        return call(*args)


def _native(call: Any, *args: Any) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(esp, "_native", ext)
        return call(*args)


def _v4(payload: bytes) -> bytes:
    return bytes([0x45, 0]) + (20 + len(payload)).to_bytes(2, "big") + bytes(16) + payload


def _v6(payload: bytes) -> bytes:
    return bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes(34) + payload


@needs_ext
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(AEADS)),
    st.integers(1, 30),
    st.integers(1, 400).map(lambda n: 4 * n),
    st.integers(256, 0xFFFFFFFF),
    st.one_of(st.integers(0, 1 << 20), st.integers(0xFFFFFF00, 0xFFFFFFFF)),
    st.sampled_from([None, 0, 1]),
)
def test_seal_rows_in_c_are_the_pure_rows(
    name: str, count: int, width: int, spi: int, first: int, split: int | None
) -> None:
    """The same ESP packets, byte for byte, up to sequence number 2^32 - 1, either IV direction bit."""
    count = min(count, 0x100000000 - first)
    aead, salt = AEADS[name](), os.urandom(4)
    rows = np.frombuffer(os.urandom(count * width), np.uint8).reshape(count, width)
    pure = _pure(esp.seal_rows, spi, first, split, aead.encrypt, salt, rows)
    native = _native(esp.seal_rows, spi, first, split, aead.encrypt, salt, rows, aead.encrypt_into)
    assert native == pure and all(type(p) is bytes for p in native)
    assert struct.unpack("!IIQ", native[-1][:16]) == (
        spi,
        first + count - 1,
        (first + count - 1) | (1 << 63 if split else 0),
    )


@needs_ext
def test_seal_rows_in_c_refuse_what_does_not_fit() -> None:
    """Sequence numbers beyond 32 bits, ragged rows, a salt of the wrong size: ValueError, not bytes."""
    assert ext is not None
    aead = AESGCM(os.urandom(16))
    rows = bytes(80)
    with pytest.raises(ValueError):
        ext.seal_rows_aead(aead.encrypt_into, 0x100, 0xFFFFFFFF, False, b"salt", rows, 40)  # 2 rows: 2^32
    with pytest.raises(ValueError):
        ext.seal_rows_aead(aead.encrypt_into, 0x100, 1, False, b"salt", rows, 30)
    with pytest.raises(ValueError):
        ext.seal_rows_aead(aead.encrypt_into, 0x100, 1, False, b"sal", rows, 40)
    assert len(ext.seal_rows_aead(aead.encrypt_into, 0x100, 0xFFFFFFFE, False, b"salt", rows, 40)) == 2


@st.composite
def received(draw: st.DrawFn) -> tuple[str, list[bytes], bytes, Any]:
    """A batch of ESP packets of one SA: whole IPv4/IPv6 packets (any padding), anything else inside (TFC
    padding, a dummy packet, a wrong next header, noise), a damaged ICV or ciphertext, a bad length."""
    name = draw(st.sampled_from(sorted(AEADS)))
    aead, salt = AEADS[name](), os.urandom(4)
    packets = []
    for seq in range(1, draw(st.integers(0, 12)) + 1):
        kind = draw(st.sampled_from(["v4", "v6", "v4-tfc", "dummy", "wrong-nh", "noise"]))
        body = draw(st.binary(max_size=70))
        inner = _v6(body) if kind == "v6" else _v4(body) if kind != "noise" else body
        nh = {"v6": 41, "dummy": 59, "wrong-nh": 41}.get(kind, 4)
        if kind == "v4-tfc":
            inner += bytes(draw(st.integers(1, 9)))  # TFC padding after the IP length (RFC 4303 §2.7)
        packet = esp.seal_aead16(0x1234, seq, None, aead.encrypt, salt, inner, nh)
        if draw(st.integers(0, 4)) == 0:  # an authentic packet whose trailer is wrong: padding, length
            pad = draw(st.integers(0, 11))
            padding = bytearray(range(1, pad + 1))
            if pad:
                padding[draw(st.integers(0, pad - 1))] ^= draw(st.integers(1, 255))
            plain = inner + bytes(padding) + bytes((pad, nh))
            plain += bytes(-len(plain) % 4)
            header, iv = struct.pack("!II", 0x1234, seq), struct.pack("!Q", seq)
            packet = header + iv + aead.encrypt(salt + iv, plain, header)
        spoil = draw(st.sampled_from(["", "", "", "icv", "body", "short", "ragged"]))
        if spoil == "icv":
            packet = packet[:-1] + bytes([packet[-1] ^ 1])
        elif spoil == "body":
            packet = packet[:20] + bytes([packet[20] ^ 0x80]) + packet[21:]
        elif spoil == "short":
            packet = packet[: draw(st.integers(0, 35))]
        elif spoil == "ragged":
            packet += b"\x00"
        packets.append(packet)
    return name, packets, salt, aead


@needs_ext
@settings(max_examples=300, deadline=None)
@given(received())
def test_open_many_in_c_is_the_pure_open(batch: tuple[str, list[bytes], bytes, Any]) -> None:
    """The same results in order (inner packets alone, (payload, next header), drops) and others."""
    _name, packets, salt, aead = batch
    pure = _pure(esp.open_aead16_many, packets, aead.decrypt, salt)
    native = _native(esp.open_aead16_many, packets, aead.decrypt, salt, aead.decrypt_into)
    assert native == pure
    assert [type(r) for r in native[0]] == [type(r) for r in pure[0]]


@needs_ext
def test_open_many_in_c_gives_each_kind_of_result() -> None:
    """Whole packets come alone and exactly their IP length; drops as the pure path names them."""
    aead, salt = AESGCM(os.urandom(16)), os.urandom(4)
    v4, v6 = _v4(b"a" * 17), _v6(b"b" * 30)
    good = [esp.seal_aead16(0x1234, 1, None, aead.encrypt, salt, v4, 4)]
    good.append(esp.seal_aead16(0x1234, 2, None, aead.encrypt, salt, v6, 41))
    dummy = esp.seal_aead16(0x1234, 3, None, aead.encrypt, salt, b"\x00" * 8, 59)
    forged = good[0][:-1] + bytes([good[0][-1] ^ 0xFF])
    opened, others = _native(esp.open_aead16_many, [*good, dummy, forged, b"x" * 33], aead.decrypt, salt,
                             aead.decrypt_into)  # fmt: skip
    assert opened == [v4, v6, (b"\x00" * 8, 59), Drop.AUTH_FAILED, Drop.MALFORMED] and others == 3


@needs_ext
def test_open_many_in_c_leaves_what_is_not_bytes_to_python() -> None:
    """A batch with anything but bytes in it: None from C, the same results from the Python loop."""
    assert ext is not None
    aead, salt = AESGCM(os.urandom(16)), os.urandom(4)
    packet = esp.seal_aead16(0x1234, 1, None, aead.encrypt, salt, _v4(b"z" * 9), 4)
    args = (InvalidTag, Drop.MALFORMED, Drop.AUTH_FAILED, esp._unpadded)
    odd: Any = [bytearray(packet)]
    assert ext.open_aead16_many(aead.decrypt_into, salt, odd, *args) is None
    mixed: Any = [packet, bytearray(packet)]
    assert _native(esp.open_aead16_many, mixed, aead.decrypt, salt, aead.decrypt_into) == _pure(
        esp.open_aead16_many, mixed, aead.decrypt, salt
    )


@needs_ext
def test_open_many_in_c_passes_other_errors_on() -> None:
    """An error other than InvalidTag from the library is raised, not taken for a forgery."""
    assert ext is not None

    def broken(nonce: bytes, data: Any, aad: Any, buf: Any) -> int:
        raise OSError("library failure")

    packet = bytes(48)
    args = (InvalidTag, Drop.MALFORMED, Drop.AUTH_FAILED, esp._unpadded)
    with pytest.raises(OSError, match="library failure"):
        ext.open_aead16_many(broken, b"salt", [packet], *args)


@needs_ext
def test_views_given_to_the_library_must_not_outlive_the_call() -> None:
    """A callee that keeps a view of a packet buffer gets a RuntimeError, never a dangling view."""
    assert ext is not None
    kept = []

    def keeper(nonce: bytes, data: Any, aad: Any, buf: Any) -> int:
        kept.append(buf)
        return len(buf)

    with pytest.raises(RuntimeError):
        ext.seal_rows_aead(keeper, 0x100, 1, False, b"salt", bytes(40), 40)
    args = (InvalidTag, Drop.MALFORMED, Drop.AUTH_FAILED, esp._unpadded)
    with pytest.raises(RuntimeError):
        ext.open_aead16_many(keeper, b"salt", [bytes(48)], *args)
    for view in kept:  # released: reading one raises instead of reading freed memory
        with pytest.raises(ValueError):
            bytes(view)


# -- CBC with an HMAC: the loops around the HMAC and AES calls -----------------------------------------


class _StubCbc:
    """A CBC cipher whose `encrypt_fresh_rows` is deterministic (IV = the row's index, ciphertext = the
    row), so that the two loops around it can be compared byte for byte."""

    iv_len = block = 16

    def encrypt_fresh_rows(self, rows: Any) -> bytes:
        return b"".join(i.to_bytes(16, "big") + row.tobytes() for i, row in enumerate(rows))


@needs_ext
@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 90).map(lambda n: 16 * n),
    st.one_of(st.integers(0, 1 << 20), st.integers(0xFFFFFF00, 0xFFFFFFFF)),
    st.sampled_from(["sha256", "sha1", "sha512"]),
)
def test_seal_rows_cbc_in_c_are_the_pure_rows(count: int, width: int, first: int, digest: str) -> None:
    count = min(count, 0x100000000 - first)
    alg = find_auth(digest)
    auth = make_auth(alg, os.urandom(alg.key_len))
    rows = np.frombuffer(os.urandom(count * width), np.uint8).reshape(count, width)
    pure = _pure(esp.seal_rows_cbc, 0x4321, first, _StubCbc(), auth, rows)
    native = _native(esp.seal_rows_cbc, 0x4321, first, _StubCbc(), auth, rows)
    assert native == pure and all(type(p) is bytes for p in native)


@needs_ext
def test_seal_rows_cbc_in_c_refuse_what_does_not_fit() -> None:
    assert ext is not None
    start = make_auth(find_auth("sha256"), bytes(32)).start
    with pytest.raises(ValueError):
        ext.seal_rows_cbc(start, 16, 0x100, 0xFFFFFFFF, bytes(64), 32)  # 2 rows: past 2^32 - 1
    with pytest.raises(ValueError):
        ext.seal_rows_cbc(start, 16, 0x100, 1, bytes(64), 30)


@needs_ext
@pytest.mark.parametrize(
    ("cipher", "key_len", "digest"), [("aes-cbc", 16, "sha256"), ("des_ede3-cbc", 24, "sha1")]
)
def test_open_cbc_many_in_c_is_the_pure_open(cipher: str, key_len: int, digest: str) -> None:
    """Good, forged, damaged, cut, padded and not-whole packets: the same results and others; two
    cipher objects of one key (each its own decryption stream)."""
    key, alg = os.urandom(key_len), find_auth(digest)
    auth = make_auth(alg, os.urandom(alg.key_len))
    sender = make_cipher(find_cipher(cipher)[0], key)
    inners = [(_v4(b"a" * n), 4) for n in (0, 1, 30, 1380)] + [(_v6(b"b" * n), 41) for n in (0, 7, 1300)]
    inners += [(_v4(b"c" * 40) + bytes(6), 4), (b"\x00" * 9, 59), (_v4(b"d" * 5), 41), (b"noise" * 9, 4)]
    good = [esp.seal_cbc(0x1234, i, sender, auth, inner, nh) for i, (inner, nh) in enumerate(inners, 1)]
    spoilt = [p[:k] + bytes([p[k] ^ 4]) + p[k + 1 :] for p in good[:3] for k in (0, 9, 30, len(p) - 1)]
    cut = [good[0][:-1], good[1] + b"\0", good[2][:20], b"", good[3][: -sender.block]]
    packets = good + spoilt + cut
    pure = _pure(esp.open_cbc_many, packets, make_cipher(find_cipher(cipher)[0], key), auth)
    native = _native(esp.open_cbc_many, packets, make_cipher(find_cipher(cipher)[0], key), auth)
    assert native == pure
    assert native[0][: len(inners)] == [inner for inner, _ in inners[:7]] + inners[7:]  # whole ones bare
    assert native[0][len(inners) :] == [Drop.AUTH_FAILED] * len(spoilt) + [Drop.MALFORMED] * 4 + [
        Drop.AUTH_FAILED
    ]


@needs_ext
def test_open_cbc_many_in_c_decrypts_a_batch_in_one_call_after_every_icv() -> None:
    """The authentic packets of a batch are decrypted in one call, over their IV and ciphertext joined,
    only once every ICV was checked (RFC 4303 §3.4.4); a decryption that gives back another length is
    an error, not a misplaced packet."""
    assert ext is not None
    key, alg = os.urandom(16), find_auth("sha256")
    auth = make_auth(alg, os.urandom(alg.key_len))
    sender = make_cipher(find_cipher("aes-cbc")[0], key)
    inners = [_v4(b"x" * n) for n in (10, 200, 1300, 3)]
    packets = [esp.seal_cbc(0x99, i, sender, auth, inner, 4) for i, inner in enumerate(inners, 1)]
    forged = packets[1][:-1] + bytes([packets[1][-1] ^ 1])
    batch = [packets[0], forged, packets[2], packets[3]]
    receiver = make_cipher(find_cipher("aes-cbc")[0], key)
    events: list[Any] = []

    def start() -> Any:
        events.append("icv")
        return auth.start()

    def decrypt(joined: Any) -> bytes:
        events.append(len(bytes(joined)))
        plain: bytes = receiver.decrypt_joined(joined)
        return plain

    done = ext.open_cbc_many(start, 16, decrypt, 16, batch, Drop.MALFORMED, Drop.AUTH_FAILED, repr)
    assert done is not None
    opened, others = done
    assert opened == [inners[0], Drop.AUTH_FAILED, inners[2], inners[3]] and others == 1
    assert events == ["icv"] * 4 + [sum(len(p) - 8 - 16 for p in (packets[0], packets[2], packets[3]))]
    with pytest.raises(ValueError):
        ext.open_cbc_many(auth.start, 16, lambda joined: bytes(16), 16, packets, 1, 2, repr)


@needs_ext
def test_views_given_to_an_hmac_must_not_outlive_the_call() -> None:
    assert ext is not None
    kept: list[Any] = []

    class Keeper:
        def update(self, data: Any) -> None:
            kept.append(data)

        def finalize(self) -> bytes:
            return bytes(32)

    with pytest.raises(RuntimeError):
        ext.seal_rows_cbc(Keeper, 16, 0x100, 1, bytes(32), 32)
    with pytest.raises(RuntimeError):
        ext.open_cbc_many(Keeper, 16, lambda d: bytes(d), 16, [bytes(8 + 16 + 16 + 16)], 1, 2, repr)
    assert len(kept) == 2
    for view in kept:
        with pytest.raises(ValueError):
            bytes(view)


# -- a UDP GRO batch cut back into datagrams (linux/udp.py recv_batch) ---------------------------------


@needs_ext
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 3000), st.integers(1, 1500))
def test_split_in_c_is_the_python_slicing(data: bytes, n: int, size: int) -> None:
    assert ext is not None
    buffer = bytearray(data)
    if n > len(buffer):
        with pytest.raises(ValueError):
            ext.split(buffer, n, size)
        return
    assert ext.split(buffer, n, size) == [data[:n][i : i + size] for i in range(0, n, size)]
    with pytest.raises(ValueError):
        ext.split(buffer, n, 0)


# -- a lone packet's seal in one call (core/sa.py encrypt) ----------------------------------------------


@needs_ext
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(AEADS)),
    st.binary(max_size=300),
    st.sampled_from([esp.NH_IPV4, esp.NH_IPV6, esp.NH_NONE, 255]),
    st.integers(0, 0xFFFFFFFF),
    st.one_of(st.integers(1, 1 << 20), st.integers(0xFFFFFF00, 0xFFFFFFFF)),
    st.sampled_from([None, 0, 1]),
)
def test_seal_one_in_c_is_the_python_seal(
    aead_name: str, inner: bytes, nh: int, spi: int, seq: int, split: int | None
) -> None:
    assert ext is not None
    aead, salt = AEADS[aead_name](), os.urandom(4)
    packet = ext.seal_aead16_one(aead.encrypt, spi, seq, bool(split), salt, inner, nh)
    assert packet == esp.seal_aead16(spi, seq, split, aead.encrypt, salt, inner, nh)
    assert esp.open_aead16(packet, aead.decrypt, salt) == (inner, nh)


@needs_ext
def test_seal_one_in_c_refuses_what_does_not_fit() -> None:
    assert ext is not None
    aead = AESGCM(bytes(16))
    for args in ((1 << 32, 1, b"salt", 4), (1, 1 << 32, b"salt", 4), (1, 1, b"sal", 4), (1, 1, b"salt", 256)):
        spi, seq, salt, nh = args
        with pytest.raises(ValueError):
            ext.seal_aead16_one(aead.encrypt, spi, seq, False, salt, bytes(20), nh)
    with pytest.raises(ValueError):
        ext.seal_aead16_one(aead.encrypt, -1, 1, False, b"salt", bytes(20), 4)
    big = bytes(40 + 65535)  # the largest IPv6 packet passes 65,535 bytes: sealed as in Python
    assert ext.seal_aead16_one(aead.encrypt, 1, 1, False, b"salt", big, 41) == esp.seal_aead16(
        1, 1, None, aead.encrypt, b"salt", big, 41
    )
    with pytest.raises(TypeError):
        ext.seal_aead16_one(aead.encrypt, 1, 1, False, b"salt", cast(Any, bytearray(20)), 4)
    with pytest.raises(TypeError):
        ext.seal_aead16_one(aead.encrypt, cast(Any, "1"), 1, False, b"salt", bytes(20), 4)
    with pytest.raises(TypeError):
        cast(Any, ext).seal_aead16_one(aead.encrypt, 1, 1)
    with pytest.raises(ValueError, match="unexpected length"):  # a callee that gives something else
        ext.seal_aead16_one(lambda n, d, a: b"short", 1, 1, False, b"salt", bytes(40), 4)

    def fails(nonce: bytes, data: bytes, aad: bytes) -> bytes:
        raise KeyError("any error")

    with pytest.raises(KeyError):  # goes on as it came
        ext.seal_aead16_one(fails, 1, 1, False, b"salt", bytes(40), 4)
