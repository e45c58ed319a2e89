"""The data plane without I/O: an inner packet from a tunnel device becomes an outer ESP datagram, and a
received ESP datagram becomes an inner packet for a device, or a counted drop.

`Engine` owns the SA database, the tunnel table and the global counters; the daemon owns the sockets
and devices and calls `send`, `receive` and `tick` with the current time.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import cast

from . import ip, natt, tso
from .diag import DropLog, DropRecord, spi_of
from .drops import Drop
from .esp import HEADER_LEN, NH_IPV4, NH_IPV6, NH_NONE, aead16_trailer
from .events import SAEvent
from .gso import Offload, OffloadError
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
    "Engine",
    "Outbound",
    "Reject",
    "TunnelStats",
    "inner_mtu",
    "packed",
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
    """An ESP datagram to send to the remote peer."""

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


class Engine:
    """SAs, tunnels, counters and the per-packet work of both directions."""

    def __init__(self) -> None:
        self.sad = SADatabase()
        self.tunnels = TunnelTable()
        self.path_mtu: dict[str, int] = {}  # tunnel name -> MTU of the path to its remote
        self.rx_accepted = 0
        self.tx_accepted = 0
        self.rx_drops: Counter[Drop] = Counter()
        self.tx_drops: Counter[Drop] = Counter()
        self.keepalives = 0
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
        self._rx_from: tuple[bytes, bytes, int | None, float] = (b"", b"", None, 0.0)  # the datagrams' origin
        self.nat = natt.NatTraversal()

    # -- helpers ----------------------------------------------------------------------------------------

    def _emit(self, event: SAEvent) -> None:
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

    def _icmp(self, to: bytes, now: float, build: Callable[[], bytes | None]) -> bytes | None:
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
            sa.tick(now, self._emit)

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
        """`count` packets counted as received that device `device` refused: count them as dropped."""
        self.rx_accepted -= count
        self.rx_drops[reason] += count
        stats = self.tunnel_stats.get(device)
        if stats is not None:
            stats.rx_packets -= count
            stats.rx_drops[reason] += count

    def unsendable(self, device: str, count: int, reason: Drop) -> None:
        """`count` packets read from device `device` that never reached the engine (a super-packet the
        data plane could not cut, say): count them as dropped for `reason`, for the tunnel too."""
        self.tx_drops[reason] += count
        self.stats_for(device).tx_drops[reason] += count

    # -- send ---------------------------------------------------------------------------------------------

    def _tx_drop(self, stats: TunnelStats, reason: Drop, device: str, now: float) -> Drop:
        self.tx_drops[reason] += 1
        stats.tx_drops[reason] += 1
        tunnel = self.tunnels.get(device)
        sa = self.sa_for(tunnel) if tunnel is not None else None
        if sa is not None:
            record = DropRecord(now, reason, sa.config.spi, sa.key[1], sa.key[0], None, device)
        elif tunnel is not None:
            record = DropRecord(now, reason, None, packed(tunnel.local), packed(tunnel.remote), None, device)
        else:
            record = DropRecord(now, reason, None, b"", b"", None, device)
        self.drop_log.add(record)
        return reason

    def send(self, device: str, inner: bytes, now: float) -> Outbound | Deliver | Drop:
        """What to do with packet `inner` read from tunnel device `device`."""
        stats = self.stats_for(device)
        tunnel = self.tunnels.get(device)
        if tunnel is None:
            return self._tx_drop(stats, Drop.NO_SA, device, now)
        hdr = ip.parse(inner)
        if hdr is None:
            return self._tx_drop(stats, Drop.NOT_IP, device, now)
        inner = inner[: hdr.length]
        sa = self.sa_for(tunnel)
        if sa is None:
            return self._tx_drop(stats, Drop.NO_SA, device, now)
        path = self.path_mtu.get(device)
        if path is not None:
            limit = inner_mtu(sa, path)
            if hdr.version == 6 and limit < len(inner) <= ip.IPV6_MIN_MTU:
                hdr = replace(hdr, df=False)  # IPv6 needs 1280 (RFC 8200 §5): outer fragments (RFC 4213 §3.2)
            elif hdr.version == 6:
                limit = max(limit, ip.IPV6_MIN_MTU)  # a "packet too big" never says less
            if len(inner) > limit and hdr.df:
                self._tx_drop(stats, Drop.TOO_BIG, device, now)
                icmp = self._icmp(hdr.src, now, lambda: ip.too_big(hdr.dst, inner, limit))
                return Deliver(device, icmp) if icmp else Drop.TOO_BIG
        nh = NH_IPV4 if hdr.version == 4 else NH_IPV6
        packet = sa.encrypt(inner, nh, now, self._emit)
        if isinstance(packet, Drop):
            return self._tx_drop(stats, packet, device, now)
        self.tx_accepted += 1
        stats.tx_packets += 1
        stats.tx_bytes += len(inner)
        return Outbound(
            sa.key[0], sa.key[1], packet, hdr.tos, hdr.ttl, hdr.df, self.nat.encap_for(sa), tunnel.nextdev
        )

    def send_batch(self, device: str, packets: Iterable[bytes], now: float) -> list[Burst | Deliver]:
        """`send` for packets read from tunnel device `device` one after another: the same sequence
        numbers, counters, drops and ICMP errors, with the ESP datagrams gathered into bursts of equal
        outer header fields (in order)."""
        out: list[Burst | Deliver] = []
        tunnel = self.tunnels.get(device)
        sa = self.sa_for(tunnel) if tunnel is not None else None
        if tunnel is None or sa is None:
            for inner in packets:
                self._append(out, self.send(device, inner, now))
            return out
        path = self.path_mtu.get(device)
        limit = inner_mtu(sa, path) if path is not None else 1 << 17
        encrypt, emit = sa.encrypt, self._emit
        outer_dst, outer_src, encap, nextdev = sa.key[0], sa.key[1], self.nat.encap_for(sa), tunnel.nextdev
        burst: Burst | None = None
        accepted = nbytes = 0
        for inner in packets:
            # ip.parse() inlined for the two common headers; anything else takes send()'s path
            size = len(inner)
            if size >= ip.IPV4_HEADER_LEN and inner[0] == 0x45:
                length = inner[2] << 8 | inner[3]
                tos, ttl, df, nh = inner[1], inner[8], bool(inner[6] & 0x40), NH_IPV4
            elif size >= ip.IPV6_HEADER_LEN and inner[0] >> 4 == 6:
                length = ip.IPV6_HEADER_LEN + (inner[4] << 8 | inner[5])
                tos, ttl, df, nh = (inner[0] & 0x0F) << 4 | inner[1] >> 4, inner[7], True, NH_IPV6
            else:
                length = 0
            if not ip.IPV4_HEADER_LEN <= length <= size or (length > limit and df):
                burst = None
                self._append(out, self.send(device, inner, now))
                continue
            if length != size:
                inner = inner[:length]
            packet = encrypt(inner, nh, now, emit)
            if isinstance(packet, Drop):
                self._tx_drop(self.stats_for(device), packet, device, now)
                continue
            accepted += 1
            nbytes += length
            if burst is None or burst.tos != tos or burst.ttl != ttl or burst.df != df:
                burst = Burst(outer_dst, outer_src, tos, ttl, df, encap, nextdev, [])
                out.append(burst)
            burst.payloads.append(packet)
        if accepted:
            stats = self.stats_for(device)
            self.tx_accepted += accepted
            stats.tx_packets += accepted
            stats.tx_bytes += nbytes
        return out

    def send_tso(self, device: str, packet: bytes, offload: Offload, now: float) -> Burst | None:
        """`send_batch` of the segments of TCP super-packet `packet` (read with `offload`), made and sealed
        many at a time: the same ESP packets, counters and sequence numbers. None, with nothing sent or
        counted, where they must go one by one (`gso.split` and `send_batch`): an SA that cannot seal
        rows, segments too big for the path, or a super-packet `tso.tcp_rows` refuses."""
        tunnel = self.tunnels.get(device)
        sa = self.sa_for(tunnel) if tunnel is not None else None
        if tunnel is None or sa is None or not sa.seals_rows or len(packet) < ip.IPV6_HEADER_LEN:
            return None
        if packet[0] == 0x45:
            tos, ttl, df, nh = packet[1], packet[8], bool(packet[6] & 0x40), NH_IPV4
        elif packet[0] >> 4 == 6:
            tos, ttl, df, nh = (packet[0] & 0x0F) << 4 | packet[1] >> 4, packet[7], True, NH_IPV6
        else:
            return None
        try:
            groups = tso.tcp_rows(packet, offload, lambda size: aead16_trailer(size, nh))
        except OffloadError:
            return None
        path = self.path_mtu.get(device)
        if df and path is not None and groups[0][1] > inner_mtu(sa, path):  # the full-sized are the largest
            return None
        payloads = sa.encrypt_rows(groups, now, self._emit)
        if payloads is None:
            return None
        count = len(payloads)
        nbytes = sum(len(rows) * size for rows, size in groups)
        stats = self.stats_for(device)
        self.tx_accepted += count
        stats.tx_packets += count
        stats.tx_bytes += nbytes
        return Burst(sa.key[0], sa.key[1], tos, ttl, df, self.nat.encap_for(sa), tunnel.nextdev, payloads)

    @staticmethod
    def _append(out: list[Burst | Deliver], result: Outbound | Deliver | Drop) -> None:
        if isinstance(result, Outbound):
            out.append(
                Burst(result.dst, result.src, result.tos, result.ttl, result.df, result.encap,
                      result.nextdev, [result.payload])
            )  # fmt: skip
        elif isinstance(result, Deliver):
            out.append(result)

    # -- receive ------------------------------------------------------------------------------------------

    def receive_batch(
        self,
        src: bytes,
        dst: bytes,
        payloads: Iterable[bytes],
        now: float,
        tos: int = 0,
        *,
        udp: bool = False,
        sport: int | None = None,
    ) -> tuple[dict[str, list[bytes]], list[Reject]]:
        """`receive` (or `receive_udp` with `udp`) for datagrams that `src` sent to `dst` with outer TOS
        `tos`, one after another, through the same SA code: the inner packets per device, in order, and
        the ICMP errors to send. `sport`: the UDP source port they came from (port floating)."""
        self._rx_from = (src, dst, sport, now)
        deliver: dict[str, list[bytes]] = {}
        rejects: list[Reject] = []
        tunnel = self.tunnels.for_receive(dst, src)
        fast = (
            tunnel is not None
            and not tunnel.networks
            and (tos & ip.ECN_MASK) in (ip.ECN_NOT_ECT, ip.ECN_ECT0)
        )
        out: list[bytes] = deliver.setdefault(tunnel.name, []) if tunnel is not None else []
        admit = tunnel.admit if tunnel is not None and tunnel.networks else None
        emit = self._emit
        last_spi, sa, mismatch = b"", None, False
        accepted = nbytes = 0
        items = payloads if isinstance(payloads, list) else list(payloads)
        floating = self.nat.watch(src, dst, sport, items, self.sad) if sport is not None else None
        # The common batch, ESP of one SA: decrypted in one call (the same checks, packet by packet).
        decrypted: list[bytes | tuple[bytes, int] | Drop] | None = None
        first = items[0][:4] if len(items) > 1 else b""
        if (
            len(first) == 4
            and first != NON_ESP_MARKER
            and all(p[:4] == first and len(p) >= HEADER_LEN for p in items)
        ):
            sa = self.sad.get(dst, src, int.from_bytes(first, "big"))
            if sa is not None and (sa.config.encap is not None) != udp:
                self._encap_mismatch(sa, items)
                items = []
            elif sa is not None:
                decrypted, others = sa.decrypt_many(items, now, emit, admit)
                if fast and not others:  # whole inner IP packets, all of them: nothing to look at
                    whole = cast("list[bytes]", decrypted)
                    out += whole
                    accepted, nbytes = len(whole), sum(map(len, whole))
                    items = []
        for i, esp in enumerate(items):
            result: Deliver | Reject | Drop | None = None
            plain: tuple[bytes, int] | Drop | None = None  # None: not ESP for an SA (`result` says)
            if decrypted is not None:
                got = decrypted[i]  # a whole inner packet alone is named by its IP version
                plain = (got, NH_IPV4 if got[0] >> 4 == 4 else NH_IPV6) if isinstance(got, bytes) else got
            else:
                spi = esp[:4]
                if len(esp) < HEADER_LEN or (udp and (esp == NAT_KEEPALIVE or spi == NON_ESP_MARKER)):
                    result = (
                        self.receive_udp(src, dst, esp, now, tos, sport=sport)
                        if udp
                        else self.receive(src, dst, esp, now, tos, sport=sport)
                    )
                else:
                    if spi != last_spi:
                        last_spi, sa = spi, self.sad.get(dst, src, int.from_bytes(spi, "big"))
                        mismatch = sa is not None and (sa.config.encap is not None) != udp
                    if sa is None:
                        self._rx_drop(Drop.UNKNOWN_SA, esp=esp)
                        continue
                    if mismatch:
                        self._encap_mismatch(sa, [esp])
                        continue
                    plain = sa.decrypt(esp, now, emit, admit)
            if plain is not None:
                if isinstance(plain, Drop):
                    self._rx_drop(
                        plain, self.stats_for(tunnel.name) if plain is Drop.POLICY and tunnel else None, esp
                    )
                    continue
                inner, nh = plain
                # ip.parse() inlined for the common case; the rest goes the way receive() goes
                if fast and nh == NH_IPV4 and len(inner) >= ip.IPV4_HEADER_LEN and inner[0] == 0x45:
                    length = inner[2] << 8 | inner[3]
                elif fast and nh == NH_IPV6 and len(inner) >= ip.IPV6_HEADER_LEN and inner[0] >> 4 == 6:
                    length = ip.IPV6_HEADER_LEN + (inner[4] << 8 | inner[5])
                else:
                    length = 0
                if ip.IPV4_HEADER_LEN <= length <= len(inner):
                    out.append(inner if length == len(inner) else inner[:length])
                    accepted += 1
                    nbytes += length
                    continue
                result = self._decrypted(src, dst, esp, inner, nh, now, tos, tunnel)
            if isinstance(result, Deliver):
                deliver.setdefault(result.device, []).append(result.packet)
            elif isinstance(result, Reject):
                rejects.append(result)
        if accepted and tunnel is not None:
            stats = self.stats_for(tunnel.name)
            self.rx_accepted += accepted
            stats.rx_packets += accepted
            stats.rx_bytes += nbytes
        if tunnel is not None and not out:
            del deliver[tunnel.name]
        if floating is not None:
            self.nat.settle(floating, src, dst, sport, now)
        return deliver, rejects

    def _encap_mismatch(self, sa: SecurityAssociation, packets: list[bytes]) -> Drop:
        """Count `packets` for `sa` that came with the other encapsulation (raw ESP for an --encap=udp
        SA, or ESP-in-UDP for a raw-ESP one), on the SA too."""
        sa.drops[Drop.ENCAP_MISMATCH] += len(packets)
        for esp in packets:
            self._rx_drop(Drop.ENCAP_MISMATCH, esp=esp)
        return Drop.ENCAP_MISMATCH

    def _rx_drop(self, reason: Drop, stats: TunnelStats | None = None, esp: bytes = b"") -> Drop:
        self.rx_drops[reason] += 1
        if stats is not None:
            stats.rx_drops[reason] += 1
        src, dst, sport, now = self._rx_from
        self.drop_log.add(DropRecord(now, reason, spi_of(esp), src, dst, sport))
        return reason

    def receive_udp(
        self, src: bytes, dst: bytes, payload: bytes, now: float, tos: int = 0, *, sport: int | None = None
    ) -> Deliver | Reject | Drop | None:
        """A datagram from the ESP-in-UDP port (RFC 3948 §2): keepalives are absorbed (None)."""
        if payload == NAT_KEEPALIVE:
            self.keepalives += 1
            return None
        if payload[:4] == NON_ESP_MARKER:
            if self.on_non_esp is None:
                self._rx_from = (src, dst, sport, now)
                return self._rx_drop(Drop.NON_ESP)
            self.on_non_esp(src, dst, sport, payload[4:])
            return None
        return self.receive(src, dst, payload, now, tos, udp=True, sport=sport)

    def receive(
        self, src: bytes, dst: bytes, esp: bytes, now: float, tos: int = 0, *, udp: bool = False,
        sport: int | None = None,
    ) -> Deliver | Reject | Drop:  # fmt: skip
        """What to do with ESP packet `esp` that `src` sent to `dst` (packed outer addresses), in a UDP
        datagram (RFC 3948) with `udp`, from port `sport`."""
        self._rx_from = (src, dst, sport, now)
        if len(esp) < HEADER_LEN:
            return self._rx_drop(Drop.MALFORMED, esp=esp)
        spi = int.from_bytes(esp[:4], "big")
        sa = self.sad.get(dst, src, spi)
        if sa is None:
            return self._rx_drop(Drop.UNKNOWN_SA, esp=esp)
        if (sa.config.encap is not None) != udp:
            return self._encap_mismatch(sa, [esp])
        tunnel = self.tunnels.for_receive(dst, src)
        result = sa.decrypt(
            esp, now, self._emit, tunnel.admit if tunnel is not None and tunnel.networks else None
        )
        if isinstance(result, Drop):
            if result is Drop.POLICY and tunnel is not None:
                return self._rx_drop(result, self.stats_for(tunnel.name), esp)
            return self._rx_drop(result, esp=esp)
        return self._decrypted(src, dst, esp, result[0], result[1], now, tos, tunnel)

    def _decrypted(
        self, src: bytes, dst: bytes, esp: bytes, inner: bytes, nh: int, now: float, tos: int,
        tunnel: Tunnel | None,
    ) -> Deliver | Reject | Drop:  # fmt: skip
        """What to do with `inner`, decrypted from `esp` with next header `nh`; `tunnel` is
        `self.tunnels.for_receive(dst, src)`."""
        if nh == NH_NONE:
            return self._rx_drop(Drop.DUMMY, esp=esp)
        if nh not in (NH_IPV4, NH_IPV6):
            return self._rx_drop(Drop.NOT_TUNNEL_MODE, esp=esp)
        hdr = ip.parse(inner)
        if hdr is None or hdr.version != (4 if nh == NH_IPV4 else 6):
            return self._rx_drop(Drop.MALFORMED, esp=esp)
        inner = inner[: hdr.length]  # RFC 4303 §2.4: TFC padding after the inner packet
        if tunnel is None:
            if not self.tunnels.base_up:
                self._rx_drop(Drop.NO_TUNNEL, esp=esp)
                icmp = self._icmp(src, now, lambda: self._unreachable(src, dst, esp))
                return Reject(icmp) if icmp is not None else Drop.NO_TUNNEL
            device = BASE_DEVICE
        else:
            device = tunnel.name
            if not tunnel.allows(hdr.src):
                return self._rx_drop(Drop.POLICY, self.stats_for(device), esp=esp)
        stats = self.stats_for(device)
        ecn = ip.decap_ecn(hdr.tos & ip.ECN_MASK, tos & ip.ECN_MASK)
        if ecn is None:
            return self._rx_drop(Drop.ECN, stats, esp=esp)
        if ecn != hdr.tos & ip.ECN_MASK:
            inner = ip.set_ecn(inner, ecn)
        self.rx_accepted += 1
        stats.rx_packets += 1
        stats.rx_bytes += len(inner)
        return Deliver(device, inner)

    @staticmethod
    def _unreachable(src: bytes, dst: bytes, esp: bytes) -> bytes | None:
        """ICMP protocol-unreachable to `src` quoting the ESP packet it sent to `dst`."""
        if len(esp) > 0xFFFF - ip.IPV6_HEADER_LEN:  # no IP datagram carried it: no header can quote it
            return None
        if len(src) == 4:
            outer = ip.build_ipv4(src, dst, ip.PROTO_ESP, len(esp))
        else:
            outer = ip.build_ipv6(src, dst, ip.PROTO_ESP, len(esp))
        # The whole packet, so the quoted header's length is true; the ICMP builders trim the quote
        # (RFC 1812 §4.3.2.3: 576 bytes; RFC 4443 §2.4 (c): 1280).
        return ip.proto_unreachable(dst, outer + esp)


def packed(address: str) -> bytes:
    """An address in text form, packed."""
    return ipaddress.ip_address(address).packed
