"""PersistentDevices without a kernel: link events for our devices (by interface index) become "gone"
and "renamed" for the manager, once each; events for other devices are ignored; lost events (ENOBUFS)
are made up for by asking the kernel again; stopping keeps the devices unless asked to remove them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from ipsec_tunnel.daemon.dataplane import DataPlane
from ipsec_tunnel.daemon.devices import PersistentDevices
from ipsec_tunnel.linux.netlink import LinkEvent
from tests.support.fakes import FakeTun


class FakeLoop:
    def __init__(self) -> None:
        self.watched: set[int] = set()

    def watch(self, fd: int, callback: Any) -> None:
        self.watched.add(fd)

    def unwatch(self, fd: int) -> None:
        self.watched.discard(fd)


class FakeMonitor:
    def __init__(self, events: list[LinkEvent] | None) -> None:
        self.events = events

    def read(self) -> list[LinkEvent] | None:
        return self.events

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        pass


@pytest.fixture
def devices() -> Iterator[tuple[PersistentDevices, FakeLoop, list[tuple[str, ...]]]]:
    loop = FakeLoop()
    made = PersistentDevices(cast(DataPlane, loop))
    told: list[tuple[str, ...]] = []
    made.on_gone = lambda name: told.append(("gone", name))
    made.on_renamed = lambda old, new: told.append(("renamed", old, new))
    queues = [FakeTun(name, vnet=False) for name in ("ipsec0", "ipsec1")]
    for index, queue in zip((5, 6), queues, strict=True):
        queue.persist = True  # a device ipsecd keeps across restarts
        made.tun[queue.name] = cast(Any, queue)
        made.index[index] = queue.name
        loop.watched.add(queue.fileno())
    yield made, loop, told
    for queue in queues:
        queue.close()


def test_deleted_and_renamed_devices_are_told_once(devices: Any) -> None:
    made, loop, told = devices
    made.monitor = FakeMonitor([
        LinkEvent(6, "wan0", 0, False), LinkEvent(6, "wan0", 1, False),  # renamed, then brought up
        LinkEvent(7, "eth9", 0, True),  # not ours
        LinkEvent(5, "ipsec0", 0, True),
    ])  # fmt: skip
    made.on_link_events()
    assert told == [("renamed", "ipsec1", "wan0"), ("gone", "ipsec0")]
    assert set(made.tun) == {"wan0"} and made.tun["wan0"].name == "wan0"
    assert loop.watched == {made.tun["wan0"].fileno()}, "the deleted device's queue is no longer watched"
    made.gone("ipsec0")  # the read error after the event: nothing more
    assert len(told) == 2


def test_lost_events_are_made_up_for_by_asking_the_kernel(
    devices: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, _loop, told = devices
    made.monitor = FakeMonitor(None)  # ENOBUFS

    def indextoname(index: int) -> str:
        if index == 5:
            raise OSError("no such device")
        return "lan1"

    monkeypatch.setattr(socket, "if_indextoname", indextoname)
    made.on_link_events()
    assert sorted(told) == [("gone", "ipsec0"), ("renamed", "ipsec1", "lan1")]


@pytest.mark.parametrize("remove", [False, True])
def test_stopping_keeps_the_devices_unless_asked(devices: Any, remove: bool) -> None:
    made, loop, _ = devices
    made.remove_on_exit = remove
    queues = list(made.tun.values())
    made.close_all()
    assert made.tun == {} and loop.watched == set()
    assert all(q.closed for q in queues)
    assert all(q.persist is not remove for q in queues)
