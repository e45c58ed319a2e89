"""A test-only UDP driver for `Ike`: sockets on 500 and 4500 (non-ESP marker, RFC 3948 §2.2) in a
network namespace, a thread feeding datagrams and timers to the core and sending its `Send` events."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ipsec_tunnel.ike import Event, Ike, Send
from tests.support.netns import in_netns

MARKER = b"\0\0\0\0"


class Driver:
    """Runs `ike` on `addr` in netns `ns` until `close()`; events are collected in `self.log`."""

    def __init__(self, ike: Ike, ns: str, addr: str) -> None:
        self.ike = ike
        self.addr = addr
        self.lock = threading.Lock()
        self.log: list[Event] = []
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with in_netns(ns):
            self.socks = {}
            for port in (500, 4500):
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))
                self.socks[port] = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[Ike, float], None]) -> None:
        """Runs fn(ike, now) under the driver's lock and flushes the events."""
        with self.lock:
            fn(self.ike, time.monotonic())
            self._flush()

    def _flush(self) -> None:
        for ev in self.ike.events():
            self.log.append(ev)
            if isinstance(ev, Send):
                port = ev.local[1] if ev.local[1] in self.socks else 500
                data = MARKER + ev.data if 4500 in (ev.local[1], ev.remote[1]) else ev.data
                try:
                    self.socks[port].sendto(data, ev.remote)
                except OSError:
                    pass

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                nxt = self.ike.next_timer()
            timeout = 0.2 if nxt is None else max(0.0, min(0.2, nxt - time.monotonic()))
            ready, _, _ = select.select(list(self.socks.values()), [], [], timeout)
            with self.lock:
                now = time.monotonic()
                for s in ready:
                    data, peer = s.recvfrom(65535)
                    port = s.getsockname()[1]
                    if port == 4500:
                        if len(data) < 4 or data[:4] != MARKER:
                            continue  # ESP or a keepalive: not for IKE
                        data = data[4:]
                    self.ike.datagram_received(data, (self.addr, port), (peer[0], peer[1]), now)
                self.ike.handle_timer(now)
                self._flush()

    def events(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.log if isinstance(e, kind)]

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.05)
        return pred()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks.values():
            s.close()
