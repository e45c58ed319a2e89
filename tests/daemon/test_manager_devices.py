"""The manager's side of devices that change behind ipsecd's back (deleted: the tunnel goes, as by
`tunnel del`; renamed: the tunnel follows the new name, in the table and the state) and of the tunnel
MTU, never set below IPv6's 1280 (RFC 8200 §5). Fake devices, a real state store, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.tunnel import BASE_DEVICE
from ipsec_tunnel.daemon.manager import MIN_TUNNEL_MTU, Manager
from ipsec_tunnel.daemon.state import Store
from tests.support.fakes import FakeDevices

A, B = "192.0.2.1", "192.0.2.2"
KEY = "00" * 20


@pytest.fixture
def made(tmp_path: Path) -> tuple[Manager, FakeDevices, Path]:
    devices = FakeDevices()
    manager = Manager(Engine(), Store(tmp_path / "state"), devices, now=lambda: 1000.0)
    manager.handle("sa.add", {"spi": 0x1000, "dst": B, "src": A, "cipher": "aes-gcm", "cipher_key": KEY,
                              "duplex": True})  # fmt: skip
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A, "remote": B})
    return manager, devices, tmp_path / "state"


def names(manager: Manager) -> list[str]:
    return [t["name"] for t in manager.handle("tunnel.show", {})]


def test_a_deleted_device_removes_its_tunnel_and_it_can_be_added_again(
    made: tuple[Manager, FakeDevices, Path],
) -> None:
    manager, devices, _ = made
    devices.names.discard("ipsec1")  # what `ip link del` did
    manager.device_gone("ipsec1")
    assert names(manager) == []
    assert manager.store.load_tunnels() == []
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A, "remote": B})
    assert names(manager) == ["ipsec1"] and "ipsec1" in devices.names


def test_a_deleted_base_device_is_made_again(made: tuple[Manager, FakeDevices, Path]) -> None:
    manager, devices, _ = made
    manager.device_gone(BASE_DEVICE)
    assert BASE_DEVICE in devices.names and names(manager) == ["ipsec1"]


def test_a_renamed_device_renames_its_tunnel_in_the_table_and_the_state(
    made: tuple[Manager, FakeDevices, Path],
) -> None:
    manager, devices, _ = made
    before = manager.handle("tunnel.show", {"name": "ipsec1", "stats": True})[0]
    devices.names = (devices.names - {"ipsec1"}) | {"wan0"}  # what `ip link set ipsec1 name wan0` did
    manager.device_renamed("ipsec1", "wan0")
    assert names(manager) == ["wan0"]
    after = manager.handle("tunnel.show", {"name": "wan0", "stats": True})[0]
    assert {**after, "name": "ipsec1"} == before  # same addresses, MTU, SA, counters
    assert [t.name for t in manager.store.load_tunnels()] == ["wan0"]  # stored: a restart keeps it
    manager.handle("tunnel.add", {"name": "ipsec1", "local": A, "remote": "192.0.2.3"})
    assert sorted(names(manager)) == ["ipsec1", "wan0"]


@pytest.mark.parametrize("path", [1280, 1300, 576])
def test_the_tunnel_mtu_is_never_below_1280(made: tuple[Manager, FakeDevices, Path], path: int) -> None:
    manager, devices, _ = made
    devices.path = path
    manager.refresh_mtus()
    assert devices.mtu["ipsec1"] == MIN_TUNNEL_MTU == 1280
    assert manager.handle("tunnel.show", {"name": "ipsec1"})[0]["mtu"] == 1280


def test_the_tunnel_mtu_follows_a_path_above_the_minimum(made: tuple[Manager, FakeDevices, Path]) -> None:
    manager, devices, _ = made
    devices.path = 1500
    manager.refresh_mtus()
    assert 1400 < devices.mtu["ipsec1"] < 1500


def test_a_device_renamed_to_no_tunnel_name_goes_with_its_tunnel(
    made: tuple[Manager, FakeDevices, Path],
) -> None:
    manager, devices, _ = made
    devices.names = (devices.names - {"ipsec1"}) | {"wan:1"}
    manager.device_renamed("ipsec1", "wan:1")
    assert names(manager) == [] and manager.store.load_tunnels() == []
    assert "wan:1" not in devices.names
