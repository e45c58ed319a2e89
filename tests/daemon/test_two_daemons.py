"""Two complete daemons in one process, without root (as wireguard-go's TestTwoDevicePing): each is the
data plane, the manager and the engine of ipsecd, on the in-memory kernel of tests/support/fakes.py,
configured by ipsecadm command lines through the control protocol. An ICMP echo routed into A's tunnel
device comes out of B's, the reply comes back, over raw ESP and over ESP-in-UDP; a replayed datagram is
a replay drop and a forged one an authentication drop, and neither reaches the device; a super-packet
that cannot be cut is a counted drop."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP

from ipsec_tunnel.cli import ipsecadm
from ipsec_tunnel.control.protocol import (
    ProtocolError,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_result,
)
from ipsec_tunnel.core import gso
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.gso import VnetHeader
from ipsec_tunnel.core.tunnel import BASE_DEVICE
from ipsec_tunnel.daemon.dataplane import READ_AHEAD, DataPlane
from ipsec_tunnel.daemon.kernel import Kernel
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeKernel, FakeNetwork, FakeTun

NOW = 1000.0
A, B = "192.0.2.1", "192.0.2.2"
INNER_A, INNER_B = "10.0.1.1", "10.0.2.1"


class LocalClient:
    """ipsecadm's control client, answered in this process by a Manager: each call goes through the
    control protocol's encoding both ways, as over the socket."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        request = decode_request(encode_request(op, args))
        try:
            line = encode_result(self.manager.handle(request.op, request.args))
        except ProtocolError as exc:
            line = encode_error(exc.errno, exc.message)
        return decode_response(line)

    def close(self) -> None:
        pass


@dataclass
class Daemon:
    """One ipsecd: its fake kernel, engine, data plane, manager and state."""

    kernel: FakeKernel
    engine: Engine
    plane: DataPlane
    manager: Manager
    store: Store

    @property
    def client(self) -> LocalClient:
        return LocalClient(self.manager)

    def ipsecadm(self, *words: str) -> None:
        """Run one ipsecadm command line against this daemon; it must succeed."""
        assert ipsecadm.run(list(words), self.client) == 0  # type: ignore[arg-type]

    def device(self, name: str = "ipsec1") -> FakeTun:
        return self.kernel.tun[name]

    def drops(self) -> dict[str, int]:
        """The receive counters as `ipsecadm stats` gets them."""
        received: dict[str, int] = self.client.call("stats")["receive"]
        return received


def _start(
    tmp_path: Path, network: FakeNetwork, address: str, read_ahead: int = 0, tun_read_ahead: int = 0
) -> Daemon:
    """What daemon.main does, on the fake kernel."""
    kernel = FakeKernel(network, [address])
    edge: Kernel = kernel  # the fake is a Kernel (checked by mypy)
    engine = Engine()
    plane = DataPlane(
        engine, kernel=edge, clock=lambda: NOW, read_ahead=read_ahead, tun_read_ahead=tun_read_ahead
    )
    plane.open_transports()
    plane.devices.create(BASE_DEVICE)
    store = Store(tmp_path / address)
    manager = Manager(engine, store, plane.devices, now=lambda: NOW)
    return Daemon(kernel, engine, plane, manager, store)


def _pump(*daemons: Daemon) -> int:
    """Run the daemons' event loops until no source is ready; how many turns served something."""
    for turn in range(100):
        if not sum(d.plane.poll(0.0) for d in daemons):
            return turn
    raise AssertionError("the daemons never went quiet")


def _key(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(os.urandom(20))  # AES-128 key and 4-byte salt (RFC 4106)
    path.chmod(0o600)
    return str(path)


@pytest.fixture(
    params=["raw", "udp", "raw-read-ahead", "udp-read-ahead", "raw-tun-read-ahead", "udp-tun-read-ahead"]
)
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Daemon, Daemon, FakeNetwork, str]]:
    network = FakeNetwork()
    ahead = READ_AHEAD if request.param.endswith("read-ahead") else 0
    tun = 1 << 20 if "-tun-" in request.param else 0  # --tun-read-ahead=1m
    a, b = _start(tmp_path, network, A, ahead, tun), _start(tmp_path, network, B, ahead, tun)
    encap = ["--encap=udp"] if request.param.startswith("udp") else []
    a_to_b, b_to_a = _key(tmp_path, "a-to-b.key"), _key(tmp_path, "b-to-a.key")
    try:
        for d, local, remote in ((a, A, B), (b, B, A)):
            d.ipsecadm("sa", "add", "--spi=0x1000", f"--src={A}", f"--dst={B}", "--cipher=aes-gcm",
                       f"--cipher-keyfile={a_to_b}", *encap)  # fmt: skip
            d.ipsecadm("sa", "add", "--spi=0x2000", f"--src={B}", f"--dst={A}", "--cipher=aes-gcm",
                       f"--cipher-keyfile={b_to_a}", *encap)  # fmt: skip
            d.ipsecadm("tunnel", "add", "ipsec1", f"--local={local}", f"--remote={remote}")
        yield a, b, network, request.param
    finally:
        for d in (a, b):
            d.plane.close()
            d.store.close()


def _echo(src: str, dst: str, seq: int, reply: bool = False) -> bytes:
    return bytes(IP(src=src, dst=dst, id=seq) / ICMP(type=0 if reply else 8, id=7, seq=seq) / b"ping")


def _ping(a: Daemon, b: Daemon, seq: int) -> list[bytes]:
    """An echo from A's side into A's device; what came out of B's."""
    a.device().route(_echo(INNER_A, INNER_B, seq))
    _pump(a, b)
    return b.device().take()


def test_two_daemons_ping_each_other(pair: tuple[Daemon, Daemon, FakeNetwork, str]) -> None:
    a, b, network, encap = pair
    echo = _echo(INNER_A, INNER_B, 1)
    a.device().route(echo)
    _pump(a, b)
    assert b.device().take() == [echo]
    (outer,) = network.wire
    assert (outer.src, outer.dst) == (bytes((192, 0, 2, 1)), bytes((192, 0, 2, 2)))
    assert (outer.sport, outer.dport) == ((4500, 4500) if encap.startswith("udp") else (0, 0))
    assert outer.payload[:4] == bytes.fromhex("00001000") and b"ping" not in outer.payload  # SPI, sealed
    reply = _echo(INNER_B, INNER_A, 1, reply=True)
    b.device().route(reply)
    _pump(a, b)
    assert a.device().take() == [reply]
    assert network.wire[-1].payload[:4] == bytes.fromhex("00002000")
    assert a.drops()["accepted"] == b.drops()["accepted"] == 1
    assert a.engine.stats_for("ipsec1").tx_packets == b.engine.stats_for("ipsec1").tx_packets == 1


def test_a_replayed_datagram_is_dropped_as_a_replay(pair: tuple[Daemon, Daemon, FakeNetwork, str]) -> None:
    a, b, network, _ = pair
    assert len(_ping(a, b, 1)) == 1
    recorded = network.wire[-1]
    network.replay(recorded)
    _pump(a, b)
    assert b.device().take() == []
    assert b.drops()[Drop.REPLAYED.value] == 1 and b.drops()["accepted"] == 1
    assert len(_ping(a, b, 2)) == 1  # the SA goes on


def test_a_forged_datagram_is_dropped_as_unauthenticated(
    pair: tuple[Daemon, Daemon, FakeNetwork, str],
) -> None:
    a, b, network, _ = pair
    assert len(_ping(a, b, 1)) == 1
    recorded = network.wire[-1]
    esp = bytearray(recorded.payload)
    esp[4:8] = (50).to_bytes(4, "big")  # a sequence number not seen yet: past the replay check
    esp[20] ^= 0x01  # one bit of ciphertext changed
    network.carry(recorded._replace(payload=bytes(esp)))
    _pump(a, b)
    assert b.device().take() == []
    assert b.drops()[Drop.AUTH_FAILED.value] == 1 and b.drops()["accepted"] == 1
    assert len(_ping(a, b, 2)) == 1  # the forgery moved no window: number 2 is still taken
    assert b.drops()["accepted"] == 2


def test_a_super_packet_that_cannot_be_cut_is_a_counted_drop(
    pair: tuple[Daemon, Daemon, FakeNetwork, str],
) -> None:
    a, b, network, _ = pair
    bad = VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_UDP_L4, 28, 100, 20, 6)  # says UDP; the packet is ICMP
    a.device().route(_echo(INNER_A, INNER_B, 1) + bytes(300), bad)
    _pump(a, b)
    assert network.wire == []
    sent: dict[str, int] = a.client.call("stats")["send"]
    assert sent[Drop.NOT_IP.value] == 1 and sent["accepted"] == 0
    assert a.engine.stats_for("ipsec1").tx_drops[Drop.NOT_IP] == 1
    assert len(_ping(a, b, 2)) == 1
