"""The receive pipeline: ESP datagrams from the wire become inner packets for tunnel devices, ICMP errors
for their sender, or counted drops.

`receive` takes the datagrams that one outer source sent to one outer destination with one TOS, in
order, and returns the inner packets per device (in order) and the ICMP errors to send. A single
datagram is a batch of one. The stages, in the order datagrams take them:

1. Origin, once for the batch: the tunnel the outer addresses name (`TunnelTable.for_receive`); whether
   its packets may go to it straight (`_straight`: no peer networks to check, an outer ECN that changes
   nothing); the policy the SA checks before its window moves (`Tunnel.admit`).
2. NAT: for ESP-in-UDP, the source port is noted (`NatTraversal.watch`, RFC 3948 port floating).
3. Open: a batch that is all ESP of one SA (`_one_sa`) is opened in one call,
   `SecurityAssociation.decrypt_many` (the replay window checked before any ICV, `esp.open_aead16_many`
   or `esp.open_cbc_many`, with or without ESN, the window moved after); any other goes one datagram at
   a time (`_each`): RFC 3948 NAT-keepalives absorbed and non-ESP markers handed to IKE
   (`Plane.on_non_esp`), the SA by (destination, source, SPI) (`SADatabase.get`), the encapsulation it
   expects, `SecurityAssociation.decrypt`.
4. Deliver: a whole inner IP packet, on the straight way, goes to the tunnel's list as it is; anything
   else takes `_inner`: next header (dummy 59, tunnel mode only), `ip.parse`, the device
   (`TunnelTable.for_receive`, else `ipsec0` when it is up, else an ICMP protocol unreachable for the
   sender, within the rate limits), `Tunnel.allows` (peer networks), `ip.decap_ecn` (RFC 6040).
5. Count: packets and bytes delivered the straight way, on the plane and the tunnel, once for the
   batch; then NAT traversal adopts a new source port once a datagram from it authenticated
   (`NatTraversal.settle`).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from . import ip
from .drops import Drop
from .esp import HEADER_LEN, NH_IPV4, NH_IPV6, NH_NONE
from .framing import native as _native
from .plane import NAT_KEEPALIVE, NON_ESP_MARKER, Deliver, Plane, Reject
from .sa import SecurityAssociation
from .tunnel import BASE_DEVICE, Tunnel

__all__ = ["receive"]

_SPI_FIELD = operator.itemgetter(slice(0, 4))  # RFC 4303 §2.1: the SPI field, as bytes

_Opened = list[bytes | tuple[bytes, int] | Drop]
"""What `SecurityAssociation.decrypt_many` gives per datagram: a whole inner IP packet alone, (inner
packet, next header), or why it was dropped."""


def receive(
    plane: Plane, src: bytes, dst: bytes, payloads: Iterable[bytes], now: float, tos: int = 0, *,
    udp: bool = False, sport: int | None = None,
) -> tuple[dict[str, list[bytes]], list[Reject]]:  # fmt: skip
    """What to deliver and reject for the datagrams `src` sent to `dst` (packed outer addresses) with
    outer TOS `tos`: ESP-in-UDP (RFC 3948) from port `sport` with `udp`, else raw ESP (stages 1-5)."""
    plane.rx_from = (src, dst, sport, now)
    batch = payloads if isinstance(payloads, list) else list(payloads)
    deliver: dict[str, list[bytes]] = {}
    rejects: list[Reject] = []
    # 1. Origin
    tunnel = plane.tunnels.for_receive(dst, src)
    straight = _straight(tunnel, tos)
    admit = tunnel.admit if tunnel is not None and tunnel.networks else None
    out = deliver.setdefault(tunnel.name, []) if tunnel is not None else []
    # 2. NAT
    floating = plane.nat.watch(src, dst, sport, batch, plane.sad) if sport is not None else None
    # 3. Open, and 4. deliver
    sa = _one_sa(plane, src, dst, batch)
    if sa is None:
        accepted, nbytes = _each(plane, src, dst, batch, None, now, tos, udp, tunnel, deliver, rejects)
    elif (sa.config.encap is not None) != udp:
        _encap_mismatch(plane, sa, batch)
        accepted = nbytes = 0
    else:
        opened, others = sa.decrypt_many(batch, now, plane.emit, admit)
        if straight and not others:  # whole inner IP packets, all of them: nothing to look at
            whole: list[bytes] = opened  # type: ignore[assignment]  # no call in the hot path (not cast)
            out += whole
            accepted, nbytes = len(whole), sum(map(len, whole))
        else:
            accepted, nbytes = _each(plane, src, dst, batch, opened, now, tos, udp, tunnel, deliver, rejects)
    # 5. Count
    if accepted and tunnel is not None:
        stats = plane.stats_for(tunnel.name)
        plane.rx_accepted += accepted
        stats.rx_packets += accepted
        stats.rx_bytes += nbytes
    if tunnel is not None and not out:
        del deliver[tunnel.name]
    if floating is not None:
        plane.nat.settle(floating, src, dst, sport, now)
    return deliver, rejects


def _straight(tunnel: Tunnel | None, tos: int) -> bool:
    """Stage 1: whether whole inner packets go to `tunnel` as they are: it has no peer networks to check,
    and outer ECN `tos` changes no inner packet (RFC 6040 §4.2: Not-ECT or ECT(0))."""
    return tunnel is not None and not tunnel.networks and (tos & ip.ECN_MASK) in (ip.ECN_NOT_ECT, ip.ECN_ECT0)


def _one_sa(plane: Plane, src: bytes, dst: bytes, datagrams: list[bytes]) -> SecurityAssociation | None:
    """Stage 3: the SA of a batch of two or more ESP datagrams with one SPI, for one call to
    `decrypt_many`; None for anything else (one datagram, mixed SPIs, keepalives, markers, runts, an
    unknown SPI), which goes one datagram at a time."""
    if _native is not None and (first := _native.one_spi(datagrams, HEADER_LEN)) is not None:
        if not first or first == NON_ESP_MARKER:  # the same test in C (core/_framing.c)
            return None
        return plane.sad.get(dst, src, int.from_bytes(first, "big"))
    first = datagrams[0][:4] if len(datagrams) > 1 else b""
    if len(first) != 4 or first == NON_ESP_MARKER:
        return None
    if (
        list(map(_SPI_FIELD, datagrams)).count(first) != len(datagrams)
        or min(map(len, datagrams)) < HEADER_LEN
    ):
        return None
    return plane.sad.get(dst, src, int.from_bytes(first, "big"))


def _each(
    plane: Plane, src: bytes, dst: bytes, datagrams: list[bytes], opened: _Opened | None, now: float,
    tos: int, udp: bool, tunnel: Tunnel | None, deliver: dict[str, list[bytes]], rejects: list[Reject],
) -> tuple[int, int]:  # fmt: skip
    """Stages 3 and 4 one datagram at a time, in order; `opened`: what `decrypt_many` gave for them, None
    to open them here. Returns the count and bytes of packets delivered the straight way (not yet
    counted)."""
    out = deliver[tunnel.name] if tunnel is not None else []
    straight = _straight(tunnel, tos)
    admit = tunnel.admit if tunnel is not None and tunnel.networks else None
    emit, sad = plane.emit, plane.sad
    last_spi, sa, mismatch = b"", None, False
    accepted = nbytes = 0
    for i, esp in enumerate(datagrams):
        # 3. Open
        plain: tuple[bytes, int] | Drop
        if opened is not None:
            got = opened[i]  # a whole inner packet alone is named by its IP version
            plain = (got, NH_IPV4 if got[0] >> 4 == 4 else NH_IPV6) if isinstance(got, bytes) else got
        else:
            spi = esp[:4]
            if udp and esp == NAT_KEEPALIVE:  # RFC 3948 §2.3
                plane.keepalives += 1
                continue
            if udp and spi == NON_ESP_MARKER:  # RFC 3948 §2.2: IKE
                _non_esp(plane, src, dst, esp)
                continue
            if len(esp) < HEADER_LEN:
                plane.rx_drop(Drop.MALFORMED, esp=esp)
                continue
            if spi != last_spi:
                last_spi, sa = spi, sad.get(dst, src, int.from_bytes(spi, "big"))
                mismatch = sa is not None and (sa.config.encap is not None) != udp
            if sa is None:
                plane.rx_drop(Drop.UNKNOWN_SA, esp=esp)
                continue
            if mismatch:
                _encap_mismatch(plane, sa, [esp])
                continue
            plain = sa.decrypt(esp, now, emit, admit)
        if isinstance(plain, Drop):  # a policy drop counts on the tunnel too
            stats = plane.stats_for(tunnel.name) if plain is Drop.POLICY and tunnel is not None else None
            plane.rx_drop(plain, stats, esp)
            continue
        # 4. Deliver: ip.parse() inlined for a whole packet on the straight way; the rest takes _inner()
        inner, nh = plain
        if straight and nh == NH_IPV4 and len(inner) >= ip.IPV4_HEADER_LEN and inner[0] == 0x45:
            length = inner[2] << 8 | inner[3]
        elif straight and nh == NH_IPV6 and len(inner) >= ip.IPV6_HEADER_LEN and inner[0] >> 4 == 6:
            length = ip.IPV6_HEADER_LEN + (inner[4] << 8 | inner[5])
        else:
            length = 0
        if ip.IPV4_HEADER_LEN <= length <= len(inner):
            out.append(inner if length == len(inner) else inner[:length])
            accepted += 1
            nbytes += length
            continue
        result = _inner(plane, src, dst, esp, inner, nh, now, tos, tunnel)
        if isinstance(result, Deliver):
            deliver.setdefault(result.device, []).append(result.packet)
        elif isinstance(result, Reject):
            rejects.append(result)
    return accepted, nbytes


def _non_esp(plane: Plane, src: bytes, dst: bytes, datagram: bytes) -> None:
    """Stage 3: a datagram with the non-ESP marker on the encapsulation port (RFC 3948 §2.2), for IKE
    (`Plane.on_non_esp`, with the source port of the batch and the marker stripped), or dropped as
    `NON_ESP` without it."""
    if plane.on_non_esp is None:
        plane.rx_drop(Drop.NON_ESP)
        return
    sport = plane.rx_from[2]
    plane.on_non_esp(src, dst, sport, datagram[len(NON_ESP_MARKER) :])


def _encap_mismatch(plane: Plane, sa: SecurityAssociation, datagrams: list[bytes]) -> None:
    """Stage 3: count `datagrams` for `sa` that came with the other encapsulation (raw ESP for an
    --encap=udp SA, or ESP-in-UDP for a raw-ESP one), on the SA too."""
    sa.drops[Drop.ENCAP_MISMATCH] += len(datagrams)
    for esp in datagrams:
        plane.rx_drop(Drop.ENCAP_MISMATCH, esp=esp)


def _inner(
    plane: Plane, src: bytes, dst: bytes, esp: bytes, inner: bytes, nh: int, now: float, tos: int,
    tunnel: Tunnel | None,
) -> Deliver | Reject | None:  # fmt: skip
    """Stage 4 for `inner`, decrypted from `esp` with next header `nh`, that does not go the straight
    way: delivered (and counted), an ICMP error for the sender, or a counted drop (None)."""
    if nh == NH_NONE:
        plane.rx_drop(Drop.DUMMY, esp=esp)
        return None
    if nh not in (NH_IPV4, NH_IPV6):
        plane.rx_drop(Drop.NOT_TUNNEL_MODE, esp=esp)
        return None
    hdr = ip.parse(inner)
    if hdr is None or hdr.version != (4 if nh == NH_IPV4 else 6):
        plane.rx_drop(Drop.MALFORMED, esp=esp)
        return None
    inner = inner[: hdr.length]  # RFC 4303 §2.4: TFC padding after the inner packet
    if tunnel is None:
        if not plane.tunnels.base_up:
            plane.rx_drop(Drop.NO_TUNNEL, esp=esp)
            icmp = plane.icmp(src, now, lambda: _unreachable(src, dst, esp))
            return Reject(icmp) if icmp is not None else None
        device = BASE_DEVICE
    else:
        device = tunnel.name
        if not tunnel.allows(hdr.src):
            plane.rx_drop(Drop.POLICY, plane.stats_for(device), esp=esp)
            return None
    stats = plane.stats_for(device)
    ecn = ip.decap_ecn(hdr.tos & ip.ECN_MASK, tos & ip.ECN_MASK)
    if ecn is None:
        plane.rx_drop(Drop.ECN, stats, esp=esp)
        return None
    if ecn != hdr.tos & ip.ECN_MASK:
        inner = ip.set_ecn(inner, ecn)
    plane.rx_accepted += 1
    stats.rx_packets += 1
    stats.rx_bytes += len(inner)
    return Deliver(device, inner)


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
