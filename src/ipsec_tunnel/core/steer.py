"""Bulk flows apart: which of a tunnel device's two queues a flow's packets take (`ipsecd --flow-queues`).

Under a bulk TCP transfer a tunnel device's ring holds up to the sender's whole window (the TUN driver
orphans what it queues, so TCP small queues do not hold the sender back): a ping or a keystroke routed
into the device waits behind megabytes. The device is opened with two queues (IFF_MULTI_QUEUE); the
kernel puts each packet in the queue its flow was last written from (the TUN driver's flow table,
keyed by a hash of the flow's addresses and ports that is the same both ways). ipsecd writes each
decrypted packet through the queue of its flow's class, so the packets routed the other way follow:
the flows that moved a super-packet (more than a quantum, RFC 8290 §4.2) either way within `HOLD`
seconds are bulk (queue 0), every other flow sparse (queue 1), and a device turn reads the sparse
queue first. This is fq_codel's split of new and old flows (RFC 8290 §4.1) at the only place the
standing queue can be seen, the driver's ring.

A flow is its 5-tuple with the two ends in a fixed order (`key`), as the driver's symmetric hash takes
it. A flow that never gets a packet written back (a one-way UDP stream) stays where the driver's
hash puts it. A flow that turns bulk moves queues once; what it left in the sparse queue is read
first, so its order holds unless that queue held more than a turn reads.
"""

from __future__ import annotations

from . import ip
from .fq import QUANTUM, flow_key

__all__ = [
    "AHEAD_WINDOW",
    "BULK",
    "HOLD",
    "LIMIT",
    "SMALL",
    "SPARSE",
    "Steering",
    "carries_data",
    "key",
    "split_data",
    "tcp_data",
]

BULK = 0  # the queue bulk flows are written through
SPARSE = 1  # ... and the others: read first
SMALL = 512  # bytes of ESP (a UDP payload) that go to the sparse socket: a ping, an ACK, a DNS query
AHEAD_WINDOW = 4096  # an SA's replay window at least this wide (the default) lets a small datagram be opened
# ahead of the bulk socket's backlog (4 MB of datagrams over 512 bytes: fewer datagrams than that)
HOLD = 1.0  # seconds a flow stays bulk after its last super-packet
LIMIT = 4096  # flows remembered at most (the TUN driver's own table holds 4096, MAX_TAP_FLOWS)


def key(packet: bytes) -> bytes:
    """The flow of an IPv4 or IPv6 packet, the same both ways: protocol, then the two (address, port)
    ends in byte order (ports for TCP and UDP, not in a later IPv4 fragment). b"" when unparsable. It is
    `fq.flow_key` (one direction's) with the ends ordered."""
    flow = flow_key(packet)  # protocol, source, destination, then the two ports when there are ports
    if not flow:
        return b""
    size = 4 if len(flow) < 1 + 2 * 16 else 16  # the address length: IPv4's or IPv6's
    ports = flow[1 + 2 * size :]
    a, b = flow[1 : 1 + size] + ports[:2], flow[1 + size : 1 + 2 * size] + ports[2:]
    return flow[:1] + (a + b if a <= b else b + a)


def carries_data(packet: bytes) -> bool:
    """Whether a TCP segment carries data (or might: IPv6 extension headers, a fragment, a short or
    odd packet); False for a pure ACK, a RST, a bare SYN or FIN (RFC 9293 §3.1: no data octets)."""
    if len(packet) < ip.IPV4_HEADER_LEN:
        return True
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 20 or packet[9] != ip.PROTO_TCP or packet[6] & 0x3F or packet[7]:
            return True
        return len(packet) > ihl + (packet[ihl + 12] >> 4) * 4
    if len(packet) < ip.IPV6_HEADER_LEN + 20 or packet[6] != ip.PROTO_TCP:
        return True
    return len(packet) > ip.IPV6_HEADER_LEN + (packet[ip.IPV6_HEADER_LEN + 12] >> 4) * 4


def tcp_data(packet: bytes) -> bool:
    """Whether `packet` is a TCP segment (by its IPv4 protocol or IPv6 next header) that carries data, or
    might (`carries_data`)."""
    return (
        len(packet) > 9 and packet[9 if packet[0] >> 4 == 4 else 6] == ip.PROTO_TCP and carries_data(packet)
    )


def split_data(packets: dict[str, list[bytes]]) -> tuple[dict[str, list[bytes]], dict[str, list[bytes]]]:
    """(the TCP segments with data, the other packets), per device, each in order (`tcp_data`)."""
    data: dict[str, list[bytes]] = {}
    rest: dict[str, list[bytes]] = {}
    for device, batch in packets.items():
        segments = [p for p in batch if tcp_data(p)]
        if segments:
            data[device] = segments
            others = [p for p in batch if not tcp_data(p)] if len(segments) < len(batch) else []
            if others:
                rest[device] = others
        else:
            rest[device] = batch
    return data, rest


class Steering:
    """The flows that moved a super-packet lately (`bulk`), and the queue each packet is written to."""

    def __init__(self, hold: float = HOLD, limit: int = LIMIT) -> None:
        self.hold = hold
        self.limit = limit
        self.bulk: dict[bytes, float] = {}  # flow -> when its last super-packet was seen
        self.moved = 0  # flows that turned bulk

    def note(self, packet: bytes, now: float) -> None:
        """`packet` was read from or is written to the device: its flow is bulk if it is over a quantum."""
        if len(packet) <= QUANTUM:
            return
        flow = key(packet)
        bulk = self.bulk
        if flow not in bulk:
            if len(bulk) >= self.limit:
                self.expire(now)
                if len(bulk) >= self.limit:
                    return
            self.moved += 1
        bulk[flow] = now

    def queue(self, packet: bytes, now: float) -> int:
        """The queue to write `packet` through: BULK when its flow is, else SPARSE."""
        seen = self.bulk.get(key(packet))
        if seen is None:
            return SPARSE
        if now - seen > self.hold:
            del self.bulk[key(packet)]
            return SPARSE
        return BULK

    def expire(self, now: float) -> None:
        """Forget the flows not bulk any more."""
        hold = self.hold
        for flow in [f for f, seen in self.bulk.items() if now - seen > hold]:
            del self.bulk[flow]
