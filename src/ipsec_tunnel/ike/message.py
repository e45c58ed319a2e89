"""IKEv2 message codec: header, payload chain and payload bodies (RFC 7296 §3).

Parsing is strict: every length is checked and any inconsistency raises `Malformed` (the caller counts a
drop); an unknown payload marked critical raises `UnsupportedCritical` (RFC 7296 §2.5). Encryption of
the SK payload lives in `crypto`; this module only splits and joins the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .constants import ATTR_KEY_LENGTH, ATTR_TV, HEADER_LEN, IKE_VERSION, Flag, Payload

_KNOWN = frozenset(int(p) for p in Payload) - {0}
MAX_MESSAGE = 65535  # the length field is 32 bits but no UDP datagram is larger


class Malformed(ValueError):
    """Bytes that are not a well-formed IKEv2 message; `args[0]` is the drop reason."""


class UnsupportedCritical(ValueError):
    """An unknown payload with the critical bit set (RFC 7296 §2.5); `ptype` is its type."""

    def __init__(self, ptype: int) -> None:
        super().__init__(f"unsupported critical payload {ptype}")
        self.ptype = ptype


@dataclass(frozen=True)
class Header:
    """The fixed IKE header, RFC 7296 §3.1."""

    spi_i: int
    spi_r: int
    next_payload: int
    exchange: int
    flags: int
    mid: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flag.INITIATOR)


_HDR = struct.Struct("!QQBBBBII")


def parse_header(data: bytes) -> Header:
    """The header of `data`; checks version and that the length field matches the datagram."""
    if len(data) < HEADER_LEN:
        raise Malformed("short")
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = _HDR.unpack_from(data)
    if version >> 4 != IKE_VERSION >> 4:
        raise Malformed("version")
    if length != len(data):
        raise Malformed("length")
    return Header(spi_i, spi_r, nxt, exchange, flags, mid, length)


def encode_header(
    spi_i: int, spi_r: int, next_payload: int, exchange: int, flags: int, mid: int, length: int
) -> bytes:
    """RFC 7296 §3.1 header bytes."""
    return _HDR.pack(spi_i, spi_r, next_payload, IKE_VERSION, exchange, flags, mid, length)


@dataclass(frozen=True)
class RawPayload:
    """One payload of a chain: its type, critical bit and body (without the generic header, §3.2)."""

    ptype: int
    critical: bool
    body: bytes


@dataclass(frozen=True)
class Chain:
    """A parsed payload chain; `sk` is the SK payload (always last, §3.14) with its offset in the buffer."""

    payloads: tuple[RawPayload, ...]
    sk: RawPayload | None = None
    sk_next: int = 0  # the SK payload's Next Payload field: the first inner payload's type
    sk_offset: int = 0


def parse_chain(data: bytes, first: int, offset: int = 0) -> Chain:
    """The payloads of `data[offset:]` starting with type `first` (RFC 7296 §3.2)."""
    payloads: list[RawPayload] = []
    nxt = first
    pos = offset
    while nxt != Payload.NONE:
        if len(data) - pos < 4:
            raise Malformed("truncated")
        following, flags, plen = struct.unpack_from("!BBH", data, pos)
        if plen < 4 or pos + plen > len(data):
            raise Malformed("payload_length")
        body = data[pos + 4 : pos + plen]
        critical = bool(flags & 0x80)
        if nxt == Payload.SK:
            if pos + plen != len(data):
                raise Malformed("sk_not_last")
            return Chain(tuple(payloads), RawPayload(nxt, critical, body), following, pos)
        if nxt in _KNOWN:
            payloads.append(RawPayload(nxt, critical, body))
        elif critical:
            raise UnsupportedCritical(nxt)
        pos += plen
        nxt = following
    if pos != len(data):
        raise Malformed("trailing")
    return Chain(tuple(payloads))


def encode_chain(payloads: Sequence[tuple[int, bytes]], last_next: int = Payload.NONE) -> tuple[int, bytes]:
    """(first type, bytes) of a chain of (type, body); the last payload's next is `last_next`."""
    out = bytearray()
    for i, (_ptype, body) in enumerate(payloads):
        nxt = payloads[i + 1][0] if i + 1 < len(payloads) else last_next
        out += struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
    first = payloads[0][0] if payloads else last_next
    return first, bytes(out)


def encode_message(
    spi_i: int, spi_r: int, exchange: int, flags: int, mid: int, payloads: Sequence[tuple[int, bytes]]
) -> bytes:
    """A whole unencrypted message."""
    first, chain = encode_chain(payloads)
    return encode_header(spi_i, spi_r, first, exchange, flags, mid, HEADER_LEN + len(chain)) + chain


# ---------------------------------------------------------------------------------------------------------
# SA payload, RFC 7296 §3.3


@dataclass(frozen=True)
class Transform:
    """One transform (§3.3.2); `key_len` from the Key Length attribute (§3.3.5), `bad_attr` if others."""

    ttype: int
    tid: int
    key_len: int | None = None
    bad_attr: bool = False


@dataclass(frozen=True)
class Proposal:
    """One proposal substructure (§3.3.1)."""

    num: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


def decode_sa(body: bytes) -> list[Proposal]:
    """The proposals of an SA payload body."""
    out: list[Proposal] = []
    pos = 0
    last = 2
    while last == 2:
        if len(body) - pos < 8:
            raise Malformed("sa")
        last, _r, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, pos)
        if last not in (0, 2) or plen < 8 + spi_size or pos + plen > len(body):
            raise Malformed("sa")
        spi = body[pos + 8 : pos + 8 + spi_size]
        transforms = _decode_transforms(body[pos + 8 + spi_size : pos + plen], ntrans)
        out.append(Proposal(num, proto, spi, tuple(transforms)))
        pos += plen
    if pos != len(body):
        raise Malformed("sa")
    return out


def _decode_transforms(data: bytes, count: int) -> list[Transform]:
    out: list[Transform] = []
    pos = 0
    for i in range(count):
        if len(data) - pos < 8:
            raise Malformed("transform")
        last, _r, tlen, ttype, _r2, tid = struct.unpack_from("!BBHBBH", data, pos)
        if last != (0 if i == count - 1 else 3) or tlen < 8 or pos + tlen > len(data):
            raise Malformed("transform")
        key_len: int | None = None
        bad = False
        apos = pos + 8
        while apos < pos + tlen:
            if pos + tlen - apos < 4:
                raise Malformed("attribute")
            atype, aval = struct.unpack_from("!HH", data, apos)
            if atype & ATTR_TV:
                apos += 4
                if atype & 0x7FFF == ATTR_KEY_LENGTH:
                    key_len = aval
                else:
                    bad = True
            else:  # TLV: aval is the length (§3.3.5)
                if apos + 4 + aval > pos + tlen:
                    raise Malformed("attribute")
                apos += 4 + aval
                bad = True
        out.append(Transform(ttype, tid, key_len, bad))
        pos += tlen
    if pos != len(data):
        raise Malformed("transform")
    return out


def encode_sa(proposals: Sequence[Proposal]) -> bytes:
    """An SA payload body; proposal numbers are taken as given."""
    out = bytearray()
    for i, p in enumerate(proposals):
        tbytes = bytearray()
        for j, t in enumerate(p.transforms):
            attrs = b"" if t.key_len is None else struct.pack("!HH", ATTR_TV | ATTR_KEY_LENGTH, t.key_len)
            last = 0 if j == len(p.transforms) - 1 else 3
            tbytes += struct.pack("!BBHBBH", last, 0, 8 + len(attrs), t.ttype, 0, t.tid) + attrs
        last = 0 if i == len(proposals) - 1 else 2
        plen = 8 + len(p.spi) + len(tbytes)
        out += struct.pack("!BBHBBBB", last, 0, plen, p.num, p.protocol, len(p.spi), len(p.transforms))
        out += p.spi + tbytes
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------
# Small payloads


def decode_ke(body: bytes) -> tuple[int, bytes]:
    """(DH group, key data) of a KE payload, §3.4."""
    if len(body) < 5:
        raise Malformed("ke")
    group, _r = struct.unpack_from("!HH", body)
    return group, body[4:]


def encode_ke(group: int, data: bytes) -> bytes:
    return struct.pack("!HH", group, 0) + data


def decode_nonce(body: bytes) -> bytes:
    """Nonce data, §3.9: 16 to 256 octets."""
    if not 16 <= len(body) <= 256:
        raise Malformed("nonce")
    return body


def decode_id(body: bytes) -> tuple[int, bytes]:
    """(ID type, data) of an IDi/IDr payload, §3.5."""
    return _decode_typed(body, "id")


def encode_id(id_type: int, data: bytes) -> bytes:
    """An IDi/IDr payload body, §3.5."""
    return _encode_typed(id_type, data)


def decode_auth(body: bytes) -> tuple[int, bytes]:
    """(method, data) of an AUTH payload, §3.8."""
    return _decode_typed(body, "auth")


def encode_auth(method: int, data: bytes) -> bytes:
    """An AUTH payload body, §3.8."""
    return _encode_typed(method, data)


def _decode_typed(body: bytes, what: str) -> tuple[int, bytes]:
    """(type, data) of a body laid out as one type octet, three reserved and at least one of data (the ID
    payload, §3.5, and the AUTH payload, §3.8); Malformed(`what`) when shorter."""
    if len(body) < 5:
        raise Malformed(what)
    return body[0], body[4:]


def _encode_typed(kind: int, data: bytes) -> bytes:
    """A type octet, three reserved (zero) and `data`: the ID (§3.5) and AUTH (§3.8) payload bodies."""
    return bytes([kind, 0, 0, 0]) + data


@dataclass(frozen=True)
class NotifyPayload:
    """A Notify payload, §3.10."""

    protocol: int
    spi: bytes
    ntype: int
    data: bytes


def decode_notify(body: bytes) -> NotifyPayload:
    if len(body) < 4:
        raise Malformed("notify")
    proto, spi_size, ntype = struct.unpack_from("!BBH", body)
    if len(body) < 4 + spi_size:
        raise Malformed("notify")
    return NotifyPayload(proto, body[4 : 4 + spi_size], ntype, body[4 + spi_size :])


def encode_notify(ntype: int, data: bytes = b"", protocol: int = 0, spi: bytes = b"") -> bytes:
    return struct.pack("!BBH", protocol, len(spi), ntype) + spi + data


def decode_delete(body: bytes) -> tuple[int, list[bytes]]:
    """(protocol, SPIs) of a Delete payload, §3.11."""
    if len(body) < 4:
        raise Malformed("delete")
    proto, spi_size, count = struct.unpack_from("!BBH", body)
    if len(body) != 4 + spi_size * count or (proto == 1 and spi_size not in (0, 8)):
        raise Malformed("delete")
    return proto, [body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(count)]


def encode_delete(protocol: int, spis: Iterable[bytes] = ()) -> bytes:
    spis = list(spis)
    size = len(spis[0]) if spis else 0
    return struct.pack("!BBH", protocol, size, len(spis)) + b"".join(spis)


@dataclass(frozen=True)
class TrafficSelector:
    """One traffic selector, §3.13.1."""

    ts_type: int
    ip_proto: int
    start_port: int
    end_port: int
    start: bytes
    end: bytes


def decode_ts(body: bytes) -> list[TrafficSelector]:
    """The selectors of a TSi/TSr payload, §3.13; unknown selector types are skipped."""
    if len(body) < 4:
        raise Malformed("ts")
    count = body[0]
    out: list[TrafficSelector] = []
    pos = 4
    for _ in range(count):
        if len(body) - pos < 4:
            raise Malformed("ts")
        ts_type, proto, slen = struct.unpack_from("!BBH", body, pos)
        if slen < 8 or pos + slen > len(body):
            raise Malformed("ts")
        alen = {7: 4, 8: 16}.get(ts_type)
        if alen is not None:
            if slen != 8 + 2 * alen:
                raise Malformed("ts")
            sp, ep = struct.unpack_from("!HH", body, pos + 4)
            a = body[pos + 8 : pos + 8 + alen]
            b = body[pos + 8 + alen : pos + 8 + 2 * alen]
            out.append(TrafficSelector(ts_type, proto, sp, ep, a, b))
        pos += slen
    if pos != len(body):
        raise Malformed("ts")
    return out


def encode_ts(selectors: Sequence[TrafficSelector]) -> bytes:
    out = bytearray([len(selectors), 0, 0, 0])
    for ts in selectors:
        out += struct.pack(
            "!BBHHH", ts.ts_type, ts.ip_proto, 8 + 2 * len(ts.start), ts.start_port, ts.end_port
        )
        out += ts.start + ts.end
    return bytes(out)
