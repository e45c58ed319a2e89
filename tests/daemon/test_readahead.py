"""Reading the outer sockets ahead of decryption (`--read-ahead`, daemon/readahead.py, issue 13): a small
datagram read behind a bulk backlog is opened and delivered first, as far as the replay window allows;
the bulk is still opened many at a time and its TCP delivered in order; a forged or replayed datagram
read ahead is dropped, counted, and moves nothing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from operator import length_hint
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP

from ipsec_tunnel.core.drops import Drop
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Outbound
from ipsec_tunnel.core.sa import SecurityAssociation, UdpEncap
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import READ_AHEAD, DataPlane
from ipsec_tunnel.daemon.readahead import JOIN
from ipsec_tunnel.linux.udp import UdpDatagram
from tests.core.test_engine import Pair, make_pair

NOW = 2.0
PING = bytes(IP(src="192.168.1.1", dst="192.168.2.1") / ICMP(id=7, seq=1) / (b"p" * 56))


def _tcp(n: int, size: int = 1000) -> bytes:
    """Segment `n` of one bulk TCP flow."""
    return bytes(
        IP(src="192.168.1.1", dst="192.168.2.1", flags="DF")
        / TCP(sport=5201, dport=40000, seq=1 + n * size, flags="A")
        / bytes(size)
    )


def _seal(pair: Pair, inner: list[bytes]) -> list[bytes]:
    """A's ESP datagrams of `inner`, in order (sequence numbers from A's counter)."""
    return [r.payload for p in inner if isinstance(r := pair.a.send("t0", p, 1.0), Outbound)]


def _seq(esp: bytes) -> int:
    return int.from_bytes(esp[4:8], "big")


class _Udp:
    """An ESP-in-UDP socket handing over the reads given (each a UDP GRO batch, or one datagram)."""

    def __init__(self, pair: Pair, reads: list[list[bytes]], fd: int) -> None:
        self.d = UdpDatagram(packed(pair.a_addr), 4500, packed(pair.b_addr), 0, b"")
        self.reads = iter(reads)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def recv_batch(self) -> tuple[UdpDatagram, list[bytes]] | None:
        got = next(self.reads, None)
        return None if got is None else (self.d, got)


class _Raw:
    """A raw ESP socket handing over the recvmmsg batches given."""

    stamp = 0.0

    def __init__(self, pair: Pair, reads: list[list[bytes]], fd: int) -> None:
        src, dst = packed(pair.a_addr), packed(pair.b_addr)
        self.reads = iter([[(src, dst, 0, esp) for esp in read] for read in reads])
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def recv_batch(self) -> list[tuple[bytes, bytes, int, bytes]] | None:
        return next(self.reads, None)


@pytest.fixture
def fd() -> Iterator[int]:
    a, b = socket.socketpair()
    try:
        yield a.fileno()
    finally:
        a.close()
        b.close()


def _plane(pair: Pair, events: list[tuple[Any, ...]], read_ahead: int = READ_AHEAD) -> DataPlane:
    """B's data plane, its engine's opens and its device writes logged in `events` in order."""
    plane = DataPlane(pair.b, clock=lambda: NOW, read_ahead=read_ahead)
    engine = pair.b
    receive = engine.receive_batch

    def logged(src: bytes, dst: bytes, payloads: list[bytes], *args: Any, **kw: Any) -> Any:
        events.append(("open", [_seq(p) for p in payloads]))
        return receive(src, dst, payloads, *args, **kw)

    def deliver(packets: dict[str, list[bytes]], *, counted: bool = True) -> None:
        events.append(("write", {device: list(batch) for device, batch in packets.items()}))

    one = engine.receive_one

    def logged_one(src: bytes, dst: bytes, esp: bytes, *args: Any) -> Any:  # a datagram read alone
        got = one(src, dst, esp, *args)
        if got is not False:  # taken the short way (core.lone), not declined to receive_batch
            events.append(("open", [_seq(esp)]))
        return got

    engine.receive_batch = logged  # type: ignore[method-assign,assignment]
    engine.receive_one = logged_one  # type: ignore[method-assign,assignment]
    plane.deliver = deliver  # type: ignore[method-assign]
    return plane


def _turn(
    pair: Pair, reads: list[list[bytes]], fd: int, *, raw: bool = False, read_ahead: int = READ_AHEAD
) -> list[tuple[Any, ...]]:
    """B's data plane (`_plane`) after one turn reading `reads` from its UDP socket (`raw`: its raw ESP
    socket): its opens and device writes in order."""
    events: list[tuple[Any, ...]] = []
    plane = _plane(pair, events, read_ahead)
    try:
        if raw:
            plane.on_raw(_Raw(pair, reads, fd))  # type: ignore[arg-type]
        else:
            plane.on_udp(_Udp(pair, reads, fd))  # type: ignore[arg-type]
    finally:
        plane.close()
    return events


def _sa(pair: Pair) -> SecurityAssociation:
    sa = pair.b.sad.get(packed(pair.b_addr), packed(pair.a_addr), 0x1001)
    assert sa is not None
    return sa


def _one_by_one_counted(sa: SecurityAssociation) -> list[int]:
    """Count the datagrams `sa` opens one by one (not the batch way)."""
    calls: list[int] = []
    decrypt = sa.decrypt

    def counted(packet: bytes, *args: Any, **kw: Any) -> Any:
        calls.append(_seq(packet))
        return decrypt(packet, *args, **kw)

    sa.decrypt = counted  # type: ignore[method-assign]
    return calls


def _written_tcp(events: list[tuple[Any, ...]]) -> list[bytes]:
    return [p for kind, what in events if kind == "write" for p in what.get("t0", []) if p != PING]


def _bulk_and_ping(pair: Pair) -> tuple[list[bytes], list[bytes], list[list[bytes]]]:
    """200 bulk segments (4 GRO reads), a ping alone in its read, 20 more: (inner TCP, wire, reads)."""
    tcp = [_tcp(n) for n in range(220)]
    wire = _seal(pair, [*tcp[:200], PING, *tcp[200:]])
    reads = [wire[0:64], wire[64:128], wire[128:192], wire[192:200], [wire[200]], wire[201:221]]
    return tcp, wire, reads


@pytest.mark.parametrize("window", [1024, 4096])
def test_a_ping_behind_the_bulk_is_opened_and_written_first(window: int, fd: int) -> None:
    pair = make_pair(encap=UdpEncap(), replay_window=window)
    tcp, _wire, reads = _bulk_and_ping(pair)
    one_by_one = _one_by_one_counted(_sa(pair))
    events = _turn(pair, reads, fd)
    assert events[0] == ("open", [201]) and events[1] == ("write", {"t0": [PING]})
    assert [e[1] for e in events if e[0] == "open"][1:] == [
        list(range(1, 65)), list(range(65, 129)), list(range(129, 193)), list(range(193, 201)),
        list(range(202, 222)),
    ]  # fmt: skip
    assert _written_tcp(events) == tcp  # every segment, in order
    assert set(one_by_one) <= {201}  # the bulk below the ping's number still opened the batch way
    sa = _sa(pair)
    assert (sa.packets, sa.replay.top, sum(pair.b.rx_drops.values())) == (221, 221, 0)


def test_the_ping_waits_until_the_bulk_before_it_fits_in_the_window(fd: int) -> None:
    """Window 128: the ping, 200 numbers after the oldest datagram read, is opened only once the bulk
    before it is within 128 numbers of it, never pushing the bulk out of the window."""
    pair = make_pair(encap=UdpEncap(), replay_window=128)
    tcp, _wire, reads = _bulk_and_ping(pair)
    events = _turn(pair, reads, fd)
    opens = [e[1] for e in events if e[0] == "open"]
    assert opens[:3] == [list(range(1, 65)), list(range(65, 129)), [201]]
    assert events.index(("write", {"t0": [PING]})) == events.index(("open", [201])) + 1
    assert _written_tcp(events) == tcp and sum(pair.b.rx_drops.values()) == 0
    assert (_sa(pair).packets, _sa(pair).replay.top) == (221, 221)


def test_without_read_ahead_the_bulk_before_the_ping_is_opened_first(fd: int) -> None:
    pair = make_pair(encap=UdpEncap(), replay_window=4096)
    tcp, _wire, reads = _bulk_and_ping(pair)
    events = _turn(pair, reads, fd, read_ahead=0)
    assert [e[1] for e in events if e[0] == "open"][4] == [201]
    assert _written_tcp(events) == tcp


def test_a_small_tcp_segment_opened_ahead_keeps_its_place(fd: int) -> None:
    """A lone small TCP segment (a flow's short tail) read behind the bulk is opened first, but its
    packet is written in the order read, between the bulk before and after it."""
    pair = make_pair(encap=UdpEncap(), replay_window=4096)
    tcp = [_tcp(n) for n in range(100)]
    tail = _tcp(100, size=40)
    after = [_tcp(n, size=1000) for n in range(101, 120)]
    wire = _seal(pair, [*tcp, tail, *after])
    reads = [wire[0:64], wire[64:100], [wire[100]], wire[101:120]]
    events = _turn(pair, reads, fd)
    assert events[0] == ("open", [101])
    assert _written_tcp(events) == [*tcp, tail, *after]


def test_a_forged_or_replayed_datagram_read_ahead_is_dropped_and_moves_nothing(fd: int) -> None:
    pair = make_pair(encap=UdpEncap(), replay_window=1024)
    tcp = [_tcp(n) for n in range(100)]
    old = _seal(pair, [PING])  # number 1, received before the bulk below
    wire = _seal(pair, tcp)  # numbers 2 to 101
    sa = _sa(pair)
    assert pair.b.receive_batch(
        packed(pair.a_addr), packed(pair.b_addr), old, NOW, udp=True, sport=4500
    )[0] == {"t0": [PING]}  # fmt: skip
    forged = old[0][:4] + (150).to_bytes(4, "big") + old[0][8:]  # ahead of the bulk, its ICV not its own
    reads = [wire[0:64], [forged], [old[0]], wire[64:100]]
    events: list[tuple[Any, ...]] = []
    plane = _plane(pair, events)
    one_by_one = _one_by_one_counted(sa)
    tops: list[tuple[int, int]] = []
    receive = pair.b.receive_batch

    def watched(*args: Any, **kw: Any) -> Any:
        got = receive(*args, **kw)
        tops.append((sa.replay.top, sa.replay.bitmap))
        return got

    one = pair.b.receive_one

    def watched_one(*args: Any) -> Any:  # a datagram read alone, the short way (core.lone)
        got = one(*args)
        if got is not False:
            tops.append((sa.replay.top, sa.replay.bitmap))
        return got

    pair.b.receive_batch = watched  # type: ignore[method-assign]
    pair.b.receive_one = watched_one  # type: ignore[method-assign,assignment]
    try:
        plane.on_udp(_Udp(pair, reads, fd))  # type: ignore[arg-type]
    finally:
        plane.close()
    assert [e[1] for e in events if e[0] == "open"][:2] == [[150], [1]]  # both opened ahead ...
    assert tops[0] == tops[1] == (1, 1)  # ... and the window where it was
    assert pair.b.rx_drops[Drop.AUTH_FAILED] == 1 and pair.b.rx_drops[Drop.REPLAYED] == 1
    assert _written_tcp(events) == tcp
    assert not [p for kind, w in events[2:] if kind == "write" for p in w.get("t0", []) if p == PING]
    assert set(one_by_one) <= {150, 1} and (sa.packets, sa.replay.top) == (101, 101)  # bulk: batch way


def test_raw_esp_a_ping_among_the_bulk_is_opened_first_and_the_runs_stay_in_order(fd: int) -> None:
    pair = make_pair(replay_window=4096)
    tcp = [_tcp(n) for n in range(120)]
    wire = _seal(pair, [*tcp[:30], PING, *tcp[30:]])
    reads = [wire[0:64], wire[64:121]]  # the ping is number 31, inside the first recvmmsg batch
    one_by_one = _one_by_one_counted(_sa(pair))
    events = _turn(pair, reads, fd, raw=True)
    assert events[0] == ("open", [31]) and events[1] == ("write", {"t0": [PING]})
    assert [e[1] for e in events if e[0] == "open"][1:] == [
        list(range(1, 31)),
        list(range(32, 65)),
        list(range(65, 122)),
    ]
    assert _written_tcp(events) == tcp and set(one_by_one) <= {31}  # the bulk the batch way
    assert (_sa(pair).packets, _sa(pair).replay.top) == (121, 121)


def test_only_small_datagrams_read_nothing_goes_ahead(fd: int) -> None:
    """A stream of small datagrams alone (ACKs, say): nothing to go ahead of, opened in the order read."""
    pair = make_pair(replay_window=4096)
    wire = _seal(pair, [PING] * 40)
    events = _turn(pair, [wire[:20], wire[20:]], fd, raw=True)
    assert [e[1] for e in events if e[0] == "open"] == [list(range(1, 41))]  # the two reads joined


@pytest.mark.parametrize(("text", "size"), [("0", 0), ("16k", 16 << 10), ("1m", 1 << 20), ("65536", 65536)])
def test_read_ahead_sizes(text: str, size: int) -> None:
    assert ipsecd.parse_args([f"--read-ahead={text}"]).read_ahead == size


@pytest.mark.parametrize("arg", ["--read-ahead=1k", "--read-ahead=65m", "--read-ahead=x", "--read-ahead=-1"])
def test_bad_read_ahead_is_a_one_line_error(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args([arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_engine_default_plane_reads_nothing_ahead() -> None:
    plane = DataPlane(Engine())
    try:
        assert plane.read_ahead == 0 and ipsecd.parse_args([]).read_ahead == READ_AHEAD
    finally:
        plane.close()


def test_raw_esp_small_ones_before_any_bulk_stay_in_their_run(fd: int) -> None:
    """In one recvmmsg batch: a small datagram with no bulk before it stays in the run; the ping after
    the bulk goes ahead; the bulk on each side of it is opened as its own run, in order."""
    pair = make_pair(replay_window=4096)
    tcp = [_tcp(n) for n in range(20)]
    small_tcp = _tcp(99, size=40)
    wire = _seal(pair, [small_tcp, *tcp[:10], PING, *tcp[10:]])
    events = _turn(pair, [wire], fd, raw=True)
    assert [e[1] for e in events if e[0] == "open"] == [[12], list(range(1, 12)), list(range(13, 23))]
    assert events[1] == ("write", {"t0": [PING]})
    assert _written_tcp(events) == [small_tcp, *tcp]


def test_a_small_tcp_segment_held_back_by_the_window_keeps_its_place_when_it_goes_ahead(fd: int) -> None:
    """Window 128: the small segment (number 193) waits until the bulk before it fits in the window,
    then is opened ahead of 129-192; its packet is still written between 192 and 194."""
    pair = make_pair(encap=UdpEncap(), replay_window=128)
    before = [_tcp(n) for n in range(192)]
    tail = _tcp(192, size=40)
    after = [_tcp(n) for n in range(193, 257)]
    wire = _seal(pair, [*before, tail, *after])
    reads = [wire[0:64], wire[64:128], wire[128:192], [wire[192]], wire[193:257]]
    events = _turn(pair, reads, fd)
    assert [e[1] for e in events if e[0] == "open"][:3] == [list(range(1, 65)), list(range(65, 129)), [193]]
    assert _written_tcp(events) == [*before, tail, *after]
    assert (_sa(pair).packets, sum(pair.b.rx_drops.values())) == (257, 0)


@pytest.mark.parametrize(
    ("size", "runs"),
    [
        (64, [range(1, 65), range(65, 129), [193], range(129, 193), range(194, 258)]),
        (20, [range(1, 61), range(61, 121), [193], range(121, 181), range(181, 193), range(194, 258)]),
    ],
)
def test_raw_esp_a_small_segment_held_back_by_the_window_keeps_its_place_when_it_goes_ahead(
    size: int, runs: list[Any], fd: int
) -> None:
    """The same over raw ESP: the small segment (193) first in its recvmmsg batch waits alone until the
    bulk before it fits in the window of 128, then is opened ahead of the bulk still waiting, and written
    in place. In reads of 20 datagrams the reads are joined up to 64, but never across that segment."""
    pair = make_pair(replay_window=128)
    before = [_tcp(n) for n in range(192)]
    tail = _tcp(192, size=40)
    after = [_tcp(n) for n in range(193, 257)]
    wire = _seal(pair, [*before, tail, *after])
    parts = ((0, 192), (192, 257))  # the small segment first in its read
    reads = [wire[i : min(i + size, end)] for start, end in parts for i in range(start, end, size)]
    events = _turn(pair, reads, fd, raw=True)
    assert [e[1] for e in events if e[0] == "open"] == [list(r) for r in runs]
    assert _written_tcp(events) == [*before, tail, *after]
    assert (_sa(pair).packets, sum(pair.b.rx_drops.values())) == (257, 0)


@pytest.mark.parametrize(
    ("lost", "runs"),
    [
        (None, [range(1, 64), range(64, 121)]),
        (30, [range(1, 30), range(31, 94), range(94, 121)]),  # the gap ends a join
    ],
)
def test_raw_esp_reads_of_a_few_datagrams_are_opened_together_up_to_a_full_batch(
    lost: int | None, runs: list[range], fd: int
) -> None:
    """A burst the raw socket gave three datagrams a read: reads that go on one another's sequence are
    opened as one run of at most JOIN (64) datagrams, the batch way, in the order read; a datagram lost
    on the way ends a run. Every segment that came is written once, in order."""
    pair = make_pair(replay_window=4096)
    tcp = [_tcp(n) for n in range(120)]
    wire = _seal(pair, tcp)
    reads = [[d for d in wire[i : i + 3] if _seq(d) != lost] for i in range(0, 120, 3)]
    one_by_one = _one_by_one_counted(_sa(pair))
    events = _turn(pair, reads, fd, raw=True)
    assert JOIN == 64
    assert [e[1] for e in events if e[0] == "open"] == [list(r) for r in runs]
    assert _written_tcp(events) == [t for n, t in enumerate(tcp, 1) if n != lost] and not one_by_one
    assert (_sa(pair).replay.top, sum(pair.b.rx_drops.values())) == (120, 0)


def test_raw_esp_a_datagram_cut_short_at_a_join_is_dropped_and_counted(fd: int) -> None:
    """An ESP datagram of 4 bytes (no sequence number) first in a read behind a ping: no join across it,
    no error; it is dropped as malformed and the rest delivered in order."""
    pair = make_pair(replay_window=4096)
    tcp = [_tcp(n) for n in range(9)]
    wire = _seal(pair, [PING, *tcp])
    events = _turn(pair, [[wire[0]], [wire[1][:4], *wire[1:]]], fd, raw=True)
    assert [e[1] for e in events if e[0] == "open"] == [[1], [0, *range(2, 11)]]  # 0: no number
    assert _written_tcp(events) == tcp and events[1] == ("write", {"t0": [PING]})
    assert pair.b.rx_drops[Drop.MALFORMED] == 1 and _sa(pair).replay.top == 10


class _Failing:
    """A socket whose second read fails (an error the kernel reports on the socket, say)."""

    stamp = 0.0

    def __init__(self, edge: _Udp | _Raw) -> None:
        self.edge = edge
        self.reads = 0

    def fileno(self) -> int:
        return self.edge.fileno()

    def recv_batch(self) -> Any:
        self.reads += 1
        if self.reads == 2:
            raise OSError(104, "Connection reset by peer")
        return self.edge.recv_batch()


@pytest.mark.parametrize("transport", ["udp", "raw"])
def test_a_failed_read_ends_the_reading_and_what_was_read_is_opened(transport: str, fd: int) -> None:
    pair = make_pair(encap=UdpEncap() if transport == "udp" else None, replay_window=4096)
    tcp = [_tcp(n) for n in range(40)]
    wire = _seal(pair, tcp)
    edge = _Udp(pair, [wire[:20], wire[20:]], fd) if transport == "udp" else _Raw(pair, [wire[:20]], fd)
    failing = _Failing(edge)
    events: list[tuple[Any, ...]] = []
    plane = _plane(pair, events)
    try:
        if transport == "udp":
            plane.on_udp(failing)  # type: ignore[arg-type]
        else:
            plane.on_raw(failing)  # type: ignore[arg-type]
    finally:
        plane.close()
    assert failing.reads == 2  # no read after the failed one in this turn
    assert [e[1] for e in events if e[0] == "open"] == [list(range(1, 21))]
    assert _written_tcp(events) == tcp[:20]


class _Written:
    """A tunnel device's queue that logs what is written into it as `_plane`'s deliveries are."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events

    def write(self, packet: bytes) -> None:
        self.events.append(("write", {"t0": [packet]}))


def _ping(n: int) -> bytes:
    return bytes(IP(src="192.168.1.1", dst="192.168.2.1") / ICMP(id=7, seq=n) / (b"p" * 56))


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[list[bytes], list[int | tuple[str, int]], list[int]]:
    """Inner packets (bulk and short TCP segments, pings), the datagrams as they arrive (an index into
    the sealed list; or a replay, or a copy cut short or with its ICV changed), and the read sizes."""
    kinds = draw(st.lists(st.sampled_from("bbbbsp"), min_size=1, max_size=150))
    inner = [_tcp(n) if k == "b" else _tcp(n, size=40) if k == "s" else _ping(n) for n, k in enumerate(kinds)]
    order: list[int | tuple[str, int]] = []
    for i in range(len(inner)):
        fate = draw(st.sampled_from("kkkkkkkklrcf"))  # kept, lost, replayed later, cut short, forged
        if fate != "l":
            order.append(i)
        if fate in "rcf":
            order.append((fate, i))
    sizes = draw(st.lists(st.integers(1, 64), min_size=len(order), max_size=len(order)))
    return inner, order, sizes


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_arrivals(), raw=st.booleans())
def test_any_reads_deliver_each_authentic_packet_once_tcp_in_the_order_read(
    case: tuple[list[bytes], list[int | tuple[str, int]], list[int]], raw: bool
) -> None:
    """Whatever the reads (sizes, losses, replays, datagrams cut short or forged), a turn reading ahead
    (and joining raw reads) delivers each authentic datagram's packet once, TCP in the order read, and
    counts every other datagram as one drop; the same packets as a turn without read-ahead."""
    inner, order, sizes = case
    results = []
    for read_ahead in (READ_AHEAD, 0):
        pair = make_pair(replay_window=4096) if raw else make_pair(encap=UdpEncap(), replay_window=4096)
        wire = _seal(pair, inner)
        datagrams = []
        for item in order:
            if isinstance(item, int):
                datagrams.append(wire[item])
            else:
                fate, i = item
                d = wire[i]
                datagrams.append(d if fate == "r" else d[:6] if fate == "c" else d[:-1] + bytes([d[-1] ^ 1]))
        reads, at = [], 0
        for size in sizes:
            if at < len(datagrams):
                reads.append(datagrams[at : at + size])
                at += size
        events: list[tuple[Any, ...]] = []
        plane = _plane(pair, events, read_ahead)
        plane.devices.tun["t0"] = _Written(events)  # type: ignore[assignment]  # a lone packet's direct write
        a, b = socket.socketpair()
        try:
            source = _Raw(pair, reads, a.fileno()) if raw else _Udp(pair, reads, a.fileno())
            while length_hint(source.reads):  # turns until every read was taken
                plane.on_raw(source) if raw else plane.on_udp(source)  # type: ignore[arg-type]
        finally:
            plane.devices.tun.clear()
            plane.close()
            a.close()
            b.close()
        written = [p for kind, what in events if kind == "write" for p in what.get("t0", [])]
        results.append(written)
        kept = sorted({item for item in order if isinstance(item, int)})
        assert sorted(written) == sorted(inner[i] for i in kept)  # each authentic one once
        first_read: dict[int, int] = {}
        for item in order:
            if isinstance(item, int):
                first_read.setdefault(item, len(first_read))
        tcp_read = [inner[i] for i in sorted(kept, key=first_read.__getitem__) if inner[i][9] == 6]
        assert [p for p in written if p[9] == 6] == tcp_read  # TCP in the order read
        assert pair.b.rx_accepted == len(kept) and sum(pair.b.rx_drops.values()) == len(datagrams) - len(kept)
    assert sorted(results[0]) == sorted(results[1])
