"""What both directions of the data plane share: the SA database, the tunnel table, the counters, the
ICMP error rate limits, the drop log and what NAT traversal learned (`Plane`), and the values the
pipelines hand the daemon (`Burst`, `Deliver`, `Reject`).

The pipelines themselves are `send.py` (device to wire) and `receive.py` (wire to device); `engine.py`
puts the three together as `Engine`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import ip, natt
from .diag import DropLog, DropRecord, spi_of
from .drops import Drop
from .esp import HEADER_LEN
from .events import SAEvent
from .sa import SecurityAssociation, UdpEncap
from .sad import SADatabase
from .tunnel import BASE_DEVICE, Tunnel, TunnelTable

__all__ = [
    "ICMP_BURST",
    "ICMP_RATE",
    "ICMP_SOURCES",
    "ICMP_TOTAL_BURST",
    "ICMP_TOTAL_RATE",
    "NAT_KEEPALIVE",
    "NON_ESP_MARKER",
    "UDP_HEADER_LEN",
    "Burst",
    "Deliver",
    "Outbound",
    "Plane",
    "Reject",
    "TunnelStats",
    "inner_mtu",
]

UDP_HEADER_LEN = 8  # RFC 768
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3: a one-byte 0xFF NAT-keepalive
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 §2.2: an IKE packet on the encapsulation port
ICMP_RATE = 10.0  # ICMP errors per second to one destination (RFC 1812 §4.3.2.8, RFC 4443 §2.4 (f))
ICMP_BURST = 20.0
ICMP_TOTAL_RATE = 100.0  # and to all destinations together
ICMP_TOTAL_BURST = 200.0
ICMP_SOURCES = 256  # destinations with a bucket of their own at most; the stalest is forgotten first


@dataclass(slots=True)
class Outbound:
    """One ESP datagram to send to the remote peer (`Engine.send`, a batch of one, gives it)."""

    dst: bytes  # packed outer destination
    src: bytes  # packed outer source
    payload: bytes  # the ESP packet (the UDP payload when `encap` is set)
    tos: int  # outer TOS / traffic class: DSCP copied, ECN per RFC 6040 §4.1
    ttl: int  # outer TTL / hop limit, inherited from the inner packet
    df: bool
    encap: UdpEncap | None
    nextdev: str | None


@dataclass(slots=True)
class Burst:
    """ESP datagrams to send to the remote peer in order, all with the same outer header fields."""

    dst: bytes  # packed outer destination
    src: bytes  # packed outer source
    tos: int
    ttl: int
    df: bool
    encap: UdpEncap | None
    nextdev: str | None
    payloads: list[bytes]


@dataclass(slots=True)
class Deliver:
    """A packet to write into a tunnel device (a decrypted inner packet, or an ICMP error for it)."""

    device: str
    packet: bytes


@dataclass(slots=True)
class Reject:
    """An ICMP error (a whole IP packet) to send to the outer sender."""

    packet: bytes


@dataclass
class TunnelStats:
    """Per-tunnel counters."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_drops: Counter[Drop] = field(default_factory=Counter)
    tx_drops: Counter[Drop] = field(default_factory=Counter)


def inner_mtu(sa: SecurityAssociation, path: int) -> int:
    """The largest inner packet that ESP tunnel mode with `sa` fits into `path` bytes: ESP's payload and
    trailer padded to the cipher's block, at least 4 bytes (RFC 4303 §2.4), as Linux's esp4_get_mtu."""
    c = sa.config
    outer = ip.IPV4_HEADER_LEN if c.family == 4 else ip.IPV6_HEADER_LEN
    udp = UDP_HEADER_LEN if c.encap else 0
    icv: int = sa.auth.icv_len if sa.auth else sa.cipher.icv_len
    block: int = max(4, sa.cipher.block)
    iv_len: int = sa.cipher.iv_len
    room = path - (outer + udp + HEADER_LEN + iv_len + icv)
    return room // block * block - 2  # 2: the pad length and next header bytes (RFC 4303 §2.5-2.6)


class Plane:
    """SAs, tunnels, counters, ICMP rate limits, the drop log and NAT state: what `send.send` and
    `receive.receive` work on."""

    def __init__(self) -> None:
        self.sad = SADatabase()
        self.tunnels = TunnelTable()
        self.path_mtu: dict[str, int] = {}  # tunnel name -> MTU of the path to its remote
        self.rx_accepted = 0
        self.tx_accepted = 0
        self.rx_drops: Counter[Drop] = Counter()
        self.tx_drops: Counter[Drop] = Counter()
        self.keepalives = 0
        self.ce_marked = 0  # received packets the AQM marked with ECN CE instead of dropping (core/codel.py)
        self.tx_ce_marked = 0  # packets read from a device that --device-aqm marked CE (core/ringaqm.py)
        self.tcp_windows_lowered = 0  # ACKs delivered whose window --tcp-queue lowered (core/tcpwin.py)
        self.bulk_flows = 0  # flows --flow-queues moved to a device's first queue, bulk (core/steer.py)
        self.sparse_held = 0  # TCP segments and datagrams of the small-datagram socket kept behind the bulk
        self.sparse_read = 0  # datagrams read from the small-datagram sockets (--flow-queues)
        self.turn_yields = 0  # times a bulk turn gave the CPU up for others (--turn-yield-us)
        # Takes (source, destination, source port, IKE message) for a datagram with the non-ESP marker on
        # the encapsulation port (RFC 3948 §2.2), the marker stripped; None: such datagrams are dropped.
        self.on_non_esp: Callable[[bytes, bytes, int | None, bytes], None] | None = None
        self.icmp_sent = 0
        self.tunnel_stats: dict[str, TunnelStats] = {BASE_DEVICE: TunnelStats()}
        self.events: list[SAEvent] = []
        self._icmp_total = (ICMP_TOTAL_BURST, 0.0)  # (tokens, when last filled) for all destinations
        self._icmp_buckets: dict[bytes, tuple[float, float]] = {}  # packed destination -> the same
        self.drop_log = DropLog()
        self._ticked = 0.0  # the last tick's `now`: the time of drops the kernel reports later (`unsent`)
        # (source, destination, UDP source port, now) of the datagrams being received: for the drop log
        self.rx_from: tuple[bytes, bytes, int | None, float] = (b"", b"", None, 0.0)
        self.nat = natt.NatTraversal()

    # -- helpers ----------------------------------------------------------------------------------------

    def emit(self, event: SAEvent) -> None:
        """Note an SA event for `take_events`."""
        self.events.append(event)

    def take_events(self) -> list[SAEvent]:
        """The events raised since the last call."""
        events, self.events = self.events, []
        return events

    def stats_for(self, name: str) -> TunnelStats:
        """The counters of tunnel (or base device) `name`."""
        stats = self.tunnel_stats.get(name)
        if stats is None:
            stats = self.tunnel_stats[name] = TunnelStats()
        return stats

    def icmp(self, to: bytes, now: float, build: Callable[[], bytes | None]) -> bytes | None:
        """The ICMP error `build` makes for destination `to` (packed), within the rate limits: a token
        bucket per destination and one for all, spent only when a message was built."""
        buckets = self._icmp_buckets
        tokens, stamp = buckets.get(to, (ICMP_BURST, now))
        tokens = min(ICMP_BURST, tokens + max(0.0, now - stamp) * ICMP_RATE)
        total, total_stamp = self._icmp_total
        total = min(ICMP_TOTAL_BURST, total + max(0.0, now - total_stamp) * ICMP_TOTAL_RATE)
        message = build() if tokens >= 1 and total >= 1 else None
        if message is not None:
            tokens, total = tokens - 1, total - 1
            self.icmp_sent += 1
        self._icmp_total = (total, now)
        if to in buckets:
            del buckets[to]  # re-inserted last: the dict's order is the least recently used first
        elif len(buckets) >= ICMP_SOURCES:
            del buckets[next(iter(buckets))]
        buckets[to] = (tokens, now)
        return message

    def sa_for(self, tunnel: Tunnel) -> SecurityAssociation | None:
        """The SA tunnel `tunnel` sends with now."""
        return self.sad.for_tunnel(tunnel.remote_packed, tunnel.local_packed, tunnel.spi)

    def mtu_for(self, tunnel: Tunnel) -> int | None:
        """The largest inner packet tunnel `tunnel` can carry on its path, or None when unknown."""
        path = self.path_mtu.get(tunnel.name)
        sa = self.sa_for(tunnel)
        if path is None or sa is None:
            return None
        return inner_mtu(sa, path)

    def tick(self, now: float) -> None:
        """Fire time-based lifetimes due at `now`."""
        self._ticked = now
        for sa in self.sad:
            sa.tick(now, self.emit)

    def keepalives_due(self, now: float) -> list[Burst]:
        """NAT-keepalives due at `now` (RFC 3948 §2.3: one 0xFF byte), one per ESP-in-UDP tunnel that
        sent nothing for its SA's keepalive interval; not counted as sent packets."""
        sending = {tunnel.name: (tunnel, self.sa_for(tunnel)) for tunnel in self.tunnels}
        by_sa = {id(sa): tunnel for tunnel, sa in sending.values() if sa is not None}
        due = self.nat.keepalives_due([sa for _t, sa in sending.values() if sa is not None], now)
        return [
            Burst(sa.key[0], sa.key[1], 0, 64, False, self.nat.encap_for(sa), by_sa[id(sa)].nextdev,
                  [NAT_KEEPALIVE])
            for sa in due
        ]  # fmt: skip

    def forget_tunnel(self, name: str) -> None:
        """Drop the counters of tunnel `name` (deleted, or added anew)."""
        self.tunnel_stats.pop(name, None)

    def unsent(self, burst: Burst, count: int, reason: Drop) -> None:
        """`count` datagrams of `burst` counted as sent never left: count them as dropped for `reason`,
        for the tunnel and the SA that sent them too, and note the first in the drop log."""
        self.tx_accepted -= count
        self.tx_drops[reason] += count
        tunnel = self.tunnels.for_receive(burst.src, burst.dst)
        if tunnel is not None:
            stats = self.stats_for(tunnel.name)
            stats.tx_packets -= count
            stats.tx_drops[reason] += count
            sa = self.sa_for(tunnel)
            if sa is not None:
                sa.drops[reason] += count
        spi = spi_of(burst.payloads[0]) if burst.payloads else None
        device = tunnel.name if tunnel is not None else "?"
        self.drop_log.add(DropRecord(self._ticked, reason, spi, burst.src, burst.dst, None, device))

    def undelivered(self, device: str, count: int, reason: Drop) -> None:
        """`count` packets counted as received that device `device` refused: count them as dropped, and
        note the first in the drop log (not logged: the data plane logs the refusal)."""
        self.rx_accepted -= count
        self.rx_drops[reason] += count
        stats = self.tunnel_stats.get(device)
        if stats is not None:
            stats.rx_packets -= count
            stats.rx_drops[reason] += count
        tunnel = self.tunnels.get(device)  # the packets' SAs are not known here: no SPI
        src, dst = (tunnel.remote_packed, tunnel.local_packed) if tunnel is not None else (b"", b"")
        self.drop_log.remember(DropRecord(self._ticked, reason, None, src, dst, into=device))

    def congested(self, device: str, marked: int, dropped: int) -> None:
        """The AQM signalled congestion on packets counted as received for device `device`: `marked` got
        ECN CE (still delivered), `dropped` were dropped (`Drop.AQM`)."""
        self.ce_marked += marked
        if dropped:
            self.undelivered(device, dropped, Drop.AQM)

    # -- counting drops (both directions) -------------------------------------------------------------------

    def unsendable(self, device: str, count: int, reason: Drop) -> None:
        """`count` packets read from device `device` that never reached the engine: count them as dropped
        for `reason`, for the tunnel too, and note the first in the drop log (not logged)."""
        self.tx_drops[reason] += count
        self.stats_for(device).tx_drops[reason] += count
        tunnel = self.tunnels.get(device)
        src, dst = (tunnel.local_packed, tunnel.remote_packed) if tunnel is not None else (b"", b"")
        self.drop_log.remember(DropRecord(self._ticked, reason, None, src, dst, None, device))

    def tx_drop(self, stats: TunnelStats, reason: Drop, device: str, now: float) -> Drop:
        """Count a packet read from device `device` that is not sent, for `reason`, on the plane and
        `stats`, and note it in the drop log with the SA (or tunnel) it would have gone with."""
        self.tx_drops[reason] += 1
        stats.tx_drops[reason] += 1
        tunnel = self.tunnels.get(device)
        sa = self.sa_for(tunnel) if tunnel is not None else None
        if sa is not None:
            record = DropRecord(now, reason, sa.config.spi, sa.key[1], sa.key[0], None, device)
        elif tunnel is not None:
            record = DropRecord(now, reason, None, tunnel.local_packed, tunnel.remote_packed, None, device)
        else:
            record = DropRecord(now, reason, None, b"", b"", None, device)
        self.drop_log.add(record)
        return reason

    def rx_drop(self, reason: Drop, stats: TunnelStats | None = None, esp: bytes = b"") -> Drop:
        """Count a received datagram that is not delivered, for `reason`, on the plane (and `stats`), and
        note it in the drop log with the origin of the batch being received (`rx_from`)."""
        self.rx_drops[reason] += 1
        if stats is not None:
            stats.rx_drops[reason] += 1
        src, dst, sport, now = self.rx_from
        self.drop_log.add(DropRecord(now, reason, spi_of(esp), src, dst, sport))
        return reason
