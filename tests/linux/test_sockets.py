"""Raw ESP and UDP-4500 transports between two namespaces over a veth, and through a router."""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from ipsec_tunnel.linux import link
from ipsec_tunnel.linux.raw import EspDatagram, RawEsp, SocketError
from ipsec_tunnel.linux.udp import NAT_T_PORT, UdpDatagram, UdpSocket
from tests.support.netns import Netns, netns_available, veth_pair

from .conftest import ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, Closable, Pair, opened, wait_for

pytestmark = pytest.mark.root

V4, V6 = socket.AF_INET, socket.AF_INET6
ADDRS: dict[int, tuple[str, str]] = {V4: (ADDR_A4, ADDR_B4), V6: (ADDR_A6, ADDR_B6)}
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_PORT_UNREACH = 3, 4, 3  # RFC 792
ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, ICMPV6_PKT_TOOBIG = 1, 4, 2  # RFC 4443
A = TypeVar("A", bound=Closable)
B = TypeVar("B", bound=Closable)


def packed(addr: str) -> bytes:
    return socket.inet_pton(V6 if ":" in addr else V4, addr)


def esp_packet(spi: int = 0x1000, seq: int = 1, size: int = 64) -> bytes:
    """Something shaped like ESP (RFC 4303 section 2): SPI, sequence number, opaque bytes."""
    body = bytes(i & 0xFF for i in range(size - 8))
    return struct.pack("!II", spi, seq) + body


def recv_esp(sock: RawEsp) -> EspDatagram:
    return wait_for(sock.recv, sock.fileno())


def recv_udp(sock: UdpSocket) -> UdpDatagram:
    return wait_for(sock.recv, sock.fileno())


def errors_of(sock: RawEsp | UdpSocket) -> list[SocketError]:
    return wait_for(lambda: sock.pop_errors() or None, sock.fileno())


class Sniffer:
    """A plain raw socket in the receiving namespace that sees whole packets of one protocol."""

    def __init__(self, family: int, proto: int) -> None:
        self.sock = socket.socket(family, socket.SOCK_RAW, proto)
        self.sock.setblocking(False)
        self.family = family
        if family == V6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)

    def recv(self) -> tuple[bytes, dict[int, int]]:
        """(data, {cmsg type: int value}); IPv4 data includes the IP header."""

        def poll() -> tuple[bytes, dict[int, int]] | None:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65535, 256)
            except BlockingIOError:
                return None
            values = {kind: struct.unpack("=i", value[:4])[0] for _level, kind, value in anc}
            return data, values

        return wait_for(poll, self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


def _both_families(
    pair: Pair, make_a: Callable[[int], A], make_b: Callable[[int], B]
) -> Iterator[tuple[Pair, dict[int, tuple[A, B]]]]:
    """For IPv4 and IPv6: a socket `make_a` opens in A and one `make_b` opens in B, closed at the end."""
    with contextlib.ExitStack() as stack:
        socks: dict[int, tuple[A, B]] = {
            family: (
                stack.enter_context(opened(pair.a, functools.partial(make_a, family))),
                stack.enter_context(opened(pair.b, functools.partial(make_b, family))),
            )
            for family in (V4, V6)
        }
        yield pair, socks


@pytest.fixture
def esp_pair(pair: Pair) -> Iterator[tuple[Pair, dict[int, tuple[RawEsp, RawEsp]]]]:
    yield from _both_families(pair, RawEsp, RawEsp)


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_raw_esp_roundtrip(esp_pair: tuple[Pair, dict[int, tuple[RawEsp, RawEsp]]], family: int) -> None:
    _pair, socks = esp_pair
    tx, rx = socks[family]
    a, b = ADDRS[family]
    assert rx.recv() is None
    for tos in (0x00, 0xB8, 0xB9, 0x03):  # DSCP EF, EF + ECT(1), CE
        payload = esp_packet(seq=tos + 1)
        assert tx.send(b, payload, tos=tos, ttl=33, df=True)
        got = recv_esp(rx)
        assert got == EspDatagram(packed(a), packed(b), tos, payload)
        src, dst, got_tos, esp = got  # a plain 4-tuple too
        assert (src, dst, got_tos, esp) == tuple(got)
    assert tx.send(packed(b), esp_packet(seq=99)), "a packed destination works as well"
    assert recv_esp(rx).esp == esp_packet(seq=99)
    assert rx.recv() is None


def test_raw_esp_v4_header_on_the_wire(pair: Pair) -> None:
    """The outer IPv4 header as sent: TTL, DF, TOS as asked; checksum, length and ID filled by the kernel."""
    with opened(pair.a, lambda: RawEsp(V4)) as tx, opened(pair.b, lambda: Sniffer(V4, 50)) as sniff:
        tx.send(ADDR_B4, esp_packet(), tos=0x2E, ttl=7, df=True)
        data, _ = sniff.recv()
        version_ihl, tos, total, ident, frag, ttl, proto, csum = struct.unpack_from("!BBHHHBBH", data)
        assert (version_ihl, tos, total, ttl, proto) == (0x45, 0x2E, 20 + 64, 7, 50)
        assert frag == 0x4000 and ident == 0, "DF set; the kernel leaves ID 0 on atomic datagrams"
        assert csum != 0 and _checksum(data[:20]) == 0, "the kernel fills the header checksum"
        assert data[12:16] == packed(ADDR_A4), "the kernel fills a zero source address"

        tx.send(ADDR_B4, esp_packet(), tos=0, ttl=200, df=False)
        data, _ = sniff.recv()
        _, _, _, _ident, frag, ttl, _, _ = struct.unpack_from("!BBHHHBBH", data)
        assert frag == 0 and ttl == 200  # without DF the kernel picks the ID
        assert _checksum(data[:20]) == 0


def _checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_raw_esp_v6_hoplimit_and_tclass_on_the_wire(pair: Pair) -> None:
    with opened(pair.a, lambda: RawEsp(V6)) as tx, opened(pair.b, lambda: Sniffer(V6, 50)) as sniff:
        tx.send(ADDR_B6, esp_packet(), tos=0xB9, ttl=9, df=True)
        data, values = sniff.recv()
        assert data == esp_packet()
        assert values[socket.IPV6_HOPLIMIT] == 9
        assert values[socket.IPV6_TCLASS] == 0xB9


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_raw_esp_df_and_fragmentation(
    esp_pair: tuple[Pair, dict[int, tuple[RawEsp, RawEsp]]], family: int
) -> None:
    """Too big with DF: EMSGSIZE. Without DF: sent in fragments (by us for IPv4) and reassembled."""
    _pair, socks = esp_pair
    tx, rx = socks[family]
    big = esp_packet(size=3000)
    with pytest.raises(OSError) as exc:
        tx.send(ADDR_B4 if family == V4 else ADDR_B6, big, df=True)
    assert exc.value.errno == errno.EMSGSIZE
    assert tx.send(ADDR_B4 if family == V4 else ADDR_B6, big, tos=0x10, df=False)
    got = recv_esp(rx)
    assert got.esp == big and got.tos == 0x10
    assert tx.pop_errors() == [], "local errors were raised, not queued"


def test_raw_esp_v4_fragments_on_the_wire(pair: Pair) -> None:
    with opened(pair.a, lambda: RawEsp(V4)) as tx, opened(pair.b, lambda: Sniffer(V4, 50)) as sniff:
        tx.send(ADDR_B4, esp_packet(size=3000), ttl=20, df=False)
        data, _ = sniff.recv()  # raw sockets see the reassembled datagram
        assert len(data) == 20 + 3000 and data[8] == 20


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_raw_esp_source_and_oif(pair: Pair, family: int) -> None:
    extra = "192.0.2.11" if family == V4 else "2001:db8::11"
    pair.a.check(["ip", "addr", "add", f"{extra}/{24 if family == V4 else 64}", "dev", pair.dev_a, "nodad"])
    a, b = ADDRS[family]
    with opened(pair.a, lambda: RawEsp(family)) as tx, opened(pair.b, lambda: RawEsp(family)) as rx:
        tx.send(b, esp_packet(seq=1), src=extra)
        assert recv_esp(rx).src == packed(extra)
        tx.send(b, esp_packet(seq=2), oif=pair.dev_a)
        got = recv_esp(rx)  # the kernel picks the source among the device's addresses
        assert got.dst == packed(b) and got.src in (packed(a), packed(extra))
        with pair.a.enter():
            index = link.ifindex(pair.dev_a)
        tx.send(b, esp_packet(seq=3), src=extra, oif=index)
        assert recv_esp(rx).src == packed(extra)


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_raw_esp_bind_addr_filters(pair: Pair, family: int) -> None:
    extra = "192.0.2.12" if family == V4 else "2001:db8::12"
    pair.b.check(["ip", "addr", "add", f"{extra}/{24 if family == V4 else 64}", "dev", pair.dev_b, "nodad"])
    b = ADDRS[family][1]
    with (
        opened(pair.a, lambda: RawEsp(family)) as tx,
        opened(pair.b, lambda: RawEsp(family, bind_addr=extra)) as bound,
        opened(pair.b, lambda: RawEsp(family)) as catch_all,
    ):
        tx.send(b, esp_packet(seq=1))
        assert recv_esp(catch_all).dst == packed(b)
        tx.send(extra, esp_packet(seq=2))
        assert recv_esp(catch_all).dst == packed(extra)
        got = recv_esp(bound)
        assert got.dst == packed(extra) and got.esp == esp_packet(seq=2)
        assert bound.recv() is None, "the packet to the other address was not delivered here"


def test_device_bound_send_only_socket(pair: Pair) -> None:
    """The --nextdev shape: a send socket bound to the device that never accumulates received packets."""
    with pair.a.enter():
        main = RawEsp(V4)
        nextdev = RawEsp(V4, device=pair.dev_a, send_only=True)
        assert nextdev.device == pair.dev_a
    with pair.b.enter():
        peer = RawEsp(V4)
    try:
        assert nextdev.send(ADDR_B4, esp_packet(seq=5))
        assert recv_esp(peer).esp == esp_packet(seq=5)
        peer.send(ADDR_A4, esp_packet(seq=6))
        assert recv_esp(main).esp == esp_packet(seq=6)
        time.sleep(0.05)
        assert nextdev.recv() is None
        # bound to the device, any destination is taken as on-link there; asked from outside the namespace
        pair.a.check(["ip", "link", "set", pair.dev_a, "mtu", "1420"])
        assert nextdev.path_mtu("198.51.100.1") == 1420
        assert main.path_mtu("198.51.100.1") is None
        assert main.path_mtu("198.51.100.1", oif=pair.dev_a) == 1420
    finally:
        for sock in (main, nextdev, peer):
            sock.close()


def test_socket_basics(ns: Netns) -> None:
    with ns.enter():
        with RawEsp(V4, rcvbuf=1 << 20, sndbuf=1 << 20) as raw:
            assert raw.fileno() >= 0 and raw.family == V4
            assert raw.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
            assert not raw.socket.getblocking()
        assert raw.closed
        with UdpSocket(6, port=0) as udp:
            assert udp.family == V6 and udp.port > 0
        with pytest.raises(ValueError):
            RawEsp(socket.AF_UNIX)


@pytest.fixture
def udp_pair(pair: Pair) -> Iterator[tuple[Pair, dict[int, tuple[UdpSocket, UdpSocket]]]]:
    yield from _both_families(pair, UdpSocket, lambda family: UdpSocket(family, NAT_T_PORT))


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_udp_encap_roundtrip(
    udp_pair: tuple[Pair, dict[int, tuple[UdpSocket, UdpSocket]]], family: int
) -> None:
    _pair, socks = udp_pair
    tx, rx = socks[family]
    a, b = ADDRS[family]
    assert tx.port == rx.port == 4500, "IPv4 and IPv6 sockets share port 4500"
    assert rx.recv() is None
    for tos in (0x00, 0x2A, 0xB8, 0x03):
        payload = esp_packet(seq=tos + 1)
        assert tx.send(b, 4500, payload, tos=tos)
        assert recv_udp(rx) == UdpDatagram(packed(a), 4500, packed(b), tos, payload)
    keepalive = b"\xff"  # RFC 3948 section 2.3: moved as it is
    tx.send(packed(b), 4500, keepalive)
    assert recv_udp(rx).payload == keepalive


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_udp_encap_ttl_df_on_the_wire(pair: Pair, family: int) -> None:
    b = ADDRS[family][1]
    with (
        opened(pair.a, lambda: UdpSocket(family, port=0)) as tx,
        opened(pair.b, lambda: UdpSocket(family, port=4500)) as rx,
        opened(pair.b, lambda: Sniffer(family, socket.IPPROTO_UDP)) as sniff,
    ):
        tx.send(b, 4500, b"x" * 100, tos=0xB8, ttl=5, df=True)
        data, values = sniff.recv()
        if family == V4:
            assert data[1] == 0xB8 and data[8] == 5
            assert struct.unpack_from("!H", data, 6)[0] & 0x4000, "DF"
        else:
            assert values[socket.IPV6_HOPLIMIT] == 5 and values[socket.IPV6_TCLASS] == 0xB8
        assert recv_udp(rx).sport == tx.port
        tx.send(b, 4500, b"y" * 100, ttl=6, df=False)
        data, values = sniff.recv()
        if family == V4:
            assert data[8] == 6 and not struct.unpack_from("!H", data, 6)[0] & 0x4000
        else:
            assert values[socket.IPV6_HOPLIMIT] == 6
        with pytest.raises(OSError) as exc:
            tx.send(b, 4500, b"z" * 3000, df=True)
        assert exc.value.errno == errno.EMSGSIZE
        assert tx.send(b, 4500, b"z" * 3000, df=False)
        while (got := recv_udp(rx)).payload[:1] != b"z":
            pass
        assert len(got.payload) == 3000


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_udp_encap_source_address(pair: Pair, family: int) -> None:
    extra = "192.0.2.13" if family == V4 else "2001:db8::13"
    pair.a.check(["ip", "addr", "add", f"{extra}/{24 if family == V4 else 64}", "dev", pair.dev_a, "nodad"])
    with (
        opened(pair.a, lambda: UdpSocket(family, port=4500)) as tx,
        opened(pair.b, lambda: UdpSocket(family, port=4500)) as rx,
    ):
        tx.send(ADDRS[family][1], 4500, b"from extra", src=extra, oif=pair.dev_a)
        got = recv_udp(rx)
        assert got.src == packed(extra) and got.sport == 4500
        rx.send(got.src, got.sport, b"reply", tos=0x04)
        reply = recv_udp(tx)
        assert reply.dst == packed(extra) and reply.payload == b"reply" and reply.tos == 0x04


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_udp_encap_icmp_port_unreachable(
    udp_pair: tuple[Pair, dict[int, tuple[UdpSocket, UdpSocket]]], family: int
) -> None:
    """An ICMP error from the peer is collected with its details and does not break later sends."""
    _pair, socks = udp_pair
    tx, rx = socks[family]
    a, b = ADDRS[family]
    tx.send(b, 4501, b"nobody listens")  # the peer answers port unreachable
    (error,) = errors_of(tx)
    assert error.errno == errno.ECONNREFUSED
    if family == V4:
        assert (error.type, error.code) == (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)
    else:
        assert (error.type, error.code) == (ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH)
    assert error.offender == packed(b) and error.dst == packed(b) and error.port == 4501
    assert error.data == b"nobody listens"
    assert tx.send(b, 4500, b"still works")
    assert recv_udp(rx).payload == b"still works"
    assert tx.recv() is None
    del a


@pytest.fixture
def routed() -> Iterator[tuple[Netns, Netns, Netns]]:
    """a -- r -- b with IPv4 and IPv6 forwarding on r and an MTU of 1300 between r and b."""
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"kernel test skipped: {reason}")
    with Netns("ipta") as a, Netns("iptr") as r, Netns("iptb") as b:
        veth_pair(a, r, ["10.1.1.1/24", "2001:db8:1::1/64"], ["10.1.1.2/24", "2001:db8:1::2/64"])
        veth_pair(r, b, ["10.1.2.2/24", "2001:db8:2::2/64"], ["10.1.2.1/24", "2001:db8:2::1/64"], mtu=1300)
        r.check("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        a.check("ip route add default via 10.1.1.2 && ip -6 route add default via 2001:db8:1::2")
        b.check("ip route add default via 10.1.2.2 && ip -6 route add default via 2001:db8:2::2")
        yield a, r, b


@pytest.mark.parametrize("family", [V4, V6], ids=["v4", "v6"])
def test_path_mtu_learnt_from_icmp(routed: tuple[Netns, Netns, Netns], family: int) -> None:
    """A DF packet too big for the next hop: the router's ICMP error reaches the sender with the MTU."""
    a, _r, b = routed
    dst, router = ("10.1.2.1", "10.1.1.2") if family == V4 else ("2001:db8:2::1", "2001:db8:1::2")
    with a.enter():
        tx = RawEsp(family)
        assert link.route_mtu(dst) == 1500
    with b.enter():
        rx = RawEsp(family)
    probe = 0x5151  # the first packets' SPI: sent again, a second apart, while neighbour discovery waits
    try:
        got = None
        for _ in range(10):
            tx.send(dst, esp_packet(spi=probe, size=200), ttl=10)
            try:
                got = wait_for(rx.recv, rx.fileno(), timeout=1.0)
                break
            except AssertionError:
                continue
        assert got is not None, "nothing crossed the router in 10 s"
        assert got.src == packed("10.1.1.1" if family == V4 else "2001:db8:1::1")
        assert tx.send(dst, esp_packet(spi=0x4242, size=1400), df=True)
        (error,) = errors_of(tx)
        assert error.errno == errno.EMSGSIZE and error.info == 1300
        if family == V4:
            assert (error.type, error.code) == (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)
        else:
            assert error.type == ICMPV6_PKT_TOOBIG
        assert error.offender == packed(router) and error.dst == packed(dst)
        assert error.data[:4] == struct.pack("!I", 0x4242), "the quoted packet starts at the ESP header"
        with a.enter():
            assert link.route_mtu(dst) == 1300
        with pytest.raises(OSError) as exc:
            tx.send(dst, esp_packet(size=1400), df=True)
        assert exc.value.errno == errno.EMSGSIZE, "the learnt path MTU is enforced locally"
        assert tx.send(dst, esp_packet(size=1400), df=False)
        last = recv_esp(rx)
        while last.esp[:4] == struct.pack("!I", probe):  # a probe sent again that also arrived
            last = recv_esp(rx)
        assert len(last.esp) == 1400
    finally:
        tx.close()
        rx.close()
