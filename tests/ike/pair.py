"""Two `Ike` instances talking in memory: the initiator at 198.51.100.1, the responder at .2."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ipsec_tunnel.ike import ChildDown, ChildUp, Event, Ike, PeerConfig, PeerStatus, Send

A, B = "198.51.100.1", "198.51.100.2"
PSK = b"test-psk-for-unit-tests"


def config(name: str, local: str, remote: str, lnet: str, rnet: str, **kw: object) -> PeerConfig:
    remote = str(kw.pop("remote_addr", remote))
    kw.setdefault("psk", PSK)
    kw.setdefault("local_nets", (lnet,))
    kw.setdefault("remote_nets", (rnet,))
    return PeerConfig(name=name, local_addr=local, remote_addr=remote, **kw)  # type: ignore[arg-type]


class Pair:
    """a (initiator) and b (responder); `filter(sender, send) -> bool` may drop or alter datagrams."""

    def __init__(
        self,
        a_kw: dict[str, object] | None = None,
        b_kw: dict[str, object] | None = None,
        addrs: tuple[str, str] = (A, B),
        nets: tuple[str, str] = ("10.1.0.0/16", "10.2.0.0/16"),
    ) -> None:
        self.a = Ike(log_keys_for_test=True)
        self.b = Ike(log_keys_for_test=True)
        (a, b), (na, nb) = addrs, nets
        self.a.add_peer(config("tob", a, b, na, nb, **(a_kw or {})))
        self.b.add_peer(config("toa", b, a, nb, na, **(b_kw or {})))
        self.events: dict[str, list[Event]] = {"a": [], "b": []}
        self.wire: list[tuple[str, Send]] = []
        self.now = 0.0
        self.filter: Callable[[str, Send], Send | None] = lambda _who, s: s

    def ike(self, who: str) -> Ike:
        return self.a if who == "a" else self.b

    def pump(self, limit: int = 100) -> None:
        """Delivers datagrams until both are quiet."""
        for _ in range(limit):
            moved = False
            for who, other in (("a", "b"), ("b", "a")):
                for ev in self.ike(who).events():
                    moved = True
                    self.events[who].append(ev)
                    if isinstance(ev, Send):
                        self.wire.append((who, ev))
                        sent = self.filter(who, ev)
                        if sent is not None:
                            self.ike(other).datagram_received(sent.data, sent.remote, sent.local, self.now)
            if not moved:
                return
        raise AssertionError("no quiet after many rounds")

    def advance(self, seconds: float) -> None:
        """Moves the clock, running every timer due on both sides."""
        end = self.now + seconds
        while True:
            due = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = end

    def of(self, who: str, kind: type) -> list[Any]:
        return [e for e in self.events[who] if isinstance(e, kind)]

    def up(self, who: str) -> list[ChildUp]:
        return self.of(who, ChildUp)

    def down(self, who: str) -> list[ChildDown]:
        return self.of(who, ChildDown)

    def status(self, who: str) -> PeerStatus:
        return self.ike(who).peers()[0]


def replace(cfg: PeerConfig, **kw: object) -> PeerConfig:
    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]
