"""What `--flow-queues` asks of the kernel, checked on the real one:

- a multi-queue TUN device routes a flow's packets to the queue a packet of that flow (either way) was
  last written through (the driver's flow table, drivers/net/tun.c);
- of two UDP sockets sharing a port (SO_REUSEPORT), `split_small`'s classic BPF program gives the
  datagrams of at most `small` bytes to the second, the others to the first; a UDP GSO burst counts
  its whole length;
- of two raw ESP sockets (`LinuxKernel.open_sparse_raw`), the second gets the ESP packets of at most
  `small` bytes, the first the others, over IPv4 (whose filter sees the IP header) and IPv6.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import TypeVar

import pytest

from ipsec_tunnel.daemon.kernel import LinuxKernel
from ipsec_tunnel.linux.raw import IPPROTO_ESP, RawEsp
from ipsec_tunnel.linux.tun import open_tun
from ipsec_tunnel.linux.udp import SOL_UDP, UDP_SEGMENT, UdpSocket
from tests.support.netns import Netns

from .conftest import wait_for
from .test_tun import checksum

pytestmark = pytest.mark.root

_Sock = TypeVar("_Sock", UdpSocket, RawEsp)


def _udp4(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 UDP datagram (RFC 768), header checksum filled, UDP checksum 0 (none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp


def test_a_flow_is_routed_to_the_queue_it_was_written_through(ns: Netns) -> None:
    with ns.enter():
        first = open_tun("ipsec1", multi_queue=True)
        second = first.open_queue()
        queues = (first, second)
    try:
        ns.check(["ip", "addr", "add", "10.0.1.1/24", "dev", "ipsec1"])
        ns.check(["ip", "link", "set", "ipsec1", "up"])
        ports = {7000 + i: i % 2 for i in range(8)}  # each flow's queue: not the driver's hash of it
        for port, q in ports.items():  # a packet of each flow arrives through its queue
            queues[q].write(_udp4("10.0.1.2", port, "10.0.1.1", 9, b"in"))
        with ns.enter(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.bind(("10.0.1.1", 9))
            for port in ports:  # ... and the host answers each
                out.sendto(b"out%d" % port, ("10.0.1.2", port))
        seen: dict[int, int] = {}

        def read_all() -> bool:
            for q, queue in enumerate(queues):
                while (packet := queue.read()) is not None:
                    if packet[9] == 17 and packet[28:31] == b"out":
                        seen[struct.unpack("!H", packet[22:24])[0]] = q
            return len(seen) == len(ports) or None  # type: ignore[return-value]

        wait_for(read_all)
        assert seen == ports
    finally:
        second.close()
        first.close()


def _split_reads(
    take: Callable[[_Sock], list[int]], sparse: _Sock, bulk: _Sock, count: int
) -> tuple[list[int], list[int]]:
    """The sizes `take` read from each of the two sockets, once at least `count` arrived in all."""
    got_sparse: list[int] = []
    got_bulk: list[int] = []

    def done() -> bool:
        got_sparse.extend(take(sparse))
        got_bulk.extend(take(bulk))
        return len(got_sparse) + len(got_bulk) >= count or None  # type: ignore[return-value]

    wait_for(done)
    return got_sparse, got_bulk


@pytest.mark.parametrize("family", [4, 6])
def test_small_datagrams_go_to_the_second_socket(ns: Netns, family: int) -> None:
    host = "127.0.0.1" if family == 4 else "::1"
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    with ns.enter():
        bulk = UdpSocket(family, 0, host, reuse_port=True, gro=True)
        sparse = UdpSocket(family, bulk.port, host, reuse_port=True)
        bulk.split_small(512)
        sender = socket.socket(af, socket.SOCK_DGRAM)
    try:
        sizes = [8, 100, 512, 513, 1400, 60]
        for size in sizes:
            sender.sendto(bytes([size % 256]) * size, (host, bulk.port))
        sender.setsockopt(SOL_UDP, UDP_SEGMENT, 100)
        sender.sendto(bytes(1000), (host, bulk.port))  # one GSO burst of ten 100-byte datagrams

        def take(sock: UdpSocket) -> list[int]:
            out = []
            while (got := sock.recv_batch()) is not None:
                out += [len(p) for p in got[1]]
            return out

        got_sparse, got_bulk = _split_reads(take, sparse, bulk, len(sizes) + 10)
        assert got_sparse == [8, 100, 512, 60]
        assert got_bulk == [513, 1400] + [100] * 10
    finally:
        sender.close()
        sparse.close()
        bulk.close()


@pytest.mark.parametrize("family", [4, 6])
def test_small_esp_packets_go_to_the_second_raw_socket(ns: Netns, family: int) -> None:
    """`open_sparse_raw`: every raw ESP socket gets its copy of each packet; the two filters leave the
    packets of at most `small` bytes of ESP to the second socket only, the others to the first."""
    host = "127.0.0.1" if family == 4 else "::1"
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    kernel = LinuxKernel()
    with ns.enter():
        bulk = kernel.open_raw(family, mmsg=True)
        sparse = kernel.open_sparse_raw(bulk, 512)
        sender = socket.socket(af, socket.SOCK_RAW, IPPROTO_ESP)
    try:
        sizes = [8, 100, 512, 513, 1400, 60]
        for size in sizes:
            sender.sendto(struct.pack("!II", 0x1000, size) + bytes(size - 8 if size > 8 else 0), (host, 0))

        def take(sock: RawEsp) -> list[int]:
            out = []
            while (got := sock.recv_batch()) is not None:
                out += [len(datagram[3]) for datagram in got]
            return out

        got_sparse, got_bulk = _split_reads(take, sparse, bulk, len(sizes))
        assert got_sparse == [8, 100, 512, 60]
        assert got_bulk == [513, 1400]
    finally:
        sender.close()
        sparse.close()
        bulk.close()
