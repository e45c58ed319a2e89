"""The send pipeline: what the kernel routed into a tunnel device becomes ESP datagrams for the peer.

`send` takes the packets read from one device, in order, with the virtio-net header of those that ask
for offload work, and returns in order the `Burst`s to send (ESP datagrams with equal outer header
fields) and the ICMP errors to write back into the device (`Deliver`). A single packet is a batch of
one. The stages, in the order packets take them:

1. Tunnel and SA, once for the batch: the device's tunnel (`TunnelTable.get`) and the SA it sends with
   (`Plane.sa_for`).
2. Cut: a TCP super-packet (TSO) is cut into rows (`tso.tcp_rows`) and sealed many at a time
   (`SecurityAssociation.encrypt_rows`: `esp.seal_rows` for AEAD, `esp.seal_rows_cbc` for CBC with an
   HMAC) into a burst of its own, after the packets read before it, where the SA can and the segments
   fit the path; any other offloaded packet is cut by `gso.split` into segments that join the plain
   packets (one it refuses is dropped as `NOT_IP`).
3. Seal, packet by packet in order: the inner IPv4 (no options) or IPv6 header read in place, the packet
   trimmed to its IP length, `SecurityAssociation.encrypt` (`esp.seal_aead16` for AEAD with a 16-byte
   ICV, `esp.seal_aead16_esn` for the same with ESN, `esp.seal_cbc` for CBC with an HMAC, else
   `esp.seal`), gathered into bursts. A packet this does not read (not IP, IPv4
   options, a length that lies, too big for the path with DF) and every packet without tunnel or SA
   takes `_one`: `ip.parse`, the path MTU check (`inner_mtu`; too big with DF: `ip.too_big`, an ICMP
   error back into the device, within the rate limits), then the same seal.
4. Count: packets and inner bytes sent, on the plane and the tunnel, once for the batch.

The UDP ports of ESP-in-UDP come from `NatTraversal.encap_for` (the peer's port as last learned).
"""

from __future__ import annotations

from . import gso, ip, tso
from .drops import Drop
from .esp import NH_IPV4, NH_IPV6, block_trailer
from .gso import OffloadError, VnetHeader
from .plane import Burst, Deliver, Plane, inner_mtu
from .sa import SecurityAssociation
from .tunnel import Tunnel

__all__ = ["send"]

_NO_LIMIT = 1 << 17  # larger than any IP packet: the path MTU is not known
_TCP_GSO = (gso.GSO_TCPV4, gso.GSO_TCPV6)  # virtio-net GSO types of TCP super-packets (with or without ECN)


def send(
    plane: Plane, device: str, packets: list[bytes], now: float, offloads: dict[int, VnetHeader] | None = None
) -> list[Burst | Deliver]:
    """What to send for `packets`, read in this order from tunnel device `device`; `offloads`: the
    virtio-net header of each packet read with one that asks for work (GSO, a checksum), by its index
    in `packets` (stages 1-4 above)."""
    out: list[Burst | Deliver] = []
    # 1. Tunnel and SA
    tunnel = plane.tunnels.get(device)
    sa = plane.sa_for(tunnel) if tunnel is not None else None
    # 2. Cut
    if offloads:
        packets = _cut(plane, device, tunnel, sa, packets, offloads, now, out)
    # 3. Seal, and 4. count
    if packets:
        _seal(plane, device, tunnel, sa, packets, now, out)
    return out


def _cut(
    plane: Plane, device: str, tunnel: Tunnel | None, sa: SecurityAssociation | None, packets: list[bytes],
    offloads: dict[int, VnetHeader], now: float, out: list[Burst | Deliver],
) -> list[bytes]:  # fmt: skip
    """Stage 2: the offloaded packets cut, in order. Those sealed as rows go to `out` as bursts of their
    own, after the packets before them are sealed; returns the plain packets and segments after the last
    such burst, to seal."""
    plain: list[bytes] = []
    start = 0
    for index, offload in sorted(offloads.items()):
        plain += packets[start:index]
        start = index + 1
        packet = packets[index]
        rows = _rows(plane, device, tunnel, sa, packet, offload, now, plain, out)
        if rows is not None:
            out.append(rows)
            continue
        try:
            plain += gso.split(packet, offload)
        except OffloadError:
            plane.tx_drop(plane.stats_for(device), Drop.NOT_IP, device, now)
    plain += packets[start:]
    return plain


def _rows(
    plane: Plane, device: str, tunnel: Tunnel | None, sa: SecurityAssociation | None, packet: bytes,
    offload: VnetHeader, now: float, before: list[bytes], out: list[Burst | Deliver],
) -> Burst | None:  # fmt: skip
    """Stage 2's fast branch: the segments of TCP super-packet `packet` sealed many at a time, counted (the
    same ESP packets, counters and sequence numbers as `gso.split` and `_seal` give). The packets read
    before it (`before`) are sealed into `out` first, and emptied, so that sequence numbers follow the
    read order. None, with nothing of `packet` sent or counted, where its segments must go one by one:
    not TCP, an SA that cannot seal rows, segments too big for the path, a super-packet `tso.tcp_rows`
    refuses, or an SA that `encrypt_rows` declines."""
    if offload.gso_type & ~gso.GSO_ECN not in _TCP_GSO or tunnel is None or sa is None or not sa.seals_rows:
        return None
    if len(packet) < ip.IPV6_HEADER_LEN:
        return None
    if packet[0] == 0x45:
        tos, ttl, df, nh = packet[1], packet[8], bool(packet[6] & 0x40), NH_IPV4
    elif packet[0] >> 4 == 6:
        tos, ttl, df, nh = (packet[0] & 0x0F) << 4 | packet[1] >> 4, packet[7], True, NH_IPV6
    else:
        return None
    try:
        block = max(4, sa.cipher.block)  # RFC 4303 §2.4: at least ESP's 4-byte alignment
        groups = tso.tcp_rows(packet, offload, lambda size: block_trailer(size, nh, block))
    except OffloadError:
        return None
    path = plane.path_mtu.get(device)
    if df and path is not None and groups[0][1] > inner_mtu(sa, path):  # the full-sized are the largest
        return None
    if before:
        _seal(plane, device, tunnel, sa, before, now, out)
        before.clear()
    payloads = sa.encrypt_rows(groups, now, plane.emit)
    if payloads is None:
        return None
    count = len(payloads)
    stats = plane.stats_for(device)
    plane.tx_accepted += count
    stats.tx_packets += count
    stats.tx_bytes += sum(len(rows) * size for rows, size in groups)
    return Burst(sa.key[0], sa.key[1], tos, ttl, df, plane.nat.encap_for(sa), tunnel.nextdev, payloads)


def _seal(
    plane: Plane, device: str, tunnel: Tunnel | None, sa: SecurityAssociation | None, packets: list[bytes],
    now: float, out: list[Burst | Deliver],
) -> None:  # fmt: skip
    """Stages 3 and 4: `packets` sealed in order, appended to `out` as bursts of equal outer header
    fields; what the loop does not read itself goes through `_one`."""
    if tunnel is None or sa is None:
        for inner in packets:
            _one(plane, device, tunnel, sa, inner, now, out)
        return
    path = plane.path_mtu.get(device)
    limit = inner_mtu(sa, path) if path is not None else _NO_LIMIT
    encrypt, emit = sa.encrypt, plane.emit
    outer_dst, outer_src, encap, nextdev = sa.key[0], sa.key[1], plane.nat.encap_for(sa), tunnel.nextdev
    burst: Burst | None = None
    accepted = nbytes = 0
    for inner in packets:
        # ip.parse() inlined for the two common headers; anything else takes _one()
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
            _one(plane, device, tunnel, sa, inner, now, out)
            continue
        if length != size:
            inner = inner[:length]
        packet = encrypt(inner, nh, now, emit)
        if isinstance(packet, Drop):
            plane.tx_drop(plane.stats_for(device), packet, device, now)
            continue
        accepted += 1
        nbytes += length
        if burst is None or burst.tos != tos or burst.ttl != ttl or burst.df != df:
            burst = Burst(outer_dst, outer_src, tos, ttl, df, encap, nextdev, [])
            out.append(burst)
        burst.payloads.append(packet)
    if accepted:
        stats = plane.stats_for(device)
        plane.tx_accepted += accepted
        stats.tx_packets += accepted
        stats.tx_bytes += nbytes


def _one(
    plane: Plane, device: str, tunnel: Tunnel | None, sa: SecurityAssociation | None, inner: bytes,
    now: float, out: list[Burst | Deliver],
) -> None:  # fmt: skip
    """Stages 3 and 4 for one packet the loop does not read itself: a burst of its own, an ICMP error for
    the device, or a counted drop."""
    stats = plane.stats_for(device)
    if tunnel is None:
        plane.tx_drop(stats, Drop.NO_SA, device, now)
        return
    hdr = ip.parse(inner)
    if hdr is None:
        plane.tx_drop(stats, Drop.NOT_IP, device, now)
        return
    inner = inner[: hdr.length]
    if sa is None:
        plane.tx_drop(stats, Drop.NO_SA, device, now)
        return
    df = hdr.df
    path = plane.path_mtu.get(device)
    if path is not None:
        limit = inner_mtu(sa, path)
        if hdr.version == 6 and limit < len(inner) <= ip.IPV6_MIN_MTU:
            df = False  # IPv6 needs 1280 (RFC 8200 §5): outer fragments (RFC 4213 §3.2)
        elif hdr.version == 6:
            limit = max(limit, ip.IPV6_MIN_MTU)  # a "packet too big" never says less
        if len(inner) > limit and df:
            plane.tx_drop(stats, Drop.TOO_BIG, device, now)
            icmp = plane.icmp(hdr.src, now, lambda: ip.too_big(hdr.dst, inner, limit))
            if icmp is not None:
                out.append(Deliver(device, icmp))
            return
    packet = sa.encrypt(inner, NH_IPV4 if hdr.version == 4 else NH_IPV6, now, plane.emit)
    if isinstance(packet, Drop):
        plane.tx_drop(stats, packet, device, now)
        return
    plane.tx_accepted += 1
    stats.tx_packets += 1
    stats.tx_bytes += len(inner)
    encap = plane.nat.encap_for(sa)
    out.append(Burst(sa.key[0], sa.key[1], hdr.tos, hdr.ttl, df, encap, tunnel.nextdev, [packet]))
