"""The kernel side of ipsecd's IKE: UDP port 500 sockets, IKE on the ESP-in-UDP port 4500 (the datagrams
with the non-ESP marker, RFC 3948 §2.2, handed over by the engine instead of dropped), sending with the
right socket, and the IKE timers driven by the data-plane loop."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from ..core.plane import NON_ESP_MARKER
from .dataplane import DataPlane
from .ike_runner import IKE_PORT, PER_TURN, IkeRunner
from .ike_store import IkeStore
from .kernel import UdpEdge
from .state import Store

log = logging.getLogger(__name__)

BUFFER = 1 << 20  # the port 500 sockets' buffers: a burst of IKE_SA_INIT waits here, not in memory


def _text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


class IkeIo:
    """Connects an `IkeRunner` to the data plane's loop and sockets."""

    def __init__(self, plane: DataPlane, runner: IkeRunner, port: int = IKE_PORT) -> None:
        self.plane = plane
        self.runner = runner
        self.port = port
        self.sockets: dict[int, UdpEdge] = {}
        runner.send = self.send

    def open(self) -> None:
        """Open UDP `port` (IPv4 and, where available, IPv6), take IKE from the encapsulation port, and
        let the loop drive the timers."""
        for family in (4, 6):
            try:
                sock = self.plane.kernel.open_udp(family, self.port, buffer=BUFFER)
            except OSError as exc:
                if family == 4:
                    raise OSError(exc.errno, f"cannot open IKE port {self.port}: {exc.strerror}") from None
                log.warning("no IPv6 IKE socket on port %d: %s", self.port, exc.strerror)
                continue
            self.sockets[family] = sock
            self.plane.watch(sock.fileno(), functools.partial(self.on_ike, sock), sock.poll_errors)
        self.plane.engine.on_non_esp = self.on_non_esp
        self.plane.timer = self.runner.tick

    def close(self) -> None:
        """Close the port 500 sockets."""
        self.plane.engine.on_non_esp = None
        self.plane.timer = None
        for sock in self.sockets.values():
            self.plane.unwatch(sock.fileno())
            sock.close()
        self.sockets.clear()

    def on_ike(self, sock: UdpEdge) -> None:
        """Queue what arrived on port 500 (a few per turn; the rest waits in the socket)."""
        for _ in range(PER_TURN):
            try:
                got = sock.recv_batch()
            except OSError as exc:
                log.debug("IKE receive failed: %s", exc)
                return
            if got is None:
                return
            d, payloads = got
            for payload in payloads:
                self.runner.datagram(payload, (_text(d.dst), self.port), (_text(d.src), d.sport))

    def on_non_esp(self, src: bytes, dst: bytes, sport: int | None, message: bytes) -> None:
        """An IKE message from the encapsulation port (the engine stripped the marker)."""
        port = self.plane.udp_port
        self.runner.datagram(message, (_text(dst), port), (_text(src), sport if sport is not None else port))

    def send(self, local: tuple[str, int], remote: tuple[str, int], data: bytes) -> None:
        """Send an IKE message from `local` to `remote`: on the encapsulation port with the marker."""
        family = ipaddress.ip_address(remote[0]).version
        natt = local[1] != self.port  # sent from the encapsulation port (RFC 7296 §2.23)
        sock = self.plane.udp.get(family) if natt else self.sockets.get(family)
        if sock is None:
            self.runner.unsent("no_socket")
            return
        payload = NON_ESP_MARKER + data if natt else data
        try:
            sock.send(remote[0], remote[1], payload, src=local[0])
        except OSError as exc:
            self.runner.unsent("send_failed")
            log.debug("IKE send to %s:%d failed: %s", remote[0], remote[1], exc.strerror or exc)

    def handler(self, fallback: Callable[[str, dict[str, Any]], Any]) -> Callable[[str, dict[str, Any]], Any]:
        """The control handler: `ike.*` here, the rest by `fallback` (with IKE's additions)."""
        return functools.partial(self.runner.handle, fallback=fallback)


def start_ike(
    plane: DataPlane, manager: Any, store: Store, port: int, keys_for_test: str | None = None
) -> IkeIo | None:
    """Wire IKEv2 into ipsecd (None when `port` is 0): IKE's CHILD SAs of the last run are purged from the
    store (they are negotiated again), the sockets opened. The caller restores the peers after the SAs."""
    ike_store = IkeStore(store)
    purged = ike_store.purge_children()
    if purged:
        log.info("dropped %d IKE-negotiated SAs of the last run (negotiated again)", purged)
    if not port:
        return None
    from .. import ike as ike_api  # the sans-I/O IKEv2 core

    key_log = None
    if keys_for_test:  # test only: every IKE and CHILD SA key, as JSON lines, for tshark
        log.warning("writing IKE and ESP keys to %s (--ike-keys-for-test): for tests only", keys_for_test)
        fd = os.open(keys_for_test, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

        def key_log(record: dict[str, Any]) -> None:
            os.write(fd, (json.dumps(record) + "\n").encode())

    ike = ike_api.Ike(log_keys_for_test=bool(keys_for_test))
    runner = IkeRunner(ike, ike_api.PeerConfig, manager, ike_store, key_log=key_log)
    io = IkeIo(plane, runner, port)
    io.open()
    return io
