"""The ESP codec (RFC 4303) against whole-packet vectors: RFC 3602 §4 (AES-CBC), RFC 7634 Appendix A
(ChaCha20-Poly1305) and draft-mcgrew-gcm-test-01 (AES-GCM, with and without ESN); padding, IVs, the ICV's
coverage and every way `open_packet` refuses a packet."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.algorithms import AuthTransform, find_auth, find_cipher, make_auth, make_cipher
from ipsec_tunnel.core.drops import Drop

from .vectors import MCGREW_GCM_ESP, RFC3602_ESP, RFC7634_ESP, EspCase, GcmEspCase


def _no_icv() -> AuthTransform:
    """An integrity transform whose ICV is empty: RFC 3602's ESP cases are encryption-only, so this gives
    their exact wire format while the packet still goes through the authenticated code path."""
    return AuthTransform(hashes.SHA256(), b"unused", 0)


def _cbc(key: bytes) -> Any:
    return make_cipher(find_cipher("aes-cbc")[0], key)


# ---------------------------------------------------------------------------------------------------------
# Whole-packet vectors


@pytest.mark.parametrize("case", RFC3602_ESP, ids=lambda c: c.name)
def test_rfc3602_esp_packets_are_reproduced(case: EspCase) -> None:
    packet = esp.seal(
        case.spi, case.seq, False, _cbc(case.key), _no_icv(), case.payload, case.next_header, iv=case.iv
    )
    assert packet == case.packet


@pytest.mark.parametrize("case", RFC3602_ESP, ids=lambda c: c.name)
def test_rfc3602_esp_packets_open(case: EspCase) -> None:
    assert esp.open_packet(case.packet, case.seq, False, _cbc(case.key), _no_icv()) == (
        case.payload,
        case.next_header,
    )


@pytest.mark.parametrize("case", RFC3602_ESP, ids=lambda c: c.name)
def test_rfc3602_packets_with_an_icv_appended(case: EspCase) -> None:
    """The same ciphertext with HMAC-SHA-256-128 added the RFC 4303 §2.8 way (over SPI to the end of the
    trailer), computed here with the standard library: our ICV goes where RFC 4303 puts it."""
    key = bytes(range(32))
    icv = hmac.new(key, case.packet, hashlib.sha256).digest()[:16]
    auth = make_auth(find_auth("sha256"), key)
    sealed = esp.seal(
        case.spi, case.seq, False, _cbc(case.key), auth, case.payload, case.next_header, iv=case.iv
    )
    assert sealed == case.packet + icv
    assert esp.open_packet(sealed, case.seq, False, _cbc(case.key), auth) == (case.payload, case.next_header)


def test_rfc7634_appendix_a_is_reproduced_and_opens() -> None:
    case = RFC7634_ESP
    cipher = make_cipher(find_cipher("chacha20-poly1305")[0], case.key)
    packet = esp.seal(case.spi, case.seq, False, cipher, None, case.payload, case.next_header, iv=case.iv)
    assert packet == case.packet
    assert esp.open_packet(case.packet, case.seq, False, cipher, None) == (case.payload, case.next_header)


def test_rfc7634_aad_without_esn_is_spi_and_sequence() -> None:
    # RFC 7634 §2.1: without ESN the AAD is SPI || 32-bit sequence; with ESN it is 12 bytes, so the same
    # packet taken as ESN (high bits 0) must fail.
    case = RFC7634_ESP
    cipher = make_cipher(find_cipher("chacha20-poly1305")[0], case.key)
    assert esp.open_packet(case.packet, case.seq, True, cipher, None) is Drop.AUTH_FAILED


def _mcgrew_payload(case: GcmEspCase) -> tuple[bytes, int]:
    pad_len = case.plaintext[-2]
    return case.plaintext[: len(case.plaintext) - 2 - pad_len], case.plaintext[-1]


@pytest.mark.parametrize("case", MCGREW_GCM_ESP, ids=lambda c: c.name)
def test_mcgrew_gcm_esp_packets_are_reproduced(case: GcmEspCase) -> None:
    cipher = make_cipher(find_cipher("aes-gcm")[0], case.key + case.nonce[:4], 16)
    payload, nh = _mcgrew_payload(case)
    packet = esp.seal(case.spi, case.seq, case.esn, cipher, None, payload, nh, iv=case.nonce[4:])
    assert packet == case.packet


@pytest.mark.parametrize("case", MCGREW_GCM_ESP, ids=lambda c: c.name)
def test_mcgrew_gcm_esp_packets_open(case: GcmEspCase) -> None:
    cipher = make_cipher(find_cipher("aes-gcm")[0], case.key + case.nonce[:4], 16)
    assert esp.open_packet(case.packet, case.seq, case.esn, cipher, None) == _mcgrew_payload(case)


def test_mcgrew_esn_cases_need_the_high_bits() -> None:
    # RFC 4106 §5: with ESN the AAD carries all 64 bits; the wrong high half fails the ICV.
    esn_cases = [c for c in MCGREW_GCM_ESP if c.esn and c.seq >> 32]
    assert esn_cases
    for case in esn_cases:
        cipher = make_cipher(find_cipher("aes-gcm")[0], case.key + case.nonce[:4], 16)
        assert esp.open_packet(case.packet, case.seq ^ (1 << 32), True, cipher, None) is Drop.AUTH_FAILED
        assert struct.unpack("!II", case.packet[:8]) == (case.spi, case.seq & 0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------------------
# Padding, IVs, headers


def _trailers(cipher: Any, packet: bytes, inner_len: int) -> bytes:
    """The decrypted trailer (padding, pad length, next header) of an ESP packet sealed with `cipher`."""
    iv = packet[esp.HEADER_LEN : esp.HEADER_LEN + cipher.iv_len]
    body = packet[esp.HEADER_LEN + cipher.iv_len :]
    if hasattr(cipher, "open"):  # AEAD: ciphertext and ICV, AAD = SPI || seq
        plain = cipher.open(iv, body, packet[: esp.HEADER_LEN])
    else:  # CBC with an empty ICV
        plain = cipher.decrypt(iv, body)
    assert plain is not None
    return bytes(plain[inner_len:])


def _expect_trailer(trailer: bytes, inner_len: int, block: int, next_header: int) -> None:
    """RFC 4303 §2.4: the fewest padding bytes aligning inner + padding + 2 to `block`, valued 1, 2, 3 ..."""
    pad_len = (-(inner_len + 2)) % block
    assert trailer == bytes(range(1, pad_len + 1)) + bytes((pad_len, next_header)), (inner_len, block)


@pytest.mark.parametrize("cipher_name", ["aes-gcm", "des_ede3-cbc", "aes-cbc"])
def test_seal_pads_to_the_rfc4303_minimum_with_monotonic_bytes(cipher_name: str) -> None:
    alg = find_cipher(cipher_name)[0]
    cipher = make_cipher(alg, bytes(range(alg.key_sizes[-1] + alg.salt_len)))
    auth = None if alg.aead else _no_icv()
    assert cipher.block == {"aes-gcm": 4, "des_ede3-cbc": 8, "aes-cbc": 16}[cipher_name]
    for length in range(0, 70):
        packet = esp.seal(0x100, length + 1, False, cipher, auth, b"i" * length, esp.NH_IPV6)
        _expect_trailer(_trailers(cipher, packet, length), length, cipher.block, esp.NH_IPV6)


def test_the_fast_aead_paths_pad_as_seal_does() -> None:
    key, salt = bytes(range(16)), b"salt"
    gcm = make_cipher(find_cipher("aes-gcm")[0], key + salt)
    encrypt = AESGCM(key).encrypt
    for length in range(0, 70):
        inner = b"i" * length
        one = esp.seal_aead16(0x100, 7, None, encrypt, salt, inner, esp.NH_IPV4)
        assert one == esp.seal(0x100, 7, False, gcm, None, inner, esp.NH_IPV4)
        _expect_trailer(_trailers(gcm, one, length), length, 4, esp.NH_IPV4)
        row = np.frombuffer(inner + esp.aead16_trailer(length, esp.NH_IPV4), dtype=np.uint8)
        rows = np.ascontiguousarray(np.stack([row, row]))
        assert esp.seal_rows(0x100, 7, None, encrypt, salt, rows)[0] == one


def test_every_seal_path_puts_the_sequence_number_in_the_counter_iv() -> None:
    # RFC 4106 §3.1 suggests the sequence number as the IV; the top bit splits a shared key's directions.
    key, salt = bytes(range(16)), b"salt"
    gcm = make_cipher(find_cipher("aes-gcm")[0], key + salt)
    encrypt = AESGCM(key).encrypt
    seq = (7 << 32) | 9
    assert esp.seal(0x100, seq, True, gcm, None, b"x" * 20, 4)[8:16] == bytes.fromhex("0000000700000009")
    assert esp.seal(0x100, seq, True, gcm, None, b"x" * 20, 4, iv_split=0)[8:16] == bytes.fromhex(
        "0000000700000009"
    )
    assert esp.seal(0x100, seq, True, gcm, None, b"x" * 20, 4, iv_split=1)[8:16] == bytes.fromhex(
        "8000000700000009"
    )
    for split, iv in ((None, "0000000000000005"), (0, "0000000000000005"), (1, "8000000000000005")):
        assert esp.seal_aead16(0x100, 5, split, encrypt, salt, b"x" * 20, 4)[8:16] == bytes.fromhex(iv)
        rows = np.zeros((3, 24), dtype=np.uint8)
        sealed = esp.seal_rows(0x100, 5, split, encrypt, salt, rows)
        assert [p[8:16] for p in sealed] == [bytes.fromhex(iv[:-1] + str(5 + i)) for i in range(3)], (
            "one IV per row, counting up"
        )


def test_counter_mode_iv_defaults_to_the_counter_and_cbc_to_random() -> None:
    gcm = make_cipher(find_cipher("aes-gcm")[0], bytes(20))
    packet = esp.seal(0x100, 9, False, gcm, None, b"x" * 20, 4, iv_split=1)
    assert packet[8:16] == bytes.fromhex("8000000000000009")
    ctr = make_cipher(find_cipher("aes-ctr")[0], bytes(20))
    auth = make_auth(find_auth("sha1"), bytes(20))
    packet = esp.seal(0x100, 9, False, ctr, auth, b"x" * 20, 4)
    assert packet[8:16] == bytes.fromhex("0000000000000009")
    cbc = _cbc(bytes(16))
    first = esp.seal(0x100, 9, False, cbc, auth, b"x" * 20, 4)
    second = esp.seal(0x100, 9, False, cbc, auth, b"x" * 20, 4)
    assert first[8:24] != second[8:24]  # RFC 3602 §2.3: unpredictable IVs


def test_esn_high_bits_are_authenticated_but_not_sent() -> None:
    """RFC 4303 §2.2.1 and §3.3.2.1: only the low 32 bits travel; the high 32 are appended for the ICV."""
    cbc = _cbc(bytes(range(16)))
    key = bytes(range(32))
    auth = make_auth(find_auth("sha256"), key)
    iv = bytes(16)
    low = esp.seal(0x100, 5, True, cbc, auth, b"payload!", 4, iv=iv)
    high = esp.seal(0x100, (3 << 32) | 5, True, cbc, auth, b"payload!", 4, iv=iv)
    plain = esp.seal(0x100, 5, False, cbc, auth, b"payload!", 4, iv=iv)
    assert len(low) == len(high) == len(plain)
    assert low[:-16] == high[:-16] == plain[:-16]  # same header, IV and ciphertext
    assert low[-16:] != plain[-16:]  # with ESN even zero high bits are appended for the ICV
    assert low[-16:] == hmac.new(key, low[:-16] + bytes(4), hashlib.sha256).digest()[:16]
    assert high[-16:] == hmac.new(key, high[:-16] + struct.pack("!I", 3), hashlib.sha256).digest()[:16]
    assert esp.open_packet(high, (3 << 32) | 5, True, cbc, auth) == (b"payload!", 4)
    assert esp.open_packet(high, (4 << 32) | 5, True, cbc, auth) is Drop.AUTH_FAILED
    assert esp.open_packet(high, 5, False, cbc, auth) is Drop.AUTH_FAILED


def test_aead_esn_aad_is_spi_high_low() -> None:
    # RFC 4106 §5: AAD = SPI || seq high || seq low; checked with `cryptography` directly.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, salt = bytes(range(16)), b"salt"
    gcm = make_cipher(find_cipher("aes-gcm")[0], key + salt)
    seq = (0x01020304 << 32) | 0x05060708
    packet = esp.seal(0xABCDEF01, seq, True, gcm, None, b"inner", 4, iv=b"IVIVIVIV")
    aad = bytes.fromhex("abcdef01 01020304 05060708")
    payload = b"inner" + b"\x01" + bytes((1, 4))  # RFC 4303 §2.4: 5 + 1 + 2 is 4-aligned
    assert packet == bytes.fromhex("abcdef01 05060708") + b"IVIVIVIV" + AESGCM(key).encrypt(
        salt + b"IVIVIVIV", payload, aad
    )


# ---------------------------------------------------------------------------------------------------------
# Refusals


def _sha256_cbc() -> tuple[Any, AuthTransform]:
    return _cbc(bytes(range(16))), make_auth(find_auth("sha256"), bytes(range(32)))


def test_short_or_misaligned_packets_are_malformed() -> None:
    cbc, auth = _sha256_cbc()
    packet = esp.seal(0x100, 1, False, cbc, auth, b"x" * 30, 4)
    assert esp.open_packet(packet[:-1], 1, False, cbc, auth) is Drop.MALFORMED
    assert esp.open_packet(packet + b"\x00", 1, False, cbc, auth) is Drop.MALFORMED
    assert esp.open_packet(packet[: 8 + 16 + 16], 1, False, cbc, auth) is Drop.MALFORMED  # no ciphertext
    assert esp.open_packet(b"", 1, False, cbc, auth) is Drop.MALFORMED
    gcm = make_cipher(find_cipher("aes-gcm")[0], bytes(20))
    assert esp.open_packet(bytes(8 + 8 + 16), 1, False, gcm, None) is Drop.MALFORMED  # empty payload
    assert esp.open_packet(bytes(8 + 8 + 2 + 16), 1, False, gcm, None) is Drop.MALFORMED  # under 4 bytes


class _SpyCipher:
    """Wraps a block transform and counts decryptions."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.iv_len = inner.iv_len
        self.block = inner.block
        self.counter_iv = inner.counter_iv
        self.decrypts = 0

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        result: bytes = self.inner.encrypt(iv, data)
        return result

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        self.decrypts += 1
        result: bytes = self.inner.decrypt(iv, data)
        return result


def test_icv_is_verified_before_anything_is_decrypted() -> None:
    cbc, auth = _sha256_cbc()
    spy = _SpyCipher(cbc)
    packet = esp.seal(0x100, 1, False, spy, auth, b"x" * 30, 4)
    for index in (0, 5, 9, 30, len(packet) - 1):
        tampered = bytearray(packet)
        tampered[index] ^= 0x01
        assert esp.open_packet(bytes(tampered), 1, False, spy, auth) is Drop.AUTH_FAILED
    assert spy.decrypts == 0
    assert esp.open_packet(packet, 1, False, spy, auth) == (b"x" * 30, 4)
    assert spy.decrypts == 1


def _seal_raw_cbc(cbc: Any, auth: AuthTransform, trailer_plain: bytes) -> bytes:
    """An ESP packet whose decrypted payload is `trailer_plain` exactly, with a valid ICV."""
    iv = bytes(16)
    body: bytes = struct.pack("!II", 0x100, 1) + iv + cbc.encrypt(iv, trailer_plain)
    return body + auth.sign(body)


@pytest.mark.parametrize(
    "plain",
    [
        b"x" * 12 + b"\x01\x03" + b"\x02\x04",  # padding 1, 3 instead of 1, 2
        b"x" * 11 + b"\x02\x03\x04" + b"\x03\x04",  # padding bytes not starting at 1
        b"x" * 14 + b"\x20\x04",  # pad length beyond the payload
        b"\xff" * 14 + b"\x0e\x04",  # fourteen bytes of padding that are not 1..14
    ],
)
def test_bad_padding_is_refused(plain: bytes) -> None:
    assert len(plain) == 16
    cbc, auth = _sha256_cbc()
    packet = _seal_raw_cbc(cbc, auth, plain)
    assert esp.open_packet(packet, 1, False, cbc, auth) is Drop.BAD_PADDING


def test_good_raw_padding_opens() -> None:
    # The control for the test above: the same construction with RFC 4303 padding opens.
    cbc, auth = _sha256_cbc()
    packet = _seal_raw_cbc(cbc, auth, b"x" * 12 + b"\x01\x02\x02\x04")
    assert esp.open_packet(packet, 1, False, cbc, auth) == (b"x" * 12, 4)


@pytest.mark.parametrize("name", ["aes-gcm", "chacha20-poly1305"])
def test_aead_tampering_is_auth_failed(name: str) -> None:
    alg, _ = find_cipher(name)
    cipher = make_cipher(alg, bytes(range(alg.key_sizes[-1] + alg.salt_len)))
    packet = esp.seal(0x100, 1, False, cipher, None, b"y" * 40, 41)
    assert esp.open_packet(packet, 1, False, cipher, None) == (b"y" * 40, 41)
    for index in range(len(packet)):
        tampered = bytearray(packet)
        tampered[index] ^= 0x80
        assert esp.open_packet(bytes(tampered), 1, False, cipher, None) is Drop.AUTH_FAILED


# -- open_aead16_many: the batch opener hands whole inner IP packets over as bare bytes ---------------------

_MANY_KEY, _MANY_SALT = bytes(range(16)), b"salt"


def _v4(size: int, length: int | None = None) -> bytes:
    """An IPv4 packet of `size` bytes (no options) whose total length field says `length` (default: size)."""
    return bytes([0x45, 0]) + (size if length is None else length).to_bytes(2, "big") + bytes(size - 4)


def _v6(size: int, length: int | None = None) -> bytes:
    payload = size - 40 if length is None else length - 40
    return bytes([0x60, 0, 0, 0]) + payload.to_bytes(2, "big") + bytes(size - 6)


def _sealed_with(seq: int, plain: bytes) -> bytes:
    """An AES-GCM ESP packet (RFC 4106) of `plain`, trailer included, as the peer would have sent it."""
    header, iv = struct.pack("!II", 0x1001, seq), struct.pack("!Q", seq)
    return header + iv + AESGCM(_MANY_KEY).encrypt(_MANY_SALT + iv, plain, header)


def _trailed(inner: bytes, nh: int, extra_pad: int = 0, bad_pad: bool = False) -> bytes:
    """`inner`, its RFC 4303 §2.4 padding (4 * `extra_pad` bytes more than needed, damaged with
    `bad_pad`), pad length and next header `nh`."""
    pad = bytearray(range(1, (-(len(inner) + 2)) % 4 + 4 * extra_pad + 1))
    if bad_pad and pad:
        pad[-1] ^= 0x40
    return inner + bytes(pad) + bytes([len(pad), nh])


_INNERS = [
    ("v4", _trailed(_v4(120), 4)),
    ("v4 odd", _trailed(_v4(121), 4)),
    ("v4 with TFC padding", _trailed(_v4(100) + bytes(12), 4)),
    ("v4 length too long", _trailed(_v4(100, 104), 4)),
    ("v4 named IPv6", _trailed(_v4(120), 41)),
    ("v4 with options", _trailed(bytes([0x46]) + _v4(124)[1:], 4)),
    ("v6", _trailed(_v6(140), 41)),
    ("v6 named IPv4", _trailed(_v6(140), 4)),
    ("v6 with TFC padding", _trailed(_v6(140) + bytes(8), 41)),
    ("v4 with more padding", _trailed(_v4(120), 4, extra_pad=3)),
    ("bad padding", _trailed(_v4(120), 4, bad_pad=True)),
    ("dummy", _trailed(bytes(30), 59)),
    ("tiny", bytes([0x45, 0, 0, 2])),
    ("padding longer than the payload", bytes([0x45, 0, 9, 4])),
    ("tiny v6", bytes([0x60, 0, 0, 41])),
    ("v6 header cut", bytes([0x60, 0, 0, 0, 0, 0]) + bytes(32) + bytes([0, 41])),
    ("v4 length below its header", _trailed(_v4(120, 16), 4)),
    ("v4 length beyond the payload", _trailed(_v4(120, 400), 4)),
    ("v4 length into the trailer", _trailed(_v4(120, 121), 4)),
    ("v6 length too long", _trailed(_v6(140, 144), 41)),
    ("v6 length too short", _trailed(_v6(140, 136), 41)),
]


@pytest.mark.parametrize(("name", "plain"), _INNERS, ids=[n for n, _ in _INNERS])
def test_open_aead16_many_is_open_aead16_with_whole_packets_bare(name: str, plain: bytes) -> None:
    """Each result is open_aead16's, except that a whole inner IPv4 (no options) or IPv6 packet that its
    next header names comes as its bytes alone; the count says how many are not."""
    decrypt = AESGCM(_MANY_KEY).decrypt
    good = _sealed_with(1, _trailed(_v4(60), 4))
    forged = bytearray(_sealed_with(2, plain))
    forged[-1] ^= 1
    packets = [good, _sealed_with(3, plain), bytes(forged), good[:30], good]
    opened, others = esp.open_aead16_many(packets, decrypt, _MANY_SALT)
    singles = [esp.open_aead16(p, decrypt, _MANY_SALT) for p in packets]
    assert singles[2] == Drop.AUTH_FAILED and singles[3] == Drop.MALFORMED
    bare = [r for r in opened if isinstance(r, bytes)]
    assert others == len(packets) - len(bare)
    for one, got in zip(singles, opened, strict=True):
        if isinstance(got, bytes):  # only ever a whole packet of the version its next header names
            assert one == (got, 4 if got[0] == 0x45 else 41)
            length = got[2] << 8 | got[3] if got[0] == 0x45 else 40 + (got[4] << 8 | got[5])
            assert length == len(got) and (got[0] == 0x45 or got[0] >> 4 == 6)
        else:
            assert got == one
    whole = name in ("v4", "v4 odd", "v6", "v4 with more padding")
    assert isinstance(opened[1], bytes) == whole


def _whole_by_pad_length(plain: bytes) -> bool:
    """The rule open_aead16_many had before it read the IP length first: the pad length byte, the
    trailer it implies, and an IP length ending where that trailer starts."""
    pad_len = plain[-2]
    end = len(plain) - 2 - pad_len
    tail4 = bytes(range(1, pad_len + 1)) + bytes([pad_len, 4])
    tail6 = bytes(range(1, pad_len + 1)) + bytes([pad_len, 41])
    return (plain[0] == 0x45 and plain.endswith(tail4) and end >= 20 and plain[2] << 8 | plain[3] == end) or (
        plain[0] >> 4 == 6 and plain.endswith(tail6) and end >= 40 and 40 + (plain[4] << 8 | plain[5]) == end
    )


def test_open_aead16_many_takes_as_whole_what_the_pad_length_rule_takes() -> None:
    """Random plaintexts near the boundaries (IP lengths around the trailer, pad lengths right and wrong,
    both versions and next headers): bare bytes exactly where the rule by pad length says so."""
    rng = random.Random(13)
    decrypt = AESGCM(_MANY_KEY).decrypt
    plains = []
    for _ in range(3000):
        v6 = rng.random() < 0.4
        size = rng.choice([4, 8, 40, 44, 60, 64, 120, 1420])
        inner = _v6(max(size, 40)) if v6 else _v4(max(size, 20))
        body = bytearray(_trailed(inner, rng.choice([4, 41, 59]), extra_pad=rng.choice([0, 0, 1, 63])))
        if rng.random() < 0.5:  # the IP length off by a little
            at = 4 if v6 else 2
            length = int.from_bytes(body[at : at + 2], "big") + rng.choice([-3, -2, -1, 1, 2, 3, 300])
            body[at : at + 2] = (length & 0xFFFF).to_bytes(2, "big")
        if rng.random() < 0.2:  # a damaged trailer byte
            body[rng.randrange(max(1, len(body) - 6), len(body))] ^= rng.choice([1, 0x40])
        if rng.random() < 0.1:
            body = body[: rng.choice([4, 8, 12])]  # short: nothing to read an IP length from
        if len(body) % 4:
            body += bytes(4 - len(body) % 4)
        plains.append(bytes(body))
    packets = [_sealed_with(i + 1, plain) for i, plain in enumerate(plains)]
    opened, others = esp.open_aead16_many(packets, decrypt, _MANY_SALT)
    bare = [isinstance(got, bytes) for got in opened]
    assert bare == [_whole_by_pad_length(plain) for plain in plains]
    assert 300 < sum(bare) < 2700 and others == len(plains) - sum(bare)  # both ways, many times
    for packet, got in zip(packets, opened, strict=True):
        one = esp.open_aead16(packet, decrypt, _MANY_SALT)
        assert one == ((got, 4 if got[0] == 0x45 else 41) if isinstance(got, bytes) else got)
