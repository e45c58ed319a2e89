"""`--flow-queues` on the fakes (core/steer.py): two hosts' data planes over ESP-in-UDP, each tunnel
device with two queues and each encapsulation port with a second socket for small datagrams.

- A bulk flow's packets are written through the device's first queue once it moved a super-packet, so
  the device routes the rest of it there; a ping's echo reply through the second, so the next request
  is routed there, and read before the bulk.
- What a device turn reads beyond a chunk is sealed in chunks, and an answer served between them does
  not let a nested turn pass what the turn holds (the TCP order at the receiver holds).
- The receiver's small-datagram socket: a ping is delivered at once; TCP it opened while the bulk socket
  holds datagrams goes after them; an SA whose replay window is narrower than `AHEAD_WINDOW` has its
  small datagrams opened only after the bulk.
- Without the switch: one queue, one socket, as before.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.cli import render
from ipsec_tunnel.core import gso, steer
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.plane import Burst
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel
from ipsec_tunnel.daemon import dataplane as dp
from ipsec_tunnel.daemon.dataplane import DataPlane, OffloadOptions
from ipsec_tunnel.daemon.manager import Manager
from tests.support.fakes import FakeKernel, FakeNetwork, FakeRaw, FakeTun, FakeUdp

A4, B4 = "192.0.2.1", "192.0.2.2"
KEY = bytes(range(20))
MSS = 1000
LOCAL, REMOTE = ("10.0.1.1", 40000), ("10.0.2.1", 5201)


def _data(seq: int, size: int) -> bytes:
    return bytes(IP(src=LOCAL[0], dst=REMOTE[0]) / TCP(sport=LOCAL[1], dport=REMOTE[1], seq=seq, flags="A")
                 / bytes(size))  # fmt: skip


def _ack(ack: int) -> bytes:
    return bytes(IP(src=REMOTE[0], dst=LOCAL[0]) / TCP(sport=REMOTE[1], dport=LOCAL[1], seq=1, ack=ack,
                                                       flags="A"))  # fmt: skip


def _ping(seq: int, reply: bool = False) -> bytes:
    src, dst = (REMOTE[0], LOCAL[0]) if reply else (LOCAL[0], REMOTE[0])
    return bytes(IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=9, seq=seq) / bytes(16))


def _super(seq: int, segments: int) -> tuple[bytes, gso.VnetHeader]:
    """A TSO super-packet of `segments` MSS-sized segments from `seq`, as TUN hands it over."""
    packet = _data(seq, segments * MSS)
    return packet, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, MSS, 20, 16)


class Pair:
    """Host A's and host B's data planes over ESP-in-UDP (or raw ESP: not `udp`), `flow_queues` on both."""

    def __init__(self, flow_queues: bool = True, window: int = 4096, *, udp: bool = True) -> None:
        network = FakeNetwork()
        self.planes: list[DataPlane] = []
        self.kernels: list[FakeKernel] = []
        for local, remote in ((A4, B4), (B4, A4)):
            engine = Engine()
            engine.tunnels.add(Tunnel("t0", local, remote))
            for spi, src, dst in ((0x3000, A4, B4), (0x3001, B4, A4)):
                encap = UdpEncap() if udp else None
                config = SAConfig(spi, dst, src, "aes-gcm", KEY, encap=encap, replay_window=window)
                engine.sad.add(SecurityAssociation(config.validated(), 0.0))
            kernel = FakeKernel(network, [local])
            self.kernels.append(kernel)
            plane = DataPlane(engine, kernel=kernel, offloads=OffloadOptions(), flow_queues=flow_queues)
            plane.open_transports()
            plane.devices.create("t0")
            self.planes.append(plane)
        self.a, self.b = self.planes
        self.network = network
        self.udp = udp

    def bulk(self, host: int) -> FakeUdp | FakeRaw:
        """Host `host`'s IPv4 socket for the datagrams longer than `steer.SMALL`."""
        return self.kernels[host].udp[4, 4500] if self.udp else self.kernels[host].raw[4]

    def small(self, host: int) -> FakeUdp | FakeRaw:
        """Host `host`'s IPv4 socket for the others."""
        return self.kernels[host].sparse_udp[4, 4500] if self.udp else self.kernels[host].sparse_raw[4]

    def serve(self, host: int, sock: FakeUdp | FakeRaw) -> None:
        """A turn of host `host`'s socket `sock`."""
        plane = self.planes[host]
        if isinstance(sock, FakeUdp):
            plane.on_udp(sock)
        elif sock.small:
            plane.on_small_raw(sock)
        else:
            plane.on_raw(sock)

    def tun(self, host: int) -> FakeTun:
        return self.kernels[host].tun["t0"]

    def queues(self, host: int) -> list[FakeTun]:
        return self.tun(host).queues

    def close(self) -> None:
        for plane in self.planes:
            plane.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def _serve(*planes: DataPlane) -> None:
    """Serve the planes until none has anything to do."""
    while sum(plane.poll(0) for plane in planes):
        pass


def test_each_device_gets_a_second_queue_and_each_port_a_second_socket(pair: Pair) -> None:
    assert len(pair.queues(0)) == 2 and pair.tun(0).multi_queue
    assert set(pair.kernels[0].sparse_udp) == {(4, 4500), (6, 4500)}
    assert set(pair.kernels[0].sparse_raw) == {4, 6}  # raw ESP too
    assert pair.a.devices.sparse["t0"] is pair.queues(0)[steer.SPARSE]


def test_without_the_switch_one_queue_and_one_socket() -> None:
    p = Pair(flow_queues=False)
    try:
        assert len(p.queues(0)) == 1 and not p.tun(0).multi_queue
        assert p.kernels[0].sparse_udp == {} and p.kernels[0].sparse_raw == {}
        assert p.a.steering is None
    finally:
        p.close()


def test_the_base_device_keeps_one_queue(pair: Pair) -> None:
    pair.a.devices.create("ipsec0")  # a second daemon must find it held (EBUSY), not open a queue
    assert not pair.kernels[0].tun["ipsec0"].multi_queue
    assert "ipsec0" not in pair.a.devices.sparse


def test_a_bulk_flow_is_routed_to_the_first_queue_and_a_ping_to_the_second(pair: Pair) -> None:
    a, b = pair.tun(0), pair.tun(1)
    packet, offload = _super(1, 8)
    a.route(packet, offload)  # no flow written yet: the first queue (the driver hashes it)
    _serve(pair.a, pair.b)
    assert len(b.take()) == 8
    assert pair.a.steering is not None and pair.a.steering.moved == 1
    assert pair.a.engine.bulk_flows == 1 and pair.b.engine.bulk_flows == 1  # read at A, written at B
    result = Manager.op_stats(SimpleNamespace(engine=pair.a.engine), {})  # type: ignore[arg-type]
    assert result["bulk_flows"] == 1 and result["sparse_held"] == 0
    assert result["sparse_read"] == pair.a.engine.sparse_read
    text = render.stats_text(result)
    assert "bulk flows moved apart (flow queues)" in text
    assert "read from the small-datagram sockets (flow queues)" in text
    b.route(_ack(1 + 8 * MSS))  # B's receiver answers
    a.route(_ping(1))
    _serve(pair.a, pair.b)
    assert b.take() == [_ping(1)]
    b.route(_ping(1, reply=True))
    _serve(pair.a, pair.b)
    assert a.take() == [_ack(1 + 8 * MSS), _ping(1, reply=True)]
    # A wrote the ACK through the bulk queue and the echo reply through the sparse one: the device now
    # routes the flow's next data to the first, the next echo request to the second
    assert a.flows[steer.key(_ack(1))] == steer.BULK
    assert a.flows[steer.key(_ping(2))] == steer.SPARSE
    a.route(*_super(1 + 8 * MSS, 8))
    a.route(_ping(2))
    assert len(pair.queues(0)[steer.BULK].inbox.items) == 1
    assert len(pair.queues(0)[steer.SPARSE].inbox.items) == 1


def _live(pair: Pair) -> None:
    """A ping through A's sparse queue: sparse flows are live, so bulk turns look at their sources."""
    pair.queues(0)[steer.SPARSE].inbox.put((gso.NO_OFFLOAD, _ping(99)))
    _serve(pair.a, pair.b)
    pair.tun(1).take()


def test_a_device_turn_reads_the_sparse_queue_first(pair: Pair) -> None:
    _live(pair)
    bulk, sparse = pair.queues(0)
    bulk.inbox.put(_super(1, 8)[::-1])
    sparse.inbox.put((gso.NO_OFFLOAD, _ping(1)))
    del pair.network.wire[:]
    pair.a.on_tun(bulk)  # the bulk queue's turn: the sparse queue is served before it reads
    first = pair.network.wire[0]
    assert len(first.payload) <= steer.SMALL  # the echo request's datagram left first
    assert sum(len(d.payload) > steer.SMALL for d in pair.network.wire) == 8


def test_a_turn_seals_in_chunks_and_an_answer_between_them_passes_nothing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn holding more than a chunk; between two chunks an echo reply arrives in A's sparse socket
    and, as A's stack answers it, more of the flow is routed into the bulk queue. The reply is
    delivered then (not after the turn), and the data routed meanwhile leaves after what the turn
    held: B gets the flow in order."""
    monkeypatch.setattr(dp, "SPARSE_EVERY", 0.0)  # a look between any two chunks, however fast they go
    _live(pair)
    bulk = pair.queues(0)[steer.BULK]
    segments = dp.CHUNK  # two super-packets of a chunk each: two chunks
    for k in range(2):
        bulk.inbox.put(_super(1 + k * segments * MSS, segments)[::-1])
    sealed: list[int] = []
    real = pair.a.seal_and_send

    def seal(name: str, packets: list[bytes], offloads: dict[int, gso.VnetHeader], now: float) -> None:
        real(name, packets, offloads, now)
        sealed.append(len(packets))
        if len(sealed) == 1:  # between the chunks
            reply = pair.b.engine.send_batch("t0", [_ping(1, reply=True)], now)
            assert isinstance(reply[0], Burst)
            pair.kernels[1].udp[4, 4500].send_burst(reply[0].dst, 4500, reply[0].payloads)
            bulk.inbox.put(_super(1 + 2 * segments * MSS, 4)[::-1])  # routed meanwhile

    monkeypatch.setattr(pair.a, "seal_and_send", seal)
    pair.a.on_tun(bulk)
    assert sealed[:2] == [1, 1]  # chunk by chunk
    assert pair.tun(0).take() == [_ping(1, reply=True)]  # delivered between the chunks
    _serve(pair.a, pair.b)
    seqs = [TCP(bytes(IP(p).payload)).seq for p in pair.tun(1).take() if p[9] == 6]
    assert seqs == [1 + i * MSS for i in range(2 * segments + 4)]


def test_without_sparse_traffic_a_turn_is_sealed_whole(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sparse flow has given a packet for SPARSE_LIVE: a bulk turn seals all it read in one call
    and looks at nothing between (no cost when there is nothing to protect)."""
    bulk = pair.queues(0)[steer.BULK]
    for k in range(3):
        bulk.inbox.put(_super(1 + k * dp.CHUNK * MSS, dp.CHUNK)[::-1])
    sealed: list[int] = []
    real = pair.a.seal_and_send

    def seal(name: str, packets: list[bytes], offloads: dict[int, gso.VnetHeader], now: float) -> None:
        sealed.append(len(packets))
        real(name, packets, offloads, now)

    class Looks:
        """The sparse sources' epoll, its looks counted."""

        def __init__(self, real: select.epoll) -> None:
            self.real, self.count = real, 0

        def poll(self, timeout: float) -> list[tuple[int, int]]:
            self.count += 1
            return self.real.poll(timeout)

    looks = Looks(pair.a._sparse)
    monkeypatch.setattr(pair.a, "seal_and_send", seal)
    monkeypatch.setattr(pair.a, "_sparse", looks)
    pair.a.on_tun(bulk)
    assert sealed == [3] and looks.count == 0
    pair.a.sparse_at = pair.a.clock() - dp.SPARSE_LIVE / 2  # a ping half a second ago
    for k in range(3, 6):
        bulk.inbox.put(_super(1 + k * dp.CHUNK * MSS, dp.CHUNK)[::-1])
    pair.a.on_tun(bulk)
    assert sealed == [3, 1, 1, 1] and looks.count > 0


def test_a_turn_that_began_with_no_sparse_flow_live_reads_no_clock_to_look(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve_sparse(since)`: a turn that began more than SPARSE_LIVE after the last sparse packet
    neither reads the clock nor looks at the sparse sources; one that began within it does both."""
    plane = pair.a
    reads: list[float] = []
    clock = plane.clock

    def counted() -> float:
        reads.append(clock())
        return reads[-1]

    looks: list[float] = []
    real = plane._sparse

    class Looks:
        def poll(self, timeout: float) -> list[tuple[int, int]]:
            looks.append(timeout)
            return real.poll(timeout)

    monkeypatch.setattr(plane, "clock", counted)
    monkeypatch.setattr(plane, "_sparse", Looks())
    start = clock()
    plane.sparse_at = start - 2 * dp.SPARSE_LIVE
    plane.serve_sparse(start)
    assert reads == [] and looks == []
    plane.serve_sparse()  # no turn's time: the clock says
    assert len(reads) == 1 and looks == []
    plane.sparse_at = start - dp.SPARSE_LIVE / 2  # a ping half a second before the turn began
    plane.serve_sparse(start)
    assert len(reads) == 2 and looks == [0]


def _arrive(pair: Pair, inner: list[bytes]) -> list[bytes]:
    """A's ESP datagrams of `inner`, carried to B's sockets (not yet read)."""
    payloads: list[bytes] = []
    for result in pair.a.engine.send_batch("t0", inner, 1.0):
        assert isinstance(result, Burst)
        payloads += result.payloads
    sock = pair.bulk(0)
    if isinstance(sock, FakeUdp):
        sock.send_burst(bytes([192, 0, 2, 2]), 4500, payloads)
    else:
        sock.send_burst(bytes([192, 0, 2, 2]), payloads)
    return payloads


@pytest.fixture(params=["udp", "raw"])
def either(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """A `Pair` over ESP-in-UDP, then one over raw ESP."""
    p = Pair(udp=request.param == "udp")
    try:
        yield p
    finally:
        p.close()


def test_the_small_datagram_socket_delivers_a_ping_at_once(either: Pair) -> None:
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(4)] + [_ping(1)])
    assert len(either.small(1).inbox.items) == 1  # the ping's datagram; the bulk waits in the other socket
    either.serve(1, either.small(1))
    assert either.tun(1).take() == [_ping(1)]
    assert either.b.engine.sparse_read == 1  # counted for ipsecadm stats
    either.serve(1, either.bulk(1))
    assert len(either.tun(1).take()) == 4
    assert either.b.engine.sparse_read == 1


def test_what_is_not_tcp_goes_at_once_however_many_are_read(either: Pair) -> None:
    """Pings (and a UDP flow's datagrams) read from the small datagrams' socket in one turn, behind the
    bulk socket's backlog, all go at once: only TCP data keeps the bulk's order."""
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(4)] + [_ping(1), _ping(2), _ping(3)])
    either.serve(1, either.small(1))
    assert either.tun(1).take() == [_ping(1), _ping(2), _ping(3)]
    assert either.b.engine.sparse_held == 0


def test_tcp_from_the_small_datagram_socket_waits_for_the_bulk(either: Pair) -> None:
    tail = _data(1 + 4 * MSS, 100)  # a short segment at the end of a burst: its datagram is small
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(4)] + [tail])
    either.serve(1, either.small(1))  # served first, as a sparse source is
    assert either.tun(1).take() == []  # held: the bulk socket holds what was sent before it
    assert either.b.engine.sparse_held == 1  # counted for ipsecadm stats
    either.serve(1, either.bulk(1))
    seqs = [TCP(bytes(IP(p).payload)).seq for p in either.tun(1).take()]
    assert seqs == [1 + i * MSS for i in range(5)]


def test_tcp_from_the_small_datagram_socket_waits_for_the_bulk_turn_it_was_read_in(
    either: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk socket's turn has read all the socket held and not yet delivered it when it serves the
    sparse flows: a short segment found there waits for the turn's end (the socket is `busy`), while a
    ping read with it goes at once."""
    monkeypatch.setattr(dp, "SPARSE_EVERY", 0.0)
    either.b.sparse_at = either.b.clock()  # sparse flows are live
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(16)])
    tail = _data(1 + 16 * MSS, 100)
    reads = either.bulk(1)
    if isinstance(reads, FakeRaw):
        reads.batch = 8  # two reads of eight datagrams
    real = reads.recv_batch

    def recv() -> Any:
        got = real()
        if got is not None and not reads.inbox.items:  # the read that emptied the socket: meanwhile the
            _arrive(either, [tail, _ping(1)])  # end of the burst and a ping reach the sparse socket
        return got

    monkeypatch.setattr(reads, "recv_batch", recv)
    either.serve(1, reads)
    got = either.tun(1).take()
    assert got[0] == _ping(1)  # served between the reads
    seqs = [TCP(bytes(IP(p).payload)).seq for p in got[1:]]
    assert seqs == [1 + i * MSS for i in range(17)]  # the short segment after the whole turn
    assert either.b.engine.sparse_held == 1 and not either.b.busy


@pytest.mark.parametrize("udp", [False, True], ids=["raw", "udp"])
@pytest.mark.parametrize("read_ahead", [0, 1 << 20], ids=["one-read-at-a-time", "read-ahead"])
def test_a_short_segment_goes_between_the_bulk_sent_before_and_after_it(read_ahead: int, udp: bool) -> None:
    """A burst's short last segment lands in the small datagrams' socket, between two bursts in the bulk
    socket, and the bulk socket's turn comes first. The short segment is read before the bulk datagrams
    are opened and goes between the two bursts (`core.inorder`): the flow arrives in order. (Over
    ESP-in-UDP it used to go after the backlog, and arrived after the second burst: TCP retransmitted.)"""
    p = Pair(udp=udp)
    try:
        p.b.read_ahead = read_ahead
        first = [_data(1 + i * MSS, MSS) for i in range(4)]
        tail = _data(1 + 4 * MSS, 100)
        second = [_data(101 + (4 + i) * MSS, MSS) for i in range(4)]
        _arrive(p, [*first, tail, *second])
        assert len(p.small(1).inbox.items) == 1
        p.serve(1, p.bulk(1))  # the bulk socket's turn, the small datagram not yet read
        seqs = [TCP(bytes(IP(q).payload)).seq for q in p.tun(1).take()]
        assert seqs == [1 + i * MSS for i in range(5)] + [101 + (4 + i) * MSS for i in range(4)]
        assert p.b.engine.sparse_held == 1 and not p.b._inorder
    finally:
        p.close()


def _one_read(sock: FakeUdp | FakeRaw) -> None:
    """What `sock` holds becomes one read, as UDP GRO joins datagrams (a raw socket reads many anyway)."""
    if isinstance(sock, FakeUdp):
        items = list(sock.inbox.items)
        while sock.inbox.take() is not None:
            pass
        sock.inbox.put((items[0][0], [payload for _d, payloads in items for payload in payloads]))


@pytest.mark.parametrize("udp", [False, True], ids=["raw", "udp"])
@pytest.mark.parametrize("read_ahead", [0, 1 << 20], ids=["one-read-at-a-time", "read-ahead"])
def test_a_short_segment_read_after_a_ping_goes_by_its_own_number(read_ahead: int, udp: bool) -> None:
    """One read of the small datagrams' socket holds a ping, then a short segment sent after two bulk
    segments that wait in the bulk socket. Each is placed by its own ESP sequence number: the short
    segment goes after those two (placed by the read's first datagram, the ping's, it went before them,
    and TCP saw it out of order: tests/e2e/test_flow_queues.py, once in CI)."""
    p = Pair(udp=udp)
    try:
        p.b.read_ahead = read_ahead
        first = [_data(1 + i * MSS, MSS) for i in range(4)]
        between = [_data(1 + (4 + i) * MSS, MSS) for i in range(2)]
        tail = _data(1 + 6 * MSS, 100)
        after = [_data(101 + (6 + i) * MSS, MSS) for i in range(4)]
        _arrive(p, [*first, _ping(1), *between, tail, *after])
        _one_read(p.small(1))
        assert len(p.small(1).inbox.items) == (1 if udp else 2)
        p.serve(1, p.bulk(1))  # the bulk socket's turn, the small datagrams not yet read
        _serve(p.b)
        got = p.tun(1).take()
        assert _ping(1) in got
        seqs = [TCP(bytes(IP(q).payload)).seq for q in got if q != _ping(1)]
        assert seqs == [1 + i * MSS for i in range(7)] + [101 + (6 + i) * MSS for i in range(4)]
        assert p.b.engine.sparse_held == 1 and not p.b._inorder
        assert p.b.engine.rx_drops.total() == 0
    finally:
        p.close()


def test_a_pure_ack_from_the_small_datagram_socket_goes_at_once(either: Pair) -> None:
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(4)] + [_ack(7)])
    either.serve(1, either.small(1))
    assert either.tun(1).take() == [_ack(7)]  # no data to keep in order: not held


def test_tcp_from_the_small_datagram_socket_goes_at_once_when_nothing_waits(either: Pair) -> None:
    tail = _data(1, 100)
    _arrive(either, [tail])
    either.serve(1, either.small(1))
    assert either.tun(1).take() == [tail]


def _bulk_then_the_ping(p: Pair) -> None:
    """B's turns: the 100 bulk segments arrive, then the ping kept back, and nothing is dropped."""
    _serve(p.b)
    got = p.tun(1).take()
    assert len(got) == 101 and got[-1] == _ping(1)
    assert p.b.engine.rx_drops.total() == 0


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "raw"])
def test_a_narrow_replay_window_opens_small_datagrams_after_the_bulk(udp: bool) -> None:
    p = Pair(window=64, udp=udp)
    try:
        bulk = [_data(1 + i * MSS, MSS) for i in range(100)]
        _arrive(p, [*bulk, _ping(1)])
        p.serve(1, p.small(1))
        assert p.tun(1).take() == []  # opened ahead, it would put the bulk behind the window
        assert p.b.engine.sparse_held == 1
        _bulk_then_the_ping(p)
    finally:
        p.close()


def test_a_narrow_window_holds_only_its_own_datagrams_of_a_raw_read() -> None:
    """One read of the small raw ESP socket holds datagrams of two SAs: the one of the SA with a narrow
    replay window waits for the bulk socket's backlog, the other is delivered at once."""
    p = Pair(window=64, udp=False)
    try:
        wide = SAConfig(0x3002, B4, A4, "aes-gcm", KEY, replay_window=4096).validated()
        p.b.engine.sad.add(SecurityAssociation(wide, 0.0))
        sender = Engine()  # A's second SA into B, with its own tunnel
        sender.tunnels.add(Tunnel("t0", A4, B4))
        sender.sad.add(SecurityAssociation(wide, 0.0))
        _arrive(p, [_data(1 + i * MSS, MSS) for i in range(100)] + [_ping(1)])  # SA 0x3000: narrow
        esp = sender.send_batch("t0", [_ping(2)], 1.0)
        assert isinstance(esp[0], Burst)
        p.kernels[0].raw[4].send_burst(bytes([192, 0, 2, 2]), esp[0].payloads)
        assert len(p.small(1).inbox.items) == 2
        p.serve(1, p.small(1))
        assert p.tun(1).take() == [_ping(2)]
        assert p.b.engine.sparse_held == 1
        _bulk_then_the_ping(p)
    finally:
        p.close()


def test_what_was_kept_back_goes_within_a_second_if_the_bulk_socket_gets_no_turn(either: Pair) -> None:
    tail = _data(1 + 4 * MSS, 100)
    _arrive(either, [_data(1 + i * MSS, MSS) for i in range(4)] + [tail])
    either.serve(1, either.small(1))
    assert either.tun(1).take() == []
    bulk = either.bulk(1)
    while bulk.inbox.items:  # the backlog gone without a turn of B's (as an error read)
        bulk.inbox.take()
    either.b.periodic()
    assert either.tun(1).take() == [tail]


def test_a_bulk_turn_yields_the_cpu_while_sparse_flows_are_live(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--turn-yield-us`: between the chunks of a bulk turn, while sparse flows are live, the loop gives
    the CPU up (sched_yield) once `turn_yield` has passed since it last did, and notes when; never
    without live sparse flows, never sooner, never with the switch at 0."""
    yields: list[float] = []
    clock = [10.0]
    plane = pair.a
    plane.monotonic = lambda: clock[0]
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(clock[0]))
    monkeypatch.setattr(dp, "SPARSE_EVERY", 0.0)
    bulk = pair.queues(0)[steer.BULK]

    def turn(first_seq: int) -> None:
        for k in range(3):
            bulk.inbox.put(_super(first_seq + k * dp.CHUNK * MSS, dp.CHUNK)[::-1])
        plane.on_tun(bulk)

    plane.turn_yield, plane.yielded = 120e-6, 0.0
    turn(1)  # no sparse flow live: sealed whole, nothing looked at
    assert yields == []
    _live(pair)
    plane.yielded = clock[0] - 100e-6  # gave the CPU up 100 us ago: not yet
    turn(1 + 3 * dp.CHUNK * MSS)
    assert yields == [] and plane.engine.turn_yields == 0
    clock[0] += 30e-6  # 130 us since: the next look between chunks yields, once (the clock stands still)
    turn(1 + 6 * dp.CHUNK * MSS)
    assert yields == [clock[0]] and plane.engine.turn_yields == 1 and plane.yielded == clock[0]
    result = Manager.op_stats(SimpleNamespace(engine=plane.engine), {})  # type: ignore[arg-type]
    assert result["turn_yields"] == 1
    assert "CPU given up by bulk turns (turn yield)" in render.stats_text(result)
    plane.turn_yield = 0.0
    clock[0] += 1.0
    turn(1 + 9 * dp.CHUNK * MSS)
    assert yields == [clock[0] - 1.0]  # switched off
    _serve(pair.a, pair.b)
    seqs = [TCP(bytes(IP(p).payload)).seq for p in pair.tun(1).take() if p[9] == 6]
    assert seqs == [1 + i * MSS for i in range(3 * dp.CHUNK, 12 * dp.CHUNK)]  # the last three turns, in order


def test_a_long_delivery_serves_the_sparse_flows_between_its_writes(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a socket's turn writes what it held (megabytes of TCP under a bulk transfer, each write
    waking the receiving application): a ping waiting in the small datagrams' socket is delivered
    between those writes, not after the last; without live sparse flows, not at all (not looked at)."""
    monkeypatch.setattr(dp, "SPARSE_EVERY", 0.0)
    held = [_data(1 + i * MSS, MSS) for i in range(3 * 64)]  # three coalesced writes of 64 segments
    _arrive(pair, [_ping(1)])  # waits in B's small datagrams' socket
    pair.b.deliver({"t0": list(held)})
    written = pair.tun(1).take()
    assert _ping(1) not in written and len(written) == len(held)  # no sparse flow live: not looked at
    pair.b.sparse_at = pair.b.clock()  # an echo reply left through B's second queue just now
    pair.b.deliver({"t0": list(held)})
    written = pair.tun(1).take()
    assert len(written) == len(held) + 1
    assert 0 < written.index(_ping(1)) < len(held)  # after the first write, before the last
