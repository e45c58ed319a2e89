"""The data plane without I/O: an inner packet read from a tunnel device becomes an ESP datagram for the
peer, and a received ESP datagram becomes an inner packet for a device, or a counted drop.

`Engine` is the state both directions share (`plane.Plane`: SAD, tunnels, counters, ICMP limits, drop
log, NAT traversal) with one entry point per direction, each a batch: `send_batch` (the pipeline in
`send.py`) and `receive_batch` (`receive.py`). The daemon owns the sockets and devices and calls them,
and `tick`, with the current time. `send`, `receive` and `receive_udp` take one packet as a batch of one
and give its fate as one value, for tests and tools.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from . import lone
from .drops import Drop
from .gso import VnetHeader
from .plane import Burst, Deliver, Outbound, Plane, Reject
from .receive import receive
from .send import send

__all__ = ["Engine", "packed"]


class Engine(Plane):
    """SAs, tunnels and counters, and the two pipelines that use them."""

    # One packet read alone, the short way, or False for the batch (`lone.py`; bound as methods).
    send_one = lone.send_one
    receive_one = lone.receive_one

    def send_batch(
        self, device: str, packets: list[bytes], now: float, offloads: dict[int, VnetHeader] | None = None
    ) -> list[Burst | Deliver]:
        """The ESP datagrams (bursts of equal outer header fields, in order) and the ICMP errors for the
        device, for `packets` read in this order from tunnel device `device`; `offloads`: the virtio-net
        header of each one read with offload work to do, by index (see `send.py`)."""
        return send(self, device, packets, now, offloads)

    def receive_batch(
        self, src: bytes, dst: bytes, payloads: Iterable[bytes], now: float, tos: int = 0, *,
        udp: bool = False, sport: int | None = None,
    ) -> tuple[dict[str, list[bytes]], list[Reject]]:  # fmt: skip
        """The inner packets per device, in order, and the ICMP errors to send, for datagrams that `src`
        sent to `dst` (packed) with outer TOS `tos`: ESP-in-UDP from port `sport` with `udp`, else raw
        ESP (see `receive.py`)."""
        return receive(self, src, dst, payloads, now, tos, udp=udp, sport=sport)

    # -- one packet: a batch of one, its fate as one value ---------------------------------------------

    def send(self, device: str, inner: bytes, now: float) -> Outbound | Deliver | Drop:
        """`send_batch` of packet `inner` alone: its ESP datagram, an ICMP error for the device, or why
        it was dropped."""
        before = self.tx_drops.copy()
        for result in self.send_batch(device, [inner], now):
            if isinstance(result, Deliver):
                return result
            return Outbound(
                result.dst, result.src, result.payloads[0], result.tos, result.ttl, result.df, result.encap,
                result.nextdev,
            )  # fmt: skip
        reason = _counted(before, self.tx_drops)
        assert reason is not None, "a packet neither sent nor dropped"
        return reason

    def receive(
        self, src: bytes, dst: bytes, esp: bytes, now: float, tos: int = 0, *, udp: bool = False,
        sport: int | None = None,
    ) -> Deliver | Reject | Drop | None:  # fmt: skip
        """`receive_batch` of datagram `esp` alone: the inner packet for a device, an ICMP error for the
        sender, why it was dropped, or None (a NAT-keepalive, or an IKE message, with `udp`)."""
        before = self.rx_drops.copy()
        deliver, rejects = self.receive_batch(src, dst, [esp], now, tos, udp=udp, sport=sport)
        for device, packets in deliver.items():
            return Deliver(device, packets[0])
        if rejects:
            return rejects[0]
        return _counted(before, self.rx_drops)

    def receive_udp(
        self, src: bytes, dst: bytes, payload: bytes, now: float, tos: int = 0, *, sport: int | None = None
    ) -> Deliver | Reject | Drop | None:
        """`receive` of a datagram from the ESP-in-UDP port (RFC 3948 §2)."""
        return self.receive(src, dst, payload, now, tos, udp=True, sport=sport)


def _counted(before: Counter[Drop], after: Counter[Drop]) -> Drop | None:
    """The drop reason counted between `before` and `after`, if any."""
    for reason in after - before:
        return reason
    return None


def packed(address: str) -> bytes:
    """An address in text form, packed."""
    return ipaddress.ip_address(address).packed
