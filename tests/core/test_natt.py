"""NAT traversal and drop diagnostics in the engine: the peer's UDP port is taken from authenticated,
newer packets only (port floating); NAT-keepalives go where nothing else went for the interval; every
drop is remembered with its SPI and origin, and logged at most once per reason every 10 s."""

from __future__ import annotations

from ipsec_tunnel.core.diag import DropLog, DropRecord, RateLimit
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import NAT_KEEPALIVE, Burst
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap

from .test_engine import KEYS, inner_packet

A, B = "10.0.0.1", "203.0.113.2"  # A is behind a NAT whose public address is NAT
NAT = "203.0.113.254"


def _engines(keepalive: int = 20) -> tuple[Engine, Engine]:
    """A (private address) and B (outside); B names A by the NAT's address. One SA per direction."""
    encap = UdpEncap(keepalive=keepalive)
    ab_a = SAConfig(0x1001, B, A, "aes-gcm", KEYS["aes-gcm"], encap=encap).validated()
    ba_a = SAConfig(0x2001, A, B, "aes-gcm", KEYS["aes-gcm"][::-1], encap=encap).validated()
    ab_b = SAConfig(0x1001, B, NAT, "aes-gcm", KEYS["aes-gcm"], encap=encap).validated()
    ba_b = SAConfig(0x2001, NAT, B, "aes-gcm", KEYS["aes-gcm"][::-1], encap=encap).validated()
    a, b = Engine(), Engine()
    from ipsec_tunnel.core.tunnel import Tunnel

    a.tunnels.add(Tunnel("t0", A, B))
    b.tunnels.add(Tunnel("t0", B, NAT))
    for engine, configs in ((a, (ab_a, ba_a)), (b, (ab_b, ba_b))):
        for c in configs:
            engine.sad.add(SecurityAssociation(c, 0.0))
    return a, b


def _send(engine: Engine, count: int = 1, now: float = 1.0) -> Burst:
    out = engine.send_batch("t0", [inner_packet(4) for _ in range(count)], now)
    assert len(out) == 1 and isinstance(out[0], Burst)
    return out[0]


def _receive(engine: Engine, src: str, dst: str, payloads: list[bytes], sport: int, now: float = 1.0) -> int:
    delivered, _ = engine.receive_batch(packed(src), packed(dst), payloads, now, udp=True, sport=sport)
    return sum(len(v) for v in delivered.values())


# -- port floating ---------------------------------------------------------------------------------------


def test_replies_go_to_the_port_authenticated_packets_came_from() -> None:
    a, b = _engines()
    assert _send(b).encap == UdpEncap()  # before: the configured port 4500
    burst = _send(a, 3)
    assert _receive(b, NAT, B, burst.payloads, sport=20001) == 3  # the NAT mapped 4500 to 20001
    reply = _send(b)
    assert reply.encap is not None and reply.encap.dport == 20001
    assert _receive(a, B, A, reply.payloads, sport=4500) == 1
    assert any("20001" in line for line in b.nat.notices)


def test_one_packet_batches_float_too() -> None:
    a, b = _engines()
    payload = _send(a).payloads
    assert _receive(b, NAT, B, payload, sport=1234) == 1
    assert b.nat.encap_for(b.sa_for(b.tunnels.get("t0"))).dport == 1234  # type: ignore[arg-type, union-attr]


def test_forged_or_replayed_packets_move_nothing() -> None:
    a, b = _engines()
    good = _send(a, 2).payloads
    assert _receive(b, NAT, B, good, sport=20001) == 2
    late = _send(a).payloads
    forged = [late[0][:-1] + bytes([late[0][-1] ^ 1])]
    assert _receive(b, NAT, B, forged, sport=666) == 0  # ICV fails
    assert _receive(b, NAT, B, good, sport=667) == 0  # replayed: no higher sequence number
    assert b.rx_drops[Drop.AUTH_FAILED] == 1 and b.rx_drops[Drop.REPLAYED] == 2
    reply = _send(b)
    assert reply.encap is not None and reply.encap.dport == 20001
    assert _receive(b, NAT, B, late, sport=4500) == 1  # a newer packet from the old port floats back
    assert _send(b).encap == UdpEncap()


def test_keepalives_and_unknown_spis_float_nothing() -> None:
    _a, b = _engines()
    assert _receive(b, NAT, B, [NAT_KEEPALIVE], sport=999) == 0
    stranger = b"\x00\x00\x99\x99" + bytes(40)
    assert _receive(b, NAT, B, [stranger], sport=998) == 0
    assert _send(b).encap == UdpEncap() and b.nat.ports == {}


# -- keepalives ------------------------------------------------------------------------------------------


def test_keepalive_after_the_interval_with_nothing_sent() -> None:
    a, _b = _engines(keepalive=20)
    assert a.keepalives_due(100.0) == []  # first look: the clock starts
    assert a.keepalives_due(119.0) == []
    due = a.keepalives_due(120.0)
    assert len(due) == 1
    k = due[0]
    assert k.payloads == [b"\xff"] and k.dst == packed(B) and k.src == packed(A)  # RFC 3948 §2.3
    assert k.encap is not None and k.encap.dport == 4500
    assert a.keepalives_due(121.0) == [] and len(a.keepalives_due(140.0)) == 1
    assert a.nat.keepalives_sent == 2 and a.tx_accepted == 0


def test_no_keepalive_while_traffic_flows_or_when_disabled() -> None:
    a, _b = _engines(keepalive=20)
    a.keepalives_due(100.0)
    for t in range(110, 200, 10):
        _send(a, now=float(t))
        assert a.keepalives_due(float(t)) == []
    off, _ = _engines(keepalive=0)
    assert off.keepalives_due(0.0) == [] and off.keepalives_due(1000.0) == []


def test_keepalives_go_to_the_learned_port() -> None:
    a, b = _engines(keepalive=5)
    _receive(b, NAT, B, _send(a).payloads, sport=20002)
    b.keepalives_due(10.0)
    (k,) = b.keepalives_due(15.0)
    assert k.encap is not None and k.encap.dport == 20002


def test_keepalive_interval_is_validated_and_stored() -> None:
    c = SAConfig(0x1001, B, A, "aes-gcm", KEYS["aes-gcm"], encap=UdpEncap(keepalive=30)).validated()
    assert SAConfig.from_record(c.to_record()).encap == UdpEncap(keepalive=30)
    old = c.to_record()
    old["encap"] = {"sport": 4500, "dport": 4500}  # a record written before keepalives existed
    assert SAConfig.from_record(old).encap == UdpEncap(keepalive=20)
    import pytest

    from ipsec_tunnel.core.sa import SAError

    with pytest.raises(SAError, match="keepalive"):
        SAConfig(0x1001, B, A, "aes-gcm", KEYS["aes-gcm"], encap=UdpEncap(keepalive=-1)).validated()


# -- drop diagnostics ------------------------------------------------------------------------------------


def test_a_drop_names_its_spi_and_origin() -> None:
    _a, b = _engines()
    stranger = b"\x00\x00\x10\x00" + bytes(40)
    _receive(b, NAT, B, [stranger], sport=4500, now=50.0)
    (line,) = b.drop_log.take_lines()
    assert line == "dropped, unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 203.0.113.2"
    (record,) = b.drop_log.ring
    assert record.to_dict() == {
        "time": 50.0, "reason": "unknown_sa", "spi": 0x1000, "src": NAT, "dst": B, "sport": 4500,
    }  # fmt: skip


def test_raw_esp_drops_are_named_too() -> None:
    a, b = _engines()
    forged = bytearray(_send(a).payloads[0])
    forged[-1] ^= 1
    b.receive(packed(NAT), packed(B), bytes(forged), 5.0)  # raw ESP for an --encap=udp SA: no port
    (line,) = b.drop_log.take_lines()
    assert line == "dropped, encapsulation mismatch: SPI 0x1001 from 203.0.113.254 to 203.0.113.2"


def test_drop_lines_are_rate_limited_per_reason() -> None:
    log = DropLog(size=3, every=10.0)
    for t in (0.0, 1.0, 2.0, 3.0):
        log.add(DropRecord(t, Drop.UNKNOWN_SA, 0x1000, packed(NAT), packed(B)))
    log.add(DropRecord(4.0, Drop.REPLAYED, 0x1001, packed(NAT), packed(B)))
    assert len(log.take_lines()) == 2  # one per reason
    log.add(DropRecord(10.5, Drop.UNKNOWN_SA, 0x1000, packed(NAT), packed(B)))
    (line,) = log.take_lines()
    assert line.endswith("(3 more since the last line)")
    assert len(log.ring) == 3 and log.ring[-1].time == 10.5


def test_rate_limit() -> None:
    limit = RateLimit(5.0)
    assert limit.allow("x", 0.0) == 0
    assert limit.allow("x", 1.0) is None and limit.allow("y", 1.0) == 0
    assert limit.allow("x", 5.0) == 1


def test_accepted_packets_leave_no_record() -> None:
    a, b = _engines()
    _receive(b, NAT, B, _send(a, 5).payloads, sport=4500)
    assert not b.drop_log.ring and not b.drop_log.take_lines()
