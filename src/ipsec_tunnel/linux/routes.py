"""Routes into tunnel devices and the host's addresses, through iproute2 (`ip`): what IKE-negotiated
tunnels need (a route per remote network, its source an address of the local network when the host has
one)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

IP = shutil.which("ip") or "/usr/sbin/ip"
TIMEOUT = 5.0


class RouteError(OSError):
    """An `ip` command failed; the message is its one-line error."""


def _ip(*args: str) -> str:
    try:
        proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RouteError(f"ip {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["failed"]
        raise RouteError(f"ip {' '.join(args)}: {lines[0]}")
    return proc.stdout


def host_address_in(cidr: str) -> str | None:
    """An address of this host inside network `cidr`, or None when it has none there."""
    net = ipaddress.ip_network(cidr, strict=False)
    family = "-4" if net.version == 4 else "-6"
    try:
        data = json.loads(_ip("-j", family, "addr", "show") or "[]")
    except (RouteError, ValueError):
        return None
    for link in data:
        for info in link.get("addr_info", []):
            try:
                addr = ipaddress.ip_address(info.get("local", ""))
            except ValueError:
                continue
            if addr in net:
                return str(addr)
    return None


def link_up(device: str) -> None:
    """Bring `device` up."""
    _ip("link", "set", "dev", device, "up")


def replace_route(cidr: str, device: str, src: str | None) -> None:
    """Route `cidr` into `device` (from `src` when given), replacing any route to it."""
    net = str(ipaddress.ip_network(cidr, strict=False))
    args = ["route", "replace", net, "dev", device]
    if src is not None:
        args += ["src", src]
    _ip(*args)


def delete_route(cidr: str, device: str) -> None:
    """Remove the route to `cidr` through `device`, if there is one."""
    net = str(ipaddress.ip_network(cidr, strict=False))
    try:
        _ip("route", "del", net, "dev", device)
    except RouteError:
        pass
