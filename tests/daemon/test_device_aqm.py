"""`--device-aqm` on the fakes: once the bulk flow's segments have waited in the device's ring above
target for an interval (by their TCP timestamps), A's data plane cuts one segment off a super-packet or
marks CE, counted as `Drop.DEVICE_AQM` (for the tunnel too) and `tx_ce_marked`, shown by `ipsecadm
stats`; B receives every other segment and the ping; off, nothing is judged."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.cli import render
from ipsec_tunnel.core import gso, ip
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import AqmOptions, DataPlane, OffloadOptions
from ipsec_tunnel.daemon.manager import Manager
from tests.support.fakes import FakeKernel, FakeNetwork

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
MSS = 1000
TARGET, INTERVAL = 0.002, 0.020
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _super(now: float, sojourn: float, seq: int, segments: int, ecn: int) -> tuple[bytes, gso.VnetHeader]:
    ts = math.floor((now - sojourn) * 1000) % 2**32
    packet = bytes(
        IP(src="10.0.1.1", dst="10.0.2.1", tos=ecn)
        / TCP(sport=5001, dport=5201, seq=seq, flags="A", options=[("NOP", None), ("NOP", None),
                                                                   ("Timestamp", (ts, 1))])
        / bytes(MSS * segments)
    )  # fmt: skip
    return packet, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, MSS, 20, 16)


def _ping() -> bytes:
    return bytes(IP(src="10.0.1.1", dst="10.0.2.1") / ICMP(id=7) / bytes(56))


class Pair:
    """Host A's data plane, with or without --device-aqm, sealing what t0 reads for host B's."""

    def __init__(self, aqm: AqmOptions | None, batch: int = 8) -> None:
        config = SAConfig(0x3000, B4, A4, "aes-gcm", KEY).validated()
        network = FakeNetwork()
        self.clock = Clock()
        self.planes: list[DataPlane] = []
        self.kernels: list[FakeKernel] = []
        for local, remote, device_aqm in ((A4, B4, aqm), (B4, A4, None)):
            engine = Engine()
            engine.tunnels.add(Tunnel("t0", local, remote))
            engine.sad.add(SecurityAssociation(config, 0.0))
            kernel = FakeKernel(network, [local])
            self.kernels.append(kernel)
            plane = DataPlane(
                engine, kernel=kernel, clock=self.clock, offloads=OffloadOptions(coalesce=False),
                device_aqm=device_aqm, batch_packets=batch,
            )  # fmt: skip
            plane.open_transports()
            plane.devices.create("t0")
            self.planes.append(plane)
        self.a, self.b = self.planes
        self.seq = 1

    def turn(self, sojourn: float, ecn: int = ip.ECN_NOT_ECT) -> list[bytes]:
        """A turn of A's t0 reading a ping and two 4-segment super-packets whose newest waited
        `sojourn` (with the default --batch of 8 the turn ends at its bound, before the ring is found
        empty): what B wrote into its t0."""
        tun = self.kernels[0].tun["t0"]
        tun.route(_ping())
        for _ in range(2):
            tun.route(*_super(self.clock.now, sojourn, self.seq, 4, ecn))
            self.seq += 4 * MSS
        self.a.on_tun(tun)
        self.b.on_raw(self.kernels[1].raw[4])
        return self.kernels[1].tun["t0"].take()

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair(AqmOptions(TARGET, INTERVAL))
    yield p
    p.close()


def _standing(pair: Pair) -> None:
    """Two turns: the flow's offset learnt, then above target; an interval later the next is judged."""
    for sojourn in (0.0, 0.005):
        assert len(pair.turn(sojourn)) == 9  # the ping and 8 segments
        pair.clock.now += 0.010
    pair.clock.now += INTERVAL


def test_a_standing_ring_loses_one_segment_counted_and_shown(pair: Pair) -> None:
    _standing(pair)
    written = pair.turn(0.005)
    assert len(written) == 8  # one segment of eight cut, the ping through
    assert sum(1 for p in written if IP(p).haslayer(ICMP)) == 1
    engine = pair.a.engine
    assert engine.tx_drops[Drop.DEVICE_AQM] == 1
    assert engine.stats_for("t0").tx_drops[Drop.DEVICE_AQM] == 1
    assert engine.tx_ce_marked == 0
    result = Manager.op_stats(SimpleNamespace(engine=engine), {})  # type: ignore[arg-type]
    assert result["send"]["device_aqm"] == 1 and result["tx_ce_marked"] == 0
    text = render.stats_text(result)
    assert "dropped, queue too long (device AQM)" in text and "ECN CE marked (device AQM)" in text


def test_an_ecn_capable_flow_is_marked_not_cut(pair: Pair) -> None:
    _standing(pair)
    written = pair.turn(0.005, ecn=ip.ECN_ECT0)
    assert len(written) == 9
    ce = [p for p in written if IP(p).haslayer(TCP) and IP(p).tos & 3 == ip.ECN_CE]
    assert len(ce) == 4  # the head super-packet's four segments
    assert pair.a.engine.tx_ce_marked == 1 and pair.a.engine.tx_drops[Drop.DEVICE_AQM] == 0


def test_a_ring_read_until_empty_is_never_judged_standing() -> None:
    p = Pair(AqmOptions(TARGET, INTERVAL), batch=256)
    try:
        _standing(p)
        for _ in range(5):
            assert len(p.turn(0.010)) == 9
            p.clock.now += INTERVAL
        assert p.a.engine.tx_drops[Drop.DEVICE_AQM] == 0 and p.a.ring_aqm
    finally:
        p.close()


def test_off_judges_nothing() -> None:
    p = Pair(None)
    try:
        _standing(p)
        for _ in range(5):
            assert len(p.turn(0.010)) == 9
            p.clock.now += INTERVAL
        assert p.a.ring_aqm == {} and p.a.engine.tx_drops[Drop.DEVICE_AQM] == 0
    finally:
        p.close()


def test_the_switch() -> None:
    assert ipsecd.parse_args([]).device_aqm is None
    assert ipsecd.parse_args(["--device-aqm=codel"]).device_aqm == AqmOptions(0.002, 0.020)
    assert ipsecd.parse_args(["--device-aqm=codel:5/100"]).device_aqm == AqmOptions(0.005, 0.1)
    with pytest.raises(SystemExit):
        ipsecd.parse_args(["--device-aqm=red"])


def test_a_removed_device_leaves_no_state(pair: Pair) -> None:
    _standing(pair)
    fd = pair.kernels[0].tun["t0"].fileno()
    assert fd in pair.a.ring_aqm
    pair.a.devices.remove("t0")
    assert fd not in pair.a.ring_aqm
