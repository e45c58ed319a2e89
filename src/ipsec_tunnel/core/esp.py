"""The ESP packet codec (RFC 4303), tunnel mode: seal an inner IP packet, open an ESP packet.

Stateless: sequence numbers, the replay window and counters belong to `sa`. `open_packet` verifies the
ICV (constant-time) before anything is decrypted and returns a `Drop` reason for every failure.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from hmac import compare_digest
from typing import Any

from cryptography.exceptions import InvalidTag

from .algorithms import AuthTransform, random_bytes
from .drops import Drop
from .framing import native as _native

__all__ = [
    "HEADER_LEN",
    "NH_IPV4",
    "NH_IPV6",
    "NH_NONE",
    "aead16_trailer",
    "block_trailer",
    "open_aead16",
    "open_aead16_many",
    "open_cbc_many",
    "open_packet",
    "seal",
    "seal_aead16",
    "seal_aead16_esn",
    "seal_cbc",
    "seal_rows",
    "seal_rows_cbc",
]

HEADER_LEN = 8  # RFC 4303 §2: SPI (4) + sequence number (4)
NH_IPV4 = 4  # RFC 4303 §2.6 / IANA protocol numbers: IPv4-in-IP, tunnel mode
NH_IPV6 = 41  # IANA: IPv6 encapsulation, tunnel mode
NH_NONE = 59  # RFC 4303 §2.6: "no next header", a dummy packet for traffic flow confidentiality
_PAD = bytes(range(1, 256))  # RFC 4303 §2.4: padding bytes 1, 2, 3, ...
_HDR = struct.Struct("!II")
_SEQHI = struct.Struct("!I")
_IV64 = struct.Struct("!Q")
_HDR_IV = struct.Struct("!IIQ")  # SPI, sequence number, 8-byte IV
_HDR_HI = struct.Struct("!III")  # SPI, high and low 32 bits of an ESN sequence number (RFC 4106 §5's AAD)
_SPLIT_BIT = 1 << 63
_SEQ_MAX = (1 << 32) - 1  # RFC 4303 §3.3.3: the counter must not cycle
_SEQ_MAX_ESN = (1 << 64) - 1  # RFC 4303 §2.2.1: with ESN
_TRAILERS: dict[int, bytes] = {}  # (pad length << 8 | next header) -> padding || pad length || next header


def _trailer(pad_len: int, next_header: int) -> bytes:
    """Padding, pad length and next header (RFC 4303 §2.4-2.6), cached."""
    key = pad_len << 8 | next_header
    trailer = _TRAILERS.get(key)
    if trailer is None:
        trailer = _TRAILERS[key] = _PAD[:pad_len] + bytes((pad_len, next_header))
    return trailer


def seal(
    spi: int,
    seq: int,
    esn: bool,
    cipher: Any,
    auth: AuthTransform | None,
    inner: bytes,
    next_header: int,
    *,
    iv: bytes | None = None,
    iv_split: int | None = None,
) -> bytes:
    """The ESP packet carrying `inner`; `seq` is the full (64-bit with ESN) sequence number."""
    header = _HDR.pack(spi, seq & 0xFFFFFFFF)
    # RFC 4303 §2.4 padding (the fewest bytes aligning inner + 2), the trailer cached: this is the per-packet
    # hot path. Every transform's block is at least ESP's 4 bytes (tests/core/test_algorithms.py checks it).
    payload = inner + _trailer((-(len(inner) + 2)) % cipher.block, next_header)
    if iv is None:
        if auth is None or cipher.counter_iv:  # AEAD transforms always use the counter
            # RFC 4106 §3.1: the counter; the top bit set by `iv_split` keeps --duplex senders' IVs apart
            iv = _IV64.pack(seq | _SPLIT_BIT if iv_split else seq) if cipher.iv_len else b""
        else:
            iv = random_bytes(cipher.iv_len)
    if auth is None:  # AEAD, RFC 4106 §5 / RFC 7634 §2.1: AAD = SPI || [seq hi ||] seq lo
        aad = _HDR.pack(spi, seq >> 32) + _SEQHI.pack(seq & 0xFFFFFFFF) if esn else header
        sealed: bytes = cipher.seal(iv, payload, aad)
        return header + iv + sealed
    body: bytes = header + iv + cipher.encrypt(iv, payload)
    # RFC 4303 §2.8 and §3.3.2.1: with ESN the high 32 bits are appended for the ICV, not sent
    icv = auth.sign(body, _SEQHI.pack(seq >> 32)) if esn else auth.sign(body)
    return body + icv


def open_packet(
    packet: bytes, seq: int, esn: bool, cipher: Any, auth: AuthTransform | None
) -> tuple[bytes, int] | Drop:
    """(inner packet, next header) from an ESP packet whose full sequence number is `seq`, or a Drop."""
    iv_len = cipher.iv_len
    icv_len = cipher.icv_len if auth is None else auth.icv_len
    block = max(4, cipher.block)
    body_len = len(packet) - HEADER_LEN - iv_len - icv_len
    if body_len < 4 or body_len % block:
        return Drop.MALFORMED
    iv = packet[HEADER_LEN : HEADER_LEN + iv_len]
    if auth is None:
        aad = packet[:4] + _SEQHI.pack(seq >> 32) + packet[4:8] if esn else packet[:HEADER_LEN]
        plain = cipher.open(iv, packet[HEADER_LEN + iv_len :], aad)  # ciphertext and ICV, contiguous
        if plain is None:
            return Drop.AUTH_FAILED
    else:
        ct = packet[HEADER_LEN + iv_len : len(packet) - icv_len]
        icv = packet[len(packet) - icv_len :]
        signed = packet[: len(packet) - icv_len]
        ok = auth.verify(icv, signed, _SEQHI.pack(seq >> 32)) if esn else auth.verify(icv, signed)
        if not ok:
            return Drop.AUTH_FAILED
        plain = cipher.decrypt(iv, ct)
    pad_len = plain[-2]
    next_header = plain[-1]
    end = len(plain) - 2 - pad_len
    if end < 0 or plain[end : end + pad_len] != _PAD[:pad_len]:
        return Drop.BAD_PADDING
    return plain[:end], next_header


_AEAD16_OVERHEAD = HEADER_LEN + 8 + 16  # ESP header, 8-byte IV (RFC 4106 §3.1, RFC 7634 §2), 16-byte ICV


def seal_aead16(
    spi: int, seq: int, iv_split: int | None, encrypt: Callable[[bytes, bytes, bytes], bytes], salt: bytes,
    inner: bytes, next_header: int,
) -> bytes:  # fmt: skip
    """`seal` for the common case, made fast: an AEAD with an 8-byte counter IV and a 16-byte ICV, no ESN;
    `encrypt(nonce, plaintext, aad)` is the library's bound method."""
    header = _HDR.pack(spi, seq)
    trailer = _trailer(-(len(inner) + 2) & 3, next_header)  # RFC 4303 §2.4: ESP's 4-byte alignment
    iv = _IV64.pack(seq | _SPLIT_BIT if iv_split else seq)  # RFC 4106 §3.1: the counter
    return header + iv + encrypt(salt + iv, inner + trailer, header)


def seal_aead16_esn(
    spi: int, seq: int, iv_split: int | None, encrypt: Callable[[bytes, bytes, bytes], bytes], salt: bytes,
    inner: bytes, next_header: int,
) -> bytes:  # fmt: skip
    """`seal_aead16` with ESN: `seq` the full 64-bit sequence number, its low 32 bits in the header, the AAD
    SPI || high 32 bits || low 32 bits (RFC 4106 §5, RFC 7634 §2.1); the same packet as `seal` with ESN."""
    if not 0 <= seq <= (_SEQ_MAX_ESN >> 1 if iv_split else _SEQ_MAX_ESN):  # as the C seal_aead16_one
        raise ValueError("seal_aead16_one: SPI, sequence number or next header out of range")
    aad = _HDR_HI.pack(spi, seq >> 32, seq & 0xFFFFFFFF)
    trailer = _trailer(-(len(inner) + 2) & 3, next_header)  # RFC 4303 §2.4: ESP's 4-byte alignment
    iv = _IV64.pack(seq | _SPLIT_BIT if iv_split else seq)  # RFC 4106 §3.1: the counter
    return aad[:4] + aad[8:] + iv + encrypt(salt + iv, inner + trailer, aad)


def aead16_trailer(inner_len: int, next_header: int) -> bytes:
    """The trailer `seal_aead16` puts after an inner packet of `inner_len` bytes (RFC 4303 §2.4-2.6)."""
    return _trailer(-(inner_len + 2) & 3, next_header)


def block_trailer(inner_len: int, next_header: int, block: int) -> bytes:
    """The trailer `seal` puts after an inner packet of `inner_len` bytes for a cipher of block `block`
    (RFC 4303 §2.4-2.6: the fewest padding bytes aligning inner + 2)."""
    return _trailer(-(inner_len + 2) % block, next_header)


def seal_rows(
    spi: int, first_seq: int, iv_split: int | None, encrypt: Callable[[bytes, Any, bytes], bytes],
    salt: bytes, rows: Any, encrypt_into: Callable[[bytes, Any, Any, Any], int] | None = None,
    esn: bool = False,
) -> list[bytes]:  # fmt: skip
    """`seal_aead16` for many inner packets at once, each already followed by its `aead16_trailer`: the
    rows of a C-contiguous 2-D byte array (NumPy), sealed with sequence numbers `first_seq` on (with `esn`,
    the full 64-bit numbers, each row's AAD with its own high 32 bits: RFC 4106 §5, RFC 7634 §2.1). With
    the library's `encrypt_into` (`encrypt` writing into a buffer), the loop runs in C (core/_framing.c)."""
    count, width = rows.shape
    if encrypt_into is not None and _native is not None and count:
        return _native.seal_rows_aead(encrypt_into, spi, first_seq, bool(iv_split), salt, rows, width, esn)
    top = (_SEQ_MAX_ESN >> 1 if iv_split else _SEQ_MAX_ESN) if esn else _SEQ_MAX  # as the C loop
    if count and not 0 <= first_seq <= first_seq + count - 1 <= top:
        raise ValueError("seal_rows_aead: rows, SPI or sequence numbers out of range")
    flat = memoryview(rows).cast("B")
    pack, hi = _HDR_IV.pack, _SEQHI.pack
    split = _SPLIT_BIT if iv_split else 0
    out: list[bytes] = []
    append = out.append
    for i in range(count):
        seq = first_seq + i
        head = pack(spi, seq & 0xFFFFFFFF, seq | split)  # RFC 4106 §3.1: the IV is the counter
        aad = head[:4] + hi(seq >> 32) + head[4:8] if esn else head[:8]  # RFC 4106 §5
        append(head + encrypt(salt + head[8:], flat[i * width : (i + 1) * width], aad))
    return out


def seal_cbc(
    spi: int, seq: int, cipher: Any, auth: AuthTransform, inner: bytes, next_header: int, esn: bool = False
) -> bytes:
    """`seal` for a CBC cipher with an HMAC, made fast: the same packet as `seal` given the IV this one
    draws (`cipher.encrypt_fresh`: random and unpredictable, RFC 3602 §2)."""
    trailer = _trailer(-(len(inner) + 2) % cipher.block, next_header)
    body: bytes = _HDR.pack(spi, seq & 0xFFFFFFFF) + cipher.encrypt_fresh(inner, trailer)
    h = auth.start()
    h.update(body)  # RFC 4303 §2.8: the ICV over header, IV and ciphertext ...
    if esn:
        h.update(_SEQHI.pack(seq >> 32))  # ... and with ESN the high 32 bits, not sent (§3.3.2.1)
    return body + h.finalize()[: auth.icv_len]


def seal_rows_cbc(
    spi: int, first_seq: int, cipher: Any, auth: AuthTransform, rows: Any, esn: bool = False
) -> list[bytes]:
    """`seal_cbc` for many inner packets at once, each already followed by its `block_trailer`: the rows
    of a C-contiguous 2-D byte array (NumPy), sealed with sequence numbers `first_seq` on (with `esn`, the
    full 64-bit numbers: each row's ICV covers its own high 32 bits, also where the rows cross a multiple
    of 2^32), each with its own fresh IV, all encrypted in one call (`cipher.encrypt_fresh_rows`)."""
    count, width = rows.shape
    step = cipher.iv_len + width
    sealed = cipher.encrypt_fresh_rows(rows)  # per row: IV || ciphertext
    start, icv_len, pack = auth.start, auth.icv_len, _HDR.pack
    if _native is not None:  # the same loop in C (core/_framing.c), the HMAC calls the same
        return _native.seal_rows_cbc(start, icv_len, spi, first_seq, sealed, step, esn)
    if count and not 0 <= first_seq <= first_seq + count - 1 <= (_SEQ_MAX_ESN if esn else _SEQ_MAX):
        raise ValueError("seal_rows_cbc: sequence numbers out of range")  # as the C loop
    out: list[bytes] = []
    append = out.append
    for i in range(count):
        seq = first_seq + i
        body = pack(spi, seq & 0xFFFFFFFF) + sealed[i * step : (i + 1) * step]
        h = start()
        h.update(body)  # RFC 4303 §2.8: the ICV over header, IV and ciphertext ...
        if esn:
            h.update(_SEQHI.pack(seq >> 32))  # ... and with ESN the high 32 bits, not sent (§3.3.2.1)
        append(body + h.finalize()[:icv_len])
    return out


def open_aead16(
    packet: bytes, decrypt: Callable[[bytes, bytes, bytes], bytes], salt: bytes
) -> tuple[bytes, int] | Drop:
    """`open_packet` for the case `seal_aead16` seals; `decrypt` raises InvalidTag for a bad ICV."""
    body_len = len(packet) - _AEAD16_OVERHEAD
    if body_len < 4 or body_len & 3:
        return Drop.MALFORMED
    try:  # RFC 4106 §5 / RFC 7634 §2.1: nonce = salt || IV, AAD = SPI || sequence number
        plain = decrypt(salt + packet[8:16], packet[16:], packet[:8])
    except InvalidTag:
        return Drop.AUTH_FAILED
    return _unpadded(plain)


def _unpadded(plain: bytes) -> tuple[bytes, int] | Drop:
    """(payload, next header) of a decrypted ESP payload whose trailer is valid (RFC 4303 §2.4-2.6)."""
    pad_len = plain[-2]
    end = len(plain) - 2 - pad_len
    if end < 0 or plain[end : end + pad_len] != _PAD[:pad_len]:
        return Drop.BAD_PADDING
    return plain[:end], plain[-1]


# Per pad length, the whole trailer of a tunnel-mode payload carrying IPv4 or IPv6 (RFC 4303 §2.4-2.6).
_TAILS_V4 = [_PAD[:n] + bytes((n, NH_IPV4)) for n in range(256)]
_TAILS_V6 = [_PAD[:n] + bytes((n, NH_IPV6)) for n in range(256)]
# The same by the trailer's whole length (pad length + 2)
_ENDS_V4 = {n + 2: tail for n, tail in enumerate(_TAILS_V4)}
_ENDS_V6 = {n + 2: tail for n, tail in enumerate(_TAILS_V6)}


def open_aead16_many(
    packets: list[bytes], decrypt: Callable[[bytes, bytes, bytes], bytes], salt: bytes,
    decrypt_into: Callable[[bytes, Any, Any, Any], int] | None = None,
) -> tuple[list[bytes | tuple[bytes, int] | Drop], int]:  # fmt: skip
    """`open_aead16` of each packet, in order, except that a whole inner IP packet comes as its bytes
    alone: IPv4 without options or IPv6, named by the next header, its IP length exactly what precedes
    the trailer (the next header is then 4 or 41 by its IP version). Also returns how many results are
    not such bytes (drops, anything else). With the library's `decrypt_into` (`decrypt` writing into a
    buffer), the loop runs in C (core/_framing.c)."""
    if decrypt_into is not None and _native is not None:
        done = _native.open_aead16_many(
            decrypt_into, salt, packets, InvalidTag, Drop.MALFORMED, Drop.AUTH_FAILED, _unpadded
        )
        if done is not None:
            return done
    out: list[bytes | tuple[bytes, int] | Drop] = []
    append = out.append
    others = 0
    v4, v6 = _ENDS_V4, _ENDS_V6
    whole = _native.whole_inner if _native is not None else None
    for packet in packets:
        body_len = len(packet) - _AEAD16_OVERHEAD
        if body_len < 4 or body_len & 3:
            append(Drop.MALFORMED)
            others += 1
            continue
        try:  # as in open_aead16
            plain = decrypt(salt + packet[8:16], packet[16:], packet[:8])
        except InvalidTag:
            append(Drop.AUTH_FAILED)
            others += 1
            continue
        if whole is not None:  # the same test in C (core/_framing.c)
            inner = whole(plain, 0)
            if inner is not None:
                append(inner)
            else:
                append(_unpadded(plain))
                others += 1
            continue
        # The IP length says where the trailer starts; what follows must be exactly the trailer whose
        # padding fills the rest (the same test as reading the pad length first, with fewer steps).
        first = plain[0]
        if first == 0x45:  # RFC 791: version 4 and a 20-byte header, the total length at octets 2-3
            end = plain[2] << 8 | plain[3]
            if end >= 20 and plain[end:] == v4.get(len(plain) - end):
                append(plain[:end])
                continue
        elif first >> 4 == 6 and len(plain) >= 42:  # RFC 8200: the payload length (after 40) at 4-5
            end = 40 + (plain[4] << 8 | plain[5])
            if plain[end:] == v6.get(len(plain) - end):
                append(plain[:end])
                continue
        append(_unpadded(plain))
        others += 1
    return out, others


def open_cbc_many(
    packets: list[bytes], cipher: Any, auth: AuthTransform, seq_hi: int | None = None
) -> tuple[list[bytes | tuple[bytes, int] | Drop], int]:
    """`open_packet` of each packet, in order, for a CBC cipher (a random IV of one block, RFC 3602) with
    an HMAC, except that a whole inner IP packet comes as its bytes alone, as `open_aead16_many` gives
    them; and how many results are not such bytes. `seq_hi`: with ESN, the high 32 bits of every
    packet's sequence number (RFC 4303 §2.2.1), which the ICV covers; None: no ESN. The ICV is verified
    (constant-time) before anything is decrypted."""
    out: list[bytes | tuple[bytes, int] | Drop] = []
    append = out.append
    others = 0
    v4, v6 = _TAILS_V4, _TAILS_V6
    icv_len, block = auth.icv_len, cipher.block
    overhead = HEADER_LEN + cipher.iv_len + icv_len
    start, decrypt = auth.start, cipher.decrypt_joined
    hi = None if seq_hi is None else _SEQHI.pack(seq_hi)  # RFC 4303 §2.2.1: in the ICV, never sent
    if _native is not None:  # the same loop in C (core/_framing.c), the HMAC and AES calls the same
        done = _native.open_cbc_many(
            start, icv_len, decrypt, block, packets, Drop.MALFORMED, Drop.AUTH_FAILED, _unpadded,
            -1 if seq_hi is None else seq_hi,
        )  # fmt: skip
        if done is not None:
            return done
    whole = _native.whole_inner if _native is not None else None
    at = block  # the plaintext's start in what `decrypt_joined` gives
    for packet in packets:
        body_len = len(packet) - overhead
        if body_len < 4 or body_len % block:
            append(Drop.MALFORMED)
            others += 1
            continue
        icv_at = len(packet) - icv_len
        signed = packet[:icv_at]
        h = start()
        h.update(signed)
        if hi is not None:
            h.update(hi)
        if not compare_digest(h.finalize()[:icv_len], packet[icv_at:]):  # RFC 4303 §3.4.4: the ICV first
            append(Drop.AUTH_FAILED)
            others += 1
            continue
        plain = decrypt(signed[HEADER_LEN:])  # one block of no meaning, then the plaintext
        if whole is not None:  # the same test in C (core/_framing.c)
            inner = whole(plain, at)
            if inner is not None:
                append(inner)
            else:
                append(_unpadded(plain[at:]))
                others += 1
            continue
        pad_len = plain[-2]
        end = len(plain) - 2 - pad_len
        first = plain[at]
        if (  # as in open_aead16_many, the plaintext from `at`
            first == 0x45
            and end >= at + 20
            and plain.endswith(v4[pad_len])
            and plain[at + 2] << 8 | plain[at + 3] == end - at
        ) or (
            first >> 4 == 6
            and end >= at + 40
            and plain.endswith(v6[pad_len])
            and 40 + (plain[at + 4] << 8 | plain[at + 5]) == end - at
        ):
            append(plain[at:end])
            continue
        append(_unpadded(plain[at:]))
        others += 1
    return out, others
