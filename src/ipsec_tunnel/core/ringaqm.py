"""CoDel (RFC 8289) on what ipsecd reads from a tunnel device (`--device-aqm`, issue 13).

Under one bulk TCP stream the sending daemon's standing queue is the tunnel device's ring: the TUN
driver orphans what it queues (TCP small queues do not apply), nothing is lost and nothing is marked,
so the sender's window (about 2 MB here) grows until the ring holds most of it, and a ping waits
behind it. The kernel has no AQM on that ring; this module is one, run by the daemon on each device
turn (`RingAqm.judge`) with what the turn read and `now`.

The signal is the sojourn time of the bulk flow's packets in the ring (RFC 8289 §3: a queue is judged
by how long its packets waited, not by its length), estimated from the TCP timestamp option (RFC 7323
§3): TSval is the sender's clock (1 ms per tick on Linux) when the segment was handed down, i.e. when it
entered the ring; `now - TSval` is then the sojourn plus a fixed offset (the clocks' difference and the
connection's random TSval offset), learnt per flow as its minimum (a ring that held the flow's packet
for no time; forgotten after `OFFSET_WINDOW`, so that a drifting clock cannot mislead for long). The
turn's sojourn is that of the bulk flow's last packet read: the newest, so the smallest of the turn,
as CoDel asks for the queue's minimum over an interval. A turn that read the ring until it was empty
counts as below target whatever that sojourn (RFC 8289 §5.6: no drop while the queue holds at most a
packet): on a shared CPU the daemon's own waits for the CPU (a stall of A, during which TCP runs out of
window and stops) make the newest packet's sojourn large while the ring is short, and a window cut
then cannot shorten it (measured in docs/performance.md). A flow without timestamps gives no signal.

At most one packet is signalled per turn, and the next signal is due the control law's spacing
(interval / sqrt(count), RFC 8289 §5.6) after it: the daemon reads the ring in bursts after waiting for
the CPU, and RFC 8289's catching up on the drops due meanwhile (a dequeue drops while `now >= drop_next`)
would cut several segments of one window in one turn (by design, not measured on its own: see
docs/performance.md).

The action hits only the bulk flow (the TCP flow holding most bytes of the turn, and more than a
quantum, as `core.fq` would call it not sparse) and only its packets that carry data (never a SYN,
FIN, RST or pure ACK, never another flow, never anything but TCP): an ECN-capable one gets CE (RFC
3168 §6.1.1.1; the IPv4 header checksum updated; a whole super-packet is marked, which classic ECN
answers once per window as for one mark), else one segment is dropped: the last MSS cut off a TSO
super-packet, or the packet when it is one segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from . import fq, ip
from .codel import CoDel
from .gso import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    VnetHeader,
    pseudo_sum,
    tcp_option,
    tcp_packet,
)

__all__ = [
    "FLOWS",
    "INTERVAL",
    "OFFSET_WINDOW",
    "TARGET",
    "TS_HZ",
    "RingAqm",
    "cut_last_segment",
    "parse_spec",
    "tsval",
]

# Defaults for a LAN-short path, as --aqm's: RFC 8289 §4.4 puts the target at 5-10% of the interval,
# §4.3 the interval at a worst-case round trip (100 ms on the Internet, 20 ms is ample here)
TARGET = 0.002  # seconds of standing queue tolerated in the ring (RFC 8289 §4.4)
INTERVAL = 0.020  # seconds above target before the first signal (RFC 8289 §4.3)
OFFSET_WINDOW = 10.0  # seconds a flow's learnt minimum of now - TSval stands before it is learnt anew
FLOWS = 64  # flows whose offsets are kept (the least recently learnt go first)
TS_HZ = 1000  # TSval ticks per second: Linux's TCP timestamp clock (RFC 7323 §5.4 allows 1 ms to 1 s)

_TS_KIND, _TS_LEN = 8, 10  # RFC 7323 §3: the timestamps option, kind 8, length 10
_NOT_DATA = TCP_SYN | TCP_FIN | TCP_RST


def tsval(packet: bytes) -> int | None:
    """The TSval of a TCP packet's timestamps option (RFC 7323 §3), or None without one."""
    layout = tcp_packet(packet)
    if layout is None:
        return None
    l4, hl, _end = layout
    i = l4 + 20
    if hl - i >= 12 and packet[i : i + 4] == b"\x01\x01\x08\x0a":  # NOP NOP TS: what Linux sends
        return int.from_bytes(packet[i + 4 : i + 8], "big")
    at = tcp_option(packet, l4, hl, _TS_KIND, _TS_LEN)
    return None if at is None else int.from_bytes(packet[at : at + 4], "big")


def _data(packet: bytes) -> bool:
    """Whether `packet` is a TCP segment carrying data and no SYN, FIN or RST: one that can be signalled."""
    layout = tcp_packet(packet)
    if layout is None:
        return False
    l4, hl, end = layout
    return end > hl and not packet[l4 + 13] & _NOT_DATA


def _tso(offload: VnetHeader | None) -> bool:
    return (
        offload is not None and offload.gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6) and offload.gso_size > 0
    )


def cut_last_segment(packet: bytes, offload: VnetHeader) -> bytes | None:
    """TCP super-packet `packet` without its last segment (of `offload.gso_size` bytes at most): the
    IP length fixed (and the IPv4 header checksum); when one segment is left and its checksum is
    partial, the pseudo-header sum in the TCP checksum field fixed for the new length. None when the
    super-packet holds one segment only (or is not one)."""
    layout = tcp_packet(packet)
    mss = offload.gso_size
    if layout is None or mss <= 0:
        return None
    l4, hl, end = layout
    payload = end - hl
    segments = -(-payload // mss)
    if segments < 2:
        return None
    new_end = end - (payload - (segments - 1) * mss)
    if packet[0] >> 4 == 4:
        head = packet[:2] + new_end.to_bytes(2, "big") + packet[4:10] + b"\x00\x00" + packet[12:l4]
        head = head[:10] + ip.checksum(head).to_bytes(2, "big") + head[12:]
        src, dst = packet[12:16], packet[16:20]
    else:
        head = packet[:4] + (new_end - ip.IPV6_HEADER_LEN).to_bytes(2, "big") + packet[6:l4]
        src, dst = packet[8:24], packet[24:40]
    out = head + packet[l4:new_end]
    if new_end - hl <= mss and offload.flags & F_NEEDS_CSUM:
        partial = pseudo_sum(src, dst, ip.PROTO_TCP, new_end - l4)
        out = out[: l4 + 16] + partial.to_bytes(2, "big") + out[l4 + 18 :]
    return out


class RingAqm:
    """CoDel on one tunnel device's ring, judged per device turn (`judge`); `target` and `interval` in
    seconds (RFC 8289 §4.3, §4.4). `marked` and `dropped` count what it did."""

    __slots__ = ("codel", "dropped", "marked", "offsets", "sojourn")

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.codel = CoDel(target, interval)  # the control law: RFC 8289 §5.5, §5.6
        # flow -> (the least now - TSval seen, in ticks; when it was learnt)
        self.offsets: dict[bytes, tuple[float, float]] = {}
        self.sojourn = 0.0  # the last turn's estimate, seconds (for tests and diagnostics)
        self.marked = 0
        self.dropped = 0

    def estimate(self, flow: bytes, ts: int, now: float) -> float:
        """The sojourn time (seconds) of a packet of `flow` with TSval `ts`, read at `now`; 0 when it
        sets the flow's offset (a new least `now - TSval`, or the last one learnt too long ago)."""
        delta = (now * TS_HZ - ts) % 2**32
        known = self.offsets.get(flow)
        if known is None or delta <= known[0] or now - known[1] > OFFSET_WINDOW:
            if known is None and len(self.offsets) >= FLOWS:
                del self.offsets[next(iter(self.offsets))]
            self.offsets.pop(flow, None)
            self.offsets[flow] = (delta, now)
            return 0.0
        return (delta - known[0]) / TS_HZ

    def judge(
        self, packets: list[bytes], offloads: Mapping[int, VnetHeader], now: float, drained: bool = False
    ) -> tuple[list[bytes], dict[int, VnetHeader], int, int]:
        """One device turn, `packets` read at `now` in this order (`offloads`: the offload headers
        asking for work, by index; `drained`: the turn read until the ring was empty): the packets to
        seal, their offload headers by index, and how many segments were marked CE and dropped.
        Nothing changes unless CoDel, fed the bulk flow's sojourn, says so; a drained ring is below
        target whatever the sojourn (RFC 8289 §5.6: no drop while the queue holds at most a packet)."""
        unchanged = packets, dict(offloads), 0, 0
        if not packets:
            return unchanged
        keys = [fq.flow_key(p) for p in packets]
        sizes: dict[bytes, int] = {}
        for key, packet in zip(keys, packets, strict=True):
            sizes[key] = sizes.get(key, 0) + len(packet)
        bulk = max(sizes, key=sizes.__getitem__)
        if sizes[bulk] <= fq.QUANTUM or not bulk or bulk[0] != ip.PROTO_TCP:
            return unchanged  # no bulk flow in this turn, or not TCP: nothing to judge
        mine = [i for i, key in enumerate(keys) if key == bulk and _data(packets[i])]
        if not mine:
            return unchanged
        ts = tsval(packets[mine[-1]])
        if ts is None:
            return unchanged  # no timestamps: no signal
        self.sojourn = self.estimate(bulk, ts, now)
        codel = self.codel
        if not codel.drops(now, 0.0 if drained else self.sojourn, 1):
            return unchanged
        if codel.drop_next < now:  # a turn after a wait: the next is due a spacing from now, not sooner
            codel.drop_next = now + codel.interval / math.sqrt(codel.count)
        return self._signal(packets, offloads, mine[:1])

    def _signal(
        self, packets: list[bytes], offloads: Mapping[int, VnetHeader], chosen: list[int]
    ) -> tuple[list[bytes], dict[int, VnetHeader], int, int]:
        """CE on the `chosen` packets that are ECN-capable, one segment less of the others."""
        out = list(packets)
        gone: set[int] = set()
        marked = dropped = 0
        for i in chosen:
            packet = out[i]
            ecn = (packet[1] if packet[0] >> 4 == 4 else packet[1] >> 4) & ip.ECN_MASK
            if ecn != ip.ECN_NOT_ECT:
                if ecn != ip.ECN_CE:
                    out[i] = ip.set_ecn(packet, ip.ECN_CE)
                marked += 1
                continue
            offload = offloads.get(i)
            cut = cut_last_segment(packet, offload) if offload is not None and _tso(offload) else None
            if cut is None:
                gone.add(i)
            else:
                out[i] = cut
            dropped += 1
        self.marked += marked
        self.dropped += dropped
        if not gone:
            return out, dict(offloads), marked, dropped
        kept: list[bytes] = []
        moved: dict[int, VnetHeader] = {}
        for i, packet in enumerate(out):
            if i in gone:
                continue
            if i in offloads:
                moved[len(kept)] = offloads[i]
            kept.append(packet)
        return kept, moved, marked, dropped


def parse_spec(text: str) -> tuple[float, float] | None:
    """`--device-aqm`'s value: None for "off", else CoDel's (target, interval) in seconds from "codel"
    or "codel:TARGET_MS/INTERVAL_MS"; ValueError with a one-line reason for anything else."""
    if text == "off":
        return None
    kind, colon, times = text.partition(":")
    if kind != "codel" or (colon and not times):
        raise ValueError(f"{text!r}: expected off, codel or codel:TARGET_MS/INTERVAL_MS")
    if not colon:
        return TARGET, INTERVAL
    target_ms, slash, interval_ms = times.partition("/")
    try:
        target, interval = float(target_ms) / 1e3, float(interval_ms) / 1e3
    except ValueError:
        raise ValueError(f"{text!r}: expected codel:TARGET_MS/INTERVAL_MS, e.g. codel:2/20") from None
    if not slash or not (math.isfinite(interval) and 0 < target < interval <= 10.0):
        raise ValueError(f"{text!r}: needs 0 < TARGET_MS < INTERVAL_MS <= 10000")
    return target, interval
