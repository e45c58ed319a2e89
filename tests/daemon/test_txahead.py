"""Reading a tunnel device ahead of encryption (`--tun-read-ahead`, daemon/txahead.py, issue 13), on the
fakes: a ping routed behind more than one batch of TSO super-packets leaves first; the bulk's order and
wire bytes are those of a turn without read-ahead; an outer socket readable between chunks is served
before the rest of the bulk; a nested turn of the same device seals its sparse flows at once and
leaves the bulk in order; 0 keeps the old order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.core import gso
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import READ_AHEAD, TUN_READ_AHEAD, DataPlane, OffloadOptions
from ipsec_tunnel.daemon.txahead import _sparse_lead
from tests.support.fakes import FakeKernel, FakeNetwork

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY_AB = bytes(range(20))
KEY_BA = bytes(range(20, 40))
MSS = 1000
ON = 1 << 20  # the read-ahead tried in docs/performance.md
SEGMENTS = 40  # per super-packet: 41 packets as a batch counts them, so 7 of them fill a 256 batch


def _tcp(seq: int, size: int = MSS) -> bytes:
    return bytes(
        IP(src="10.0.1.1", dst="10.0.2.1") / TCP(sport=5001, dport=5201, seq=seq, flags="A") / bytes(size)
    )


def _ping(seq: int, src: str = "10.0.1.1", dst: str = "10.0.2.1", kind: int = 8) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP(type=kind, id=7, seq=seq) / bytes(56))


def _super(n: int) -> tuple[bytes, gso.VnetHeader]:
    """TSO super-packet `n` of the bulk flow, as TUN hands it over."""
    packet = _tcp(1 + n * MSS * SEGMENTS, MSS * SEGMENTS)
    return packet, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, MSS, 20, 16)


class Pair:
    """Host A's data plane sealing what its t0 reads, over raw ESP to host B's (and back)."""

    def __init__(self, tun_read_ahead: int, read_ahead: int = 0) -> None:
        self.network = FakeNetwork()
        self.planes: list[DataPlane] = []
        self.kernels: list[FakeKernel] = []
        ab = SAConfig(0x3000, B4, A4, "aes-gcm", KEY_AB).validated()
        ba = SAConfig(0x4000, A4, B4, "aes-gcm", KEY_BA).validated()
        for local, remote, ahead in ((A4, B4, tun_read_ahead), (B4, A4, 0)):
            engine = Engine()
            engine.tunnels.add(Tunnel("t0", local, remote))
            engine.sad.add(SecurityAssociation(ab, 0.0))
            engine.sad.add(SecurityAssociation(ba, 0.0))
            kernel = FakeKernel(self.network, [local])
            self.kernels.append(kernel)
            plane = DataPlane(
                engine,
                kernel=kernel,
                offloads=OffloadOptions(coalesce=False),
                tun_read_ahead=ahead,
                read_ahead=read_ahead if local == A4 else 0,
            )
            plane.open_transports()
            plane.devices.create("t0")
            self.planes.append(plane)
        self.a, self.b = self.planes
        self.tun = self.kernels[0].tun["t0"]

    def route(self, reads: list[tuple[bytes, gso.VnetHeader | None]]) -> None:
        for packet, offload in reads:
            self.tun.route(packet, offload)

    def drain_a(self) -> int:
        """A's turns until its ring is empty: how many."""
        turns = 0
        while self.tun.inbox.items:
            self.a.on_tun(self.tun)
            turns += 1
        return turns

    def received(self) -> list[bytes]:
        """What B wrote into its t0 after taking everything A sent."""
        raw = self.kernels[1].raw[4]
        while raw.inbox.items:
            self.b.on_raw(raw)
        return self.kernels[1].tun["t0"].take()

    def esp_wire(self) -> list[bytes]:
        """ESP payloads A sent, in order."""
        return [d.payload for d in self.network.wire if d.src == bytes(map(int, A4.split(".")))]

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for p in made:
        p.close()


def _bulk(count: int) -> list[tuple[bytes, gso.VnetHeader | None]]:
    return [_super(n) for n in range(count)]


def _segments(reads: list[tuple[bytes, gso.VnetHeader | None]]) -> list[bytes]:
    out: list[bytes] = []
    for packet, offload in reads:
        out += gso.split(packet, offload) if offload is not None else [packet]
    return out


def test_a_ping_behind_more_than_a_batch_of_super_packets_leaves_first(pairs: list[Pair]) -> None:
    bulk = _bulk(16)  # 16 * 41 packets as counted: between 2 and 3 batches of 256
    for ahead in (0, ON):
        pair = Pair(ahead)
        pairs.append(pair)
        pair.route([*bulk, (_ping(1), None)])
        pair.a.on_tun(pair.tun)
        got = pair.received()
        if ahead:
            assert got[0] == _ping(1)  # sealed and sent before any of the bulk
            assert got[1:] == _segments(bulk)
            assert not pair.tun.inbox.items  # 16 * 40 KB: one turn read them all
        else:  # without: the first turn took one batch of the bulk, the ping is still in the ring
            assert _ping(1) not in got and got == _segments(bulk)[: len(got)]
            assert pair.tun.inbox.items
        pair.drain_a()
        got += pair.received()
        assert sorted(got) == sorted([_ping(1), *_segments(bulk)])
        assert pair.b.engine.rx_accepted == 16 * SEGMENTS + 1 and not sum(pair.b.engine.rx_drops.values())


def test_the_bulk_leaves_in_the_same_order_and_wire_bytes_as_without(pairs: list[Pair]) -> None:
    reads = [*_bulk(9), (_tcp(10**8), None), *[_super(n) for n in range(9, 14)]]
    wires = []
    for ahead in (0, 64 << 10, ON):
        pair = Pair(ahead)
        pairs.append(pair)
        pair.route(reads)
        pair.drain_a()
        wires.append(pair.esp_wire())
        assert pair.received() == _segments(reads)
    assert wires[0] == wires[1] == wires[2]  # same keys, same counters: byte for byte
    # with a ping among them: the bulk's inner packets still in their order, the ping first
    pair = Pair(ON)
    pairs.append(pair)
    pair.route([*reads[:5], (_ping(3), None), *reads[5:]])
    pair.drain_a()
    assert pair.received() == [_ping(3), *_segments(reads)]


def test_an_outer_socket_readable_between_chunks_is_served_before_the_rest(pairs: list[Pair]) -> None:
    for ahead in (0, ON):
        pair = Pair(ahead)
        pairs.append(pair)
        # B's echo reply waits in A's raw socket
        reply = _ping(5, src="10.0.2.1", dst="10.0.1.1", kind=0)
        pair.kernels[1].tun["t0"].route(reply)
        pair.b.on_tun(pair.kernels[1].tun["t0"])
        assert pair.kernels[0].raw[4].inbox.items
        events: list[str] = []
        transmit, write = pair.a.transmit, pair.tun.write

        def sent(burst: Any, transmit: Any = transmit, events: list[str] = events) -> None:
            events.append("sent")
            transmit(burst)

        def wrote(packet: bytes, offload: Any = None, write: Any = write, events: list[str] = events) -> int:
            events.append("wrote")
            return int(write(packet, offload))

        pair.a.transmit = sent  # type: ignore[method-assign]
        pair.tun.write = wrote  # type: ignore[method-assign]
        pair.route(_bulk(16))
        pair.a.on_tun(pair.tun)
        if ahead:  # one chunk sealed, then the reply delivered, then the rest of the bulk
            assert events.index("wrote") > 0 and "sent" in events[events.index("wrote") :]
            assert pair.tun.take() == [reply]
        else:  # the turn takes no socket's turn
            assert "wrote" not in events
        pair.drain_a()
        assert pair.received() == _segments(_bulk(16))


def test_a_nested_turn_of_the_same_device_keeps_the_bulk_in_order(pairs: list[Pair]) -> None:
    pair = Pair(64 << 10)
    pairs.append(pair)
    reads = _bulk(16)
    pair.route(reads)
    transmit = pair.a.transmit
    nested: list[int] = []

    def sent(burst: Any) -> None:
        before = len(pair.tun.inbox.items)
        pair.a.on_tun(pair.tun)  # as DataPlane._answer would, with the ring still readable
        nested.append(before - len(pair.tun.inbox.items))
        transmit(burst)

    pair.a.transmit = sent  # type: ignore[method-assign]
    pair.drain_a()
    assert nested  # the nested turns read bulk into the turn's hold; the outer turn seals it in order
    wire = pair.esp_wire()
    assert [int.from_bytes(p[4:8], "big") for p in wire] == list(range(1, len(wire) + 1))
    assert pair.received() == _segments(reads)


def test_a_nested_turn_seals_a_sparse_packet_at_once(pairs: list[Pair]) -> None:
    """An answer routed while the device's turn serves an outer socket between chunks (the echo reply
    to a ping delivered there) is sealed in the nested turn `DataPlane._answer` makes, not after the
    rest of that socket's turn and the bulk held."""
    pair = Pair(ON)
    pairs.append(pair)
    reads = _bulk(16)
    pair.route(reads)
    transmit = pair.a.transmit
    at_once: list[bool] = []

    def sent(burst: Any) -> None:
        transmit(burst)
        if not at_once:  # after the first chunk: a ping is routed, the device is served again
            pair.tun.route(_ping(9))
            before = len(pair.esp_wire())
            at_once.append(False)
            pair.a.on_tun(pair.tun)
            at_once[0] = len(pair.esp_wire()) == before + 1

    pair.a.transmit = sent  # type: ignore[method-assign]
    pair.drain_a()
    assert at_once == [True]
    got = pair.received()
    assert sorted(got) == sorted([_ping(9), *_segments(reads)])
    assert [p for p in got if p != _ping(9)] == _segments(reads)  # the bulk in its order


def test_a_nested_turn_through_answer_keeps_the_order(pairs: list[Pair]) -> None:
    """With the socket read ahead too (`--read-ahead`), the reply served between chunks calls
    `_answer`, which finds the device still readable: nothing is read twice or out of order."""
    pair = Pair(512 << 10, read_ahead=READ_AHEAD)  # more than a chunk held when the reply is served
    pairs.append(pair)
    b_tun = pair.kernels[1].tun["t0"]
    b_tun.route(_ping(5, src="10.0.2.1", dst="10.0.1.1", kind=0))
    pair.b.on_tun(b_tun)
    reads = _bulk(16)
    pair.route(reads)
    pair.drain_a()
    wire = pair.esp_wire()
    assert [int.from_bytes(p[4:8], "big") for p in wire] == list(range(1, len(wire) + 1))
    assert pair.received() == _segments(reads)


def test_the_switch_and_its_default() -> None:
    assert ipsecd.parse_args([]).tun_read_ahead == TUN_READ_AHEAD == 0  # off by default
    assert ipsecd.parse_args(["--tun-read-ahead=1m"]).tun_read_ahead == ON
    assert ipsecd.parse_args(["--tun-read-ahead=0"]).tun_read_ahead == 0
    assert ipsecd.parse_args(["--tun-read-ahead=256k"]).tun_read_ahead == 256 << 10
    assert DataPlane(Engine(), kernel=FakeKernel(FakeNetwork(), [A4])).tun_read_ahead == 0


def test_a_woken_turn_reads_one_packet_and_takes_no_socket_turn(pairs: list[Pair]) -> None:
    pair = Pair(ON)
    pairs.append(pair)
    looks: list[int] = []
    pair.a._epoll = _Counted(pair.a._epoll, looks)  # type: ignore[assignment]
    pair.route([(_ping(1), None), (_ping(2), None)])
    pair.a.woken = True
    pair.a.on_tun(pair.tun)
    assert len(pair.esp_wire()) == 1 and len(pair.tun.inbox.items) == 1
    assert looks == []  # read one, sealed it: the turn ends without an epoll look


class _Counted:
    """An epoll object counting its polls."""

    def __init__(self, epoll: Any, looks: list[int]) -> None:
        self.epoll, self.looks = epoll, looks

    def poll(self, timeout: float = -1) -> Any:
        self.looks.append(1)
        return self.epoll.poll(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.epoll, name)


def test_small_packets_are_held_at_most_four_batches_ahead(pairs: list[Pair]) -> None:
    pair = Pair(ON)
    pairs.append(pair)
    acks: list[tuple[bytes, gso.VnetHeader | None]] = [
        (_tcp(1 + n, 0), None) for n in range(2000)
    ]  # a TCP receiver's ACKs: 40 bytes each
    pair.route(acks)
    transmit = pair.a.transmit
    read_before_first_send: list[int] = []

    def sent(burst: Any) -> None:
        if not read_before_first_send:
            read_before_first_send.append(2000 - len(pair.tun.inbox.items))
        transmit(burst)

    pair.a.transmit = sent  # type: ignore[method-assign]
    pair.drain_a()
    assert read_before_first_send == [4 * 256]  # 80 KB, well within the byte bound
    assert pair.received() == _segments(acks)


def test_sparse_lead_counts_the_sparse_packets_put_first() -> None:
    def held(*packets: bytes) -> deque[tuple[bytes, gso.VnetHeader | None, int]]:
        return deque((p, None, 1) for p in packets)

    big = [_tcp(1 + n * MSS) for n in range(3)]  # 3000 bytes of one flow: bulk
    assert _sparse_lead(held(*big)) == 0
    already = held(_ping(1), *big)
    assert _sparse_lead(already) == 1 and already[0][0] == _ping(1)
    behind = held(*big, _ping(2))
    assert _sparse_lead(behind) == 1 and [i[0] for i in behind] == [_ping(2), *big]
    small = held(_ping(3), _tcp(7, 0))  # only sparse flows: all of them lead, in their order
    assert _sparse_lead(small) == 2 and [i[0] for i in small] == [_ping(3), _tcp(7, 0)]
    assert _sparse_lead(held(_ping(4))) == 1
    assert _sparse_lead(held(_super(0)[0])) == 0
