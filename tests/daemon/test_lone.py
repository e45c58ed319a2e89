"""The data plane's short way for a packet read alone (daemon/lone.py), in two complete daemons on the
in-memory kernel: an idle ping goes device -> wire -> device without the batch pipelines once NAT
traversal knows the peer's port, and gives what the batch gives (the same datagram on the wire, the
same inner packet, the same counters); replayed and forged datagrams are dropped on the short way too;
and the turn's other steps (TCP held for coalescing, a device that refuses the write) are as before."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.daemon import readahead
from tests.daemon import test_two_daemons as two
from tests.daemon.test_two_daemons import INNER_A, INNER_B, Daemon, _echo, _pump
from tests.support.fakes import FakeNetwork

pair = two.pair  # the two daemons, over raw ESP and ESP-in-UDP


class Batches:
    """Counts the calls of an engine's batch entry points (the short way calls neither)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
        self.sent = self.received = 0
        send, receive = engine.send_batch, engine.receive_batch

        def send_batch(*args: Any, **kw: Any) -> Any:
            self.sent += 1
            return send(*args, **kw)

        def receive_batch(*args: Any, **kw: Any) -> Any:
            self.received += 1
            return receive(*args, **kw)

        monkeypatch.setattr(engine, "send_batch", send_batch)
        monkeypatch.setattr(engine, "receive_batch", receive_batch)


def _ping(a: Daemon, b: Daemon, seq: int) -> list[bytes]:
    a.device().route(_echo(INNER_A, INNER_B, seq))
    _pump(a, b)
    return b.device().take()


def test_an_idle_ping_takes_the_short_way_both_ways(
    pair: tuple[Daemon, Daemon, FakeNetwork, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, network, encap = pair
    assert _ping(a, b, 1) == [_echo(INNER_A, INNER_B, 1)]  # the first: B learns A's port (ESP-in-UDP)
    batches = [Batches(monkeypatch, a.engine), Batches(monkeypatch, b.engine)]
    for seq in range(2, 5):
        assert _ping(a, b, seq) == [_echo(INNER_A, INNER_B, seq)]
        reply = _echo(INNER_B, INNER_A, seq, reply=True)
        b.device().route(reply)
        _pump(a, b)
        assert a.device().take() == [reply]
    assert [x.sent for x in batches] == [0, 0]
    if encap.startswith("udp"):  # one sendmsg each, not a burst
        assert a.kernel.udp[(4, 4500)].sent_one == 4 and b.kernel.udp[(4, 4500)].sent_one == 3
    # the short way, but for ESP-in-UDP's first reply (A learns B's port: NAT traversal's work, the batch's)
    assert [x.received for x in batches] == ([1, 0] if encap.startswith("udp") else [0, 0])
    assert a.engine.stats_for("ipsec1").tx_packets == 4 and b.engine.stats_for("ipsec1").rx_packets == 4
    assert [d.payload[4:8] for d in network.wire if d.payload[:4] == bytes.fromhex("00001000")] == [
        n.to_bytes(4, "big") for n in range(1, 5)
    ]


def test_replayed_and_forged_on_the_short_way(pair: tuple[Daemon, Daemon, FakeNetwork, str]) -> None:
    a, b, network, _ = pair
    assert len(_ping(a, b, 1)) == 1
    assert len(_ping(a, b, 2)) == 1
    recorded = network.wire[-1]
    network.replay(recorded)
    forged = bytearray(recorded.payload)
    forged[4:8] = (50).to_bytes(4, "big")
    forged[20] ^= 1
    network.carry(recorded._replace(payload=bytes(forged)))
    _pump(a, b)
    assert b.device().take() == []
    drops = b.drops()
    assert drops[Drop.REPLAYED.value] == 1 and drops[Drop.AUTH_FAILED.value] == 1 and drops["accepted"] == 2
    assert len(_ping(a, b, 3)) == 1  # nothing moved the window: 3 is taken


def test_a_device_refusing_the_short_way_write_is_a_counted_drop(
    pair: tuple[Daemon, Daemon, FakeNetwork, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _, _ = pair
    assert len(_ping(a, b, 1)) == 1
    device = b.device()

    def refuse(packet: bytes, offload: Any = None) -> int:
        raise OSError(errno.EIO, "down")

    monkeypatch.setattr(device, "write", refuse)
    a.device().route(_echo(INNER_A, INNER_B, 2))
    _pump(a, b)
    stats = b.engine.stats_for("ipsec1")
    assert stats.rx_drops[Drop.DEVICE_DOWN] == 1 and stats.rx_packets == 1


@pytest.mark.parametrize("pair", ["udp-read-ahead", "raw-read-ahead"], indirect=True)
def test_a_woken_turn_reading_ahead_writes_a_lone_datagram_at_once(
    pair: tuple[Daemon, Daemon, FakeNetwork, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _, kind = pair
    assert len(_ping(a, b, 1)) == 1  # B learns A's port
    ahead: list[object] = []
    delivered: list[object] = []
    name = "serve_udp" if kind.startswith("udp") else "serve_raw"  # the transport's read-ahead turn
    serve_edge, deliver = getattr(readahead, name), b.plane.deliver

    def serve(plane: Any, edge: Any) -> None:
        ahead.append(plane)
        serve_edge(plane, edge)

    def deliver_all(pending: dict[str, list[bytes]]) -> None:
        delivered.append(pending)
        deliver(pending)

    monkeypatch.setattr(readahead, name, serve)
    monkeypatch.setattr(b.plane, "deliver", deliver_all)
    turns = []
    for seq, woken in ((2, True), (3, False)):
        a.device().route(_echo(INNER_A, INNER_B, seq))
        assert a.plane.poll(0.0) == 1  # sealed and sent
        b.plane.woken = woken  # as DataPlane.run sets it: the turn after an empty poll or a sleep
        assert b.plane.poll(0.0) == 1
        b.plane.woken = False
        assert b.device().take() == [_echo(INNER_A, INNER_B, seq)]
        turns.append((len(ahead), len(delivered)))
        ahead.clear()
        delivered.clear()
    # the woken turn: the short way's direct write (daemon.lone), no read-ahead turn, no batch delivery;
    # a turn that is not woken reads ahead as before
    assert turns[0] == (0, 0) and turns[1][0] == 1 and turns[1][1] >= 1
