"""The engine end to end: two engines talk through their ESP output; device choice, ICMP errors, MTU,
--peer-net policy, ECN (RFC 6040), NAT-T keepalives and a counter for every drop."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6ParamProblem, IPv6
from scapy.packet import Raw

from ipsec_tunnel.core import esp, ip
from ipsec_tunnel.core.drops import RECEIVE_DROPS, SEND_DROPS, Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.events import EventKind
from ipsec_tunnel.core.plane import ICMP_BURST, Burst, Deliver, Outbound, Reject, inner_mtu
from ipsec_tunnel.core.sa import Limits, SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.seqstore import MemoryStore
from ipsec_tunnel.core.tunnel import BASE_DEVICE, Tunnel
from tests.support import esp_reference as reference

OUTER = {4: ("10.0.0.1", "10.0.0.2"), 6: ("2001:db8::1", "2001:db8::2")}
INNER = {4: ("192.168.1.1", "192.168.2.1"), 6: ("fd00:1::1", "fd00:2::1")}
KEYS = {"aes-gcm": bytes(range(20)), "aes-cbc": bytes(range(16)), "chacha20-poly1305": bytes(range(36))}
SHA_KEY = bytes(range(100, 132))


@dataclass
class Pair:
    a: Engine
    b: Engine
    a_addr: str
    b_addr: str
    ab: SAConfig  # what A sends to B with


def _config(dst: str, src: str, cipher: str, **extra: object) -> SAConfig:
    digest = "sha256" if cipher == "aes-cbc" else None
    return SAConfig(
        0x1001,
        dst,
        src,
        cipher,
        KEYS[cipher],
        digest,
        SHA_KEY if digest else b"",
        **extra,  # type: ignore[arg-type]
    ).validated()


def make_pair(outer: int = 4, cipher: str = "aes-gcm", **extra: object) -> Pair:
    """Engines A and B with tunnel t0 between them and an SA each way (a --duplex pair)."""
    a_addr, b_addr = OUTER[outer]
    ab = _config(b_addr, a_addr, cipher, **extra)
    ba = ab.reversed()
    a, b = Engine(), Engine()
    a.tunnels.add(Tunnel("t0", a_addr, b_addr))
    b.tunnels.add(Tunnel("t0", b_addr, a_addr))
    for engine in (a, b):
        engine.sad.add(SecurityAssociation(ab, 0.0))
        engine.sad.add(SecurityAssociation(ba, 0.0))
    return Pair(a, b, a_addr, b_addr, ab)


def inner_packet(version: int = 4, size: int = 64, *, tos: int = 0, ttl: int = 64, df: bool = False,
                 src: str | None = None) -> bytes:  # fmt: skip
    src = src or INNER[version][0]
    payload = Raw(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    if version == 4:
        return bytes(
            IP(src=src, dst=INNER[4][1], tos=tos, ttl=ttl, flags="DF" if df else 0) / UDP() / payload
        )
    return bytes(IPv6(src=src, dst=INNER[6][1], tc=tos, hlim=ttl) / UDP() / payload)


def send(pair: Pair, inner: bytes, now: float = 1.0) -> Outbound:
    out = pair.a.send("t0", inner, now)
    assert isinstance(out, Outbound), out
    return out


def deliver(
    pair: Pair, out: Outbound, now: float = 1.0, tos: int | None = None
) -> Deliver | Reject | Drop | None:
    return pair.b.receive(out.src, out.dst, out.payload, now, out.tos if tos is None else tos)


# ---------------------------------------------------------------------------------------------------------
# Both ways


@pytest.mark.parametrize("outer", [4, 6])
@pytest.mark.parametrize("inner_version", [4, 6])
@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc", "chacha20-poly1305"])
def test_send_and_receive_between_two_engines(outer: int, inner_version: int, cipher: str) -> None:
    pair = make_pair(outer, cipher)
    inner = inner_packet(inner_version, 300)
    out = send(pair, inner)
    assert (out.dst, out.src) == (packed(pair.b_addr), packed(pair.a_addr))
    assert struct.unpack("!II", out.payload[:8]) == (0x1001, 1)
    assert out.encap is None and out.nextdev is None
    assert deliver(pair, out) == Deliver("t0", inner)
    # And back.
    reply = inner_packet(inner_version, 40)
    back = pair.b.send("t0", reply, 2.0)
    assert isinstance(back, Outbound)
    assert pair.a.receive(back.src, back.dst, back.payload, 2.0) == Deliver("t0", reply)
    assert (pair.a.tx_accepted, pair.b.rx_accepted, pair.b.tx_accepted, pair.a.rx_accepted) == (1, 1, 1, 1)
    a_stats, b_stats = pair.a.stats_for("t0"), pair.b.stats_for("t0")
    assert (a_stats.tx_packets, a_stats.tx_bytes, a_stats.rx_bytes) == (1, len(inner), len(reply))
    assert (b_stats.rx_packets, b_stats.rx_bytes) == (1, len(inner))
    assert not pair.a.rx_drops and not pair.b.rx_drops and not pair.a.tx_drops


def test_nextdev_and_udp_encapsulation_are_passed_on() -> None:
    pair = make_pair(encap=UdpEncap(4500, 4501))
    pair.a.tunnels.change("t0", nextdev="eth1")
    out = send(pair, inner_packet())
    assert out.encap == UdpEncap(4500, 4501)
    assert out.nextdev == "eth1"
    assert isinstance(pair.b.receive_udp(out.src, out.dst, out.payload, 1.0), Deliver)


def test_ttl_and_dscp_are_copied_to_the_outer_header() -> None:
    pair = make_pair()
    out = send(pair, inner_packet(tos=0xB8 | ip.ECN_ECT0, ttl=37, df=True))
    # RFC 4303 tunnel mode / RFC 2983: DSCP copied; RFC 6040 §4.1: ECN copied in normal mode.
    assert (out.tos, out.ttl, out.df) == (0xB8 | ip.ECN_ECT0, 37, True)
    out6 = send(pair, inner_packet(6, tos=0x28, ttl=3))
    assert (out6.tos, out6.ttl, out6.df) == (0x28, 3, True)


# ---------------------------------------------------------------------------------------------------------
# Which device a received packet goes to


def _received_by(pair: Pair, now: float = 1.0) -> Deliver | Reject | Drop | None:
    return deliver(pair, send(pair, inner_packet(size=200), now), now)


def test_device_choice_exact_then_remote_then_local_then_base() -> None:
    pair = make_pair()
    b = pair.b
    b.tunnels.add(Tunnel("remote-only", "10.0.0.99", pair.a_addr))
    b.tunnels.add(Tunnel("local-only", pair.b_addr, "10.0.0.77"))
    result = _received_by(pair)
    assert isinstance(result, Deliver) and result.device == "t0"
    b.tunnels.remove("t0")
    result = _received_by(pair)
    assert isinstance(result, Deliver) and result.device == "remote-only"
    b.tunnels.remove("remote-only")
    result = _received_by(pair)
    assert isinstance(result, Deliver) and result.device == "local-only"
    b.tunnels.remove("local-only")
    b.tunnels.base_up = True
    result = _received_by(pair)
    assert isinstance(result, Deliver) and result.device == BASE_DEVICE
    assert b.stats_for(BASE_DEVICE).rx_packets == 1
    b.tunnels.base_up = False
    assert isinstance(_received_by(pair), Reject)
    assert b.rx_drops[Drop.NO_TUNNEL] == 1


@pytest.mark.parametrize("outer", [4, 6])
def test_no_tunnel_answers_with_a_valid_icmp_error(outer: int) -> None:
    pair = make_pair(outer)
    pair.b.tunnels.remove("t0")
    out = send(pair, inner_packet(size=1200))  # longer than 64 bytes: the quote is trimmed, not broken
    result = deliver(pair, out)
    assert isinstance(result, Reject)
    error = result.packet
    if outer == 4:
        parsed = IP(error)
        assert (parsed.src, parsed.dst) == (pair.b_addr, pair.a_addr)
        assert (parsed[ICMP].type, parsed[ICMP].code) == (3, 2)  # RFC 792: protocol unreachable
        assert ip.checksum(error[:20]) == 0
        assert ip.checksum(error[20:]) == 0  # the ICMP checksum covers the whole message
        quoted = error[28:]
        assert quoted[9] == ip.PROTO_ESP
        assert quoted[20:] == out.payload[: len(quoted) - 20]
        assert len(error) <= 576
    else:
        parsed6 = IPv6(error)
        assert (parsed6.src, parsed6.dst) == (pair.b_addr, pair.a_addr)
        problem = parsed6[ICMPv6ParamProblem]
        assert (problem.type, problem.code, problem.ptr) == (4, 1, 6)  # RFC 4443 §3.4
        checked = parsed6.copy()
        del checked[ICMPv6ParamProblem].cksum
        assert bytes(IPv6(bytes(checked))) == error  # scapy's checksum is ours
        assert error[48 + 6] == ip.PROTO_ESP
        assert error[88:] == out.payload[: len(error) - 88]
        assert len(error) <= 1280
    assert pair.b.icmp_sent == 1


def test_icmp_errors_are_rate_limited_but_drops_are_counted() -> None:
    pair = make_pair()
    pair.b.tunnels.remove("t0")
    outs = [send(pair, inner_packet(), 5.0) for _ in range(int(ICMP_BURST) + 5)]
    results = [deliver(pair, out, 5.0) for out in outs]
    assert sum(isinstance(r, Reject) for r in results) == ICMP_BURST
    assert results[-1] is Drop.NO_TUNNEL
    assert pair.b.rx_drops[Drop.NO_TUNNEL] == len(outs)
    later = deliver(pair, send(pair, inner_packet(), 6.0), 6.0)  # tokens come back with time
    assert isinstance(later, Reject)


# ---------------------------------------------------------------------------------------------------------
# MTU


@pytest.mark.parametrize("cipher", ["aes-gcm", "aes-cbc"])
@pytest.mark.parametrize("outer", [4, 6])
def test_packets_up_to_the_tunnel_mtu_fit_the_path(cipher: str, outer: int) -> None:
    pair = make_pair(outer, cipher)
    pair.a.path_mtu["t0"] = 1400
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    limit = pair.a.mtu_for(tunnel)
    sa = pair.a.sa_for(tunnel)
    assert sa is not None and limit == inner_mtu(sa, 1400)
    outer_len = ip.IPV4_HEADER_LEN if outer == 4 else ip.IPV6_HEADER_LEN
    sizes = []
    for size in range(limit - 40, limit + 1):  # every padding remainder near the limit
        inner = inner_packet(4, size - 28, df=True)
        assert len(inner) == size
        out = send(pair, inner)
        assert outer_len + len(out.payload) <= 1400
        sizes.append(outer_len + len(out.payload))
    # ... and the limit is the largest that fits: the next size up would need another block.
    assert max(sizes) > 1400 - max(4, sa.cipher.block)
    pair.a.path_mtu["t0"] = 9000
    bigger = send(pair, inner_packet(4, limit + 1 - 28, df=True))
    assert outer_len + len(bigger.payload) > 1400


def test_too_big_with_df_gives_frag_needed_with_the_mtu() -> None:
    pair = make_pair()
    pair.a.path_mtu["t0"] = 1400
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    limit = pair.a.mtu_for(tunnel)
    assert limit is not None
    inner = inner_packet(4, limit - 28 + 1, df=True)
    result = pair.a.send("t0", inner, 1.0)
    assert isinstance(result, Deliver) and result.device == "t0"
    icmp = IP(result.packet)
    assert (icmp.src, icmp.dst) == (INNER[4][1], INNER[4][0])
    assert (icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == (3, 4, limit)  # RFC 1191 §4
    assert ip.checksum(result.packet[20:]) == 0
    assert pair.a.tx_drops[Drop.TOO_BIG] == 1
    assert pair.a.stats_for("t0").tx_drops[Drop.TOO_BIG] == 1
    # Without DF the packet goes out (the outer packet may then be fragmented on the path).
    assert isinstance(pair.a.send("t0", inner_packet(4, limit - 28 + 1), 1.0), Outbound)


def test_too_big_ipv6_gives_packet_too_big_with_the_mtu() -> None:
    pair = make_pair()
    pair.a.path_mtu["t0"] = 1500
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    limit = pair.a.mtu_for(tunnel)
    assert limit is not None and limit > 1280
    result = pair.a.send("t0", inner_packet(6, limit - 48 + 1), 1.0)
    assert isinstance(result, Deliver)
    too_big = IPv6(result.packet)[ICMPv6PacketTooBig]
    assert (too_big.type, too_big.mtu) == (2, limit)  # RFC 4443 §3.2
    assert isinstance(pair.a.send("t0", inner_packet(6, limit - 48), 1.0), Outbound)


@pytest.mark.parametrize("outer", [4, 6])
def test_ipv6_up_to_1280_leaves_as_outer_fragments_when_the_path_is_smaller(outer: int) -> None:
    """RFC 8200 §5 / RFC 4213 §3.2: an inner IPv6 packet of at most 1280 bytes that ESP cannot fit into
    the path is sent with the outer DF clear (fragmented outside), never refused with an MTU below 1280."""
    pair = make_pair(outer)
    pair.a.path_mtu["t0"] = 1280
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    limit = pair.a.mtu_for(tunnel)
    assert limit is not None and limit < 1280
    fitting = pair.a.send("t0", inner_packet(6, limit - 48), 1.0)
    assert isinstance(fitting, Outbound) and fitting.df  # what fits keeps DF
    for size in (limit + 1, 1280):
        out = pair.a.send("t0", inner_packet(6, size - 48), 1.0)
        assert isinstance(out, Outbound) and not out.df
        got = deliver(pair, out)
        assert isinstance(got, Deliver) and got.packet == inner_packet(6, size - 48)
    too_big = pair.a.send("t0", inner_packet(6, 1281 - 48), 1.0)
    assert isinstance(too_big, Deliver)
    assert IPv6(too_big.packet)[ICMPv6PacketTooBig].mtu == 1280  # never below the IPv6 minimum
    # IPv4 with DF keeps path MTU discovery at the ESP fit.
    v4 = pair.a.send("t0", inner_packet(4, limit + 1 - 28, df=True), 1.0)
    assert isinstance(v4, Deliver) and IP(v4.packet)[ICMP].nexthopmtu == limit
    batch = pair.a.send_batch("t0", [inner_packet(6, 1280 - 48)] * 3, 1.0)
    assert len(batch) == 3 and all(isinstance(b, Burst) and not b.df for b in batch)


def test_mtu_unknown_without_a_path_mtu() -> None:
    pair = make_pair()
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    assert pair.a.mtu_for(tunnel) is None
    assert isinstance(pair.a.send("t0", inner_packet(4, 9000, df=True), 1.0), Outbound)


# ---------------------------------------------------------------------------------------------------------
# Policy, ECN, TFC, NAT-T


def test_peer_net_policy() -> None:
    pair = make_pair()
    pair.b.tunnels.change("t0", peer_nets=("192.168.1.0/24",))
    assert isinstance(deliver(pair, send(pair, inner_packet(src="192.168.1.77"))), Deliver)
    assert deliver(pair, send(pair, inner_packet(src="192.168.9.77"))) is Drop.POLICY
    assert deliver(pair, send(pair, inner_packet(6))) is Drop.POLICY  # no IPv6 network listed
    assert pair.b.rx_drops[Drop.POLICY] == 2
    assert pair.b.stats_for("t0").rx_drops[Drop.POLICY] == 2


NOT_ECT, ECT1, ECT0, CE = ip.ECN_NOT_ECT, ip.ECN_ECT1, ip.ECN_ECT0, ip.ECN_CE
# RFC 6040 §4.2 Figure 4 (rows: arriving inner; columns: arriving outer Not-ECT, ECT(0), ECT(1), CE).
FIGURE_4 = {
    NOT_ECT: (NOT_ECT, NOT_ECT, NOT_ECT, None),
    ECT0: (ECT0, ECT0, ECT1, CE),
    ECT1: (ECT1, ECT1, ECT1, CE),
    CE: (CE, CE, CE, CE),
}


@pytest.mark.parametrize("inner_ecn", [NOT_ECT, ECT0, ECT1, CE])
@pytest.mark.parametrize("column", range(4))
@pytest.mark.parametrize("version", [4, 6])
def test_ecn_decapsulation_follows_rfc6040(inner_ecn: int, column: int, version: int) -> None:
    outer_ecn = (NOT_ECT, ECT0, ECT1, CE)[column]
    expected = FIGURE_4[inner_ecn][column]
    pair = make_pair()
    inner = inner_packet(version, tos=0xA0 | inner_ecn)
    result = deliver(pair, send(pair, inner), tos=0xA0 | outer_ecn)
    if expected is None:
        assert result is Drop.ECN
        assert pair.b.rx_drops[Drop.ECN] == 1
        return
    assert isinstance(result, Deliver)
    hdr = ip.parse(result.packet)
    assert hdr is not None
    assert hdr.tos == 0xA0 | expected  # only the ECN field may change
    if version == 4:
        assert ip.checksum(result.packet[:20]) == 0
    if expected == inner_ecn:
        assert result.packet == inner


def test_tfc_padding_after_the_inner_packet_is_trimmed() -> None:
    # RFC 4303 §2.4 and §2.7: TFC padding may follow the inner packet inside the payload.
    pair = make_pair()
    sender = SecurityAssociation(pair.ab, 0.0, seq_out=100)
    for version in (4, 6):
        inner = inner_packet(version, 50)
        packet = sender.encrypt(inner + bytes(333), 4 if version == 4 else 41, 1.0, pair.b.emit)
        assert isinstance(packet, bytes)
        assert pair.b.receive(packed(pair.a_addr), packed(pair.b_addr), packet, 1.0) == Deliver("t0", inner)


def test_nat_keepalive_and_non_esp_marker() -> None:
    pair = make_pair(encap=UdpEncap())
    a, b = packed(pair.a_addr), packed(pair.b_addr)
    assert pair.b.receive_udp(a, b, b"\xff", 1.0) is None  # RFC 3948 §2.3
    assert pair.b.receive_udp(a, b, b"\xff", 1.0) is None
    assert pair.b.keepalives == 2
    assert (
        pair.b.receive_udp(a, b, b"\x00\x00\x00\x00" + b"IKE message", 1.0) is Drop.NON_ESP
    )  # RFC 3948 §2.2
    assert pair.b.rx_drops[Drop.NON_ESP] == 1
    assert sum(pair.b.rx_drops.values()) == 1


# ---------------------------------------------------------------------------------------------------------
# Every drop is counted


def _aead_raw(sa_config: SAConfig, seq: int, plain: bytes) -> bytes:
    """An ESP packet whose decrypted payload is exactly `plain` (trailer included), with a valid ICV."""
    sa = SecurityAssociation(sa_config, 0.0)
    header = struct.pack("!II", sa_config.spi, seq)
    iv = reference.counter_iv(seq, sa_config.iv_split)
    sealed: bytes = sa.cipher.seal(iv, plain, header)
    return header + iv + sealed


def test_every_receive_drop_is_counted() -> None:
    pair = make_pair(hard=Limits(seconds=1000))
    b = pair.b
    a_p, b_p = packed(pair.a_addr), packed(pair.b_addr)
    forger = SecurityAssociation(pair.ab, 0.0, seq_out=50)  # its numbers stay in the window
    good = send(pair, inner_packet())
    cases: list[tuple[Drop, bytes, int, float]] = []
    tampered = bytearray(send(pair, inner_packet()).payload)
    tampered[30] ^= 1
    dummy = forger.encrypt(b"\x00" * 16, esp.NH_NONE, 1.0, b.emit)  # RFC 4303 §2.6: next header 59
    transport = forger.encrypt(inner_packet()[20:], ip.PROTO_UDP, 1.0, b.emit)  # not tunnel mode
    mismatched = forger.encrypt(inner_packet(6), esp.NH_IPV4, 1.0, b.emit)  # says IPv4, carries IPv6
    garbage_inner = forger.encrypt(b"\x45" + bytes(10), esp.NH_IPV4, 1.0, b.emit)
    assert all(isinstance(p, bytes) for p in (dummy, transport, mismatched, garbage_inner))
    bad_pad = _aead_raw(pair.ab, 60, b"x" * 12 + b"\x05\x06\x02\x04")
    unknown = bytearray(good.payload)
    unknown[3] ^= 0xFF
    cases = [
        (Drop.MALFORMED, b"\x00\x00\x10", 0, 1.0),
        (Drop.UNKNOWN_SA, bytes(unknown), 0, 1.0),
        (Drop.AUTH_FAILED, bytes(tampered), 0, 1.0),
        (Drop.BAD_PADDING, bad_pad, 0, 1.0),
        (Drop.DUMMY, dummy, 0, 1.0),  # type: ignore[list-item]
        (Drop.NOT_TUNNEL_MODE, transport, 0, 1.0),  # type: ignore[list-item]
        (Drop.MALFORMED, mismatched, 0, 1.0),  # type: ignore[list-item]
        (Drop.MALFORMED, garbage_inner, 0, 1.0),  # type: ignore[list-item]
        (Drop.ECN, send(pair, inner_packet()).payload, ip.ECN_CE, 1.0),
    ]
    expected: dict[Drop, int] = {}
    for reason, packet, tos, now in cases:
        assert b.receive(a_p, b_p, packet, now, tos) is reason
        expected[reason] = expected.get(reason, 0) + 1
    assert b.receive(a_p, b_p, good.payload, 1.0) == Deliver("t0", inner_packet())
    assert b.receive(a_p, b_p, good.payload, 1.0) is Drop.REPLAYED
    expected[Drop.REPLAYED] = 1
    b.tunnels.change("t0", peer_nets=("10.99.0.0/16",))
    assert b.receive(a_p, b_p, send(pair, inner_packet()).payload, 1.0) is Drop.POLICY
    expected[Drop.POLICY] = 1
    b.tunnels.remove("t0")
    assert isinstance(b.receive(a_p, b_p, send(pair, inner_packet()).payload, 1.0), Reject)
    expected[Drop.NO_TUNNEL] = 1
    assert b.receive_udp(a_p, b_p, bytes(4) + b"ike", 1.0) is Drop.NON_ESP
    expected[Drop.NON_ESP] = 1
    assert b.receive_udp(a_p, b_p, send(pair, inner_packet()).payload, 1.0) is Drop.ENCAP_MISMATCH
    expected[Drop.ENCAP_MISMATCH] = 1
    duplex = replace(_config(pair.b_addr, pair.a_addr, "aes-gcm", duplex=True), spi=0x2002)
    b.sad.add(SecurityAssociation(duplex, 0.0))
    own = SecurityAssociation(duplex.reversed(), 0.0).encrypt(inner_packet(), esp.NH_IPV4, 1.0, b.emit)
    assert isinstance(own, bytes)
    assert b.receive(a_p, b_p, own, 1.0) is Drop.WRONG_DIRECTION  # B's own packet sent back to it
    expected[Drop.WRONG_DIRECTION] = 1
    late = send(pair, inner_packet(), 1.0)
    assert b.receive(a_p, b_p, late.payload, 1001.0) is Drop.EXPIRED
    expected[Drop.EXPIRED] = 1
    assert dict(b.rx_drops) == expected
    assert set(expected) <= set(RECEIVE_DROPS)
    # STORE_FAILED: the reserve hook (test_sa), OTHER unused; DEVICE_DOWN: the data plane (test_visibility);
    # AQM: the data plane's CoDel (tests/daemon/test_aqm.py)
    assert set(RECEIVE_DROPS) - set(expected) == {Drop.OTHER, Drop.STORE_FAILED, Drop.DEVICE_DOWN, Drop.AQM}


def test_every_send_drop_is_counted() -> None:
    pair = make_pair(hard=Limits(seconds=1000))
    a = pair.a
    assert a.send("nope", inner_packet(), 1.0) is Drop.NO_SA  # no such device
    a.tunnels.add(Tunnel("lonely", pair.a_addr, "10.0.0.50"))
    assert a.send("lonely", inner_packet(), 1.0) is Drop.NO_SA  # a device without an SA
    assert a.send("t0", b"\x00not ip", 1.0) is Drop.NOT_IP
    assert a.send("t0", b"", 1.0) is Drop.NOT_IP
    a.path_mtu["t0"] = 600
    assert isinstance(a.send("t0", inner_packet(4, 1000, df=True), 1.0), Deliver)  # TOO_BIG, with ICMP
    del a.path_mtu["t0"]
    tunnel = a.tunnels.get("t0")
    assert tunnel is not None
    sa = a.sa_for(tunnel)
    assert sa is not None
    sa.seq_limit = sa.seq_out  # the store must grant more, and fails
    sa.attach(MemoryStore(fail=True))
    assert a.send("t0", inner_packet(), 1.0) is Drop.STORE_FAILED
    sa.seq_limit = sa.config.seq_max
    sa.seq_out = sa.config.seq_max
    assert a.send("t0", inner_packet(), 1.0) is Drop.SEQ_EXHAUSTED
    assert a.send("t0", inner_packet(), 1.0) is Drop.SEQ_EXHAUSTED
    other = Engine()
    other.tunnels.add(Tunnel("t0", pair.a_addr, pair.b_addr))
    other.sad.add(SecurityAssociation(pair.ab, 0.0))
    assert other.send("t0", inner_packet(), 1000.0) is Drop.EXPIRED
    assert dict(a.tx_drops) == {
        Drop.NO_SA: 2, Drop.NOT_IP: 2, Drop.TOO_BIG: 1, Drop.STORE_FAILED: 1, Drop.SEQ_EXHAUSTED: 2,
    }  # fmt: skip
    assert dict(other.tx_drops) == {Drop.EXPIRED: 1}
    assert a.stats_for("t0").tx_drops[Drop.SEQ_EXHAUSTED] == 2
    assert {EventKind.SEQ_EXHAUSTED} == {e.kind for e in a.take_events()}
    assert a.take_events() == []
    counted = set(a.tx_drops) | set(other.tx_drops)
    # the daemon's: the kernel says (NO_ROUTE, SEND_ERROR), --device-aqm (DEVICE_AQM, DataPlane.judge_ring);
    # OTHER unused since STORE_FAILED
    assert set(SEND_DROPS) - counted == {Drop.NO_ROUTE, Drop.SEND_ERROR, Drop.DEVICE_AQM, Drop.OTHER}


def test_tick_raises_lifetime_events() -> None:
    pair = make_pair(soft=Limits(seconds=10), hard=Limits(seconds=20))
    pair.a.tick(9.0)
    assert pair.a.take_events() == []
    pair.a.tick(10.0)
    events = pair.a.take_events()
    assert [(e.kind, e.limit) for e in events] == [(EventKind.SOFT_EXPIRE, "seconds")] * 2  # both SAs
    pair.a.tick(25.0)
    assert [e.kind for e in pair.a.take_events()] == [EventKind.HARD_EXPIRE] * 2
    assert pair.a.send("t0", inner_packet(), 26.0) is Drop.EXPIRED


# ---------------------------------------------------------------------------------------------------------
# --duplex reflections and check-then-commit (protocol review finding 1, issue 11 item 7)


def _reflect(pair: Pair, out: Outbound) -> tuple[bytes, bytes, bytes]:
    """(outer source, destination, ESP) of A's packet `out` sent back to A as if B had sent it."""
    return packed(pair.b_addr), packed(pair.a_addr), out.payload


@pytest.mark.parametrize("cipher", ["aes-gcm", "chacha20-poly1305"])
def test_duplex_counter_mode_drops_its_own_packets_sent_back(cipher: str) -> None:
    """A packet of A's sent back to A with B's address has A's direction bit: dropped before the ICV,
    one by one and in a batch, and A's window does not move, so B's own numbers still pass."""
    pair = make_pair(cipher=cipher, duplex=True)
    own = [send(pair, inner_packet()) for _ in range(300)]
    inbound = pair.a.sad.get(packed(pair.a_addr), packed(pair.b_addr), pair.ab.spi)
    assert inbound is not None
    assert pair.a.receive(*_reflect(pair, own[-1]), 1.0) is Drop.WRONG_DIRECTION
    deliver_, _ = pair.a.receive_batch(
        packed(pair.b_addr), packed(pair.a_addr), [o.payload for o in own[100:200]], 1.0
    )
    assert deliver_ == {}
    assert pair.a.rx_drops[Drop.WRONG_DIRECTION] == 101
    assert inbound.drops[Drop.WRONG_DIRECTION] == 101
    assert inbound.replay.top == 0
    from_b = pair.b.send("t0", inner_packet(src=INNER[4][1]), 1.0)
    assert isinstance(from_b, Outbound)
    assert isinstance(pair.a.receive(from_b.src, from_b.dst, from_b.payload, 1.0), Deliver)


@pytest.mark.parametrize("own_bit", [0, 1])
def test_duplex_accepts_a_kernel_peers_salted_ivs(own_bit: int) -> None:
    """Linux's seqiv sends the counter XORed with a random salt: its IVs may carry either top bit, and
    are never the IV this host sends with the same sequence number, so they pass."""
    pair = make_pair(duplex=True)
    inbound = pair.a.sad.get(packed(pair.a_addr), packed(pair.b_addr), pair.ab.spi)
    assert inbound is not None
    own = 1 - inbound.config.iv_split  # type: ignore[operator]
    salt = ((own_bit if own == 1 else 1 - own_bit) << 63) | 0x1234_5678_9ABC_DEF0
    packets = []
    for seq in range(1, 4):
        iv = (seq ^ salt).to_bytes(8, "big")
        inner = inner_packet(src=INNER[4][1])
        packets.append(
            esp.seal(inbound.config.spi, seq, False, inbound.cipher, None, inner, esp.NH_IPV4, iv=iv)
        )
    assert isinstance(pair.a.receive(packed(pair.b_addr), packed(pair.a_addr), packets[0], 1.0), Deliver)
    got, _ = pair.a.receive_batch(packed(pair.b_addr), packed(pair.a_addr), packets[1:], 1.0)
    assert len(got["t0"]) == 2
    assert inbound.replay.top == 3 and not inbound.drops


@pytest.mark.parametrize("cipher", ["aes-cbc", "aes-gcm"])
def test_policy_drop_leaves_the_replay_window_alone(cipher: str) -> None:
    """A packet the inner policy refuses does not move the window (the review's script: A sends 300,
    B sends 1; A's packet #300 sent back to A as B's would make B's #2 'replayed')."""
    pair = make_pair(cipher=cipher)
    pair.a.tunnels.change("t0", peer_nets=("192.168.2.0/24",))  # B's inner network only
    own = [send(pair, inner_packet()) for _ in range(300)]
    inbound = pair.a.sad.get(packed(pair.a_addr), packed(pair.b_addr), pair.ab.spi)
    assert inbound is not None
    # make_pair's SAs share one key both ways without --duplex: A's packets authenticate at A, as an
    # authentic packet from outside --peer-net would (CBC could not tell them apart even with --duplex).
    assert pair.a.receive(*_reflect(pair, own[-1]), 1.0) is Drop.POLICY
    batch = [o.payload for o in own[200:299]]
    pair.a.receive_batch(packed(pair.b_addr), packed(pair.a_addr), batch, 1.0)
    assert pair.a.rx_drops[Drop.POLICY] == 100
    assert pair.a.stats_for("t0").rx_drops[Drop.POLICY] == 100
    assert inbound.replay.top == 0
    first = pair.b.send("t0", inner_packet(src=INNER[4][1]), 1.0)
    second = pair.b.send("t0", inner_packet(src=INNER[4][1]), 1.0)
    assert isinstance(first, Outbound) and isinstance(second, Outbound)
    for out in (second, first):
        assert isinstance(pair.a.receive(out.src, out.dst, out.payload, 1.0), Deliver)


def test_encapsulation_is_checked_on_receive() -> None:
    """A raw-ESP SA refuses ESP-in-UDP and an --encap=udp SA raw ESP, one by one and in batches,
    counted per SA (newcomer trial finding 15)."""
    raw, udp = make_pair(), make_pair(encap=UdpEncap())
    for pair, wrong_udp in ((raw, True), (udp, False)):
        outs = [send(pair, inner_packet()) for _ in range(3)]
        a_p, b_p = packed(pair.a_addr), packed(pair.b_addr)
        if wrong_udp:
            assert pair.b.receive_udp(a_p, b_p, outs[0].payload, 1.0) is Drop.ENCAP_MISMATCH
        else:
            assert pair.b.receive(a_p, b_p, outs[0].payload, 1.0) is Drop.ENCAP_MISMATCH
        got, _ = pair.b.receive_batch(a_p, b_p, [o.payload for o in outs[1:]], 1.0, udp=wrong_udp)
        assert got == {}
        got, _ = pair.b.receive_batch(a_p, b_p, [outs[1].payload], 1.0, udp=wrong_udp)  # one by one
        assert got == {}
        inbound = pair.b.sad.get(b_p, a_p, pair.ab.spi)
        assert inbound is not None
        assert inbound.drops[Drop.ENCAP_MISMATCH] == pair.b.rx_drops[Drop.ENCAP_MISMATCH] == 4
        assert inbound.replay.top == 0
        got, _ = pair.b.receive_batch(a_p, b_p, [o.payload for o in outs], 1.0, udp=not wrong_udp)
        assert len(got["t0"]) == 3


# ---------------------------------------------------------------------------------------------------------
# ICMP rate limits per destination, tokens spent only on messages (protocol review finding 8)


def _too_big_from(pair: Pair, src: str, now: float, *, error: bool = False) -> Deliver | Outbound | Drop:
    tunnel = pair.a.tunnels.get("t0")
    assert tunnel is not None
    limit = pair.a.mtu_for(tunnel)
    assert limit is not None
    if error:  # an ICMP error itself, too big: never answered
        inner = bytes(IP(src=src, dst=INNER[4][1], flags="DF") / ICMP(type=3, code=1) / Raw(bytes(limit)))
    else:
        inner = inner_packet(4, limit, df=True, src=src)
    return pair.a.send("t0", inner, now)


def test_one_host_cannot_use_up_the_icmp_errors_of_another() -> None:
    pair = make_pair()
    pair.a.path_mtu["t0"] = 1400
    flood = [_too_big_from(pair, "192.168.1.66", 5.0) for _ in range(int(ICMP_BURST) * 3)]
    assert sum(isinstance(r, Deliver) for r in flood) == ICMP_BURST
    other = _too_big_from(pair, "192.168.1.77", 5.0)
    assert isinstance(other, Deliver)  # its own bucket: path-MTU discovery still works for it
    assert IP(other.packet).dst == "192.168.1.77"
    assert pair.a.icmp_sent == ICMP_BURST + 1


def test_icmp_tokens_are_spent_only_on_messages_built() -> None:
    pair = make_pair()
    pair.a.path_mtu["t0"] = 1400
    quiet = [_too_big_from(pair, "192.168.1.66", 5.0, error=True) for _ in range(int(ICMP_BURST) * 2)]
    assert quiet == [Drop.TOO_BIG] * (int(ICMP_BURST) * 2)
    assert pair.a.icmp_sent == 0
    assert isinstance(_too_big_from(pair, "192.168.1.66", 5.0), Deliver)
    assert pair.a.icmp_sent == 1


def test_the_icmp_bucket_table_is_bounded() -> None:
    from ipsec_tunnel.core.plane import ICMP_SOURCES

    pair = make_pair()
    pair.a.path_mtu["t0"] = 1400
    for i in range(ICMP_SOURCES + 50):
        assert _too_big_from(pair, f"192.168.{1 + i // 250}.{1 + i % 250}", 5.0 + i) is not None
    assert len(pair.a._icmp_buckets) == ICMP_SOURCES
    assert pair.a.icmp_sent == ICMP_SOURCES + 50  # one each, with time for the total to refill
