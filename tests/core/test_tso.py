"""core/tso.py and the send pipeline's rows branch (`send._rows`): TCP super-packets segmented into rows and
sealed many at a time give byte for byte what `gso.split` and `send_batch` give, packet by packet."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers import ipsec as scapy_ipsec
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

from ipsec_tunnel.core import esp, gso, send, tso
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.gso import OffloadError, VnetHeader
from ipsec_tunnel.core.plane import Burst, Deliver
from ipsec_tunnel.core.sa import Limits
from ipsec_tunnel.core.seqstore import MemoryStore
from ipsec_tunnel.core.tunnel import Tunnel
from tests.core.test_engine import OUTER, Pair, make_pair
from tests.core.test_gso import tso as make_tso
from tests.core.test_gso import v4_tcp, v6_tcp


def _tail(size: int) -> bytes:
    return bytes([0xA0, size & 0xFF, size >> 8])


def _unrowed(groups: list[tso.Rows], tail: Callable[[int], bytes] = _tail) -> list[bytes]:
    out = []
    for rows, size in groups:
        for row in rows:
            whole = row.tobytes()
            assert whole[size:] == tail(size)
            out.append(whole[:size])
    return out


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from([v4_tcp, v6_tcp]),
    st.integers(1, 1448),
    st.integers(0, 40000),
    st.sampled_from(["A", "PA", "FA", "CA", "FPA"]),
    st.integers(0, 0xFFFFFFFF),
)
def test_rows_are_the_segments_split_makes(make: object, mss: int, size: int, flags: str, seq: int) -> None:
    packet, offload = make_tso(make(os.urandom(size), flags=flags, seq=seq), mss)  # type: ignore[operator]
    groups = tso.tcp_rows(packet, offload, _tail)
    assert _unrowed(groups) == gso.split(packet, offload)
    assert len(groups) <= 2 and all(rows.flags.c_contiguous for rows, _ in groups)


def test_ipv4_identification_wraps_in_rows_as_in_split() -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(5000), ident=0xFFFE), 1000)
    assert _unrowed(tso.tcp_rows(packet, offload, _tail)) == gso.split(packet, offload)


@pytest.mark.parametrize(
    "offload",
    [
        VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_UDP_L4, 28, 1000, 20, 6),  # not TCP
        VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV6, 52, 1000, 20, 16),  # the wrong IP version
        VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 0, 20, 16),  # gso_size 0
        VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1000, 24, 16),  # csum_start elsewhere
    ],
)
def test_rows_refuse_what_split_refuses(offload: VnetHeader) -> None:
    packet, _ = make_tso(v4_tcp(os.urandom(3000)), 1000)
    with pytest.raises(OffloadError):
        tso.tcp_rows(packet, offload, _tail)


# -- sealing --------------------------------------------------------------------------------------------


def _twins(outer: int = 4, cipher: str = "aes-gcm", **extra: object) -> tuple[Pair, Pair]:
    """Two identical pairs: one sends row by row, the other packet by packet."""
    return make_pair(outer, cipher, **extra), make_pair(outer, cipher, **extra)


def _one_by_one(pair: Pair, packet: bytes, offload: VnetHeader) -> list[bytes]:
    out = pair.a.send_batch("t0", gso.split(packet, offload), 1.0)
    return [p for burst in out if isinstance(burst, Burst) for p in burst.payloads]


def _rows(pair: Pair, packet: bytes, offload: VnetHeader) -> Burst | None:
    """The rows branch of the send pipeline's cut stage alone, for super-packet `packet` read on t0."""
    tunnel = _tunnel(pair)
    return send._rows(pair.a, "t0", tunnel, pair.a.sa_for(tunnel), packet, offload, 1.0, [], [])


@pytest.mark.parametrize("cipher", ["aes-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("make", [v4_tcp, v6_tcp])
@pytest.mark.parametrize("outer", [4, 6])
def test_rows_seals_what_send_batch_seals(cipher: str, make: object, outer: int) -> None:
    rows_pair, plain_pair = _twins(outer, cipher)
    for round_ in range(3):  # the sequence numbers go on from one super-packet to the next
        packet, offload = make_tso(make(os.urandom(20000 + 777 * round_), flags="PA"), 1386)  # type: ignore[operator]
        burst = _rows(rows_pair, packet, offload)
        assert isinstance(burst, Burst)
        assert burst.payloads == _one_by_one(plain_pair, packet, offload)
        deliver, rejects = rows_pair.b.receive_batch(burst.src, burst.dst, burst.payloads, 1.0)
        assert not rejects and deliver == {"t0": gso.split(packet, offload)}
    a, b = rows_pair.a, plain_pair.a
    assert (a.tx_accepted, a.stats_for("t0").tx_packets, a.stats_for("t0").tx_bytes) == (
        b.tx_accepted, b.stats_for("t0").tx_packets, b.stats_for("t0").tx_bytes,
    )  # fmt: skip
    sa_a, sa_b = a.sa_for(_tunnel(rows_pair)), b.sa_for(_tunnel(plain_pair))
    assert sa_a is not None and sa_b is not None
    assert (sa_a.seq_out, sa_a.packets, sa_a.bytes) == (sa_b.seq_out, sa_b.packets, sa_b.bytes)


def _tunnel(pair: Pair) -> Tunnel:
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    return tunnel


def _declined(pair: Pair, packet: bytes, offload: VnetHeader) -> None:
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None
    before = (sa.seq_out, sa.packets, pair.a.tx_accepted)
    assert _rows(pair, packet, offload) is None
    assert (sa.seq_out, sa.packets, pair.a.tx_accepted) == before  # nothing used up, nothing counted


def test_rows_decline_volume_lifetimes() -> None:
    """(SAs with ESN take the rows: tests/core/test_esn_seal_rows.py.)"""
    packet, offload = make_tso(v4_tcp(os.urandom(5000)), 1000)
    _declined(make_pair(4, "aes-gcm", hard=Limits(packets=1000)), packet, offload)
    _declined(make_pair(4, "aes-cbc", hard=Limits(packets=1000)), packet, offload)


@pytest.mark.parametrize("make", [v4_tcp, v6_tcp])
def test_cbc_hmac_rows_are_what_seal_makes_with_their_ivs(make: object) -> None:
    """AES-CBC with HMAC-SHA-256 (issue 13): each row is byte for byte `esp.seal` of its segment with the
    IV it carries, the IVs all differ, and the peer opens the segments `gso.split` makes."""
    pair = make_pair(4, "aes-cbc")
    packet, offload = make_tso(make(os.urandom(20000), flags="PA"), 1386)  # type: ignore[operator]
    burst = _rows(pair, packet, offload)
    assert isinstance(burst, Burst)
    segments = gso.split(packet, offload)
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None and sa.seq_out == len(segments) == len(burst.payloads)
    nh = esp.NH_IPV4 if packet[0] >> 4 == 4 else esp.NH_IPV6
    ivs = [p[8:24] for p in burst.payloads]
    assert len(set(ivs)) == len(ivs)
    assert burst.payloads == [
        esp.seal(0x1001, i + 1, False, sa.cipher, sa.auth, s, nh, iv=iv)
        for i, (s, iv) in enumerate(zip(segments, ivs, strict=True))
    ]
    deliver, rejects = pair.b.receive_batch(burst.src, burst.dst, burst.payloads, 1.0)
    assert not rejects and deliver == {"t0": segments}


def test_rows_declines_segments_bigger_than_the_path_with_df() -> None:
    pair = make_pair()
    pair.a.path_mtu["t0"] = 1200
    packet, offload = make_tso(v4_tcp(os.urandom(5000)), 1386)  # DF set
    _declined(pair, packet, offload)
    # ... which go the per-packet way: frag-needed back into the device, as for any too-big packet
    out = pair.a.send_batch("t0", [packet], 1.0, {0: offload})
    assert isinstance(out[0], Deliver) and pair.a.tx_drops[Drop.TOO_BIG] == 3  # the three full-sized


def test_rows_declines_at_the_end_of_the_sequence_numbers_and_the_reservation() -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(5000)), 1000)  # 5 segments
    pair = make_pair()
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None
    sa.seq_out = sa.config.seq_max - 3
    _declined(pair, packet, offload)  # per packet, SEQ_EXHAUSTED is counted and the SA dies exactly there
    pair = make_pair()
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None
    no_disk = MemoryStore(fail=True)
    sa.seq_limit = 3
    sa.attach(no_disk)
    _declined(pair, packet, offload)
    assert no_disk.calls == [("out", 5)]  # asked once, for the whole super-packet


def test_rows_reserves_once_for_the_whole_super_packet() -> None:
    packet, offload = make_tso(v4_tcp(os.urandom(45 * 1386)), 1386)
    pair = make_pair()
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None
    store = MemoryStore(grant=100)
    sa.seq_limit = 10
    sa.attach(store)
    burst = _rows(pair, packet, offload)
    assert burst is not None and len(burst.payloads) == 45
    assert store.calls == [("out", 45)] and sa.seq_out == 45 and sa.seq_limit == 145


def test_seal_rows_is_seal_aead16_row_by_row() -> None:
    pair = make_pair()
    sa = pair.a.sa_for(_tunnel(pair))
    assert sa is not None and sa.seals_rows
    inner = [bytes([0x45]) + os.urandom(99) for _ in range(4)]
    rows = np.frombuffer(b"".join(p + esp.aead16_trailer(100, 4) for p in inner), np.uint8).reshape(4, -1)
    sealed = esp.seal_rows(0x1001, 7, 1, sa._aead_encrypt, sa._salt, rows)  # type: ignore[arg-type]
    one = [esp.seal_aead16(0x1001, 7 + i, 1, sa._aead_encrypt, sa._salt, p, 4) for i, p in enumerate(inner)]  # type: ignore[arg-type]
    assert sealed == one


def test_outer_addresses_are_the_tunnels() -> None:
    pair = make_pair(6)
    packet, offload = make_tso(v4_tcp(os.urandom(4000)), 1000)
    burst = _rows(pair, packet, offload)
    assert burst is not None
    # A sends to B: the outer destination is B's address, the source A's.
    assert (burst.dst, burst.src) == (
        ipaddress.ip_address(OUTER[6][1]).packed,
        ipaddress.ip_address(OUTER[6][0]).packed,
    )


@pytest.mark.parametrize("cipher", ["aes-gcm", "chacha20-poly1305", "aes-cbc"])
def test_scapy_decrypts_what_the_rows_branch_seals(cipher: str) -> None:
    """The independent check: scapy's ESP opens every packet of a super-packet sealed row by row, and
    finds the segments `gso.split` makes."""
    pair = make_pair(4, cipher)
    packet, offload = make_tso(v4_tcp(os.urandom(30000), flags="PA"), 1386)
    burst = _rows(pair, packet, offload)
    assert burst is not None
    key = pair.ab.cipher_key
    algo = {"aes-gcm": "AES-GCM", "aes-cbc": "AES-CBC"}.get(cipher, "CHACHA20-POLY1305")
    auth = {"auth_algo": "SHA2-256-128", "auth_key": pair.ab.digest_key} if cipher == "aes-cbc" else {}
    src, dst = (str(ipaddress.ip_address(a)) for a in (burst.src, burst.dst))
    new_sa: Any = scapy_ipsec.SecurityAssociation
    theirs = new_sa(
        ESP, spi=pair.ab.spi, crypt_algo=algo, crypt_key=key, tunnel_header=IP(src=src, dst=dst), **auth
    )
    opened = [
        bytes(theirs.decrypt(IP(bytes(IP(src=src, dst=dst, proto=50) / Raw(p))))) for p in burst.payloads
    ]
    assert opened == gso.split(packet, offload)


# -- the branch inside send_batch ------------------------------------------------------------------------


def test_send_batch_seals_a_tso_read_as_rows_in_read_order() -> None:
    """Plain packets, a TCP super-packet, plain packets: the super-packet takes the rows branch (no call
    to `encrypt`), between the others, and every byte is what the packets one by one give: sequence
    numbers in the order the packets were read (before, the super-packet took the first ones)."""
    rows_pair, plain_pair = _twins()
    before = [bytes(v4_tcp(os.urandom(100), df=False)) for _ in range(2)]
    after = [bytes(v4_tcp(os.urandom(200), df=False)) for _ in range(3)]
    packet, offload = make_tso(v4_tcp(os.urandom(9000), flags="PA"), 1386)
    sa = rows_pair.a.sa_for(_tunnel(rows_pair))
    assert sa is not None
    encrypt, calls = sa.encrypt, []

    def counted(*args: Any) -> bytes | Drop:
        calls.append(args)
        return encrypt(*args)

    sa.encrypt = counted  # type: ignore[method-assign,assignment]
    out = rows_pair.a.send_batch("t0", [*before, packet, *after], 1.0, {2: offload})
    assert len(calls) == len(before) + len(after)  # the segments went as rows
    assert all(isinstance(b, Burst) for b in out) and len(out) == 3
    segments = gso.split(packet, offload)
    assert [len(b.payloads) for b in out if isinstance(b, Burst)] == [2, len(segments), 3]
    reference = plain_pair.a.send_batch("t0", [*before, *segments, *after], 1.0)
    assert [p for b in out if isinstance(b, Burst) for p in b.payloads] == [
        p for b in reference if isinstance(b, Burst) for p in b.payloads
    ]
    assert rows_pair.a.stats_for("t0") == plain_pair.a.stats_for("t0")


def test_send_batch_splits_what_cannot_be_rows_and_counts_what_split_refuses() -> None:
    pair = make_pair(4, "aes-gcm", hard=Limits(packets=10**6))  # a volume lifetime: no rows
    packet, offload = make_tso(v4_tcp(os.urandom(5000)), 1000)
    bad = VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1000, 24, 16)  # csum_start elsewhere
    out = pair.a.send_batch("t0", [packet, packet], 1.0, {0: offload, 1: bad})
    assert [len(b.payloads) for b in out if isinstance(b, Burst)] == [len(gso.split(packet, offload))]
    assert pair.a.tx_drops == {Drop.NOT_IP: 1} and pair.a.stats_for("t0").tx_drops == {Drop.NOT_IP: 1}
    assert pair.a.tx_accepted == pair.a.stats_for("t0").tx_packets == len(gso.split(packet, offload))
