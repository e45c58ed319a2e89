"""The data plane's per-packet system calls in C (`linux/_pktio.c`) against the Python path they replace
(`UdpSocket.io = None`, `TunQueue.io = None`, as IPSEC_TUNNEL_PURE=1 selects it): result for result,
over loopback UDP sockets and socket pairs of the test's own process (no root), and a TUN device (root)."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ipsec_tunnel.core.gso import NO_OFFLOAD, VNET_HDR, VNET_HDR_LEN, VnetHeader
from ipsec_tunnel.linux import pktio
from ipsec_tunnel.linux.tun import TunQueue, open_offload_tun
from ipsec_tunnel.linux.udp import UdpDatagram, UdpSocket
from tests.support.netns import Netns

io = pktio.available
needs_ext = pytest.mark.skipif(io is None, reason="the C extension _pktio is not built")
pytestmark = needs_ext

LOOPBACK: dict[int, str] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def _v6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


FAMILIES = [
    socket.AF_INET,
    pytest.param(socket.AF_INET6, marks=pytest.mark.skipif(not _v6_loopback(), reason="no IPv6 loopback")),
]


@pytest.fixture(params=FAMILIES, ids=["v4", "v6"])
def family(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@contextlib.contextmanager
def _pair(family: int, **receiver: Any) -> Iterator[tuple[UdpSocket, UdpSocket]]:
    rx = UdpSocket(family, 0, LOOPBACK[family], **receiver)
    tx = UdpSocket(family, 0, LOOPBACK[family], gso=True)
    try:
        yield tx, rx
    finally:
        rx.close()
        tx.close()


@pytest.fixture
def pair(family: int) -> Iterator[tuple[UdpSocket, UdpSocket]]:
    with _pair(family) as both:
        yield both


def _wait(sock: UdpSocket) -> None:
    select.select([sock.fileno()], [], [], 2.0)


def _both(rx: UdpSocket, send: Callable[[], object]) -> tuple[Any, Any]:
    """`send` twice; the first copy read by the C call, the second by the Python path."""
    got = []
    for way in (io, None):
        send()
        _wait(rx)
        rx.io = way
        got.append(rx.recv_batch())
    rx.io = io
    return got[0], got[1]


def _without_stamp(got: tuple[UdpDatagram, list[bytes]]) -> tuple[UdpDatagram, list[bytes]]:
    return got[0]._replace(stamp=0.0), got[1]


@pytest.mark.parametrize("size", [0, 1, 61, 1400, 9000, 65000])
@pytest.mark.parametrize("tos", [0, 0x10, 0xB8, 0x03])
def test_a_datagram_is_received_the_same(pair: tuple[UdpSocket, UdpSocket], size: int, tos: int) -> None:
    tx, rx = pair
    payload = os.urandom(size)
    c, py = _both(rx, lambda: tx.send(LOOPBACK[tx.family], rx.port, payload, tos=tos))
    assert c == py
    assert c[1] == [payload]
    assert c[0].tos == tos and c[0].sport == tx.port
    assert c[0].src == c[0].dst == socket.inet_pton(tx.family, LOOPBACK[tx.family])
    assert type(c[0]) is UdpDatagram


def test_nothing_queued_is_none_both_ways(pair: tuple[UdpSocket, UdpSocket]) -> None:
    _tx, rx = pair
    assert rx.recv_batch() is None
    rx.io = None
    assert rx.recv_batch() is None


def test_the_receive_time_is_read_the_same(family: int) -> None:
    with _pair(family, timestamps=True) as (tx, rx):
        c, py = _both(rx, lambda: tx.send(LOOPBACK[family], rx.port, b"stamped"))
        assert _without_stamp(c) == _without_stamp(py)
        assert abs(c[0].stamp - py[0].stamp) < 5.0 and c[0].stamp > 1e9


@pytest.mark.parametrize("sizes", [[1000] * 5, [1000, 1000, 1000, 400], [1200] * 2 + [1100]])
def test_a_gro_batch_is_split_the_same(family: int, sizes: list[int]) -> None:
    with _pair(family, gro=True) as (tx, rx):
        if not rx.gro:
            pytest.skip("no UDP GRO")
        payloads = [os.urandom(n) for n in sizes]
        c, py = _both(rx, lambda: tx.send_burst(LOOPBACK[family], rx.port, payloads))
        assert c == py
        if c is not None and len(c[1]) > 1:  # loopback handed the GSO send over as one GRO batch
            assert b"".join(c[1]) == b"".join(payloads)


def test_a_datagram_cut_short_is_dropped_both_ways(pair: tuple[UdpSocket, UdpSocket]) -> None:
    tx, rx = pair
    rx._buf = bytearray(100)
    got = []
    for way in (io, None):
        tx.send(LOOPBACK[tx.family], rx.port, bytes(200))  # cut short: dropped
        tx.send(LOOPBACK[tx.family], rx.port, b"fits")
        _wait(rx)
        rx.io = way
        got.append(rx.recv_batch())
    assert got[0] == got[1]
    assert got[0] is not None and got[0][1] == [b"fits"]


def test_an_icmp_error_is_noted_and_the_read_goes_on_both_ways(pair: tuple[UdpSocket, UdpSocket]) -> None:
    tx, _rx = pair
    with socket.socket(tx.family, socket.SOCK_DGRAM) as gone:
        gone.bind((LOOPBACK[tx.family], 0))
        closed = gone.getsockname()[1]
    for way in (io, None):
        tx.io = way
        tx.send(LOOPBACK[tx.family], closed, b"to nobody")  # port unreachable comes back: a pending error
        _wait(tx)
        assert tx.recv_batch() is None  # the error is taken and noted; nothing else queued
        assert [e.errno for e in tx.pop_errors()] == [errno.ECONNREFUSED]


def test_a_closed_socket_raises_the_same(family: int) -> None:
    results = []
    for way in (io, None):
        with _pair(family) as (_tx, rx):
            rx.io = way
            rx.close()
            with pytest.raises(OSError) as raised:
                rx.recv_batch()
            results.append((type(raised.value), raised.value.errno))
    assert results[0] == results[1] == (OSError, errno.EBADF)


SENDS = [
    dict(tos=0, ttl=64, df=False, src=None, oif=None),
    dict(tos=0xB8, ttl=1, df=True, src=None, oif=None),
    dict(tos=0x02, ttl=255, df=True, src="LOCAL", oif=None),
    dict(tos=0x10, ttl=64, df=False, src=None, oif="lo"),
]


@pytest.mark.parametrize("options", SENDS)
def test_send_one_sends_the_same(pair: tuple[UdpSocket, UdpSocket], options: dict[str, Any]) -> None:
    tx, rx = pair
    if options["src"] == "LOCAL":
        options = {**options, "src": LOOPBACK[tx.family]}
    got = []
    payloads = (b"first", os.urandom(1400))
    for way in (io, None):
        tx.io = way
        tx._one_key = ()  # packed afresh for this way
        for payload in payloads:
            assert tx.send_one(LOOPBACK[tx.family], rx.port, payload, **options) is None
            _wait(rx)
            got.append(rx.recv_batch())
    assert got[:2] == got[2:]
    assert got[0] is not None and got[0][0].tos == options["tos"]


def _error(exc: OSError | None) -> tuple[type[OSError], int | None, str | None] | None:
    return None if exc is None else (type(exc), exc.errno, exc.strerror)


def test_send_one_fails_the_same(pair: tuple[UdpSocket, UdpSocket]) -> None:
    tx, rx = pair
    outcomes = []
    for way in (io, None):
        tx.io = way
        tx._one_key = ()
        too_big = tx.send_one(LOOPBACK[tx.family], rx.port, bytes(70000), 0, 64, True, None, None)
        outcomes.append(_error(too_big))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] is not None and outcomes[0][1] == errno.EMSGSIZE


def test_send_one_retries_past_a_stored_icmp_error_the_same(pair: tuple[UdpSocket, UdpSocket]) -> None:
    tx, rx = pair
    with socket.socket(tx.family, socket.SOCK_DGRAM) as gone:
        gone.bind((LOOPBACK[tx.family], 0))
        closed = gone.getsockname()[1]
    for way in (io, None):
        tx.io = way
        tx._one_key = ()
        assert tx.send_one(LOOPBACK[tx.family], closed, b"to nobody", 0, 64, False, None, None) is None
        _wait(tx)  # the port unreachable is pending now: the next send fails once, then is retried
        assert tx.send_one(LOOPBACK[tx.family], rx.port, b"after", 0, 64, False, None, None) is None
        _wait(rx)
        got = rx.recv_batch()
        assert got is not None and got[1] == [b"after"]
        assert [e.errno for e in tx.pop_errors()] == [errno.ECONNREFUSED]


def test_send_one_on_a_closed_socket_fails_the_same(family: int) -> None:
    outcomes = []
    for way in (io, None):
        with _pair(family) as (tx, rx):
            tx.io = way
            assert tx.send_one(LOOPBACK[family], rx.port, b"x", 0, 64, False, None, None) is None
            tx.close()  # the same destination and options: the cached ones are used
            outcomes.append(_error(tx.send_one(LOOPBACK[family], rx.port, b"x", 0, 64, False, None, None)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] is not None and outcomes[0][1] == errno.EBADF


def test_control_packs_as_sendmsg_does() -> None:
    assert io is not None
    cmsgs = [(socket.IPPROTO_IP, 1, b"\x10\x00\x00\x00"), (socket.IPPROTO_IP, 2, b"\x40\x00\x00\x00")]
    space = socket.CMSG_SPACE(4)
    packed = io.control(cmsgs)
    assert len(packed) == 2 * space
    assert int.from_bytes(packed[:8], sys.byteorder) == socket.CMSG_LEN(4)
    assert packed[space + 16 : space + 20] == b"\x40\x00\x00\x00"
    assert io.control([]) == b""


def test_pure_python_is_chosen_by_the_switch() -> None:
    code = "from ipsec_tunnel.linux import pktio; print(pktio.native is None, pktio.available is None)"
    env = {**os.environ, "IPSEC_TUNNEL_PURE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    del env["IPSEC_TUNNEL_PURE"]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_build_has_it() -> None:
    """`make test` sets IPSEC_REQUIRE_EXT=1: a build without the extension must not pass for one with it."""
    if os.environ.get("IPSEC_REQUIRE_EXT") != "1":
        pytest.skip("IPSEC_REQUIRE_EXT is not 1")
    assert pktio.available is not None
    if os.environ.get("IPSEC_TUNNEL_PURE") != "1":
        assert pktio.native is pktio.available and pktio.NAME == "C extension"


@contextlib.contextmanager
def _queue_pair(vnet: bool) -> Iterator[tuple[TunQueue, socket.socket]]:
    """A TunQueue over one end of a packet socket pair (the other end plays the kernel)."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    queue = TunQueue.__new__(TunQueue)
    queue.fd, queue.vnet, queue._size = ours.fileno(), vnet, 65536 + VNET_HDR_LEN
    queue.io, queue._buf = io, bytearray(queue._size)
    try:
        yield queue, kernel
    finally:
        ours.close()
        kernel.close()


FRAMES = [
    bytes(VNET_HDR_LEN) + os.urandom(84),  # the common case: an all-zero header
    bytes(VNET_HDR_LEN),  # a header and nothing
    VNET_HDR.pack(1, 1, 40, 1000, 20, 16) + os.urandom(3000),  # a TCP super-packet asking for work
    VNET_HDR.pack(1, 0, 0, 0, 20, 6) + os.urandom(60),  # a checksum to fill only
    b"\x00\x01\x02",  # shorter than a header
    b"",
]


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet", "plain"])
def test_a_tun_read_gives_the_same(vnet: bool) -> None:
    with _queue_pair(vnet) as (queue, kernel):
        for frame in FRAMES:
            got = []
            for way in (io, None):
                kernel.send(frame)
                queue.io = way
                got.append(queue.read())
            assert got[0] == got[1], frame[:12]
            if vnet and frame[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN):
                assert got[0] == (NO_OFFLOAD, frame[VNET_HDR_LEN:])
            if not vnet:
                assert got[0] == (None, frame)
        for way in (io, None):
            queue.io = way
            assert queue.read() is None  # nothing queued


OFFLOADS = [None, NO_OFFLOAD, VnetHeader(), VnetHeader(1, 1, 40, 1000, 20, 16), VnetHeader(1, 0, 0, 0, 20, 6)]


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet", "plain"])
@pytest.mark.parametrize("offload", OFFLOADS)
def test_a_tun_write_writes_the_same(vnet: bool, offload: VnetHeader | None) -> None:
    packet = os.urandom(1400)
    with _queue_pair(vnet) as (queue, kernel):
        got = []
        for way in (io, None):
            queue.io = way
            count = queue.write(packet, offload)
            got.append((count, kernel.recv(70000)))
        assert got[0] == got[1]
        assert got[0][1].endswith(packet) and got[0][0] == len(got[0][1])


def test_tun_errors_are_raised_the_same() -> None:
    raised = []
    for way in (io, None):
        with _queue_pair(True) as (queue, _kernel):
            queue.io = way
            queue.fd = -1
            for call in (queue.read, lambda: queue.write(b"x")):
                with pytest.raises(OSError) as error:
                    call()
                raised.append((type(error.value), error.value.errno, error.value.strerror))
    assert raised[:2] == raised[2:]
    assert raised[0][1] == errno.EBADF


@pytest.mark.root
def test_a_real_tun_device_reads_and_writes_the_same(ns: Netns) -> None:
    with ns.enter():
        dev = open_offload_tun("ipsec7", vnet=True)
        queue = TunQueue(dev, tso=False, uso=False)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            ns.check("sysctl -qw net.ipv6.conf.ipsec7.disable_ipv6=1")
            ns.check("ip addr add 10.9.0.1/24 dev ipsec7 && ip link set ipsec7 up")
            read = []
            for way in (io, None):
                queue.io = way
                sender.sendto(b"routed into the device", ("10.9.0.2", 9))
                offload, packet = None, b""
                while not packet.startswith(b"\x45"):  # an IPv6 router solicitation, say, is skipped
                    select.select([queue.fd], [], [], 2.0)
                    offload, packet = queue.read() or (None, b"\x45")
                read.append((offload, packet[:4] + packet[6:10] + packet[12:]))  # IP ID and checksum vary
            assert read[0] == read[1] and read[0][1].endswith(b"routed into the device")
            rx = []
            for way in (io, None):
                queue.io = way
                assert queue.write(packet) == len(packet) + VNET_HDR_LEN
                rx.append(int(ns.check("cat /sys/class/net/ipsec7/statistics/rx_packets")))
            assert rx[1] == rx[0] + 1
        finally:
            sender.close()
            dev.close()
