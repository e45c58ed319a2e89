"""`--tcp-queue` on the fakes: host A's data plane lowers the window of the ACKs it delivers to a local
TCP sender to what it read of the flow from its device plus the bound, the checksum valid; without the
switch the ACKs arrive as B's sender wrote them."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, TCP

from ipsec_tunnel.cli import render
from ipsec_tunnel.core import gso
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import DataPlane, OffloadOptions
from ipsec_tunnel.daemon.manager import Manager
from tests.support.fakes import FakeKernel, FakeNetwork

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
MSS = 1000
Q = 64 << 10


def _tcp(src: str, dst: str, sport: int, dport: int, **kw: object) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, **kw))  # type: ignore[arg-type]


class Pair:
    """A's data plane (with `tcp_queue`) and B's, the local sender in A."""

    def __init__(self, tcp_queue: int) -> None:
        network = FakeNetwork()
        self.planes: list[DataPlane] = []
        self.kernels: list[FakeKernel] = []
        for local, remote, queue in ((A4, B4, tcp_queue), (B4, A4, 0)):
            engine = Engine()
            engine.tunnels.add(Tunnel("t0", local, remote))
            for spi, src, dst in ((0x3000, A4, B4), (0x3001, B4, A4)):
                engine.sad.add(SecurityAssociation(SAConfig(spi, dst, src, "aes-gcm", KEY).validated(), 0.0))
            kernel = FakeKernel(network, [local])
            self.kernels.append(kernel)
            plane = DataPlane(engine, kernel=kernel, offloads=OffloadOptions(coalesce=False), tcp_queue=queue)
            plane.open_transports()
            plane.devices.create("t0")
            self.planes.append(plane)
        self.a, self.b = self.planes

    def a_to_b(self, packet: bytes, offload: gso.VnetHeader | None = None) -> list[bytes]:
        self.kernels[0].tun["t0"].route(packet, offload)
        self.a.on_tun(self.kernels[0].tun["t0"])
        self.b.on_raw(self.kernels[1].raw[4])
        return self.kernels[1].tun["t0"].take()

    def b_to_a(self, packet: bytes) -> list[bytes]:
        self.kernels[1].tun["t0"].route(packet)
        self.b.on_tun(self.kernels[1].tun["t0"])
        self.a.on_raw(self.kernels[0].raw[4])
        return self.kernels[0].tun["t0"].take()

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


def _flow(pair: Pair) -> list[TCP]:
    """A handshake with window scaling (7) both ways, 40 KB read from A's ring in super-packets, an ACK
    of the first 8 KB offering 32 KiB (the start), 40 KB more, and an ACK of 16 KB offering 4 MiB: the
    two ACKs as A's device got them."""
    local, remote = ("10.0.1.1", 40000), ("10.0.2.1", 5201)
    assert pair.a_to_b(_tcp(*local[:1], *remote[:1], local[1], remote[1], flags="S", seq=1000,
                            options=[("WScale", 7)]))  # fmt: skip
    assert pair.b_to_a(_tcp(remote[0], local[0], remote[1], local[1], flags="SA", seq=7, ack=1001,
                            options=[("WScale", 7)]))  # fmt: skip
    seq, acks = 1001, []
    for batch in range(2):
        for _ in range(5):
            packet = bytes(
                IP(src=local[0], dst=remote[0]) / TCP(sport=local[1], dport=remote[1], seq=seq, flags="A")
                / bytes(8 * MSS)
            )  # fmt: skip
            assert (
                len(pair.a_to_b(packet, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, MSS, 20, 16)))
                == 8
            )
            seq += 8 * MSS
        ack = 1001 + 8 * MSS * (batch + 1)
        got = pair.b_to_a(
            _tcp(
                remote[0],
                local[0],
                remote[1],
                local[1],
                flags="A",
                seq=8,
                ack=ack,
                window=(0x100, 0x8000)[batch],
            )
        )
        assert len(got) == 1
        acks.append(IP(got[0])[TCP])
    return acks


@pytest.fixture(params=[Q, 0], ids=["on", "off"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(request.param)
    yield p
    p.close()


def test_acks_to_the_local_sender_are_bounded(pair: Pair) -> None:
    first, second = _flow(pair)
    assert first.window == 0x100  # the start: the flow's own edge
    sent = 1001 + 2 * 5 * 8 * MSS  # what A read of the flow from its device
    if pair.a.window is None:
        assert second.window == 0x8000
        assert pair.a.engine.tcp_windows_lowered == 0
        return
    assert second.window < 0x8000
    edge = second.ack + (second.window << 7)
    assert sent + Q <= edge < sent + Q + 128
    assert edge >= first.ack + (first.window << 7) or edge >= second.ack + Q  # never left, never stalled
    chksum = second.chksum
    del second.chksum
    assert second.underlayer is not None
    assert IP(bytes(second.underlayer))[TCP].chksum == chksum  # valid as scapy computes it
    assert pair.a.window.lowered == 1
    assert pair.a.engine.tcp_windows_lowered == 1  # counted for ipsecadm stats
    result = Manager.op_stats(SimpleNamespace(engine=pair.a.engine), {})  # type: ignore[arg-type]
    assert result["tcp_windows_lowered"] == 1
    assert "TCP windows lowered (tcp queue)" in render.stats_text(result)


def test_values() -> None:
    assert ipsecd.parse_args([]).tcp_queue == ipsecd.DEFAULT_TCP_QUEUE == 0
    assert ipsecd.parse_args(["--tcp-queue=512k"]).tcp_queue == 512 << 10
    assert ipsecd.parse_args(["--tcp-queue=1M"]).tcp_queue == 1 << 20
    assert ipsecd.parse_args(["--tcp-queue=65536"]).tcp_queue == 65536
