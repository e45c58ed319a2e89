"""In-memory fakes of the daemon's I/O edges, for tests without root."""

from __future__ import annotations

from ipsec_tunnel.daemon.manager import Devices


class FakeDevices(Devices):
    """Tunnel devices as a set of names, their MTUs recorded, one path MTU for every route (`path`);
    `local`: the addresses of this (fake) host, None for every address."""

    def __init__(self, local: set[str] | None = None, path: int = 1500) -> None:
        self.names: set[str] = set()
        self.mtu: dict[str, int] = {}
        self.path = path
        self.local = local

    def create(self, name: str) -> None:
        self.names.add(name)

    def remove(self, name: str) -> None:
        self.names.discard(name)

    def exists(self, name: str) -> bool:
        return name in self.names

    def set_mtu(self, name: str, mtu: int) -> None:
        self.mtu[name] = mtu

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        return self.path

    def is_local(self, address: str) -> bool:
        return self.local is None or address in self.local
