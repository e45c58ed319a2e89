"""Network interface state and route queries, read from and written to the kernel.

Owns the classic interface ioctls (MTU, flags, index, transmit queue length), two read-only routing
questions (which MTU and which source address the kernel would use towards a destination) and whether
an address is local.
Nothing here sends a packet. All calls act in the network namespace of the calling thread.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct

from ipsec_tunnel.core.tunnel import IFNAMSIZ

__all__ = [
    "DEFAULT_TXQUEUELEN",
    "IFF_RUNNING",
    "IFF_UP",
    "exists",
    "get_flags",
    "get_mtu",
    "ifindex",
    "is_local_address",
    "is_up",
    "route_mtu",
    "route_source",
    "set_mtu",
    "set_txqueuelen",
    "set_up",
]


# linux/sockios.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFINDEX = 0x8933
SIOCSIFTXQLEN = 0x8943
DEFAULT_TXQUEUELEN = 5000  # ipsecd's tunnel devices: room for a burst of TSO segments (kernel: 500)

# linux/if.h, enum net_device_flags
IFF_UP = 0x1
IFF_RUNNING = 0x40

IP_MTU = 14  # linux/in.h
IPV6_MTU = 24  # linux/in6.h
SO_BINDTODEVICE = 25  # asm-generic/socket.h

# errno values connect(2) gives for a destination the kernel has no usable route to:
# no route, an "unreachable" route, a "prohibit" route, a "blackhole" route.
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EPERM, errno.EINVAL})

_IFREQ_INT = struct.Struct(f"{IFNAMSIZ}si20x")  # struct ifreq with ifr_mtu / ifr_ifindex
_IFREQ_SHORT = struct.Struct(f"{IFNAMSIZ}sH22x")  # struct ifreq with ifr_flags


def _name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise ValueError(f"invalid interface name: {name!r}")
    return raw


def _ioctl(request: int, ifreq: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        result: bytes = fcntl.ioctl(s.fileno(), request, ifreq)
        return result


def ifindex(name: str) -> int:
    """The interface index of ``name`` (SIOCGIFINDEX); OSError(ENODEV) if there is none."""
    _, index = _IFREQ_INT.unpack(_ioctl(SIOCGIFINDEX, _IFREQ_INT.pack(_name(name), 0)))
    return int(index)


def exists(name: str) -> bool:
    """Whether an interface called ``name`` exists."""
    try:
        ifindex(name)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise
    except ValueError:
        return False
    return True


def get_mtu(name: str) -> int:
    """The MTU of ``name`` (SIOCGIFMTU)."""
    _, mtu = _IFREQ_INT.unpack(_ioctl(SIOCGIFMTU, _IFREQ_INT.pack(_name(name), 0)))
    return int(mtu)


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of ``name`` (SIOCSIFMTU); OSError(EINVAL) outside the device's limits."""
    _ioctl(SIOCSIFMTU, _IFREQ_INT.pack(_name(name), mtu))


def set_txqueuelen(name: str, length: int = DEFAULT_TXQUEUELEN) -> bool:
    """Set device `name`'s transmit queue length (SIOCSIFTXQLEN); False if the kernel refused."""
    try:
        _ioctl(SIOCSIFTXQLEN, _IFREQ_INT.pack(_name(name), length))
    except OSError:
        return False
    return True


def get_flags(name: str) -> int:
    """The IFF_* flags of ``name`` (SIOCGIFFLAGS)."""
    _, flags = _IFREQ_SHORT.unpack(_ioctl(SIOCGIFFLAGS, _IFREQ_SHORT.pack(_name(name), 0)))
    return int(flags)


def set_up(name: str, up: bool) -> None:
    """Bring ``name`` administratively up or down (SIOCSIFFLAGS), leaving the other flags alone."""
    raw = _name(name)
    flags = get_flags(name)
    new = flags | IFF_UP if up else flags & ~IFF_UP
    if new != flags:
        _ioctl(SIOCSIFFLAGS, _IFREQ_SHORT.pack(raw, new))


def is_up(name: str) -> bool:
    """Whether ``name`` is administratively up (IFF_UP)."""
    return bool(get_flags(name) & IFF_UP)


def _connected_udp(dst: str, oif: str | None) -> socket.socket | None:
    """A UDP socket connected to ``dst`` (nothing is sent), or None if the kernel has no route."""
    addr = ipaddress.ip_address(dst.split("%", 1)[0])
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if oif is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, _name(oif))
        if family == socket.AF_INET6:
            scope = 0
            if "%" in dst:
                zone = dst.split("%", 1)[1]
                scope = int(zone) if zone.isdigit() else socket.if_nametoindex(zone)
            sock.connect((str(addr), 9, 0, scope))
        else:
            sock.connect((str(addr), 9))
    except OSError as exc:
        sock.close()
        if exc.errno in _NO_ROUTE:
            return None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def route_mtu(dst: str, *, oif: str | None = None) -> int | None:
    """The MTU the kernel would use towards ``dst`` (route or cached path MTU); None if unroutable.

    ``oif`` restricts the route lookup to that interface, as SO_BINDTODEVICE does (``--nextdev``).
    A scoped IPv6 address may be given as ``fe80::1%eth0``.
    """
    sock = _connected_udp(dst, oif)
    if sock is None:
        return None
    with sock:
        if sock.family == socket.AF_INET6:
            return int(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU))
        return int(sock.getsockopt(socket.IPPROTO_IP, IP_MTU))


def route_source(dst: str, *, oif: str | None = None) -> str | None:
    """The local address the kernel would send from towards ``dst``; None if unroutable."""
    sock = _connected_udp(dst, oif)
    if sock is None:
        return None
    with sock:
        src: str = sock.getsockname()[0]
        return src.split("%", 1)[0]


def no_ipv6_autoconf(name: str) -> None:
    """Give device `name` no IPv6 link-local address (so it sends no router solicitations or MLD reports
    of its own): addr_gen_mode 1, as point-to-point tunnels want. No error when IPv6 is absent."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode", "w") as f:
            f.write("1")
    except OSError:
        pass


IF_INET6 = "/proc/net/if_inet6"  # one line per IPv6 address of this namespace, the address in hex first


def is_local_address(address: str) -> bool:
    """Whether ``address`` is assigned to an interface of this network namespace. IPv6 addresses are
    read from /proc/net/if_inet6 (tentative ones included, so a fresh address counts at once); IPv4
    ones by binding a UDP socket to it, which the kernel refuses (EADDRNOTAVAIL) for any other."""
    addr = ipaddress.ip_address(address)
    if addr.version == 6:
        try:
            with open(IF_INET6, encoding="ascii") as f:
                return any(line.split(maxsplit=1)[:1] == [addr.packed.hex()] for line in f)
        except FileNotFoundError:  # IPv6 disabled: no IPv6 address is local
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.bind((str(addr), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
