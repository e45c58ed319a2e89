"""Sparse flows first: the order in which a batch read from a tunnel device is sealed.

A batch read from a device while a bulk transfer fills it holds that transfer's super-packets and,
somewhere among them, a packet of another flow: an echo request, a keystroke, a voice packet, a DNS
query. Sealed in the order read, that packet waits for every byte read before it. `sparse_first` moves
the packets of the batch's sparse flows ahead, as fq_codel serves its new flows first (RFC 8290 §4.1,
§4.2): a flow is its inner 5-tuple (addresses, protocol, and the ports of TCP and UDP), and it is sparse
when all its packets in the batch come to at most `quantum` bytes (RFC 8290 §4.2 gives a new flow one
quantum, an MTU, before it joins the old ones). Packets of one flow keep their order, and so do the
sparse flows among themselves and the bulk ones; sequence numbers are given at sealing, so the receiver
sees each SA's numbers in order whatever the order chosen here.
"""

from __future__ import annotations

from typing import TypeVar

from . import ip

__all__ = ["QUANTUM", "flow_key", "reorder", "sparse_first"]

_T = TypeVar("_T")

QUANTUM = 1514  # RFC 8290 §4.2 / §5.1: a flow's quantum, one Ethernet MTU of bytes (fq_codel's default)

_PORTS = (ip.PROTO_TCP, ip.PROTO_UDP)


def flow_key(packet: bytes) -> bytes:
    """The inner 5-tuple of an IPv4 or IPv6 packet as one key: addresses, protocol and, for TCP and UDP
    (not a later IPv4 fragment), the ports. Anything unparsable is one flow of its own (b"")."""
    if len(packet) < ip.IPV4_HEADER_LEN:
        return b""
    if packet[0] >> 4 == 4:
        proto = packet[9]
        ihl = (packet[0] & 0x0F) * 4
        first = not (packet[6] & 0x1F or packet[7])  # fragment offset 0 (RFC 791 §3.1)
        if proto in _PORTS and first and len(packet) >= ihl + 4:
            return packet[9:10] + packet[12:20] + packet[ihl : ihl + 4]
        return packet[9:10] + packet[12:20]
    if len(packet) < ip.IPV6_HEADER_LEN:
        return b""
    proto = packet[6]  # the first next header; extension headers make a flow of their own
    if proto in _PORTS and len(packet) >= ip.IPV6_HEADER_LEN + 4:
        return packet[6:7] + packet[8:44]
    return packet[6:7] + packet[8:40]


def sparse_first(packets: list[bytes], quantum: int = QUANTUM) -> list[int] | None:
    """The order (indices into `packets`) that puts the packets of sparse flows (at most `quantum` bytes
    in the batch) before the others, each group in the order read; None when that order is the one
    read (no sparse flow, only sparse flows, or the sparse ones already first)."""
    if len(packets) < 2 or quantum <= 0:
        return None
    if min(map(len, packets)) > quantum:
        return None  # every flow has more than a quantum here (super-packets, full segments)
    # the common case inline (IPv4 without options, TCP or UDP, not a later fragment): the key that
    # flow_key gives it (protocol, addresses, ports), without the call
    keys = [
        p[9:10] + p[12:24]
        if len(p) >= 24 and p[0] == 0x45 and p[9] in _PORTS and not (p[6] & 0x1F or p[7])
        else flow_key(p)
        for p in packets
    ]
    if len(set(keys)) == 1:
        return None  # one flow: nothing to pass
    sizes: dict[bytes, int] = {}
    for key, packet in zip(keys, packets, strict=True):
        sizes[key] = sizes.get(key, 0) + len(packet)
    sparse = [i for i, key in enumerate(keys) if sizes[key] <= quantum]
    if not sparse or len(sparse) == len(packets) or sparse[-1] == len(sparse) - 1:
        return None
    first = set(sparse)
    return sparse + [i for i in range(len(packets)) if i not in first]


def reorder(
    packets: list[bytes], notes: dict[int, _T], quantum: int = QUANTUM
) -> tuple[list[bytes], dict[int, _T]]:
    """`packets` in `sparse_first` order, and `notes` (anything kept by index, such as the virtio-net
    headers of the packets with offload work) moved with their packets; both as given when the order
    read stands."""
    order = sparse_first(packets, quantum)
    if order is None:
        return packets, notes
    moved = {new: notes[old] for new, old in enumerate(order) if old in notes} if notes else notes
    return [packets[i] for i in order], moved
