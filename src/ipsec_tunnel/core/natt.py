"""NAT traversal for manually keyed ESP-in-UDP (RFC 3948): the peer's UDP port taken from authenticated
packets (port floating), and NAT-keepalives when nothing else went to a peer for a while.

Only the port floats, never the address: a manual SA is found by (destination, source, SPI), so a packet
from another address never reaches its SA; the address each side names for the other is the one it
sees (the NAT's public address on the outside host)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .sa import SecurityAssociation, UdpEncap
from .sad import SADatabase

__all__ = ["Floating", "NatTraversal", "Pair"]

Pair = tuple[bytes, bytes]  # (remote, local) outer addresses, packed


@dataclass(slots=True)
class Floating:
    """A batch from an unexpected port: its SA and the top of its window before the batch."""

    sa: SecurityAssociation
    top: int
    was: int | None  # the port sent to before (None: unknown)


@dataclass(slots=True)
class _Idle:
    packets: int  # the outbound SA's packet count when last looked at
    since: float  # when that count last changed, or the last keepalive went


class NatTraversal:
    """Learned peer ports and keepalive timers."""

    def __init__(self) -> None:
        self.ports: dict[Pair, int] = {}  # (remote, local) -> the UDP port the peer's packets come from
        self.notices: list[str] = []  # lines for the log
        self.keepalives_sent = 0
        self._idle: dict[bytes, _Idle] = {}  # keyed by outbound SA identity (dst, src, spi) packed

    # -- port floating -------------------------------------------------------------------------------

    def encap_for(self, sa: SecurityAssociation) -> UdpEncap | None:
        """The encapsulation to send `sa`'s packets with: its own, to the learned peer port if any."""
        encap = sa.config.encap
        if encap is None or not self.ports:
            return encap
        port = self.ports.get((sa.key[0], sa.key[1]))
        return encap if port is None or port == encap.dport else replace(encap, dport=port)

    def watch(
        self, src: bytes, dst: bytes, sport: int, items: list[bytes], sad: SADatabase
    ) -> Floating | None:
        """Before a batch of ESP-in-UDP from `src`:`sport` to `dst`: None when `sport` is the port we
        send to already (the common case, O(1)), else what `settle` needs after the batch."""
        was = self.ports.get((src, dst))
        if was == sport or not items:
            return None
        if was is None:  # nothing learned: the configured port of what we send to that peer
            out = sad.for_tunnel(src, dst, 0)
            if out is None or out.config.encap is None:
                return None
            was = out.config.encap.dport
            if was == sport:  # as configured: remembered, so the next batch needs one look-up only
                self.ports[(src, dst)] = sport
                return None
        head = items[0]
        if len(head) < 8:
            return None
        sa = sad.get(dst, src, int.from_bytes(head[:4], "big"))
        if sa is None or sa.config.encap is None:
            return None
        return Floating(sa, sa.replay.top, was)

    def settle(self, floating: Floating, src: bytes, dst: bytes, sport: int | None, now: float) -> None:
        """After the batch: when it raised its SA's highest authenticated sequence number (RFC 4303
        §3.4.3: ICV and replay checks passed), replies go to `sport` from now on."""
        if sport is None or floating.sa.replay.top <= floating.top:
            return
        self.ports[(src, dst)] = sport
        c = floating.sa.config
        self.notices.append(
            f"ESP-in-UDP peer {c.src} (SPI {c.spi:#x}) now sends from port {sport}, "
            f"not {floating.was}: a NAT; replies go to port {sport}"
        )

    def forget(self, remote: bytes, local: bytes) -> None:
        """Drop what was learned about peer `remote` (its SAs are gone)."""
        self.ports.pop((remote, local), None)

    # -- keepalives ----------------------------------------------------------------------------------

    def keepalives_due(
        self, outbound: Iterable[SecurityAssociation], now: float
    ) -> list[SecurityAssociation]:
        """The SAs, of those tunnels send with (`outbound`), whose peer needs a NAT-keepalive now (RFC
        3948 §2.3): ESP-in-UDP with a keepalive interval and nothing sent for that long."""
        due: list[SecurityAssociation] = []
        seen: dict[bytes, _Idle] = {}
        for sa in outbound:
            encap = sa.config.encap
            if encap is None or not encap.keepalive or sa.dead:
                continue
            ident = sa.key[0] + sa.key[1] + sa.key[2].to_bytes(4, "big")
            idle = self._idle.get(ident)
            if idle is None or idle.packets != sa.packets:
                idle = _Idle(sa.packets, now)
            elif now - idle.since >= encap.keepalive:
                idle.since = now
                due.append(sa)
            seen[ident] = idle
        self._idle = seen
        self.keepalives_sent += len(due)
        return due
