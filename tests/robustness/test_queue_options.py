"""ipsecd's queue switches: --qdisc and --socket-buffer parsed, bad values of these and of --batch,
--tcp-queue, --sched-slice and --flow-queues refused in one line naming the switch, and handed to the
data plane."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest

from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.gso import VnetHeader
from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.daemon.dataplane import BATCH, DataPlane
from ipsec_tunnel.daemon.kernel import SOCKET_BUFFER, LinuxKernel
from ipsec_tunnel.linux.qdisc import DEFAULT_QDISC, Qdisc
from tests.support.fakes import FakeKernel, FakeNetwork, FakeTun

from .conftest import A4, B4, NOW


def test_defaults_are_fq_codel_and_the_old_buffer() -> None:
    args = ipsecd.parse_args([])
    assert args.qdisc == DEFAULT_QDISC == "fq_codel"
    assert args.socket_buffer == SOCKET_BUFFER == 4 << 20


@pytest.mark.parametrize("kind", ["fq_codel", "cake", "fq", "pfifo_fast", "none"])
def test_qdisc_kinds(kind: str) -> None:
    assert ipsecd.parse_args([f"--qdisc={kind}"]).qdisc == kind


@pytest.mark.parametrize(("text", "batch"), [("1", 1), ("256", 256), ("4096", 4096)])
def test_batch_sizes(text: str, batch: int) -> None:
    assert ipsecd.parse_args([f"--batch={text}"]).batch == batch


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("512k", 512 << 10), ("2M", 2 << 20)])
def test_socket_buffer_sizes(text: str, size: int) -> None:
    assert ipsecd.parse_args([f"--socket-buffer={text}"]).socket_buffer == size


@pytest.mark.parametrize(
    "arg", ["--qdisc=codel", "--qdisc=fq_codel limit 10", "--socket-buffer=1k", "--socket-buffer=1g",
            "--socket-buffer=-5", "--socket-buffer=lots", "--socket-buffer=",
            "--batch=0", "--batch=5000", "--batch=x",
            "--tcp-queue=63k", "--tcp-queue=2g", "--tcp-queue=x", "--tcp-queue=-1", "--tcp-queue=1025m",
            "--sched-slice=99", "--sched-slice=100001", "--sched-slice=-5", "--sched-slice=1.5",
            "--sched-slice=", "--flow-queues=yes", "--flow-queues="],
)  # fmt: skip
def test_bad_values_are_one_line_errors(arg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        ipsecd.parse_args([arg])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and arg.split("=")[0] in err and "Traceback" not in err


def test_the_kernel_takes_the_qdisc_and_buffer() -> None:
    kernel, default = LinuxKernel(qdisc=Qdisc("cake"), socket_buffer=1 << 20), LinuxKernel()
    assert kernel.qdisc.kind == "cake" and kernel.socket_buffer == 1 << 20
    assert default.qdisc.kind == DEFAULT_QDISC and default.socket_buffer == SOCKET_BUFFER
    plane = DataPlane(Engine(), kernel=kernel)
    try:
        assert plane.kernel is kernel
    finally:
        plane.close()


class _Flood:
    """An ESP-in-UDP socket that always has another GRO batch of `per_read` (undecryptable) datagrams."""

    def __init__(self, per_read: int, fd: int) -> None:
        self.per_read = per_read
        self.fd = fd
        self.reads = 0

    def fileno(self) -> int:
        return self.fd

    def recv_batch(self) -> tuple[SimpleNamespace, list[bytes]]:
        self.reads += 1
        d = SimpleNamespace(src=packed(B4), dst=packed(A4), tos=0, sport=4500)
        return d, [bytes(100)] * self.per_read


def _flood_once(batch: int, *, other_ready: bool) -> int:
    """How many reads one readable event of a flooded ESP-in-UDP socket takes, with another watched
    source (a pipe) readable or idle."""
    engine = Engine()
    plane = DataPlane(engine, clock=lambda: NOW, batch_packets=batch)
    udp_end, _peer = socket.socketpair()
    other_r, other_w = os.pipe()
    try:
        plane.watch(udp_end.fileno(), lambda: None)  # watched itself, and readable: not "another source"
        _peer.send(b"x")
        plane.watch(other_r, lambda: None)
        if other_ready:
            os.write(other_w, b"x")
        flood = _Flood(64, udp_end.fileno())
        plane.on_udp(flood)  # type: ignore[arg-type]
        assert sum(engine.rx_drops.values()) == 64 * flood.reads  # what was read went through the engine
        return flood.reads
    finally:
        plane.close()
        for f in (other_r, other_w):
            os.close(f)
        udp_end.close()
        _peer.close()


@pytest.mark.parametrize(("batch", "reads"), [(256, 4), (1, 1), (100, 2), (4096, BATCH)])
def test_a_udp_event_yields_after_a_batch_when_another_source_is_ready(batch: int, reads: int) -> None:
    assert _flood_once(batch, other_ready=True) == reads  # the rest after the other source's turn


@pytest.mark.parametrize("batch", [1, 100, 256, 4096])
def test_a_udp_event_reads_on_while_no_other_source_is_ready(batch: int) -> None:
    assert _flood_once(batch, other_ready=False) == BATCH  # the read bound, whatever the batch


def _inner(version: int, proto: int, tag: int) -> bytes:
    """A minimal inner packet: the version nibble, the protocol (IPv4) or next header (IPv6), a tag."""
    if version == 4:
        return bytes([0x45]) + bytes(8) + bytes([proto]) + bytes(10) + tag.to_bytes(4, "big")
    return bytes([0x60]) + bytes(5) + bytes([proto]) + bytes(33) + tag.to_bytes(4, "big")


def _recording(plane: DataPlane) -> list[dict[str, list[bytes]]]:
    """The packets `plane.deliver` is given, call by call (written nowhere)."""
    written: list[dict[str, list[bytes]]] = []

    def deliver(packets: dict[str, list[bytes]], *, counted: bool = True) -> None:
        written.append({device: list(batch) for device, batch in packets.items()})

    plane.deliver = deliver  # type: ignore[method-assign]
    return written


def test_what_is_not_tcp_is_delivered_ahead_in_order_and_tcp_waits() -> None:
    plane = DataPlane(Engine(), clock=lambda: NOW)
    written = _recording(plane)
    tcp = [_inner(4, 6, i) for i in range(3)] + [_inner(6, 6, 3)]
    ping, dns, ping6 = _inner(4, 1, 10), _inner(4, 17, 11), _inner(6, 58, 12)
    pending = {"ipsec1": [tcp[0], ping, tcp[1], dns], "ipsec2": [tcp[3]]}
    seen: dict[str, int] = {}
    try:
        plane._deliver_ahead(pending, seen)
        assert written == [{"ipsec1": [ping, dns]}]
        assert pending == {"ipsec1": [tcp[0], tcp[1]], "ipsec2": [tcp[3]]}  # TCP stays, in order
        pending["ipsec1"] += [tcp[2], ping6]
        plane._deliver_ahead(pending, seen)
        assert written[1:] == [{"ipsec1": [ping6]}]  # only what came since; nothing twice
        assert pending["ipsec1"] == [tcp[0], tcp[1], tcp[2]]
        plane._deliver_ahead(pending, seen)
        assert len(written) == 2  # nothing new, nothing written
    finally:
        plane.close()


def test_a_ping_in_a_long_udp_turn_is_written_before_the_tcp_read_with_it() -> None:
    """A flood of TCP with one ping in its first read: the ping goes into the device right after that
    read; the TCP segments, all of them in order, at the end of the turn."""
    engine = Engine()
    plane = DataPlane(engine, clock=lambda: NOW, batch_packets=128)
    written = _recording(plane)
    ping = _inner(4, 1, 99999)
    reads = iter(range(BATCH))

    def receive_batch(*_args: object, **_kw: object) -> tuple[dict[str, list[bytes]], list[object]]:
        n = next(reads)
        segments = [_inner(4, 6, n * 64 + i) for i in range(64)]
        return {"ipsec1": [*segments[:10], ping, *segments[10:]] if n == 0 else segments}, []

    engine.receive_batch = receive_batch  # type: ignore[method-assign,assignment]
    udp_end, peer = socket.socketpair()
    try:
        plane.watch(udp_end.fileno(), lambda: None)
        flood = _Flood(64, udp_end.fileno())
        plane.on_udp(flood)  # type: ignore[arg-type]
        assert flood.reads == BATCH  # nothing else was readable: one long turn
        assert written[0] == {"ipsec1": [ping]}
        assert written[1:] == [{"ipsec1": [_inner(4, 6, i) for i in range(64 * BATCH)]}]
    finally:
        plane.close()
        udp_end.close()
        peer.close()


def test_the_answer_to_a_ping_leaves_before_the_turn_goes_on() -> None:
    """The ping delivered ahead in the middle of a long ESP-in-UDP turn makes its device readable (the
    echo reply): the device is served right after that read, and the turn then goes on."""
    engine = Engine()
    kernel = FakeKernel(FakeNetwork(), [A4])
    plane = DataPlane(engine, kernel=kernel, clock=lambda: NOW, batch_packets=4096)
    ping, reply = _inner(4, 1, 99999), _inner(4, 1, 77777)
    served: list[tuple[int, list[bytes]]] = []  # (reads so far, what the device handed over)

    def on_tun(queue: FakeTun) -> None:
        got = []
        while (packet := queue.read()) is not None:
            got.append(packet[1])
        served.append((flood.reads, got))

    plane.on_tun = on_tun  # type: ignore[method-assign,assignment]
    plane.devices.create("ipsec1")
    tun = kernel.tun["ipsec1"]
    write = tun.write

    def write_and_answer(packet: bytes, offload: VnetHeader | None = None) -> int:
        if packet == ping:
            tun.route(reply)  # the host's stack answers at once
        return write(packet, offload)

    tun.write = write_and_answer  # type: ignore[method-assign]
    reads = iter(range(BATCH))

    def receive_batch(*_args: object, **_kw: object) -> tuple[dict[str, list[bytes]], list[object]]:
        n = next(reads)
        segments = [_inner(4, 6, n * 64 + i) for i in range(64)]
        return {"ipsec1": [*segments, ping] if n == 2 else segments}, []

    engine.receive_batch = receive_batch  # type: ignore[method-assign,assignment]
    udp_end, peer = socket.socketpair()
    try:
        plane.watch(udp_end.fileno(), lambda: None)
        flood = _Flood(64, udp_end.fileno())
        plane.on_udp(flood)  # type: ignore[arg-type]
        assert served == [(3, [reply])]  # right after the third read, not at the end of the turn
        assert flood.reads == BATCH  # and then the turn went on
        assert tun.take() == [ping, *(_inner(4, 6, i) for i in range(64 * BATCH))]
    finally:
        plane.close()
        udp_end.close()
        peer.close()
