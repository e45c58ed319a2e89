"""The data plane's short way for a loop turn that read ONE packet (`core.lone`): a packet read alone
from a tunnel device is sealed and sent without the batch pipeline; a datagram received alone (ESP-in-UDP
or raw ESP) is opened and, when nothing else of the turn waits, written into its device at once, and the
device's answer (an echo reply) served before the turn goes on, as `DataPlane.on_udp` does for what is
not TCP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..core.plane import Burst, Deliver, Reject
from ..linux.udp import UdpDatagram

if TYPE_CHECKING:
    from .dataplane import DataPlane

__all__ = ["receive", "receive_raw", "send"]

IPPROTO_TCP = 6  # IPv4 protocol / IPv6 next header (RFC 9293)


def send(plane: DataPlane, device: str, packet: bytes, now: float) -> bool:
    """Seal and send `packet`, read alone from tunnel device `device` (a counted drop sends nothing);
    False, with nothing changed, when it must go through `Engine.send_batch`."""
    got = plane.engine.send_one(device, packet, now)
    if got is False:
        return False
    if not isinstance(got, Burst):
        return True
    encap, udp = got.encap, plane.udp.get(4 if len(got.dst) == 4 else 6)
    if encap is None or udp is None:
        plane.transmit(got)  # raw ESP (sendmmsg); without a socket, dropped as transmit does
        return True
    try:
        error = udp.send_one(got.dst, encap.dport, got.payloads[0], got.tos, got.ttl, got.df, got.src,
                             got.nextdev)  # fmt: skip
    except OSError as exc:  # before anything was sent (an unknown --nextdev, say)
        error = exc
    if error is not None:
        plane._send_failed(got, 1, error)
    return True


def receive(
    plane: DataPlane, d: UdpDatagram, payloads: list[bytes], now: float, alone: bool
) -> tuple[dict[str, list[bytes]], list[Reject]] | bool:
    """One ESP-in-UDP read of a single datagram (`payloads`): True when it is done with (dropped, or,
    with `alone`, nothing else of the turn pending, not TCP, written into its device and the devices
    then readable served); what `Engine.receive_batch` would give, for the turn's other steps; False,
    with nothing changed, when it must go through `Engine.receive_batch`."""
    if len(payloads) != 1:
        return False
    got = plane.engine.receive_one(d.src, d.dst, payloads[0], now, d.tos, d.sport)
    if got is False or got is True:
        return got
    done = _arrived(plane, got, alone)
    return True if done is True else (done, [])


def receive_raw(
    plane: DataPlane, datagrams: list[tuple[bytes, bytes, int, bytes]], now: float, alone: bool
) -> dict[str, list[bytes]] | bool:
    """`receive` for a raw ESP read of a single (source, destination, TOS, ESP) datagram: True when it
    is done with, else what `DataPlane._receive_runs` would give, or False (nothing changed) when it
    must go that way."""
    if len(datagrams) != 1:
        return False
    src, dst, tos, esp = datagrams[0]
    got = plane.engine.receive_one(src, dst, esp, now, tos)
    if got is False or got is True:
        return got
    return _arrived(plane, got, alone)


def _arrived(plane: DataPlane, got: Deliver, alone: bool) -> dict[str, list[bytes]] | Literal[True]:
    """An inner packet opened alone: with `alone` and not TCP, written into its device at once (a
    refusal counted as `DataPlane.deliver` counts it) and the devices then readable served: True; else
    the packets per device for the turn's end (TCP waits there, to be coalesced)."""
    packet = got.packet
    if not alone or packet[9 if packet[0] >> 4 == 4 else 6] == IPPROTO_TCP:
        return {got.device: [packet]}
    queue = plane.devices.tun.get(got.device)
    if queue is not None:  # as DataPlane.deliver writes it
        sparse = plane.devices.sparse.get(got.device) if plane.steering is not None else None
        if sparse is not None:
            queue = plane.queue_for(queue, sparse, packet)
        try:
            queue.write(packet)
        except OSError as exc:
            plane._write_failed(got.device, 1, exc)
    plane._answer()
    return True
