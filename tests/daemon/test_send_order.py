"""The send order of a device batch on the fakes: with sparse-first (the default), a ping read among a
bulk flow's segments and super-packets leaves first, and the receiver takes every packet (sequence
numbers are given in the new order); `--send-order=fifo` seals in the order read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.core import gso
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import DataPlane, OffloadOptions
from tests.support.fakes import FakeKernel, FakeNetwork

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
MSS = 1000


def _tcp(seq: int, size: int = MSS) -> bytes:
    return bytes(
        IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=5001, dport=5201, seq=seq, flags="A") / bytes(size)
    )


def _ping(seq: int) -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.1") / ICMP(id=7, seq=seq) / bytes(56))


def _super(seq: int, segments: int) -> tuple[bytes, gso.VnetHeader]:
    """A TSO super-packet of `segments` MSS-sized segments, as TUN hands it over."""
    packet = _tcp(seq, MSS * segments)
    return packet, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, MSS, 20, 16)


class Pair:
    """Host A's data plane sealing what t0 reads, over raw ESP to host B's."""

    def __init__(self, sparse_first: bool) -> None:
        config = SAConfig(0x3000, B4, A4, "aes-gcm", KEY).validated()
        network = FakeNetwork()
        self.planes: list[DataPlane] = []
        self.kernels: list[FakeKernel] = []
        for local, remote, sparse in ((A4, B4, sparse_first), (B4, A4, True)):
            engine = Engine()
            engine.tunnels.add(Tunnel("t0", local, remote))
            engine.sad.add(SecurityAssociation(config, 0.0))
            kernel = FakeKernel(network, [local])
            self.kernels.append(kernel)
            plane = DataPlane(
                engine, kernel=kernel, offloads=OffloadOptions(coalesce=False), sparse_first=sparse
            )
            plane.open_transports()
            plane.devices.create("t0")
            self.planes.append(plane)
        self.a, self.b = self.planes

    def through(self, reads: list[tuple[bytes, gso.VnetHeader | None]]) -> list[bytes]:
        """Route `reads` into A's t0, let A take them as one batch and B receive them: what B wrote."""
        tun = self.kernels[0].tun["t0"]
        for packet, offload in reads:
            tun.route(packet, offload)
        self.a.on_tun(tun)
        self.b.on_raw(self.kernels[1].raw[4])
        return self.kernels[1].tun["t0"].take()

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


@pytest.fixture(params=[True, False], ids=["sparse", "fifo"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(request.param)
    yield p
    p.close()


def test_a_ping_among_bulk_leaves_first_and_nothing_is_lost(pair: Pair) -> None:
    big, offload = _super(0, 3)
    reads = [(_tcp(0), None), (big, offload), (_ping(1), None), (_tcp(9000), None)]
    got = pair.through(reads)
    segments = gso.split(big, offload)
    bulk = [_tcp(0), *segments, _tcp(9000)]
    if pair.a.sparse_first:
        assert got == [_ping(1), *bulk]
    else:
        assert got == [_tcp(0), *segments, _ping(1), _tcp(9000)]
    assert pair.b.engine.rx_accepted == 6 and sum(pair.b.engine.rx_drops.values()) == 0


def test_the_switch_and_its_default() -> None:
    assert ipsecd.parse_args([]).send_order == ipsecd.DEFAULT_SEND_ORDER == "sparse"
    assert ipsecd.parse_args(["--send-order=fifo"]).send_order == "fifo"
    assert DataPlane(Engine(), kernel=FakeKernel(FakeNetwork(), [A4])).sparse_first is True
