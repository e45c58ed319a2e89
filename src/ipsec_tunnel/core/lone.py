"""A lone packet's short way through the engine: what a loop turn that read ONE packet (an idle ping, a
keystroke) takes instead of the batch pipelines, with the fewest steps.

`send_one` is `send.send` of one packet read from a tunnel device, and `receive_one` is `receive.receive`
of one datagram: the same bytes on the wire, the same counters, drop reasons and drop log, the same
SA state (`SecurityAssociation.encrypt` reserves the sequence number through the SA's store and
journal; `SecurityAssociation.decrypt` checks the replay window before the ICV and moves it after,
RFC 4303 §3.4.3). Each takes only the common case and answers False, having changed nothing, for
anything else, which then goes the batch way:

- send: a tunnel with an SA; a plain IPv4 (no options) or IPv6 packet whose IP length is at most what
  was read; not too big for the path with DF (the ICMP error and IPv6's 1280 are the batch path's).
- receive: ESP for a known SA with the encapsulation it expects; a tunnel for the outer addresses
  without peer networks (no policy to check); an outer ECN that changes nothing (RFC 6040 §4.2:
  Not-ECT or ECT(0)); for ESP-in-UDP, the source port NAT traversal already knows (no port floating).
  Once the datagram was opened there is no way back (its sequence number is spent): an inner packet
  that is not whole IP takes the batch pipeline's inner checks (`receive._inner`).
"""

from __future__ import annotations

from typing import Literal

from . import ip
from .drops import Drop
from .esp import HEADER_LEN, NH_IPV4, NH_IPV6
from .framing import native as _native
from .plane import Burst, Deliver, Plane, inner_mtu
from .receive import _inner

__all__ = ["receive_one", "send_one"]

_PLAIN_ECN = (ip.ECN_NOT_ECT, ip.ECN_ECT0)  # RFC 6040 §4.2: outer ECN that changes no inner packet


def _inner_head(inner: bytes) -> tuple[int, int, int, bool, int] | None:
    """(IP length, TOS or traffic class, TTL or hop limit, DF, ESP next header) of `inner` when it is
    IPv4 without options (RFC 791) or IPv6 (RFC 8200: DF always), its IP length at least 20 and at most
    what was read (`ip.parse` inlined, as in `send._seal`); else None. The same in C: `_framing.c`."""
    size = len(inner)
    if size >= ip.IPV4_HEADER_LEN and inner[0] == 0x45:
        length = inner[2] << 8 | inner[3]
        head = length, inner[1], inner[8], bool(inner[6] & 0x40), NH_IPV4
    elif size >= ip.IPV6_HEADER_LEN and inner[0] >> 4 == 6:
        length = ip.IPV6_HEADER_LEN + (inner[4] << 8 | inner[5])
        head = length, (inner[0] & 0x0F) << 4 | inner[1] >> 4, inner[7], True, NH_IPV6
    else:
        return None
    return head if ip.IPV4_HEADER_LEN <= length <= size else None


# The C one where the extension is in use (an extension built before it lacks it: the Python one).
_head = getattr(_native, "inner_head", _inner_head) if _native is not None else _inner_head


def send_one(plane: Plane, device: str, inner: bytes, now: float) -> Burst | Drop | Literal[False]:
    """`send.send(plane, device, [inner], now)` for the common case: the burst of one ESP datagram, or
    the reason it was dropped (counted); False, with nothing changed, where the batch pipeline must
    decide."""
    tunnel = plane.tunnels.get(device)
    if tunnel is None:
        return False
    sa = plane.sa_for(tunnel)
    if sa is None:
        return False
    head = _head(inner)
    if head is None:
        return False
    length, tos, ttl, df, nh = head
    if df and plane.path_mtu:
        path = plane.path_mtu.get(device)
        if path is not None and length > inner_mtu(sa, path):
            return False
    if length != len(inner):
        inner = inner[:length]
    packet = sa.encrypt(inner, nh, now, plane.emit)
    stats = plane.stats_for(device)
    if isinstance(packet, Drop):
        return plane.tx_drop(stats, packet, device, now)
    plane.tx_accepted += 1
    stats.tx_packets += 1
    stats.tx_bytes += length
    return Burst(sa.key[0], sa.key[1], tos, ttl, df, plane.nat.encap_for(sa), tunnel.nextdev, [packet])


def receive_one(
    plane: Plane, src: bytes, dst: bytes, esp: bytes, now: float, tos: int = 0, sport: int | None = None
) -> Deliver | bool:
    """`receive.receive(plane, src, dst, [esp], now, tos, udp=sport is not None, sport=sport)` for the
    common case: the inner packet for its device (counted), or True when it was dropped (counted);
    False, with nothing changed, where the batch pipeline must decide. `sport`: the UDP source port of
    ESP-in-UDP, None for raw ESP."""
    if len(esp) < HEADER_LEN:
        return False  # a runt, a NAT-keepalive (RFC 3948 §2.3)
    sa = plane.sad.get(dst, src, int.from_bytes(esp[:4], "big"))  # the non-ESP marker: SPI 0, none
    if sa is None or (sa.config.encap is None) != (sport is None):
        return False
    tunnel = plane.tunnels.for_receive(dst, src)
    if tunnel is None or tunnel.networks or tos & ip.ECN_MASK not in _PLAIN_ECN:
        return False
    if sport is not None and plane.nat.ports.get((src, dst)) != sport:
        return False  # NatTraversal.watch has work to do
    plane.rx_from = (src, dst, sport, now)
    plain = sa.decrypt(esp, now, plane.emit)
    if isinstance(plain, Drop):
        plane.rx_drop(plain, None, esp)
        return True
    inner, nh = plain
    if nh == NH_IPV4 and len(inner) >= ip.IPV4_HEADER_LEN and inner[0] == 0x45:
        length = inner[2] << 8 | inner[3]
    elif nh == NH_IPV6 and len(inner) >= ip.IPV6_HEADER_LEN and inner[0] >> 4 == 6:
        length = ip.IPV6_HEADER_LEN + (inner[4] << 8 | inner[5])
    else:
        length = 0
    if not ip.IPV4_HEADER_LEN <= length <= len(inner):  # with a tunnel, never a Reject
        done = _inner(plane, src, dst, esp, inner, nh, now, tos, tunnel)
        return done if isinstance(done, Deliver) else True
    stats = plane.stats_for(tunnel.name)
    plane.rx_accepted += 1
    stats.rx_packets += 1
    stats.rx_bytes += length
    return Deliver(tunnel.name, inner if length == len(inner) else inner[:length])
