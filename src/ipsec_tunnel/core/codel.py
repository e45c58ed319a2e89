"""CoDel (RFC 8289) for a receive queue the daemon cannot see into: the outer socket's buffer.

The daemon reads datagrams in batches, each with the time the kernel received its first one; how long
it waited (its sojourn time) is what CoDel needs (RFC 8289 §3: the queue is judged by sojourn time,
not by its length). `CoDel.drops` is the dequeue side of RFC 8289 §5 for a batch of packets read at
one instant with one sojourn time: how many of them to signal congestion on, from the head of the
batch. `congest` signals it on decrypted inner packets: ECN CE where the packet is ECN-capable
(RFC 3168 §6.1.1.1: mark instead of dropping), else a drop; TCP only, never anything else (a ping, DNS,
a voice packet is never dropped: it did not build the queue and cannot answer a drop by slowing down).
"""

from __future__ import annotations

import math

from . import ip

__all__ = ["INTERVAL", "REUSE_WITHIN", "TARGET", "CoDel", "congest", "is_tcp"]

TARGET = 0.005  # RFC 8289 §4.4: acceptable standing queue delay, 5 ms (seconds here)
INTERVAL = 0.100  # RFC 8289 §4.3: a worst-case round-trip time, 100 ms (seconds here)
REUSE_WITHIN = 16  # RFC 8289 §5.5: a new dropping state within 16 intervals resumes the last drop rate


class CoDel:
    """The CoDel state of one queue (RFC 8289 §5.2), driven by `drops`; `target` and `interval` in
    seconds. Times (`now`) come from one monotonic clock, sojourn times from the packets' stamps."""

    __slots__ = ("count", "drop_next", "dropping", "first_above", "interval", "lastcount", "target")

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        if not 0 < target < interval:
            raise ValueError("CoDel needs 0 < target < interval")
        self.target = target
        self.interval = interval
        self.first_above = 0.0  # RFC 8289 §5.2 first_above_time_: 0 while below target
        self.drop_next = 0.0  # drop_next_: when the next drop is due while dropping
        self.count = 0  # count_: drops since entering the dropping state
        self.lastcount = 0  # lastcount_: count_ when the last dropping state began
        self.dropping = False  # dropping_

    def _ok_to_drop(self, now: float, sojourn: float) -> bool:
        """RFC 8289 §5.6 dodequeue: whether the sojourn time has stayed above target for an interval.
        (Its other condition, a backlog of at most one packet, is not known here: the batch was read
        from a queue whose length the daemon does not see.)"""
        if sojourn < self.target:
            self.first_above = 0.0
            return False
        if self.first_above == 0.0:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def _control_law(self, t: float) -> float:
        """RFC 8289 §5.6: the next drop time, interval / sqrt(count) after `t`."""
        return t + self.interval / math.sqrt(self.count)

    def drops(self, now: float, sojourn: float, packets: int) -> int:
        """How many of `packets` packets, dequeued together at `now` after waiting `sojourn` seconds, to
        drop (or mark), from the head: RFC 8289 §5.5 dequeue with every packet of the batch having the
        same sojourn time. The end of a batch is not an empty queue: the state carries on to the next."""
        if packets <= 0:
            return 0
        ok = self._ok_to_drop(now, sojourn)
        if self.dropping:
            if not ok:
                self.dropping = False  # below target again: leave the dropping state
                return 0
            dropped = 0
            while now >= self.drop_next and dropped < packets:
                dropped += 1
                self.count += 1
                self.drop_next = self._control_law(self.drop_next)
            return dropped
        if not ok:
            return 0
        self.dropping = True
        delta = self.count - self.lastcount
        self.count = 1
        if delta > 1 and now - self.drop_next < REUSE_WITHIN * self.interval:
            self.count = delta  # the drop rate that controlled the queue last time is a good start
        self.drop_next = self._control_law(now)
        self.lastcount = self.count
        return 1


def is_tcp(packet: bytes) -> bool:
    """Whether `packet` is an IPv4 packet carrying TCP, or IPv6 with TCP as its first next header."""
    if not packet:
        return False
    if packet[0] >> 4 == 4:
        return len(packet) >= ip.IPV4_HEADER_LEN and packet[9] == ip.PROTO_TCP
    return len(packet) >= ip.IPV6_HEADER_LEN and packet[6] == ip.PROTO_TCP


def _ecn(packet: bytes) -> int:
    """The ECN field of an IPv4 or IPv6 packet (RFC 3168 §5)."""
    if packet[0] >> 4 == 4:
        return packet[1] & ip.ECN_MASK
    return (packet[1] >> 4) & ip.ECN_MASK


def congest(packets: list[bytes], limit: int) -> tuple[int, int]:
    """Signal congestion on the first `limit` TCP packets of `packets`, in place: an ECN-capable one
    (ECT(0), ECT(1)) gets CE (RFC 3168 §6.1.1.1; the IPv4 header checksum updated), one that already
    has CE keeps it, any other is removed. Packets that are not TCP are never touched. Returns (marked,
    dropped)."""
    marked = dropped = 0
    i = 0
    while i < len(packets) and marked + dropped < limit:
        packet = packets[i]
        if not is_tcp(packet):
            i += 1
            continue
        ecn = _ecn(packet)
        if ecn == ip.ECN_NOT_ECT:
            del packets[i]
            dropped += 1
            continue
        if ecn != ip.ECN_CE:
            packets[i] = ip.set_ecn(packet, ip.ECN_CE)
        marked += 1
        i += 1
    return marked, dropped
