"""Every failure visible (issue 12): failed sends and refused device writes are counted as drops, per
tunnel and SA, and logged rate-limited; an unknown --nextdev is refused; a tunnel's counters go with it;
a client that never reads its reply does not stall the loop; every text output speaks one vocabulary."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.cli import render
from ipsec_tunnel.control.protocol import ProtocolError, encode_request
from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Burst
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel, TunnelError
from ipsec_tunnel.daemon.dataplane import DataPlane
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.server import ControlServer
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeDevices

from .conftest import A4, B4, NOW

KEY = bytes(range(20))


def _engine() -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", A4, B4))
    engine.sad.add(SecurityAssociation(SAConfig(0x1000, B4, A4, "aes-gcm", KEY).validated(), 0.0))
    engine.sad.add(SecurityAssociation(SAConfig(0x1001, A4, B4, "aes-gcm", KEY[::-1]).validated(), 0.0))
    return engine


def _inner() -> bytes:
    from ipsec_tunnel.core import ip

    return ip.build_ipv4(bytes((10, 0, 0, 1)), bytes((10, 0, 1, 1)), 17, 8) + bytes(8)


class _FailingRaw:
    """A raw ESP socket whose every send fails with `error`."""

    def __init__(self, error: int) -> None:
        self.error = error

    def send_burst(self, dst: bytes, payloads: list[bytes], **_kw: Any) -> list[tuple[int, OSError]]:
        return [(len(payloads), OSError(self.error, os.strerror(self.error)))]

    def close(self) -> None:
        pass


def test_a_refused_send_is_a_counted_drop_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine()
    plane = DataPlane(engine, clock=lambda: NOW)
    plane.raw[4] = _FailingRaw(errno.EPERM)  # type: ignore[assignment]  # a firewall dropping ESP
    try:
        with caplog.at_level(logging.WARNING, logger="ipsec_tunnel.daemon.dataplane"):
            for _ in range(3):
                for burst in engine.send_batch("t0", [_inner(), _inner()], NOW):
                    assert isinstance(burst, Burst)
                    plane.transmit(burst)
        assert engine.tx_accepted == 0 and engine.tx_drops[Drop.SEND_ERROR] == 6
        stats = engine.stats_for("t0")
        assert stats.tx_packets == 0 and stats.tx_drops[Drop.SEND_ERROR] == 6
        sa = engine.sad.get(packed(B4), packed(A4), 0x1000)
        assert sa is not None and sa.drops[Drop.SEND_ERROR] == 6
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["send to 192.0.2.2 failed: Operation not permitted (2 packets dropped)"]
        plane.raw[4] = _FailingRaw(errno.ENETUNREACH)  # type: ignore[assignment]
        for burst in engine.send_batch("t0", [_inner()], NOW):
            plane.transmit(burst)  # type: ignore[arg-type]
        assert engine.tx_drops[Drop.NO_ROUTE] == 1 and engine.tx_accepted == 0
    finally:
        plane.close()


class _DownQueue:
    """A TUN queue of a device that is down: the kernel answers writes with EIO."""

    name = "t0"
    vnet = False

    def write(self, packet: bytes, offload: object = None) -> None:
        raise OSError(errno.EIO, "Input/output error")


def test_packets_for_a_down_device_are_dropped_not_accepted(caplog: pytest.LogCaptureFixture) -> None:
    sender, receiver = _engine(), Engine()
    receiver.tunnels.add(Tunnel("t0", B4, A4))
    for sa in sender.sad:
        receiver.sad.add(SecurityAssociation(sa.config, 0.0))
    plane = DataPlane(receiver, clock=lambda: NOW)
    plane.devices.tun["t0"] = _DownQueue()  # type: ignore[assignment]
    try:
        (burst,) = sender.send_batch("t0", [_inner(), _inner(), _inner()], NOW)
        assert isinstance(burst, Burst)
        deliver, _ = receiver.receive_batch(packed(A4), packed(B4), burst.payloads, NOW)
        with caplog.at_level(logging.INFO, logger="ipsec_tunnel.daemon.dataplane"):
            plane.deliver(deliver)
        assert receiver.rx_accepted == 0 and receiver.rx_drops[Drop.DEVICE_DOWN] == 3
        assert receiver.stats_for("t0").rx_packets == 0
        assert receiver.stats_for("t0").rx_drops[Drop.DEVICE_DOWN] == 3
        assert [r.getMessage() for r in caplog.records] == ["packet for t0 dropped: the device is down"]
        # in `stats --last-drops` too, once per refused write (three), without a second log line
        assert [r.text() for r in receiver.drop_log.ring] == [f"device down: from {A4} to {B4}, into t0"] * 3
        record = receiver.drop_log.ring[-1]
        assert record.to_dict()["into"] == "t0" and "device" not in record.to_dict()
        assert render.stats_text({"last_drops": [record.to_dict()]}).splitlines()[-1] == (
            f"  device down: from {A4} to {B4}, into t0"
        )
        assert receiver.drop_log.take_lines() == []
    finally:
        plane.devices.tun.clear()
        plane.close()


def test_drops_counted_outside_the_engine_are_in_the_drop_log() -> None:
    """The device AQM's drops on the way out and the receive AQM's are listed by `stats --last-drops`
    with the tunnel's addresses and device, one record per call; an unknown device has no addresses."""
    engine = _engine()
    engine.tick(NOW)
    engine.unsendable("t0", 4, Drop.DEVICE_AQM)
    engine.congested("t0", 1, 2)
    engine.undelivered("gone", 1, Drop.DEVICE_DOWN)
    assert [r.text() for r in engine.drop_log.ring] == [
        f"queue too long (device AQM): from {A4} to {B4}, sending on t0",
        f"queue too long (AQM): from {B4} to {A4}, into t0",
        "device down: from ? to ?, into gone",
    ]
    assert [r.time for r in engine.drop_log.ring] == [NOW] * 3
    assert engine.tx_drops[Drop.DEVICE_AQM] == 4 and engine.rx_drops[Drop.AQM] == 2
    assert engine.drop_log.take_lines() == []


@pytest.fixture
def manager(tmp_path: Path) -> Any:
    store = Store(tmp_path / "state")
    devices = FakeDevices()
    devices.names.add("eth0")
    m = Manager(Engine(), store, devices, now=lambda: NOW)
    yield m
    store.close()


def test_an_unknown_nextdev_is_refused_in_one_line(manager: Manager) -> None:
    with pytest.raises((TunnelError, ProtocolError), match="No such device for --nextdev: nosuchdev") as info:
        manager.handle("tunnel.add", {"name": "ipsec5", "local": A4, "remote": B4, "nextdev": "nosuchdev"})
    assert getattr(info.value, "errno", None) == "ENODEV"
    assert manager.engine.tunnels.get("ipsec5") is None
    manager.handle("tunnel.add", {"name": "ipsec5", "local": A4, "remote": B4, "nextdev": "eth0"})
    with pytest.raises((TunnelError, ProtocolError), match="nosuchdev"):
        manager.handle("tunnel.change", {"name": "ipsec5", "nextdev": "nosuchdev"})


def test_counters_go_with_the_tunnel(manager: Manager) -> None:
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A4, "remote": B4})
    stats = manager.engine.stats_for("ipsec1")
    stats.rx_packets, stats.tx_packets = 44, 44
    stats.rx_drops[Drop.POLICY] += 2
    manager.handle("tunnel.del", {"name": "ipsec1"})
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A4, "remote": "192.0.2.9"})
    (shown,) = manager.handle("tunnel.show", {"name": "ipsec1", "stats": True})
    assert shown["stats"]["rx_packets"] == 0 and shown["stats"]["tx_packets"] == 0
    assert shown["stats"]["rx_drops"] == {}


def test_stats_last_drops(manager: Manager) -> None:
    engine = manager.engine
    engine.receive_udp(packed("203.0.113.254"), packed(A4), b"\x00\x00\x10\x00" + bytes(40), NOW, sport=4500)
    result = manager.handle("stats", {"last_drops": True})
    assert result["last_drops"][-1]["spi"] == 0x1000
    text = render.stats_text(result)
    assert "unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 192.0.2.1" in text
    assert "last_drops" not in manager.handle("stats", {})


def test_send_side_drops_are_in_the_drop_log_with_spi_and_addresses(tmp_path: Path) -> None:
    """Issue 12: a packet dropped on the way out is logged (rate-limited) and listed by `stats
    --last-drops` as receive-side drops are: SPI, outer addresses, and the device it came from."""
    engine = _engine()
    manager = Manager(engine, Store(tmp_path / "state"), FakeDevices({A4}), now=lambda: NOW)
    sa = engine.sad.get(packed(B4), packed(A4), 0x1000)
    assert sa is not None
    sa.seq_out = sa.config.seq_max  # no number left to send with
    assert engine.send("t0", _inner(), NOW) is Drop.SEQ_EXHAUSTED
    assert engine.send("nope", _inner(), NOW + 1) is Drop.NO_SA
    engine.tick(NOW + 2)
    burst = Burst(packed(B4), packed(A4), 0, 64, False, None, None, [b"\x00\x00\x10\x00" + bytes(20)])
    engine.unsent(burst, 3, Drop.SEND_ERROR)
    assert engine.drop_log.take_lines() == [
        f"dropped, sequence exhausted: SPI 0x1000 from {A4} to {B4}, sending on t0",
        "dropped, unknown SA: sending on nope",
        f"dropped, send failed: SPI 0x1000 from {A4} to {B4}, sending on t0",
    ]
    result = manager.handle("stats", {"last_drops": True})
    assert [(d["reason"], d["spi"], d["device"]) for d in result["last_drops"]] == [
        ("seq_exhausted", 0x1000, "t0"), ("no_sa", None, "nope"), ("send_error", 0x1000, "t0"),
    ]  # fmt: skip
    assert result["last_drops"][0]["src"] == A4 and result["last_drops"][0]["dst"] == B4
    text = render.stats_text(result)
    assert f"  sequence exhausted: SPI 0x1000 from {A4} to {B4}, sending on t0" in text.splitlines()
    assert "  unknown SA: sending on nope" in text.splitlines()
    manager.store.close()


def test_text_outputs_use_the_labels_of_stats() -> None:
    sa = {"dst": B4, "src": A4, "spi": 0x1000, "cipher": "aes-gcm", "stats": {"drops": {"auth_failed": 2}}}
    assert "authentication failed=2" in render.sa_table([sa], True)
    tunnel = {
        "name": "t0",
        "local": A4,
        "remote": B4,
        "stats": {"rx_drops": {"policy": 2}, "tx_drops": {"no_sa": 1}},
    }
    text = render.tunnel_table([tunnel], True)
    assert "inner address not allowed=2" in text and "unknown SA=1" in text
    assert "no_sa" not in text and "policy=" not in text


def test_a_client_that_never_reads_does_not_stall_the_loop(tmp_path: Path) -> None:
    """10,000 SAs' worth of reply to a client that never reads: the loop keeps moving packets (a pipe
    echo stands in for the data plane) and serves other clients meanwhile."""
    plane = DataPlane(Engine())
    big = [{"spi": i, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "aes-gcm", "pad": "x" * 300}
           for i in range(10_000)]  # fmt: skip
    server = ControlServer(
        str(tmp_path / "s.sock"),
        lambda op, args: big if op == "sa.show" else {"pong": True},
        plane.watch, plane.unwatch, plane.writable,
    )  # fmt: skip
    r, w = os.pipe()
    echoed: list[float] = []

    def forward() -> None:
        os.read(r, 1)
        echoed.append(time.monotonic())

    plane.watch(r, forward)
    thread = threading.Thread(target=plane.run, daemon=True)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        thread.start()
        stuck.connect(str(tmp_path / "s.sock"))
        stuck.sendall(encode_request("sa.show", {}))  # and never reads
        time.sleep(0.3)
        for _ in range(5):
            sent = time.monotonic()
            os.write(w, b"x")
            deadline = sent + 2.0
            while len(echoed) < _ + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert len(echoed) == _ + 1 and echoed[-1] - sent < 0.5
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.settimeout(2.0)
        with other:
            other.connect(str(tmp_path / "s.sock"))
            other.sendall(encode_request("ping", {}))
            assert b'"pong":true' in other.recv(4096)
        assert len(server.clients) == 2 or len(server.clients) == 1  # the stuck one waits with its reply
        assert any(c.out for c in server.clients.values())
    finally:
        plane.running = False
        thread.join(5)
        stuck.close()
        server.close()
        plane.close()
        os.close(r)
        os.close(w)
