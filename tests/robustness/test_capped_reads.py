"""ESP-in-UDP reads capped at `--batch` packets per turn: where the cap cuts a TCP flow, the segments of
its last, unfinished super-packet wait for the next turn (once at most, and only while the socket has
more), so the tunnel device gets full super-packets as without the cap: one write per 64 segments."""

from __future__ import annotations

import os
from types import SimpleNamespace

from ipsec_tunnel.core import gro, gso
from ipsec_tunnel.core.engine import Burst, Engine, packed
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon.dataplane import DataPlane
from tests.core.test_gro_tail import segments

from .conftest import A4, B4, NOW

KEY = bytes(range(20))


class _Queue:
    """A tunnel device's queue (with virtio-net headers) that records what is written."""

    name = "t0"
    vnet = True

    def __init__(self) -> None:
        self.writes: list[tuple[gso.Offload, bytes]] = []

    def write(self, packet: bytes, offload: gso.Offload = gso.NO_OFFLOAD) -> None:
        self.writes.append((offload, packet))


class _Socket:
    """An ESP-in-UDP socket with GRO batches queued; its descriptor (a pipe) is readable while any are."""

    def __init__(self, batches: list[list[bytes]]) -> None:
        self.batches = batches
        self._r, self._w = os.pipe()
        if batches:
            os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def recv_batch(self) -> tuple[SimpleNamespace, list[bytes]] | None:
        if not self.batches:
            return None
        batch = self.batches.pop(0)
        if not self.batches:
            os.read(self._r, 1)  # drained: no longer readable
        return SimpleNamespace(src=packed(A4), dst=packed(B4), tos=0, sport=4500), batch

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def _sealed(segs: list[bytes], per_read: int) -> list[list[bytes]]:
    """`segs` sealed by A's engine (ESP-in-UDP), in GRO batches of `per_read` datagrams."""
    sender = Engine()
    sender.tunnels.add(Tunnel("t0", A4, B4))
    sender.sad.add(
        SecurityAssociation(SAConfig(0x1000, B4, A4, "aes-gcm", KEY, encap=UdpEncap()).validated(), 0.0)
    )
    payloads: list[bytes] = []
    for burst in sender.send_batch("t0", segs, NOW):
        assert isinstance(burst, Burst)
        payloads += burst.payloads
    assert len(payloads) == len(segs)
    return [payloads[i : i + per_read] for i in range(0, len(payloads), per_read)]


def _run(segs: list[bytes], per_read: int, cap: int) -> list[list[tuple[gso.Offload, bytes]]]:
    """Serve `segs` (as B) one capped read per turn until the socket is drained: each turn's writes."""
    receiver = Engine()
    receiver.tunnels.add(Tunnel("t0", B4, A4))
    receiver.sad.add(
        SecurityAssociation(SAConfig(0x1000, B4, A4, "aes-gcm", KEY, encap=UdpEncap()).validated(), 0.0)
    )
    plane = DataPlane(receiver, clock=lambda: NOW, batch_packets=cap)
    queue = _Queue()
    plane.devices.tun["t0"] = queue  # type: ignore[assignment]
    sock = _Socket(_sealed(segs, per_read))
    turns = []
    try:
        while sock.batches:
            plane.on_udp(sock)  # type: ignore[arg-type]
            turns.append(queue.writes)
            queue.writes = []
        assert receiver.rx_accepted == len(segs)
    finally:
        sock.close()
        plane.devices.tun.clear()
        plane.close()
    return turns


def _segments_of(writes: list[tuple[gso.Offload, bytes]]) -> list[bytes]:
    out: list[bytes] = []
    for offload, packet in writes:
        out += gso.split(packet, offload) if offload.gso_type else [packet]
    return out


def test_a_capped_read_writes_full_super_packets() -> None:
    segs = segments(6 * gro.MAX_SEGMENTS)
    # GRO batches of 32, at most 80 packets a turn: each turn reads 96, so 64 + 32 without holding back.
    turns = _run(segs, per_read=32, cap=80)
    assert len(turns) == 4
    writes = [w for turn in turns for w in turn]
    assert [len(gso.split(p, o)) for o, p in writes] == [gro.MAX_SEGMENTS] * 6  # not 8 writes, 4 of 32
    assert _segments_of(writes) == segs  # each once, in order, as they came


def test_a_held_segment_waits_one_turn_at_most() -> None:
    segs = segments(60)
    turns = _run(segs, per_read=10, cap=10)
    # Held at the first turn, written with the second's; the socket drained at the last: nothing held.
    assert [[len(gso.split(p, o)) for o, p in turn] for turn in turns] == [[], [20], [], [20], [], [20]]
    assert _segments_of([w for turn in turns for w in turn]) == segs


def test_nothing_is_held_without_a_cap_or_when_the_socket_is_empty() -> None:
    segs = segments(100)
    turns = _run(segs, per_read=25, cap=4096)  # one turn reads all
    assert [[len(gso.split(p, o)) for o, p in turn] for turn in turns] == [[64, 36]]
    turns = _run(segs, per_read=50, cap=100)  # capped, but nothing left to read
    assert [[len(gso.split(p, o)) for o, p in turn] for turn in turns] == [[64, 36]]
