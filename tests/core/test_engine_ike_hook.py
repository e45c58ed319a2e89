"""The engine's hand-over of IKE messages on the encapsulation port (RFC 3948 §2.2) to `on_non_esp`:
only datagrams with the non-ESP marker take it, in a batch or alone; ESP beside them is unaffected."""

from __future__ import annotations

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import packed
from ipsec_tunnel.core.plane import Deliver
from ipsec_tunnel.core.sa import UdpEncap

from .test_engine import inner_packet, make_pair


def test_marked_datagrams_go_to_the_hook_not_the_drop_counter() -> None:
    pair = make_pair(encap=UdpEncap())
    a, b = packed(pair.a_addr), packed(pair.b_addr)
    got: list[tuple[bytes, bytes, int | None, bytes]] = []
    pair.b.on_non_esp = lambda src, dst, sport, msg: got.append((src, dst, sport, msg))
    assert pair.b.receive_udp(a, b, bytes(4) + b"IKE message", 1.0, sport=40000) is None
    assert pair.b.receive_udp(a, b, b"\xff", 1.0) is None  # a keepalive stays a keepalive
    assert got == [(a, b, 40000, b"IKE message")]
    assert sum(pair.b.rx_drops.values()) == 0 and pair.b.keepalives == 1


def test_batch_with_ike_and_esp() -> None:
    pair = make_pair(encap=UdpEncap())
    a, b = packed(pair.a_addr), packed(pair.b_addr)
    got: list[bytes] = []
    pair.b.on_non_esp = lambda src, dst, sport, msg: got.append(msg)
    inner = inner_packet(4, 60)
    sent = pair.a.send("t0", inner, 1.0)
    esp = getattr(sent, "payload")  # noqa: B009 - Outbound
    deliver, rejects = pair.b.receive_batch(a, b, [bytes(4) + b"one", esp, bytes(4)], 1.0, udp=True)
    assert deliver == {"t0": [inner]} and rejects == []
    assert got == [b"one", b""]
    assert pair.b.rx_drops[Drop.NON_ESP] == 0


def test_without_hook_still_dropped() -> None:
    pair = make_pair(encap=UdpEncap())
    a, b = packed(pair.a_addr), packed(pair.b_addr)
    assert pair.b.receive_udp(a, b, bytes(4) + b"IKE", 1.0) is Drop.NON_ESP
    assert not isinstance(pair.b.receive_udp(a, b, bytes(4), 1.0), Deliver)
