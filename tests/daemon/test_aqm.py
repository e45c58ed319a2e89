"""The data plane's AQM on the fakes: ESP-in-UDP datagrams that waited too long in the socket buffer (by
their kernel receive time) have their TCP packets marked CE or dropped, counted as `Drop.AQM` and in
`ce_marked`, shown by `ipsecadm stats`; anything else goes through; `--aqm` and its times parse."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.cli import render
from ipsec_tunnel.core import ip
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Burst
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import AqmOptions, DataPlane, OffloadOptions
from ipsec_tunnel.linux.udp import UdpDatagram
from tests.support.fakes import FakeKernel, FakeNetwork

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
WALL = 1_800_000_000.0  # the kernel's receive timestamps are wall-clock times
TARGET, INTERVAL = 0.001, 0.010


class Clock:
    """One settable time for the daemon's clock and the wall clock alike."""

    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


def _tcp(seq: int, ecn: int = ip.ECN_NOT_ECT) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.1.1", tos=ecn) / TCP(sport=5001, dport=40000, seq=seq,
                                                                   flags="A") / bytes(1000))  # fmt: skip


def _ping(ident: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.1.1") / ICMP(id=ident) / bytes(56))


class Receiver:
    """Host B's data plane with CoDel on its ESP-in-UDP socket, and host A's engine sealing for it."""

    def __init__(self, aqm: AqmOptions | None) -> None:
        config = SAConfig(0x1000, B4, A4, "aes-gcm", KEY, encap=UdpEncap()).validated()
        self.sender = Engine()
        self.sender.tunnels.add(Tunnel("t0", A4, B4))
        self.sender.sad.add(SecurityAssociation(config, 0.0))
        self.engine = Engine()
        self.engine.tunnels.add(Tunnel("t0", B4, A4))
        self.engine.sad.add(SecurityAssociation(config, 0.0))
        self.clock = Clock()
        self.kernel = FakeKernel(FakeNetwork(), [B4])
        self.plane = DataPlane(
            self.engine, kernel=self.kernel, clock=self.clock, wall=self.clock, aqm=aqm,
            offloads=OffloadOptions(coalesce=False),
        )  # fmt: skip
        self.plane.open_transports()
        self.plane.devices.create("t0")
        self.seq = 0

    def arrive(self, inner: list[bytes], waited: float) -> list[bytes]:
        """Seal `inner` on A, hand it to B's socket as one read the kernel received `waited` seconds
        ago, let B's loop take it; what B wrote into t0."""
        bursts = self.sender.send_batch("t0", inner, self.clock.now)  # one per outer TOS
        payloads = [p for burst in bursts if isinstance(burst, Burst) for p in burst.payloads]
        assert len(payloads) == len(inner)
        udp = self.kernel.udp[4, 4500]
        stamp = self.clock.now - waited
        udp.inbox.put((UdpDatagram(packed(A4), 4500, packed(B4), 0, b"", stamp), payloads))
        self.plane.on_udp(udp)
        return self.kernel.tun["t0"].take()

    def close(self) -> None:
        self.plane.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(AqmOptions(TARGET, INTERVAL))
    yield r
    r.close()


def test_a_standing_queue_gets_tcp_dropped_and_counted(receiver: Receiver) -> None:
    tcp = [_tcp(i * 1000) for i in range(8)]
    assert receiver.arrive(tcp, 0.005) == tcp  # above target: the interval starts, nothing dropped
    receiver.clock.now += INTERVAL
    written = receiver.arrive(tcp, 0.005)  # still above a whole interval later: one drop, the head
    assert written == tcp[1:]
    assert receiver.engine.rx_drops[Drop.AQM] == 1
    assert receiver.engine.stats_for("t0").rx_drops[Drop.AQM] == 1
    assert receiver.engine.rx_accepted == 15 and receiver.engine.stats_for("t0").rx_packets == 15
    receiver.clock.now += 0.001
    assert receiver.arrive(tcp, 0.0002) == tcp  # below target: no more drops
    assert receiver.engine.rx_drops[Drop.AQM] == 1


def test_ect_tcp_is_marked_not_dropped(receiver: Receiver) -> None:
    tcp = [_tcp(i * 1000, ip.ECN_ECT0) for i in range(4)]
    receiver.arrive(tcp, 0.005)
    receiver.clock.now += INTERVAL
    written = receiver.arrive(tcp, 0.005)
    assert len(written) == 4 and written[1:] == tcp[1:]
    assert IP(written[0]).tos & ip.ECN_MASK == ip.ECN_CE and ip.checksum(written[0][:20]) == 0
    assert receiver.engine.ce_marked == 1 and receiver.engine.rx_drops[Drop.AQM] == 0
    assert receiver.engine.rx_accepted == 8


def test_a_ping_is_never_dropped(receiver: Receiver) -> None:
    pings = [_ping(i) for i in range(4)]
    receiver.arrive(pings, 0.050)
    for _ in range(10):
        receiver.clock.now += INTERVAL
        assert receiver.arrive(pings, 0.050) == pings  # however late
    assert receiver.engine.rx_drops[Drop.AQM] == 0
    mixed = [_ping(9), _tcp(0), _ping(10)]
    receiver.clock.now += INTERVAL
    assert receiver.arrive(mixed, 0.050) == [_ping(9), _ping(10)]  # the TCP packet went instead
    assert receiver.engine.rx_drops[Drop.AQM] == 1


def test_without_aqm_late_packets_go_through() -> None:
    r = Receiver(None)
    try:
        tcp = [_tcp(i * 1000) for i in range(4)]
        for _ in range(5):
            assert r.arrive(tcp, 0.5) == tcp
            r.clock.now += 1.0
        assert r.engine.rx_drops[Drop.AQM] == 0 and r.plane.codel == {}
    finally:
        r.close()


def test_stats_show_aqm_drops_and_marks(receiver: Receiver) -> None:
    receiver.arrive([_tcp(0)], 0.005)
    receiver.clock.now += INTERVAL
    receiver.arrive([_tcp(1000), _tcp(2000, ip.ECN_ECT1)], 0.005)
    receiver.clock.now += INTERVAL
    receiver.arrive([_tcp(3000, ip.ECN_ECT1)], 0.005)
    engine = receiver.engine
    assert (engine.rx_drops[Drop.AQM], engine.ce_marked) == (1, 1)
    result = {"receive": {"aqm": 1}, "send": {}, "ce_marked": 1}
    text = render.stats_text(result)
    assert "dropped, queue too long (AQM)" in text and "ECN CE marked (AQM)" in text


# -- the options ---------------------------------------------------------------------------------------------


def test_aqm_defaults() -> None:
    args = ipsecd.parse_args([])
    assert args.aqm == ipsecd.DEFAULT_AQM == "none" and ipsecd.aqm(args) is None
    options = ipsecd.aqm(ipsecd.parse_args(["--aqm=codel"]))
    assert options == AqmOptions(ipsecd.DEFAULT_AQM_TARGET_MS / 1e3, ipsecd.DEFAULT_AQM_INTERVAL_MS / 1e3)


def test_aqm_options() -> None:
    args = ipsecd.parse_args(["--aqm=codel", "--aqm-target=0.5", "--aqm-interval=25"])
    assert ipsecd.aqm(args) == AqmOptions(0.0005, 0.025)
    assert ipsecd.aqm(ipsecd.parse_args(["--aqm=none", "--aqm-target=3"])) is None
    assert ipsecd.aqm(ipsecd.parse_args(["--aqm=codel"])) is not None


@pytest.mark.parametrize(
    "arg",
    [["--aqm=red"], ["--aqm-target=0"], ["--aqm-target=-1"], ["--aqm-target=x"], ["--aqm-target=nan"],
     ["--aqm-interval=inf"], ["--aqm-interval=20000"], ["--aqm-target=30", "--aqm-interval=20"]],
)  # fmt: skip
def test_bad_aqm_values_are_one_line_errors(arg: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args(arg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0


def test_raw_esp_late_reads_get_tcp_dropped() -> None:
    """The same over raw ESP: the socket notes when the first packet of each read arrived."""
    config = SAConfig(0x2000, B4, A4, "aes-gcm", KEY).validated()
    sender, engine = Engine(), Engine()
    sender.tunnels.add(Tunnel("t0", A4, B4))
    sender.sad.add(SecurityAssociation(config, 0.0))
    engine.tunnels.add(Tunnel("t0", B4, A4))
    engine.sad.add(SecurityAssociation(config, 0.0))
    clock = Clock()
    kernel = FakeKernel(FakeNetwork(), [B4])
    plane = DataPlane(
        engine, kernel=kernel, clock=clock, wall=clock, aqm=AqmOptions(TARGET, INTERVAL),
        offloads=OffloadOptions(coalesce=False),
    )  # fmt: skip
    try:
        plane.open_transports()
        plane.devices.create("t0")
        raw = kernel.raw[4]

        def arrive(inner: list[bytes], waited: float) -> list[bytes]:
            (burst,) = sender.send_batch("t0", inner, clock.now)
            assert isinstance(burst, Burst)
            for esp in burst.payloads:
                raw.inbox.put((packed(A4), packed(B4), 0, esp))
            raw.stamp = clock.now - waited
            plane.on_raw(raw)
            return kernel.tun["t0"].take()

        tcp = [_tcp(i * 1000) for i in range(4)]
        assert arrive(tcp, 0.005) == tcp
        clock.now += INTERVAL
        assert arrive([*tcp, _ping(1)], 0.005) == [*tcp[1:], _ping(1)]
        assert engine.rx_drops[Drop.AQM] == 1 and engine.rx_accepted == 8
        clock.now += 0.001
        assert arrive(tcp, 0.0001) == tcp
    finally:
        plane.close()


def test_a_drop_cuts_the_turn_in_two_writes_each_in_sequence(receiver: Receiver) -> None:
    """What was pending before a read with a drop is written before that read's packets, so that each
    write holds TCP segments in sequence (coalesced the fast way), not one batch with a hole."""
    calls: list[dict[str, list[bytes]]] = []
    signalled = 0

    def signal(_queue: object, deliver: dict[str, list[bytes]], _stamp: float, _count: int) -> bool:
        nonlocal signalled
        signalled += 1
        if signalled == 2:
            del deliver["t0"][0]  # the AQM's drop: the head of the second read
            return True
        return False

    def deliver(packets: dict[str, list[bytes]], *, counted: bool = True) -> None:
        calls.append({device: list(batch) for device, batch in packets.items()})

    receiver.plane._signal = signal  # type: ignore[method-assign,assignment]
    receiver.plane.deliver = deliver  # type: ignore[method-assign]
    udp = receiver.kernel.udp[4, 4500]
    tcp = [_tcp(i * 1000) for i in range(9)]
    for part in (tcp[:3], tcp[3:6], tcp[6:]):
        (burst,) = receiver.sender.send_batch("t0", part, receiver.clock.now)
        assert isinstance(burst, Burst)
        udp.inbox.put((UdpDatagram(packed(A4), 4500, packed(B4), 0, b"", WALL - 1), burst.payloads))
    receiver.plane.on_udp(udp)
    assert calls == [{"t0": tcp[:3]}, {"t0": tcp[4:]}]  # one turn, two writes, the hole between them
