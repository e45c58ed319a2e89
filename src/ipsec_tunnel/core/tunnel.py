"""The tunnel table: tunnel devices, their outer addresses, and which device a received packet goes to."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from .drops import Drop
from .esp import NH_IPV4, NH_IPV6
from .sa import ConfigError, parse_address

__all__ = [
    "BASE_DEVICE",
    "IFNAMSIZ",
    "MAX_AUTO",
    "Network",
    "Tunnel",
    "TunnelError",
    "TunnelTable",
    "check_name",
    "parse_networks",
]

BASE_DEVICE = "ipsec0"  # the inactive catch-all device `modprobe ipsec` created
IFNAMSIZ = 16  # linux/if.h: interface names are at most 15 characters
MAX_AUTO = 99  # the original picked the first free ipsec1 .. ipsec99
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TunnelError(ConfigError):
    """A tunnel that cannot be added, changed or removed as asked (a bad name, address or network)."""


def check_name(name: str) -> str:
    """`name` if it can be a Linux interface name for a tunnel, else TunnelError."""
    if not name or len(name) >= IFNAMSIZ:
        raise TunnelError(f"Tunnel name must be 1 to {IFNAMSIZ - 1} characters: {name!r}")
    if not _NAME.match(name) or name in (".", ".."):
        raise TunnelError(f"Tunnel name may hold only letters, digits, '_', '.' and '-': {name!r}")
    return name


def parse_networks(texts: tuple[str, ...] | list[str]) -> tuple[Network, ...]:
    """The `--peer-net` CIDRs, or TunnelError."""
    nets: list[Network] = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise TunnelError(f"Bad network in --peer-net: {text!r}") from None
    return tuple(nets)


@dataclass(frozen=True)
class Tunnel:
    """A tunnel device and the outer addresses it carries traffic between."""

    name: str
    local: str
    remote: str
    spi: int = 0  # 0: the first SA added for (remote, local), shown as "any"
    nextdev: str | None = None
    peer_nets: tuple[str, ...] = ()
    networks: tuple[Network, ...] = field(default=(), compare=False, repr=False)

    def validated(self) -> Tunnel:
        """This tunnel with canonical addresses, or TunnelError."""
        check_name(self.name)
        if self.name == BASE_DEVICE:
            raise TunnelError(f"{BASE_DEVICE} is the base device and cannot be a tunnel", "EPERM")
        local = parse_address(self.local, "local", TunnelError)
        remote = parse_address(self.remote, "remote", TunnelError)
        if local.version != remote.version:
            raise TunnelError("Local and remote must both be IPv4 or both IPv6")
        if local == remote:
            raise TunnelError("Local and remote must differ")
        if self.spi and not 256 <= self.spi <= 0xFFFFFFFF:
            raise TunnelError(f"SPI {self.spi:#x} is reserved or out of range (valid: 0x100 to 0xffffffff)")
        if self.nextdev is not None:
            check_name(self.nextdev)
        nets = parse_networks(self.peer_nets)
        return replace(
            self, local=str(local), remote=str(remote), peer_nets=tuple(str(n) for n in nets), networks=nets
        )

    @functools.cached_property
    def local_packed(self) -> bytes:
        """The local outer address, packed."""
        return ipaddress.ip_address(self.local).packed

    @functools.cached_property
    def remote_packed(self) -> bytes:
        """The remote outer address, packed."""
        return ipaddress.ip_address(self.remote).packed

    def admit(self, inner: bytes, nh: int) -> Drop | None:
        """`sa.Admit` for this tunnel: POLICY for an inner IP packet whose source `--peer-net` does not
        allow, else None (any other fault is left to the checks after it)."""
        if nh not in (NH_IPV4, NH_IPV6) or not inner:
            return None
        version = inner[0] >> 4
        if version == 4 and len(inner) >= 20:
            return None if self.allows(inner[12:16]) else Drop.POLICY  # RFC 791 §3.1: source address
        if version == 6 and len(inner) >= 40:
            return None if self.allows(inner[8:24]) else Drop.POLICY  # RFC 8200 §3: source address
        return None

    def allows(self, inner_src: bytes) -> bool:
        """True when `inner_src` (packed) may arrive through this tunnel (`--peer-net`; none: any)."""
        if not self.networks:
            return True
        addr = ipaddress.ip_address(inner_src)
        return any(addr in net for net in self.networks if net.version == addr.version)


class TunnelTable:
    """The tunnels by name, plus the indexes the receive side chooses a device with."""

    def __init__(self) -> None:
        self._by_name: dict[str, Tunnel] = {}
        self._pair: dict[tuple[bytes, bytes], Tunnel] = {}
        self._remote: dict[bytes, Tunnel] = {}
        self._local: dict[bytes, Tunnel] = {}
        self.base_up = False  # whether ipsec0 is up and so catches packets no tunnel matches

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Tunnel]:
        return iter(list(self._by_name.values()))

    def _reindex(self) -> None:
        self._pair, self._remote, self._local = {}, {}, {}
        for t in self._by_name.values():
            self._pair[t.local_packed, t.remote_packed] = t
            self._remote.setdefault(t.remote_packed, t)
            self._local.setdefault(t.local_packed, t)

    def get(self, name: str) -> Tunnel | None:
        """The tunnel named `name`."""
        return self._by_name.get(name)

    def free_name(self) -> str:
        """The first free name of ipsec1 .. ipsec99, as the original picked for an empty name."""
        for i in range(1, MAX_AUTO + 1):
            if f"ipsec{i}" not in self._by_name:
                return f"ipsec{i}"
        raise TunnelError("No free tunnel name (ipsec1 .. ipsec99 are taken)", "ENOSPC")

    def _check_pair(self, tunnel: Tunnel, ignore: str | None) -> None:
        for other in self._by_name.values():
            if other.name != ignore and (other.local, other.remote) == (tunnel.local, tunnel.remote):
                raise TunnelError(
                    f"Tunnel {other.name} already connects {tunnel.local} and {tunnel.remote}", "EEXIST"
                )

    def add(self, tunnel: Tunnel) -> Tunnel:
        """Add a validated copy of `tunnel`; one tunnel per name and per (local, remote) pair."""
        tunnel = tunnel.validated()
        if tunnel.name in self._by_name:
            raise TunnelError(f"Tunnel {tunnel.name} already exists", "EEXIST")
        self._check_pair(tunnel, None)
        self._by_name[tunnel.name] = tunnel
        self._reindex()
        return tunnel

    def change(self, name: str, **fields: object) -> Tunnel:
        """Change only the given fields of tunnel `name`."""
        if name == BASE_DEVICE:
            raise TunnelError(f"{BASE_DEVICE} cannot be changed", "EPERM")
        old = self._by_name.get(name)
        if old is None:
            raise TunnelError(f"No such tunnel: {name}", "ENOENT")
        new = replace(old, **fields).validated()  # type: ignore[arg-type]
        self._check_pair(new, name)
        self._by_name[name] = new
        self._reindex()
        return new

    def remove(self, name: str) -> Tunnel:
        """Remove tunnel `name`."""
        if name == BASE_DEVICE:
            raise TunnelError(f"{BASE_DEVICE} cannot be removed", "EPERM")
        tunnel = self._by_name.pop(name, None)
        if tunnel is None:
            raise TunnelError(f"No such tunnel: {name}", "ENOENT")
        self._reindex()
        return tunnel

    def for_receive(self, local: bytes, remote: bytes) -> Tunnel | None:
        """The device for a packet from `remote` to `local` (packed): exact pair, else remote only, else
        local only; None when nothing matches (the caller then tries ipsec0)."""
        return self._pair.get((local, remote)) or self._remote.get(remote) or self._local.get(local)
