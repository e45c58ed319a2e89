"""core/_framing.c against the pure-Python path it replaces (core/tso.py, core/gro.py): the same bytes,
the same refusals, for good and bad input; and the extension present where the build must give it."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ipsec_tunnel.core import esp, framing, gro, gso, sa, tso
from ipsec_tunnel.core.gso import OffloadError, VnetHeader
from tests.core.test_gso import _segment, one_flow, v4_tcp, v6_tcp
from tests.core.test_gso import tso as make_tso

ext = framing.available
needs_ext = pytest.mark.skipif(ext is None, reason="the C extension is not built (IPSEC_REQUIRE_EXT=1 fails)")


def test_the_extension_is_there_when_required() -> None:
    """`make test` sets IPSEC_REQUIRE_EXT=1: a build without the extension must not pass for one with it."""
    if os.environ.get("IPSEC_REQUIRE_EXT") != "1":
        pytest.skip("IPSEC_REQUIRE_EXT is not 1")
    assert ext is not None, "ipsec_tunnel.core._framing is not importable: run `make venv` (gcc, python3-dev)"
    if os.environ.get("IPSEC_TUNNEL_PURE") != "1":
        assert framing.native is ext and framing.NAME == "C extension"


@pytest.fixture(params=["pure", "C"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test once with the pure-Python framing and once with the C extension."""
    if request.param == "C" and ext is None:
        pytest.skip("the C extension is not built")
    native = ext if request.param == "C" else None
    monkeypatch.setattr(tso, "_native", native)
    monkeypatch.setattr(gro, "_native", native)
    yield request.param


def _both(monkeypatch: pytest.MonkeyPatch, call: Any, *args: object) -> tuple[Any, Any]:
    """`call(*args)` with the pure-Python framing, then with C: each result, or the exception's type."""
    results = []
    for native in (None, ext):
        monkeypatch.setattr(tso, "_native", native)
        monkeypatch.setattr(gro, "_native", native)
        try:
            results.append(call(*args))
        except (OffloadError, ValueError) as error:
            results.append(type(error))
    return results[0], results[1]


def _tail(size: int) -> bytes:
    return bytes([0xA0, size & 0xFF]) + bytes(size % 5)


def _flat(groups: Any) -> list[tuple[bytes, int, int]] | type:
    if isinstance(groups, type):
        return groups
    return [(rows.tobytes(), rows.shape[0], size) for rows, size in groups]


# -- TSO: tcp_rows ---------------------------------------------------------------------------------------


@needs_ext
@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([v4_tcp, v6_tcp]),
    st.integers(1, 1448),
    st.integers(0, 30000),
    st.sampled_from(["A", "PA", "FA", "CA", "FPA", "CEA"]),
    st.integers(0, 0xFFFFFFFF),
)
def test_rows_in_c_are_the_pure_rows(make: object, mss: int, size: int, flags: str, seq: int) -> None:
    packet, offload = make_tso(make(os.urandom(size), flags=flags, seq=seq), mss)  # type: ignore[operator]
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, tso.tcp_rows, packet, offload, _tail)
    assert _flat(native) == _flat(pure)
    groups = native if not isinstance(native, type) else []
    segments = [row.tobytes()[:inner] for rows, inner in groups for row in rows]
    assert segments == gso.split(packet, offload)


@needs_ext
def test_rows_in_c_wrap_identification_and_sequence() -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(7000), ident=0xFFFE, seq=0xFFFFF000), 1000)
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, tso.tcp_rows, packet, offload, _tail)
    assert _flat(native) == _flat(pure)


@needs_ext
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_rows_of_damaged_super_packets_agree(data: st.DataObject) -> None:
    """Bytes changed anywhere in the headers, or the packet cut short: the same rows or the same refusal."""
    make = data.draw(st.sampled_from([v4_tcp, v6_tcp]))
    packet, offload = make_tso(
        make(os.urandom(data.draw(st.integers(0, 6000)))), data.draw(st.integers(1, 1500))
    )
    raw = bytearray(packet)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, min(len(raw), 80) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    if data.draw(st.booleans()):
        offload = offload._replace(gso_size=data.draw(st.integers(0, 70000)))
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, tso.tcp_rows, bytes(raw), offload, _tail)
    assert _flat(native) == _flat(pure)


@needs_ext
@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=200),
    st.lists(st.integers(-5, 300), min_size=6, max_size=6),
    st.binary(max_size=20),
)
def test_c_rows_never_read_beyond_the_packet(packet: bytes, numbers: list[int], trailer: bytes) -> None:
    """Any arguments: rows whose every byte comes from the packet and the trailer, or ValueError."""
    assert ext is not None
    l4, hl, end, mss, lo, hi = numbers
    try:
        out = ext.tcp_rows(packet, l4, hl, end, mss, lo, hi, trailer)
    except ValueError:
        return
    assert l4 >= 20 and l4 + 20 <= hl <= end <= len(packet) and 0 <= lo < hi and mss < end - hl
    width, rest = divmod(len(out), hi - lo)
    assert rest == 0 and 1 <= width - len(trailer) - hl <= mss


# -- GRO: coalesce ---------------------------------------------------------------------------------------


@needs_ext
@settings(max_examples=200, deadline=None)
@given(one_flow())
def test_coalesce_in_c_is_the_pure_coalesce(segments: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, gro.coalesce, segments)
    assert native == pure
    lengths = np.fromiter(map(len, segments), np.int64, len(segments))
    run = None if (lengths & 1).any() else gro._coalesce_run(segments, lengths, b"".join(segments))
    assert ext is not None
    assert ext.coalesce_run(segments, gso.NO_OFFLOAD, gro._run_offload) == run


@needs_ext
@settings(max_examples=300, deadline=None)
@given(one_flow(), st.data())
def test_coalesce_of_damaged_batches_agrees(segments: list[bytes], data: st.DataObject) -> None:
    """Header or payload bytes changed, packets cut short or emptied: the same packets out, in order."""
    for _ in range(data.draw(st.integers(1, 3))):
        which = data.draw(st.integers(0, len(segments) - 1))
        raw = bytearray(segments[which])
        if raw and data.draw(st.booleans()):
            raw[data.draw(st.integers(0, min(len(raw), 60) - 1))] = data.draw(st.integers(0, 255))
        else:
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        segments[which] = bytes(raw)
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, gro.coalesce, segments)
    assert native == pure


@needs_ext
def test_seeded_bulk_batches_agree() -> None:
    """Bulk-transfer-like batches (PSH, short segments, new timestamps, a window update, 64 KiB cuts)."""
    rng = random.Random(13)
    for _ in range(150):
        mss = rng.choice([536, 1000, 1386, 1448])
        segments, seq = [], rng.randrange(1 << 32)
        for i in range(rng.randrange(8, 200)):
            size = mss if rng.random() > 0.03 else rng.randrange(1, mss // 2) * 2
            window = 500 if rng.random() > 0.02 else 501
            segments.append(
                _segment(seq, size, psh=rng.random() < 0.02, ident=i, window=window, tsval=i // 40)
            )
            seq += size
        with pytest.MonkeyPatch.context() as mp:
            pure, native = _both(mp, gro.coalesce, segments)
        assert native == pure


@needs_ext
def test_c_coalesce_declines_what_is_not_bytes_or_not_a_run() -> None:
    assert ext is not None
    segments = [_segment(1000 + 1000 * i, 1000, psh=False, ident=i) for i in range(10)]
    others: Any = [bytearray(s) for s in segments]
    assert ext.coalesce_run(others, gso.NO_OFFLOAD, gro._run_offload) is None
    assert ext.coalesce_run(segments[:1], gso.NO_OFFLOAD, gro._run_offload) is None
    assert ext.coalesce_run([b"", *segments], gso.NO_OFFLOAD, gro._run_offload) is None
    run = ext.coalesce_run(segments, gso.NO_OFFLOAD, gro._run_offload)
    assert run is not None
    [(offload, merged)] = run
    assert offload == VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1000, 20, 16)
    assert gso.split(merged, offload) == segments


def test_each_implementation_round_trips(impl: str) -> None:
    """Under either implementation: cut, then joined, gives the super-packet back (IPv4 and IPv6)."""
    for make in (v4_tcp, v6_tcp):
        packet, offload = make_tso(make(os.urandom(20000)), 1386)
        rows = tso.tcp_rows(packet, offload, _tail)
        segments = [row.tobytes()[:inner] for group, inner in rows for row in group]
        assert segments == gso.split(packet, offload)
        joined = gro.coalesce(segments)
        assert [s for o, p in joined for s in gso.split(p, o)] == segments
        assert len(joined) == 1 and joined[0][1][:2] == packet[:2]


# -- ESP: the inner packet of a decrypted payload ----------------------------------------------------------


class _Hmac:
    def update(self, data: bytes) -> None:
        pass

    def finalize(self) -> bytes:
        return bytes(32)


class _FakeAuth:
    """An HMAC whose ICV is always zeros (the packets below carry zeros)."""

    icv_len = 16

    def start(self) -> _Hmac:
        return _Hmac()


class _FakeCbc:
    """A CBC cipher whose decryption gives `plain` whatever the ciphertext."""

    block = iv_len = 16

    def __init__(self, plain: bytes) -> None:
        self.plain = plain

    def decrypt_joined(self, data: bytes) -> bytes:
        return self.plain


def _trailered(inner: bytes, pad: int, nh: int) -> bytes:
    return inner + bytes(range(1, pad + 1)) + bytes((pad, nh))


@st.composite
def plaintexts(draw: st.DrawFn) -> bytes:
    """Decrypted payloads: whole IPv4/IPv6 packets with good or spoilt trailers and lengths, or noise."""
    kind = draw(st.sampled_from(["v4", "v6", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=90))
    body = draw(st.binary(min_size=0, max_size=60))
    if kind == "v4":
        inner = bytes([0x45, 0]) + (20 + len(body)).to_bytes(2, "big") + bytes(16) + body
        nh = 4
    else:
        inner = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes(34) + body
        nh = 41
    plain = bytearray(_trailered(inner, draw(st.integers(0, 20)), draw(st.sampled_from([nh, 4, 41, 59]))))
    if draw(st.booleans()):  # spoil a byte: the length, the padding, the header
        plain[draw(st.integers(0, len(plain) - 1))] = draw(st.integers(0, 255))
    return bytes(plain)


@needs_ext
@settings(max_examples=400, deadline=None)
@given(plaintexts(), st.sampled_from([0, 16]))
def test_whole_inner_in_c_is_the_python_test(plain: bytes, at: int) -> None:
    """open_aead16_many (AEAD, the payload from 0) and open_cbc_many (from one IV block on): the same
    results and count of others under either implementation, for any decrypted payload (of at least
    the 4 bytes a packet that passes the length checks decrypts to)."""
    assume(len(plain) >= 4)
    if at:
        plain = bytes(16) + plain
        packet = bytes(8 + 16 + 16 * max(1, -(-len(plain) // 16)) + 16)
        auth: Any = _FakeAuth()
        call: Any = lambda: esp.open_cbc_many([packet], _FakeCbc(plain), auth)  # noqa: E731
    else:
        packet = bytes(32 + 4)
        call = lambda: esp.open_aead16_many([packet], lambda n, d, a: plain, b"salt")  # noqa: E731
    results = []
    for native in (None, ext):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(esp, "_native", native)
            results.append(call())
    assert results[1] == results[0]


@needs_ext
def test_whole_inner_in_c_takes_whole_packets_only() -> None:
    assert ext is not None
    v4 = bytes([0x45, 0, 0, 24]) + bytes(20)
    assert ext.whole_inner(_trailered(v4, 2, 4), 0) == v4
    assert ext.whole_inner(_trailered(v4, 2, 41), 0) is None  # the next header says IPv6
    assert ext.whole_inner(_trailered(v4, 2, 4)[:-3] + b"\x09\x02\x04", 0) is None  # bad padding
    assert ext.whole_inner(b"\x00" * 16 + _trailered(v4, 0, 4), 16) == v4
    assert ext.whole_inner(b"", 0) is None and ext.whole_inner(b"\x45", -1) is None


@needs_ext
@pytest.mark.parametrize("mss", [536, 1000, 1447])
def test_rows_in_c_with_ipv4_options_are_the_pure_rows(mss: int) -> None:
    """An IPv4 header with options (24 bytes): its checksum in every row covers them, in C as in Python."""
    packet, offload = make_tso(v4_tcp(os.urandom(9000)), mss)
    raw = bytearray(packet[:20] + b"\x01\x01\x01\x00" + packet[20:])  # NOP, NOP, NOP, end of options
    raw[0] = 0x46
    raw[2:4] = (len(raw)).to_bytes(2, "big")
    offload = offload._replace(hdr_len=offload.hdr_len + 4, csum_start=24)
    with pytest.MonkeyPatch.context() as mp:
        pure, native = _both(mp, tso.tcp_rows, bytes(raw), offload, _tail)
    assert not isinstance(pure, type) and _flat(native) == _flat(pure)
    segments = [row.tobytes()[:inner] for rows, inner in native for row in rows]
    assert segments == gso.split(bytes(raw), offload) and segments[0][:1] == b"\x46"
    assert all(gso.checksum(s[:24]) == 0 for s in segments)


# -- SA: a received batch's sequence numbers ---------------------------------------------------------------


@st.composite
def esp_batches(draw: st.DrawFn) -> list[bytes]:
    """ESP headers in a row, from anywhere (near 2^32 too), a few spoilt: a gap, a repeat, a short one."""
    first = draw(st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0xFFFFFFF0, 0xFFFFFFFF)))
    count = draw(st.integers(0, 20))
    packets = [struct.pack("!II", 0x1000, (first + i) & 0xFFFFFFFF) + b"x" * 8 for i in range(count)]
    spoil = draw(st.booleans())
    if packets and spoil:
        which = draw(st.integers(0, count - 1))
        repeat = packets[which][:4] + packets[0][4:8]
        packets[which] = draw(st.one_of(st.binary(max_size=12), st.just(repeat)))
    return packets


@needs_ext
@settings(max_examples=500, deadline=None)
@given(esp_batches())
def test_in_order_in_c_is_the_python_check(packets: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sa, "_native", None)
        expected = sa._in_order(packets)
    assert ext is not None
    assert ext.in_order(packets) == expected
    others: Any = [bytearray(p) for p in packets]
    assert ext.in_order(others) is None or not packets  # not bytes: the Python code decides


@st.composite
def inner_packets(draw: st.DrawFn) -> bytes:
    """What a tunnel device may hand over: IPv4 (with or without options), IPv6, anything else, with an
    IP length that may lie, cut short or followed by more bytes."""
    first = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F, 0x00, 0x50]))
    body = bytearray(draw(st.binary(min_size=0, max_size=120)))
    packet = bytearray([first]) + body
    if len(packet) >= 6 and draw(st.booleans()):  # a length that tells the truth, or close to it
        size = len(packet) + draw(st.integers(-3, 3))
        if first >> 4 == 4:
            packet[2:4] = max(0, size).to_bytes(2, "big")
        else:
            packet[4:6] = max(0, size - 40).to_bytes(2, "big")
    return bytes(packet)


@needs_ext
@settings(max_examples=500, deadline=None)
@given(inner_packets())
def test_inner_head_in_c_is_the_python_one(packet: bytes) -> None:
    """core/lone.py's header read of a packet read alone: the same fields or the same refusal."""
    from ipsec_tunnel.core import lone

    assert ext is not None
    assert ext.inner_head(packet) == lone._inner_head(packet)


@needs_ext
def test_inner_head_in_c_reads_the_fields() -> None:
    assert ext is not None
    v4 = bytes([0x45, 0xB8, 0, 28, 0, 0, 0x40, 0, 9, 17]) + bytes(18)
    assert ext.inner_head(v4) == (28, 0xB8, 9, True, esp.NH_IPV4)
    assert ext.inner_head(v4 + b"more") == (28, 0xB8, 9, True, esp.NH_IPV4)  # the IP length says
    assert ext.inner_head(v4[:27]) is None  # shorter than its IP length
    v6 = bytes([0x6B, 0x80, 0, 0, 0, 4, 17, 3]) + bytes(32) + bytes(4)
    assert ext.inner_head(v6) == (44, 0xB8, 3, True, esp.NH_IPV6)
    assert ext.inner_head(b"\x46" + v4[1:]) is None and ext.inner_head(b"") is None
    with pytest.raises(TypeError):
        ext.inner_head(bytearray(v4))  # type: ignore[arg-type]


@st.composite
def spi_batches(draw: st.DrawFn) -> list[bytes]:
    """ESP datagrams that mostly share an SPI, some not, some shorter than the ESP header or the SPI."""
    spi = draw(st.sampled_from([b"\x00\x00\x10\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]))
    count = draw(st.integers(0, 6))
    packets = [spi + draw(st.binary(min_size=4, max_size=20)) for _ in range(count)]
    spoil: bool = draw(st.booleans())
    if packets and spoil:
        which = draw(st.integers(0, count - 1))
        packets[which] = draw(st.one_of(st.binary(max_size=12), st.just(b"\x00\x00\x10\x01" + bytes(8))))
    return packets


def _python_one_spi(datagrams: list[bytes]) -> bytes:
    """The SPI `receive._one_sa` takes a batch to share, by its own Python test (b"" when none)."""
    from ipsec_tunnel.core import receive

    class _Sad:
        def get(self, dst: bytes, src: bytes, spi: int) -> int:
            return spi

    class _Plane:
        sad = _Sad()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(receive, "_native", None)
        got: Any = receive._one_sa(_Plane(), b"", b"", datagrams)  # type: ignore[arg-type]
    return b"" if got is None else got.to_bytes(4, "big")


@needs_ext
@settings(max_examples=500, deadline=None)
@given(spi_batches())
def test_one_spi_in_c_is_the_python_test(datagrams: list[bytes]) -> None:
    """core/receive.py's test of one SPI for a batch: the same SPI, or none, in C (the non-ESP marker
    is refused after it, as before)."""
    assert ext is not None
    found = ext.one_spi(datagrams, esp.HEADER_LEN)
    expected = _python_one_spi(datagrams)
    assert (b"" if found == b"\x00\x00\x00\x00" else found) == expected
    assert ext.one_spi([bytearray(d) for d in datagrams], esp.HEADER_LEN) is None or not datagrams  # type: ignore[misc]


@needs_ext
def test_one_spi_in_c_reads_the_field() -> None:
    assert ext is not None
    a, b = b"\x00\x00\x10\x00" + bytes(8), b"\x00\x00\x10\x00" + b"\x01" * 20
    assert ext.one_spi([a, b], 8) == b"\x00\x00\x10\x00"
    assert ext.one_spi([a], 8) == b""  # one datagram: not a batch
    assert ext.one_spi([a, b[:7]], 8) == b""  # shorter than the ESP header
    assert ext.one_spi([a, b"\x00\x00\x10\x01" + bytes(8)], 8) == b""
    with pytest.raises(ValueError):
        ext.one_spi([a, b], 3)


def _tcp_test(p: bytes) -> bool:
    return len(p) > 9 and p[9 if p[0] >> 4 == 4 else 6] == 6


@needs_ext
@settings(max_examples=500, deadline=None)
@given(st.lists(inner_packets(), max_size=6), st.integers(-1, 7))
def test_all_tcp_in_c_is_the_python_test(packets: list[bytes], start: int) -> None:
    """daemon/dataplane.py _deliver_ahead's test of the packets not yet looked at."""
    assert ext is not None
    assert ext.all_tcp(packets, start) == all(_tcp_test(p) for p in packets[max(start, 0) :])
    v4_tcp_ = bytes([0x45]) + bytes(8) + b"\x06"
    v6_tcp_ = bytes([0x60]) + bytes(5) + b"\x06" + bytes(40)
    assert ext.all_tcp([v4_tcp_, v6_tcp_], 0) is True
    assert ext.all_tcp([v4_tcp_, v6_tcp_[:6]], 0) is False
    assert ext.all_tcp([bytes([0x45]) + bytes(8) + b"\x11", v4_tcp_], 1) is True  # from `start` on
    assert ext.all_tcp([v4_tcp_, bytearray(v4_tcp_)], 0) is None  # type: ignore[list-item]


@needs_ext
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1500), max_size=8), st.integers(0, 1500))
def test_small_ones_in_c_are_the_python_sizes(sizes: list[int], small: int) -> None:
    """daemon/readahead.py _take_raw's sizes of a recvmmsg batch: the ESP bytes and the small ones."""
    assert ext is not None
    got = [(b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02", 0, bytes(n)) for n in sizes]
    assert ext.small_ones(got, small) == (sum(sizes), [i for i, n in enumerate(sizes) if n <= small])
    assert ext.small_ones([*got, (b"", b"", 0)], small) is None  # type: ignore[list-item]
    assert ext.small_ones([*got, (b"", b"", 0, bytearray(1))], small) is None  # type: ignore[list-item]


@needs_ext
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([0, 1, 7, 100, 1400, 1401, 20000, 40000]), max_size=80),
    st.integers(1, 70),
    st.integers(1, 70000),
)
def test_gso_runs_in_c_are_the_python_runs(sizes: list[int], segments: int, most: int) -> None:
    """linux/udp.py _gso_groups: the same runs of datagrams a UDP GSO send carries, from C as from the
    Python loop, whatever the sizes, segment limit and byte limit."""
    from ipsec_tunnel.linux import udp

    assert ext is not None
    payloads = [bytes(n) for n in sizes]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(udp, "UDP_MAX_SEGMENTS", segments)
        mp.setattr(udp, "GSO_MAX_BYTES", most)
        mp.setattr(udp, "_native", None)
        expected = [(list(map(len, group)), size) for group, size in udp._gso_groups(payloads)]
        mp.setattr(udp, "_native", ext)
        got = [(list(map(len, group)), size) for group, size in udp._gso_groups(payloads)]
    assert got == expected
    assert sum(len(group) for group, _ in got) == len(payloads)
    assert ext.gso_runs([*payloads, bytearray(1)], segments, most) is None  # type: ignore[list-item]
    with pytest.raises(ValueError):
        ext.gso_runs(payloads, 0, most)


@needs_ext
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02"]),
            st.sampled_from([b"\xc6\x33\x64\x01"]),
            st.sampled_from([0, 2]),
            st.binary(max_size=12),
        ),
        max_size=8,
    )
)
def test_one_run_in_c_is_a_single_group_of_the_python_runs(
    datagrams: list[tuple[bytes, bytes, int, bytes]],
) -> None:
    """daemon/dataplane.py _receive_runs groups datagrams by (source, destination, TOS): `one_run` gives
    the ESP of the batch exactly when that makes one group, and in order."""
    import itertools

    assert ext is not None
    groups = [[d[3] for d in run] for _, run in itertools.groupby(datagrams, key=lambda d: d[:3])]
    got = ext.one_run(datagrams)
    assert got == (groups[0] if len(groups) == 1 else None)
    copies = [
        (bytes(bytearray(s)), bytes(bytearray(d)), t, e) for s, d, t, e in datagrams
    ]  # equal, not the same
    assert ext.one_run(copies) == got
    assert ext.one_run([*datagrams, (b"", b"", 0)]) is None  # type: ignore[list-item]
    assert ext.one_run([*datagrams, (b"", b"", 0.0, b"")]) is None  # type: ignore[list-item]
    assert ext.one_run([*datagrams, (bytearray(4), b"", 0, b"")]) is None  # type: ignore[list-item]
