"""The error queue (IP_RECVERR) is read only when asked: a receive that finds nothing is one system call,
an ICMP error on the path makes epoll report EPOLLERR until `poll_errors` drains it. In a network
namespace of its own (root), on its loopback."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ipsec_tunnel.linux._sockopt import MSG_ERRQUEUE
from ipsec_tunnel.linux.raw import RawEsp
from ipsec_tunnel.linux.udp import UdpSocket
from tests.support.netns import Netns

from .conftest import _require_netns

pytestmark = pytest.mark.root


class Counting:
    """A socket's stand-in that counts the receive calls (and error-queue reads) made through it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.receives = 0
        self.error_reads = 0

    def recvmsg(self, *args: Any) -> Any:
        if len(args) > 2 and args[2] & MSG_ERRQUEUE:
            self.error_reads += 1
        return self.sock.recvmsg(*args)

    def recvmsg_into(self, *args: Any) -> Any:
        self.receives += 1
        return self.sock.recvmsg_into(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.fixture
def loopback() -> Iterator[Netns]:
    _require_netns()
    with Netns("wkerr") as ns, ns.enter():
        yield ns


def _mask(fd: int) -> int:
    with select.epoll() as ep:
        ep.register(fd, select.EPOLLIN)
        return sum(mask for _fd, mask in ep.poll(0.5))


def test_an_empty_receive_is_one_call_and_leaves_the_error_queue(loopback: Netns) -> None:
    with UdpSocket(4, 0, "127.0.0.1") as udp:
        counting = Counting(udp.socket)
        udp._sock = counting  # type: ignore[assignment]
        udp.io = None  # the Python path's calls (the C one, _pktio.recv_udp, is one recvmsg by construction)
        assert udp.recv() is None and udp.recv_batch() is None
        assert counting.receives == 2 and counting.error_reads == 0


@pytest.mark.parametrize("python", [False, True], ids=["c", "python"])
def test_an_icmp_error_is_epollerr_until_poll_errors_drains_it(loopback: Netns, python: bool) -> None:
    with UdpSocket(4, 0, "127.0.0.1") as udp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        if python:
            udp.io = None
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()  # nobody listens there: the kernel answers port unreachable
        assert udp.send("127.0.0.1", port, b"x")
        assert _mask(udp.fileno()) & select.EPOLLERR
        assert udp.recv() is None  # reads nothing, drains nothing
        assert _mask(udp.fileno()) & select.EPOLLERR
        assert udp.recv_batch() is None  # nor does the batch read
        assert _mask(udp.fileno()) & select.EPOLLERR
        assert udp.poll_errors() == 1
        assert _mask(udp.fileno()) == 0


def test_an_empty_batched_raw_receive_leaves_the_error_queue(loopback: Netns) -> None:
    with RawEsp(4, mmsg=True) as raw:
        drained: list[int] = []

        def poll_errors() -> int:
            drained.append(1)
            return 0

        raw.poll_errors = poll_errors  # type: ignore[method-assign]
        assert raw.batched and raw.recv_batch() is None
        assert drained == []
