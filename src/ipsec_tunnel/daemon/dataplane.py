"""The kernel side of ipsecd: tunnel devices and outer sockets, and the loop moving packets between them
through the engine. One event loop serves the data plane and the control socket, so no state is shared
between threads."""

from __future__ import annotations

import errno
import functools
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from ..core.drops import Drop
from ..core.engine import Deliver, Engine, Outbound, Reject
from ..core.tunnel import BASE_DEVICE
from ..linux import link
from ..linux.sockets import RawEsp, UdpEncap
from ..linux.tun import TunDevice, open_tun
from .manager import Devices

log = logging.getLogger(__name__)

BATCH = 64  # packets handled per readable event before other sources get a turn
NAT_T_PORT = 4500  # RFC 3948 §2


class KernelDevices(Devices):
    """Tunnel devices as real kernel TUN interfaces, registered with the event loop."""

    def __init__(self, loop: DataPlane) -> None:
        self.loop = loop
        self.tun: dict[str, TunDevice] = {}

    def create(self, name: str) -> None:
        if name in self.tun:
            return
        dev = open_tun(name)
        link.no_ipv6_autoconf(name)
        self.tun[name] = dev
        self.loop.watch(dev.fileno(), functools.partial(self.loop.on_tun, dev))

    def remove(self, name: str) -> None:
        dev = self.tun.pop(name, None)
        if dev is not None:
            self.loop.unwatch(dev.fileno())
            dev.close()

    def exists(self, name: str) -> bool:
        return link.exists(name)

    def set_mtu(self, name: str, mtu: int) -> None:
        link.set_mtu(name, mtu)

    def path_mtu(self, remote: str, nextdev: str | None) -> int | None:
        try:
            return link.route_mtu(remote, oif=nextdev)
        except OSError:
            return None

    def close_all(self) -> None:
        """Remove every device this daemon created."""
        for name in list(self.tun):
            self.remove(name)


class DataPlane:
    """The event loop: TUN devices, raw ESP and ESP-in-UDP sockets, and extra sources (the control server)."""

    def __init__(
        self, engine: Engine, *, udp_port: int = NAT_T_PORT, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.devices = KernelDevices(self)
        self.raw: dict[int, RawEsp] = {}
        self.udp: dict[int, UdpEncap] = {}
        self.icmp: dict[int, socket.socket] = {}
        self.udp_port = udp_port
        self.running = True

    # -- sources -------------------------------------------------------------------------------------------

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` whenever `fd` is readable."""
        self.sel.register(fd, selectors.EVENT_READ, callback)

    def unwatch(self, fd: int) -> None:
        """Stop watching `fd`."""
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def open_transports(self) -> None:
        """Open the raw ESP and UDP-encapsulation sockets for IPv4 and, where available, IPv6."""
        for family in (4, 6):
            try:
                raw = RawEsp(family)
            except OSError as exc:
                if family == 4:
                    raise
                log.warning("no IPv6 raw ESP socket: %s", exc.strerror)
                continue
            self.raw[family] = raw
            self.watch(raw.fileno(), functools.partial(self.on_raw, raw))
            try:
                udp = UdpEncap(family, self.udp_port)
            except OSError as exc:
                log.warning("no IPv%d ESP-in-UDP socket on port %d: %s", family, self.udp_port, exc.strerror)
            else:
                self.udp[family] = udp
                self.watch(udp.fileno(), functools.partial(self.on_udp, udp))
        v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        v4.setblocking(False)
        self.icmp[4] = v4
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            v6.setblocking(False)
            self.icmp[6] = v6
        except OSError:
            pass

    def close(self) -> None:
        """Close every socket and remove every device."""
        self.devices.close_all()
        for t in (*self.raw.values(), *self.udp.values()):
            t.close()
        for s in self.icmp.values():
            s.close()
        self.sel.close()

    # -- packet handlers -----------------------------------------------------------------------------------

    def on_tun(self, dev: TunDevice) -> None:
        """Encrypt and send what the kernel routed into tunnel device `dev`."""
        now = self.clock()
        name = dev.name
        for _ in range(BATCH):
            try:
                packet = dev.read()
            except OSError as exc:
                log.warning("read from %s failed: %s", name, exc.strerror)
                return
            if packet is None:
                return
            result = self.engine.send(name, packet, now)
            if isinstance(result, Outbound):
                self.transmit(result)
            elif isinstance(result, Deliver):
                self.deliver(result)

    def transmit(self, out: Outbound) -> None:
        """Send one ESP datagram to the remote peer."""
        family = 4 if len(out.dst) == 4 else 6
        try:
            if out.encap is None:
                raw = self.raw.get(family)
                if raw is None:
                    return
                raw.send(
                    out.dst, out.payload, tos=out.tos, ttl=out.ttl, df=out.df, src=out.src, oif=out.nextdev
                )
            else:
                udp = self.udp.get(family)
                if udp is None:
                    return
                udp.send(
                    out.dst,
                    out.encap.dport,
                    out.payload,
                    tos=out.tos,
                    ttl=out.ttl,
                    df=out.df,
                    src=out.src,
                    oif=out.nextdev,
                )
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
                self.engine.tx_drops[Drop.NO_ROUTE] += 1
            else:
                log.debug("send failed: %s", exc)

    def deliver(self, d: Deliver) -> None:
        """Write an inner packet into its tunnel device."""
        dev = self.devices.tun.get(d.device)
        if dev is None:
            return
        try:
            dev.write(d.packet)
        except OSError as exc:
            log.debug("write to %s failed: %s", d.device, exc.strerror)

    def reject(self, r: Reject) -> None:
        """Send an ICMP error to an outer sender."""
        try:
            if r.packet[0] >> 4 == 4:
                self.icmp[4].sendto(r.packet, (socket.inet_ntop(socket.AF_INET, r.packet[16:20]), 0))
            elif 6 in self.icmp:
                self.icmp[6].sendto(r.packet[40:], (socket.inet_ntop(socket.AF_INET6, r.packet[24:40]), 0))
        except OSError as exc:
            log.debug("ICMP send failed: %s", exc)

    def _received(self, result: Any) -> None:
        if isinstance(result, Deliver):
            self.deliver(result)
        elif isinstance(result, Reject):
            self.reject(result)

    def on_raw(self, raw: RawEsp) -> None:
        """Decrypt ESP packets from the raw socket."""
        now = self.clock()
        for _ in range(BATCH):
            try:
                dgram = raw.recv()
            except OSError as exc:
                log.debug("raw receive failed: %s", exc)
                return
            if dgram is None:
                return
            self._received(self.engine.receive(dgram.src, dgram.dst, dgram.esp, now, dgram.tos))

    def on_udp(self, udp: UdpEncap) -> None:
        """Decrypt ESP-in-UDP datagrams."""
        now = self.clock()
        for _ in range(BATCH):
            try:
                dgram = udp.recv()
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                return
            if dgram is None:
                return
            self._received(self.engine.receive_udp(dgram.src, dgram.dst, dgram.payload, now, dgram.tos))

    # -- the loop ------------------------------------------------------------------------------------------

    def periodic(self) -> None:
        """Once a second: time-based lifetimes, the base device's state, events to the log."""
        self.engine.tick(self.clock())
        try:
            self.engine.tunnels.base_up = link.is_up(BASE_DEVICE)
        except OSError:
            self.engine.tunnels.base_up = False
        for event in self.engine.take_events():
            log.warning(
                "SA %#x %s -> %s: %s (%s)", event.spi, event.src, event.dst, event.kind.value, event.limit
            )

    def run(self, every: Callable[[], None] | None = None) -> None:
        """Serve until `running` turns false."""
        last = 0.0
        while self.running:
            for key, _mask in self.sel.select(timeout=0.5):
                key.data()
            mono = time.monotonic()
            if mono - last >= 1.0:
                last = mono
                self.periodic()
                if every is not None:
                    every()
