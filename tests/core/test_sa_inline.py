"""The SA's inlined ESP framing for AEAD ciphers (SecurityAssociation.encrypt/decrypt) against the codec
in core.esp: the same bytes out, the same verdicts in."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation

CASES = [
    ("aes-gcm", 20, "10.0.0.2", "10.0.0.1"),  # iv_split 1
    ("aes-gcm", 36, "10.0.0.1", "10.0.0.2"),  # AES-256, iv_split 0
    ("chacha20-poly1305", 36, "10.0.0.2", "10.0.0.1"),
]


def _emit(_event: object) -> None:
    pass


def _sa(cipher: str, key_len: int, dst: str, src: str, key: bytes) -> SecurityAssociation:
    return SecurityAssociation(SAConfig(0x1234, dst, src, cipher, key[:key_len]).validated(), 0.0)


@pytest.mark.parametrize(("cipher", "key_len", "dst", "src"), CASES)
def test_inline_framing_is_used_and_matches_esp(cipher: str, key_len: int, dst: str, src: str) -> None:
    key = os.urandom(36)
    sa = _sa(cipher, key_len, dst, src, key)
    assert sa._aead_encrypt is not None and sa._aead_decrypt is not None
    for size in (0, 1, 2, 3, 4, 5, 61, 1400):
        inner = os.urandom(size)
        for nh in (esp.NH_IPV4, esp.NH_IPV6):
            packet = sa.encrypt(inner, nh, 0.0, _emit)
            want = esp.seal(sa.config.spi, sa.seq_out, False, sa.cipher, None, inner, nh,
                            iv_split=sa.config.iv_split)  # fmt: skip
            assert packet == want
            assert esp.open_packet(packet, sa.seq_out, False, sa.cipher, None) == (inner, nh)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CASES), st.binary(max_size=200), st.data())
def test_inline_open_gives_the_codecs_verdicts(case: tuple[str, int, str, str], inner: bytes,
                                               data: st.DataObject) -> None:  # fmt: skip
    cipher, key_len, dst, src = case
    key = os.urandom(36)
    tx, rx = _sa(cipher, key_len, dst, src, key), _sa(cipher, key_len, dst, src, key)
    sealed = tx.encrypt(inner, esp.NH_IPV4, 0.0, _emit)
    assert isinstance(sealed, bytes)
    packet = bytearray(sealed)
    how = data.draw(st.sampled_from(["intact", "flip", "truncate", "extend"]))
    if how == "flip":
        at = data.draw(st.integers(8, len(packet) - 1))  # past the sequence number: same replay verdict
        packet[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        packet = packet[: data.draw(st.integers(8, len(packet) - 1))]
    elif how == "extend":
        packet += os.urandom(data.draw(st.integers(1, 9)))
    want = esp.open_packet(bytes(packet), 1, False, rx.cipher, None)
    got = rx.decrypt(bytes(packet), 0.0, _emit)
    assert got == want
    assert rx.packets == (0 if isinstance(want, Drop) else 1)
