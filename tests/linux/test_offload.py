"""Each kernel object's offloads against the kernel (linux/udp.py, linux/tun.py, linux/raw.py): UDP GSO
bursts arrive as the datagrams they were, with or without UDP GRO; TUN queues with virtio-net headers
accept coalesced TCP super-packets and refuse malformed ones; transmit queue lengths are set; raw ESP
moves many datagrams per system call with the same results as one at a time."""

from __future__ import annotations

import errno
import os
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP

from ipsec_tunnel.core import framing as framing_module
from ipsec_tunnel.core import gro, gso
from ipsec_tunnel.linux import udp as udp_module
from ipsec_tunnel.linux.link import set_txqueuelen
from ipsec_tunnel.linux.raw import RawEsp
from ipsec_tunnel.linux.tun import TunQueue, open_offload_tun
from ipsec_tunnel.linux.udp import UdpSocket, _gso_groups
from tests.support.netns import Netns
from tests.support.userns import in_user_namespace

from .conftest import ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, Pair, wait_for

pytestmark = pytest.mark.root

V4, V6 = socket.AF_INET, socket.AF_INET6
ADDRS: dict[int, tuple[str, str]] = {V4: (ADDR_A4, ADDR_B4), V6: (ADDR_A6, ADDR_B6)}


def test_gso_groups() -> None:
    p = [b"a" * 100] * 3 + [b"b" * 50] + [b"c" * 100] * 2 + [b"d" * 200]
    assert [(len(g), s) for g, s in _gso_groups(p)] == [(4, 100), (2, 100), (1, 200)]
    many = [b"x" * 1000] * 150
    assert [len(g) for g, _ in _gso_groups(many)] == [64, 64, 22]
    big = [b"y" * 9000] * 10
    assert all(len(g) * 9000 <= 65535 for g, _ in _gso_groups(big))


def _collect(rx: UdpSocket, want: int) -> tuple[list[bytes], int]:
    """Payloads until `want` arrived, and how many receive calls (GRO batches) they took."""
    got: list[bytes] = []
    calls = 0
    while len(got) < want:
        batch = wait_for(rx.recv_batch, rx.fileno())
        got += batch[1]
        calls += 1
    return got, calls


@pytest.mark.parametrize("framing", ["C", "pure"])
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "no-gro"])
@pytest.mark.parametrize("gso_on", [True, False], ids=["gso", "no-gso"])
@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_udp_bursts_arrive_as_sent(
    pair: Pair, family: int, gso_on: bool, gro: bool, framing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GRO batches cut back into datagrams by core/_framing.c's split or the Python slices alike."""
    if framing == "pure":
        monkeypatch.setattr(udp_module, "_native", None)
    elif framing_module.native is None:
        pytest.skip("the C extension is not built")
    with pair.a.enter():
        tx = UdpSocket(family, 0, gso=gso_on, gro=False, rcvbuf=1 << 20, sndbuf=1 << 20)
    with pair.b.enter():
        rx = UdpSocket(family, 4500, gso=False, gro=gro, rcvbuf=8 << 20, sndbuf=8 << 20)
    try:
        payloads = (
            [os.urandom(1200) for _ in range(40)] + [os.urandom(300)] + [os.urandom(80) for _ in range(5)]
        )
        assert tx.send_burst(ADDRS[family][1], 4500, payloads, tos=0x10, ttl=9, df=True) == []
        got, calls = _collect(rx, len(payloads))
        assert got == payloads
        assert tx.gso == gso_on, "GSO was refused by the kernel"
        if gso_on and gro:
            assert calls < len(payloads), "nothing arrived coalesced"
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_send_one_arrives_as_send_burst_sends_it(pair: Pair, family: int) -> None:
    """`send_one` (a packet read alone): the datagram, TOS and source as `send_burst` gives them, its
    cached control messages and DF still right after a `send_burst` with other fields in between."""
    with pair.a.enter():
        tx = UdpSocket(family, 0, gso=True, gro=False)
    with pair.b.enter():
        rx = UdpSocket(family, 4500, gso=False, gro=False)
    dst = socket.inet_pton(family, ADDRS[family][1])
    try:
        for tos, df in ((0x10, True), (0x10, True), (0xB8, False)):
            assert tx.send_one(dst, 4500, b"one" * 100, tos, 9, df, None, None) is None
            assert tx._df == (df if family == V4 else None)  # IPv6: a control message per send
            dgram, payloads = wait_for(rx.recv_batch, rx.fileno())
            assert payloads == [b"one" * 100] and dgram.tos == tos and dgram.sport == tx.port
            assert tx.send_burst(dst, 4500, [b"burst"], tos=0, ttl=9, df=not df) == []
            assert wait_for(rx.recv_batch, rx.fileno())[1] == [b"burst"]
        error = tx.send_one(dst, 4500, b"x" * 70000, 0, 9, True, None, None)  # too big for any datagram
        assert isinstance(error, OSError) and error.errno == errno.EMSGSIZE
    finally:
        tx.close()
        rx.close()


def test_gro_batch_carries_addresses_and_tos(pair: Pair) -> None:
    with pair.a.enter():
        tx = UdpSocket(V4, 0, gso=True, gro=False, rcvbuf=1 << 20, sndbuf=1 << 20)
    with pair.b.enter():
        rx = UdpSocket(V4, 4500, gso=False, gro=True, rcvbuf=8 << 20, sndbuf=8 << 20)
    try:
        tx.send_burst(ADDR_B4, 4500, [b"z" * 500] * 8, tos=0xB8)
        dgram, payloads = wait_for(rx.recv_batch, rx.fileno())
        assert dgram.src == socket.inet_aton(ADDR_A4) and dgram.dst == socket.inet_aton(ADDR_B4)
        assert dgram.tos == 0xB8 and dgram.sport == tx.port
        assert payloads[0] == b"z" * 500
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("gro", [False, True])
def test_receive_timestamps_with_and_without_gro(pair: Pair, gro: bool) -> None:
    """SO_TIMESTAMPNS: each read carries the kernel's receive time (a GRO batch: its first datagram's),
    a wall-clock time between the send and the read; without asking, none."""
    with pair.a.enter():
        tx = UdpSocket(V4, 0, gso=True, gro=False, rcvbuf=1 << 20, sndbuf=1 << 20)
    with pair.b.enter():
        rx = UdpSocket(V4, 4500, gso=False, gro=gro, rcvbuf=8 << 20, sndbuf=8 << 20, timestamps=True)
        plain = UdpSocket(V4, 4501, gso=False, gro=gro, rcvbuf=1 << 20, sndbuf=1 << 20)
    try:
        assert rx.timestamps and not plain.timestamps
        before = time.time()
        tx.send_burst(ADDR_B4, 4500, [b"z" * 500] * 8)
        tx.send_burst(ADDR_B4, 4501, [b"y" * 500])
        dgram, payloads = wait_for(rx.recv_batch, rx.fileno())
        after = time.time()
        assert before - 0.01 <= dgram.stamp <= after + 0.01  # the same clock (CLOCK_REALTIME), to 10 ms
        assert payloads[0] == b"z" * 500
        assert wait_for(plain.recv_batch, plain.fileno())[0].stamp == 0.0
    finally:
        tx.close()
        rx.close()
        plain.close()


def _tcp_segments(n: int, mss: int = 1000) -> list[bytes]:
    data = os.urandom(n * mss)
    sup = (
        IP(src="10.9.0.2", dst="10.9.0.1", flags="DF") / TCP(sport=1234, dport=5678, seq=1, flags="PA") / data
    )
    raw = bytearray(bytes(sup))
    raw[36:38] = gso.pseudo_sum(raw[12:16], raw[16:20], 6, len(raw) - 20).to_bytes(2, "big")
    return gso.split(bytes(raw), gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, mss, 20, 16))


def _stat(ns: Netns, name: str, counter: str) -> int:
    return int(ns.check(f"cat /sys/class/net/{name}/statistics/{counter}"))


def test_tun_accepts_coalesced_tcp_and_refuses_bad_headers(ns: Netns) -> None:
    with ns.enter():
        dev = open_offload_tun("ipsec7", vnet=True)
        assert dev.vnet_hdr
        queue = TunQueue(dev, tso=True, uso=True)
        try:
            ns.check("ip addr add 10.9.0.1/24 dev ipsec7 && ip link set ipsec7 up")
            [(offload, packet)] = gro.coalesce(_tcp_segments(20))
            assert offload.gso_type == gso.GSO_TCPV4
            before = _stat(ns, "ipsec7", "rx_packets")
            assert queue.write(packet, offload) == len(packet) + 10
            assert _stat(ns, "ipsec7", "rx_packets") == before + 1
            assert _stat(ns, "ipsec7", "rx_frame_errors") == 0
            with pytest.raises(OSError):
                queue.write(packet, offload._replace(gso_size=0))  # the kernel checks the header
            assert queue.write(_tcp_segments(1)[0]) > 0  # no offload: a zeroed header
        finally:
            dev.close()


def test_tun_without_vnet_headers(ns: Netns) -> None:
    with ns.enter():
        dev = open_offload_tun("ipsec8", vnet=False)
        queue = TunQueue(dev, tso=True, uso=True)
        try:
            assert not queue.vnet and not queue.tso
            ns.check("ip addr add 10.9.0.1/24 dev ipsec8 && ip link set ipsec8 up")
            assert queue.write(_tcp_segments(1)[0]) > 0
        finally:
            dev.close()


def test_tun_offloads_are_reported(ns: Netns) -> None:
    with ns.enter():
        dev = open_offload_tun("ipsec9", vnet=True)
        try:
            assert TunQueue(dev, tso=True, uso=False).tso
            assert not TunQueue(dev, tso=False, uso=False).tso
        finally:
            dev.close()


def test_set_txqueuelen(ns: Netns) -> None:
    if in_user_namespace():
        pytest.skip("the kernel takes SIOCSIFTXQLEN only from the host's root, not from a user namespace's")
    with ns.enter():
        dev = open_offload_tun("ipsec6", vnet=False)
        try:
            assert set_txqueuelen("ipsec6", 4321)
            assert ns.check("cat /sys/class/net/ipsec6/tx_queue_len").strip() == "4321"
            assert not set_txqueuelen("nosuchdev", 10)
        finally:
            dev.close()


# -- batched raw ESP -------------------------------------------------------------------------------------


def _raw_collect(rx: RawEsp, want: int) -> list[tuple[bytes, bytes, int, bytes]]:
    got: list[tuple[bytes, bytes, int, bytes]] = []
    while len(got) < want:
        got += wait_for(rx.recv_batch, rx.fileno())
    return got


def test_raw_batch_round_trip_matches_one_by_one(pair: Pair) -> None:
    with pair.a.enter():
        tx = RawEsp(V4, mmsg=True, batch=16)
    with pair.b.enter():
        rx = RawEsp(V4, rcvbuf=8 << 20, mmsg=True, batch=16)
        one = RawEsp(V4, rcvbuf=8 << 20)  # sees the same packets, read one at a time
    try:
        assert tx.batched and rx.batched
        src, dst = socket.inet_aton(ADDR_A4), socket.inet_aton(ADDR_B4)
        # more than one batch, mixed sizes, one too big for the MTU without DF (fragmented, reassembled)
        payloads = [os.urandom(1400) for _ in range(40)] + [os.urandom(37), os.urandom(3000)]
        assert tx.send_burst(dst, payloads, tos=0x2A, ttl=7, df=False, src=src) == []
        got = _raw_collect(rx, len(payloads))
        assert got == [(src, dst, 0x2A, p) for p in payloads]
        singles = [wait_for(one.recv, one.fileno()) for _ in payloads]
        assert [(d.src, d.dst, d.tos, d.esp) for d in singles] == got
        assert rx.recv_batch() is None
    finally:
        tx.close()
        rx.close()
        one.close()


def test_raw_batch_sends_other_buffers_in_order(pair: Pair) -> None:
    """The batch points at bytes payloads where they are; a bytearray or memoryview among them leaves
    the one-by-one way, in its place."""
    with pair.a.enter():
        tx = RawEsp(V4, mmsg=True, batch=4)
    with pair.b.enter():
        rx = RawEsp(V4, rcvbuf=8 << 20, mmsg=True)
    try:
        src, dst = socket.inet_aton(ADDR_A4), socket.inet_aton(ADDR_B4)
        data = [os.urandom(300 + i) for i in range(10)]
        payloads: list[bytes] = [*data[:3], bytearray(data[3]), *data[4:8], memoryview(data[8]), data[9]]  # type: ignore[list-item]
        assert tx.send_burst(dst, payloads, src=src) == []
        assert _raw_collect(rx, len(data)) == [(src, dst, 0, p) for p in data]
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("mmsg", [True, False])
def test_raw_receive_timestamps(pair: Pair, mmsg: bool) -> None:
    """With timestamps, `stamp` is the wall-clock receive time of each batch's first packet (recvmmsg:
    the first message's control data); the packets are those read without."""
    with pair.a.enter():
        tx = RawEsp(V4, mmsg=True)
    with pair.b.enter():
        rx = RawEsp(V4, rcvbuf=8 << 20, mmsg=mmsg, timestamps=True)
        plain = RawEsp(V4, rcvbuf=8 << 20, mmsg=mmsg)
    try:
        assert rx.timestamps and not plain.timestamps and rx.batched == mmsg
        src, dst = socket.inet_aton(ADDR_A4), socket.inet_aton(ADDR_B4)
        payloads = [os.urandom(200) for _ in range(5)]
        time.sleep(0.05)  # the kernel switches receive timestamps on in a deferred work item
        before = time.time()
        assert tx.send_burst(dst, payloads, src=src) == []
        time.sleep(0.05)  # all of them queued: one batch, stamped when the first arrived
        got = rx.recv_batch()
        assert got == [(src, dst, 0, p) for p in payloads]
        assert before - 0.01 <= rx.stamp <= before + 0.04
        assert plain.recv_batch() == got and plain.stamp == 0.0
        assert rx.recv_batch() is None
    finally:
        tx.close()
        rx.close()
        plain.close()


def test_raw_batch_reports_failures_and_sends_the_rest(pair: Pair) -> None:
    with pair.a.enter():
        tx = RawEsp(V4, mmsg=True)
    with pair.b.enter():
        rx = RawEsp(V4, rcvbuf=8 << 20, mmsg=True)
    try:
        dst = socket.inet_aton(ADDR_B4)
        payloads = [b"a" * 100, b"b" * 3000, b"c" * 100]  # the middle one exceeds the MTU with DF
        failed = tx.send_burst(dst, payloads, df=True)
        assert [(n, e.errno) for n, e in failed] == [(1, errno.EMSGSIZE)]
        assert [g[3] for g in _raw_collect(rx, 2)] == [payloads[0], payloads[2]]
        unreachable = tx.send_burst(socket.inet_aton("198.51.100.1"), [b"x" * 10] * 3)
        assert sum(n for n, _ in unreachable) == 3
        assert all(e.errno == errno.ENETUNREACH for _, e in unreachable)
    finally:
        tx.close()
        rx.close()


def test_raw_batch_is_unavailable_for_ipv6(pair: Pair) -> None:
    with pair.a.enter():
        raw = RawEsp(V6, mmsg=True)
    try:
        assert not raw.batched
    finally:
        raw.close()


def test_raw_without_mmsg_batches_one_by_one(pair: Pair) -> None:
    """recv_batch and send_burst without recvmmsg/sendmmsg: the same datagrams, one system call each."""
    with pair.a.enter():
        tx = RawEsp(V4)
    with pair.b.enter():
        rx = RawEsp(V4, rcvbuf=8 << 20, batch=4)
    try:
        assert not tx.batched and not rx.batched
        src, dst = socket.inet_aton(ADDR_A4), socket.inet_aton(ADDR_B4)
        payloads = [os.urandom(100 + i) for i in range(10)]
        assert tx.send_burst(dst, payloads, tos=0x2A, ttl=7, src=src) == []
        got = _raw_collect(rx, len(payloads))
        assert got == [(src, dst, 0x2A, p) for p in payloads]
    finally:
        tx.close()
        rx.close()
