"""A bound on what one local TCP sender may queue in its tunnel device's ring, set through the window
advertised in the ACKs the tunnel delivers to it (`ipsecd --tcp-queue`, issue 13).

Under one bulk TCP stream the sending daemon's standing queue is the tunnel device's ring: the TUN
driver orphans what it queues, so TCP small queues do not apply and the sender's window (megabytes)
waits there, with every other packet of the tunnel behind it. Limiting the window bounds the ring:
`iperf3 -w` did it from the application (docs/performance.md). Here the daemon does it for every flow,
without loss or marks, so the sender's congestion window is not cut.

For each TCP flow sent through the tunnel it notes the highest sequence number read from the ring
(`sent`). In each ACK of that flow delivered from the tunnel (`delivering`) the right edge of the
window (ACK number + window, RFC 9293 §3.8.6) is lowered to that sequence number plus `queue` bytes,
so at most `queue` bytes of the flow can be in the ring when the ACK arrives, while everything past
the ring (the path, the peer) stays unbounded. The edge never moves left (RFC 9293 §3.8.6.2.1: a
receiver should not shrink the window): it is at least the last edge this module announced, and at
first the flow's own. An ACK number above the noted sequence number (data that passed another way)
raises it, so the sender may always send `queue` bytes beyond what was acknowledged: a flow is never
stalled by the bound. A flow whose handshake was not seen (its window scale unknown) is left alone.

Only packets without payload up to `ACK_MAX` bytes are looked at on delivery (pure ACKs, SYNs), so the
bulk data delivered costs a length test.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .gso import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, tcp_option, tcp_packet

__all__ = ["ACK_MAX", "FLOWS", "WindowBound", "window_scale"]

ACK_MAX = 40 + 60  # the longest pure ACK: an IPv6 header and a TCP header with 40 bytes of options
FLOWS = 1024  # flows followed (the least recently sent go first)
_MOD = 1 << 32  # sequence numbers are modulo 2^32 (RFC 9293 §3.4)
_WSCALE = 3  # RFC 7323 §2.2: the window scale option, kind 3, length 3
_MAX_SHIFT = 14  # RFC 7323 §2.3


def _tcp(packet: bytes) -> tuple[bytes, bytes, int, int, int] | None:
    """(source address, destination address, TCP header offset, headers' length, end) of an IPv4 or
    IPv6 TCP packet (`gso.tcp_packet`), else None."""
    layout = tcp_packet(packet)
    if layout is None:
        return None
    if packet[0] >> 4 == 4:
        return (packet[12:16], packet[16:20], *layout)
    return (packet[8:24], packet[24:40], *layout)


def window_scale(packet: bytes, off: int) -> int | None:
    """The window scale option's shift count in the TCP header at `off` (at most 14, RFC 7323 §2.3),
    or None when it has none."""
    at = tcp_option(packet, off, off + (packet[off + 12] >> 4) * 4, _WSCALE, 3)
    return None if at is None else min(packet[at], _MAX_SHIFT)


def _after(a: int, b: int) -> bool:
    """Sequence number `a` is after `b` (RFC 9293 §3.4's comparison modulo 2^32)."""
    return 0 < (a - b) % _MOD < 1 << 31


@dataclass
class _Flow:
    local: bool | None = None  # the local end's SYN offered window scaling (None: its SYN not seen)
    remote: int | None = None  # the remote end's shift count (None: none offered or its SYN not seen)
    remote_seen: bool = False
    sent: int | None = None  # one past the highest sequence number read from the ring
    edge: int | None = None  # the right edge last announced to the local sender

    @property
    def shift(self) -> int | None:
        """The shift of the remote end's windows (RFC 7323 §2.2: 0 unless both ends offered scaling),
        None while a SYN is missing."""
        if self.local is None or not self.remote_seen:
            return None
        return self.remote if self.local and self.remote is not None else 0


class WindowBound:
    """Per-flow bounds on the bytes a local TCP sender may have in the tunnel device's ring."""

    def __init__(self, queue: int, flows: int = FLOWS) -> None:
        self.queue = queue
        self.flows: OrderedDict[tuple[bytes, bytes, int, int], _Flow] = OrderedDict()
        self.max_flows = flows
        self.lowered = 0  # ACKs whose window was lowered

    def _new(self, key: tuple[bytes, bytes, int, int]) -> _Flow:
        flow = self.flows[key] = _Flow()
        if len(self.flows) > self.max_flows:
            self.flows.popitem(last=False)
        return flow

    def sent(self, packet: bytes) -> None:
        """Note a packet read from a tunnel device (any packet: only TCP is looked at)."""
        got = _tcp(packet)
        if got is None:
            return
        src, dst, off, hl, end = got
        flags = packet[off + 13]
        key = (src, dst, _port(packet, off), _port(packet, off + 2))
        flow = self.flows.get(key)
        if flags & TCP_SYN:
            if flow is None or flow.local is not None or flags & TCP_ACK == 0:
                flow = self._new(key)  # a new connection (a SYN-ACK answers the remote's SYN, kept)
            flow.local = window_scale(packet, off) is not None
        elif flow is None:
            return
        self.flows.move_to_end(key)
        if flags & TCP_RST:
            del self.flows[key]
            return
        seq = int.from_bytes(packet[off + 4 : off + 8], "big")
        last = (seq + end - hl + (flags & TCP_SYN != 0) + (flags & TCP_FIN != 0)) % _MOD
        if flow.sent is None or _after(last, flow.sent):
            flow.sent = last

    def delivering(self, packet: bytes) -> bytes:
        """A packet from the tunnel for a tunnel device: the same, or an ACK with its window lowered."""
        if len(packet) > ACK_MAX:
            return packet
        got = _tcp(packet)
        if got is None:
            return packet
        src, dst, off, hl, _end = got
        if len(packet) != hl:  # carries data: left alone
            return packet
        key = (dst, src, _port(packet, off + 2), _port(packet, off))
        flow = self.flows.get(key)
        flags = packet[off + 13]
        if flags & TCP_SYN:
            if flow is None or not flags & TCP_ACK:
                flow = self._new(key)  # the remote opens: the local SYN-ACK comes next
            flow.remote = window_scale(packet, off)
            flow.remote_seen = True
            return packet  # a SYN's window is never scaled (RFC 7323 §2.2)
        if flow is None or not flags & TCP_ACK or flow.sent is None:
            return packet
        shift = flow.shift
        if shift is None:
            return packet
        ack = int.from_bytes(packet[off + 8 : off + 12], "big")
        field = int.from_bytes(packet[off + 14 : off + 16], "big")
        own = (ack + (field << shift)) % _MOD
        if _after(ack, flow.sent):
            flow.sent = ack
        edge = (flow.sent + self.queue) % _MOD
        if flow.edge is not None and _after(flow.edge, edge):
            edge = flow.edge  # never left of what was announced
        if not _after(own, edge):  # the flow's own edge is the nearer: it stands
            flow.edge = own
            return packet
        if flow.edge is None:  # the first ACK bounded: start from the flow's own edge
            flow.edge = own
            return packet
        new = -(-((edge - ack) % _MOD) >> shift)  # rounded up, so the edge never moves left
        if new >= field:
            flow.edge = own
            return packet
        flow.edge = (ack + (new << shift)) % _MOD
        self.lowered += 1
        return _set_window(packet, off, field, new)


def _port(packet: bytes, at: int) -> int:
    return int.from_bytes(packet[at : at + 2], "big")


def _set_window(packet: bytes, off: int, old: int, new: int) -> bytes:
    """`packet` with the TCP window at `off` changed from `old` to `new`, its checksum updated
    incrementally (RFC 1624 eqn. 3)."""
    out = bytearray(packet)
    out[off + 14 : off + 16] = new.to_bytes(2, "big")
    csum = int.from_bytes(out[off + 16 : off + 18], "big")
    total = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    out[off + 16 : off + 18] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(out)
