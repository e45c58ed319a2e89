"""What one idle ping costs the loop, without root: the kernel calls of each hop counted on the in-memory
kernel (woken turns: each source read once, the answer served in the same turn), the error queue read
only on EPOLLERR, the IKE timer run only when due or after a served turn, the tunnel devices' descriptors
kept rather than rebuilt per answer."""

from __future__ import annotations

import collections
import os
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP

from ipsec_tunnel.cli import ipsecadm
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.gso import VnetHeader
from ipsec_tunnel.core.tunnel import BASE_DEVICE
from ipsec_tunnel.daemon import dataplane
from ipsec_tunnel.daemon.dataplane import DataPlane
from ipsec_tunnel.daemon.manager import Manager
from ipsec_tunnel.daemon.state import Store
from tests.daemon.test_two_daemons import LocalClient
from tests.support.fakes import FakeKernel, FakeNetwork, FakeTun, FakeUdp

NOW = 1000.0
A, B = "192.0.2.1", "192.0.2.2"
INNER_A, INNER_B = "10.0.1.1", "10.0.2.1"


class CountingEpoll:
    """The data plane's epoll, its polls counted."""

    def __init__(self, epoll: select.epoll) -> None:
        self.epoll = epoll
        self.polls = 0

    def poll(self, timeout: float = -1) -> list[tuple[int, int]]:
        self.polls += 1
        return self.epoll.poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.epoll, name)


class Host:
    """One daemon on the fake kernel with every kernel call of its edges counted."""

    def __init__(self, tmp: Path, network: FakeNetwork, address: str) -> None:
        self.kernel = FakeKernel(network, [address])
        self.engine = Engine()
        self.plane = DataPlane(self.engine, kernel=self.kernel, clock=lambda: NOW)
        self.plane.open_transports()
        self.plane.devices.create(BASE_DEVICE)
        self.store = Store(tmp / address)
        self.manager = Manager(self.engine, self.store, self.plane.devices, now=lambda: NOW)
        self.calls: collections.Counter[str] = collections.Counter()
        self.epoll = CountingEpoll(self.plane._epoll)
        self.plane._epoll = self.epoll  # type: ignore[assignment]

    def count(self, obj: object, *names: str, prefix: str) -> None:
        for name in names:
            method = getattr(obj, name)

            def counted(*args: Any, _m: Any = method, _n: str = f"{prefix}.{name}", **kw: Any) -> Any:
                self.calls[_n] += 1
                return _m(*args, **kw)

            setattr(obj, name, counted)

    def turn(self) -> dict[str, int]:
        """One woken turn (the loop slept before it): the kernel calls it made, epoll's included."""
        self.calls.clear()
        self.epoll.polls = 0
        self.plane.woken = True
        try:
            served = self.plane.poll(0.0)
        finally:
            self.plane.woken = False
        assert served, "nothing was ready"
        return {**self.calls, "epoll": self.epoll.polls}

    def close(self) -> None:
        self.plane.close()
        self.store.close()


def _echo(src: str, dst: str, seq: int, reply: bool = False) -> bytes:
    return bytes(IP(src=src, dst=dst, id=seq) / ICMP(type=0 if reply else 8, id=7, seq=seq) / b"ping")


def _answering(tun: FakeTun) -> None:
    """B's host stack: an echo request written into the device is answered into it at once (as the
    kernel does within the write)."""
    write = tun.write

    def write_and_answer(packet: bytes, offload: VnetHeader | None = None) -> int:
        n = write(packet, offload)
        if packet[20] == 8:  # ICMP echo request
            tun.route(_echo(INNER_B, INNER_A, int.from_bytes(packet[4:6], "big"), reply=True))
        return n

    tun.write = write_and_answer  # type: ignore[method-assign]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    network = FakeNetwork()
    a, b = Host(tmp_path, network, A), Host(tmp_path, network, B)
    keys = []
    for name in ("ab", "ba"):
        path = tmp_path / name
        path.write_bytes(os.urandom(20))
        keys.append(str(path))
    try:
        for h, local, remote in ((a, A, B), (b, B, A)):
            client = LocalClient(h.manager)
            for spi, src, dst, key in ((0x1000, A, B, keys[0]), (0x2000, B, A, keys[1])):
                assert ipsecadm.run(["sa", "add", f"--spi={spi:#x}", f"--src={src}", f"--dst={dst}",
                                     "--cipher=aes-gcm", f"--cipher-keyfile={key}", "--encap=udp"],
                                    client) == 0  # type: ignore[arg-type]  # fmt: skip
            assert ipsecadm.run(["tunnel", "add", "ipsec1", f"--local={local}", f"--remote={remote}"],
                                client) == 0  # type: ignore[arg-type]  # fmt: skip
            tun = h.kernel.tun["ipsec1"]
            udp = h.plane.udp[4]
            h.count(tun, "read", "write", prefix="tun")
            h.count(udp, "recv_batch", "send_burst", prefix="udp")
        _answering(b.kernel.tun["ipsec1"])
        yield a, b
    finally:
        a.close()
        b.close()


def test_an_idle_ping_costs_each_hop_its_reads_and_writes_only(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.kernel.tun["ipsec1"].route(_echo(INNER_A, INNER_B, 1))
    assert a.turn() == {"epoll": 1, "tun.read": 1, "udp.send_burst": 1}
    # B: the request in, into the device; the answer it made is read and sent within the same turn
    assert b.turn() == {"epoll": 2, "udp.recv_batch": 1, "tun.write": 1, "tun.read": 1, "udp.send_burst": 1}
    # A: the reply in, into the device; _answer looks once for an answer (there is none)
    assert a.turn() == {"epoll": 2, "udp.recv_batch": 1, "tun.write": 1}
    assert [p[20] for p in a.kernel.tun["ipsec1"].take()] == [0]  # the echo reply came through
    assert a.plane.udp[4].errors_polled == b.plane.udp[4].errors_polled == 0  # type: ignore[attr-defined]


def test_epollerr_drains_the_error_queue_and_reads_only_if_readable(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    udp = a.plane.udp[4]
    assert isinstance(udp, FakeUdp)
    a.calls.clear()
    udp.errors_queued = 1
    a.plane._dispatch([(udp.fileno(), select.EPOLLERR)])
    assert udp.errors_polled == 1 and a.calls == {}  # no receive: nothing to read
    a.plane._dispatch([(udp.fileno(), select.EPOLLIN)])
    assert udp.errors_polled == 1 and a.calls == {"udp.recv_batch": 1}  # no error-queue read
    a.calls.clear()
    udp.errors_queued = 1
    a.plane._dispatch([(udp.fileno(), select.EPOLLIN | select.EPOLLERR)])
    assert udp.errors_polled == 2 and a.calls == {"udp.recv_batch": 1}


def test_epollerr_with_an_empty_error_queue_reads_the_pending_error(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    udp = a.plane.udp[4]
    assert isinstance(udp, FakeUdp)
    a.calls.clear()
    a.plane._dispatch([(udp.fileno(), select.EPOLLERR)])  # the socket's own error, not queued
    assert udp.errors_polled == 1 and a.calls == {"udp.recv_batch": 1}  # the read returns and clears it


def test_a_source_without_an_error_queue_is_served_on_epollerr(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    served: list[int] = []
    r, w = os.pipe()
    try:
        a.plane.watch(r, lambda: served.append(1))
        a.plane._dispatch([(r, select.EPOLLERR | select.EPOLLHUP)])  # the control server's peer went away
        assert served == [1]
        a.plane.unwatch(r)
        assert r not in a.plane._drains
    finally:
        os.close(r)
        os.close(w)


def test_tunnel_device_descriptors_follow_create_and_remove(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    devices = a.plane.devices
    assert devices.fds == {q.fileno() for q in devices.tun.values()}
    devices.create("ipsec7")
    fd = devices.tun["ipsec7"].fileno()
    assert fd in devices.fds
    devices.remove("ipsec7")
    assert fd not in devices.fds and devices.fds == {q.fileno() for q in devices.tun.values()}


class Script:
    """A fake epoll for `DataPlane.run`: scripted event lists in turn, then stop."""

    def __init__(self, plane: DataPlane, script: list[list[tuple[int, int]]]) -> None:
        self.plane, self.script = plane, script

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        if not self.script:
            self.plane.running = False
            return []
        return self.script.pop(0)


def test_timer_runs_after_served_turns_and_when_due_only(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    plane = a.plane
    plane._handlers[99] = lambda: None
    ticks: list[float] = []
    due = [float("inf")]

    def timer(now: float) -> float | None:
        ticks.append(now)
        return None if due[0] == float("inf") else due[0]

    plane.timer = timer
    plane.periodic = lambda: None  # type: ignore[method-assign]
    epoll = plane._epoll
    try:
        # ticks before the first poll and after the once-a-second work that follows it; none for three
        # empty turns; one after the served turn; none for the empty turns after it
        plane._epoll = Script(plane, [[], [], [], [], [(99, 1)], [], []])  # type: ignore[assignment]
        plane.run()
        assert len(ticks) == 3
        ticks.clear()
        due[0] = 0.0  # a deadline already past: due at every turn
        plane.running = True
        plane._epoll = Script(plane, [[], [], []])  # type: ignore[assignment]
        plane.run()
        assert len(ticks) == 4
    finally:
        plane._epoll = epoll


def test_idle_work_runs_on_empty_turns_past_the_spin_budget(
    hosts: tuple[Host, Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run`'s idle work (the store's top-ups) runs when a poll found nothing and none had for
    IDLE_QUIET seconds, never on a served turn, and at most every IDLE_EVERY seconds."""
    a, _ = hosts
    plane = a.plane
    plane._handlers[99] = lambda: None
    plane.periodic = lambda: None  # type: ignore[method-assign]
    epoll = plane._epoll
    calls: list[int] = []
    try:
        for quiet, every, expected in ((0.0, 0.0, 4), (0.0, 1000.0, 1), (0.5, 0.0, 1)):
            # empty, served, empty, empty, served, then the empty turn that stops: with no quiet time
            # every empty turn qualifies; one longer than the script leaves only the first, before
            # anything was served
            monkeypatch.setattr(dataplane, "IDLE_EVERY", every)
            monkeypatch.setattr(dataplane, "IDLE_QUIET", quiet)
            calls.clear()
            plane.running = True
            plane._epoll = Script(plane, [[], [(99, 1)], [], [], [(99, 1)]])  # type: ignore[assignment]
            plane.run(idle=lambda: calls.append(1))
            assert len(calls) == expected, (quiet, every)
    finally:
        plane._epoll = epoll


def test_the_loop_notes_when_it_gave_the_cpu_up(
    hosts: tuple[Host, Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`yielded` (what `--turn-yield-us` counts from) moves when a poll found nothing (the loop yielded
    or slept) or woke the loop, not on a busy turn that followed another without a pause."""
    a, _ = hosts
    plane = a.plane
    clock = [100.0]
    seen: list[float] = []
    yields: list[float] = []
    plane.monotonic = lambda: clock[0]
    plane.spin = 0.05  # after a served turn, poll without sleeping
    plane.periodic = lambda: None  # type: ignore[method-assign]
    plane._handlers[99] = lambda: seen.append(plane.yielded)
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(clock[0]))

    class Ticking(Script):
        def poll(self, timeout: float) -> list[tuple[int, int]]:
            clock[0] += 10e-6  # each poll returns at once
            return super().poll(timeout)

    epoll = plane._epoll
    try:
        plane._epoll = Ticking(plane, [[(99, 1)], [(99, 1)], [], [(99, 1)]])  # type: ignore[assignment]
        plane.run()
    finally:
        plane._epoll = epoll
    first, fourth = 100.0 + 10e-6, 100.0 + 40e-6
    # the first turn follows the loop's start (woken); the second, busy, keeps it; the third found
    # nothing and yielded; the fourth follows that (the script's end is one more empty poll)
    assert seen == [pytest.approx(first), pytest.approx(first), pytest.approx(fourth)]
    assert yields == [pytest.approx(100.0 + 30e-6), pytest.approx(100.0 + 50e-6)]  # the third, the last
