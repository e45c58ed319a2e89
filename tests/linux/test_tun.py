"""TUN devices: creation, naming, being an ordinary netdev, packets both ways, offloads, queues."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct

import pytest

from ipsec_tunnel.core.gso import VNET_HDR, VNET_HDR_LEN, VnetHeader
from ipsec_tunnel.linux import link
from ipsec_tunnel.linux.tun import (
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_TUN,
    IFF_VNET_HDR,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_USO4,
    TUN_F_USO6,
    TunDevice,
    open_tun,
    tun_features,
)
from tests.support.netns import Netns

from .conftest import wait_for

pytestmark = pytest.mark.root


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp4_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    """An IPv4 ICMP echo request (RFC 792), checksums filled."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + icmp


def icmp6_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMPv6 echo request (RFC 4443 section 4.1), checksum over the RFC 8200 pseudo-header."""
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    icmp = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    pseudo = s + d + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB", 6 << 28, len(icmp), 58, 64) + s + d + icmp


def read_matching(tun: TunDevice, want: bytes, offset: int, skip: int = 0) -> bytes:
    """The first packet read from ``tun`` with ``want`` at ``offset`` (after ``skip`` header bytes)."""

    def poll() -> bytes | None:
        while (packet := tun.read()) is not None:
            if packet[skip + offset : skip + offset + len(want)] == want:
                return packet
        return None

    return wait_for(poll, tun.fileno())


def test_open_tun_creates_named_device(ns: Netns) -> None:
    with ns.enter():
        tun = open_tun("ipsec1")
        try:
            assert tun.name == "ipsec1"
            assert tun.flags == IFF_TUN | IFF_NO_PI
            assert link.exists("ipsec1")
            assert not link.is_up("ipsec1")
            assert link.ifindex("ipsec1") == socket.if_nametoindex("ipsec1")
        finally:
            tun.close()
        assert tun.closed
        tun.close()  # idempotent
        assert not link.exists("ipsec1"), "a non-persistent TUN goes away with its last fd"
    info = json.loads(ns.check(["ip", "-d", "-j", "link", "show"]))
    assert all(i["ifname"] != "ipsec1" for i in info)


def test_device_is_tun_in_ip_output(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec7") as tun:
        info = json.loads(ns.check(["ip", "-d", "-j", "link", "show", tun.name]))[0]
        assert info["link_type"] == "none"
        assert info["linkinfo"]["info_kind"] == "tun"
        assert info["linkinfo"]["info_data"]["type"] == "tun"
        assert info["linkinfo"]["info_data"]["pi"] is False


def test_kernel_picks_number(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec%d") as first, open_tun("ipsec%d") as second:
        assert first.name == "ipsec0"
        assert second.name == "ipsec1"


def test_invalid_names_rejected() -> None:
    with pytest.raises(ValueError):
        open_tun("x" * 16)
    with pytest.raises(ValueError):
        open_tun("a/b")


def test_second_open_is_busy(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec2"):
        with pytest.raises(OSError) as exc:
            open_tun("ipsec2")
        assert exc.value.errno == errno.EBUSY
        with pytest.raises(OSError) as exc:
            open_tun("ipsec2", multi_queue=True)
        assert exc.value.errno == errno.EINVAL


def test_ifconfig_and_route_work_on_it(ns: Netns) -> None:
    """The seed's own example: ifconfig ipsec1 10.0.1.1 up; route add -net 10.0.2.0/24 dev ipsec1."""
    with ns.enter():
        tun = open_tun("ipsec1")
    with tun:
        ns.check(["ifconfig", "ipsec1", "10.0.1.1", "netmask", "255.255.255.0", "up"])
        ns.check(["route", "add", "-net", "10.0.2.0/24", "dev", "ipsec1"])
        assert "10.0.1.1" in ns.check(["ifconfig", "ipsec1"])
        routes = ns.check(["ip", "-4", "route", "show", "dev", "ipsec1"])
        assert "10.0.2.0/24" in routes
        assert "10.0.2.0" in ns.check(["route", "-n"])
        with ns.enter():
            assert link.is_up("ipsec1")
            assert link.route_source("10.0.2.5") == "10.0.1.1"
            assert link.route_mtu("10.0.2.5") == link.get_mtu("ipsec1") == 1500


def test_ip_addr_and_route_work_on_it(ns: Netns) -> None:
    with ns.enter():
        tun = open_tun("ipsec3")
    with tun:
        ns.check(["ip", "addr", "add", "10.0.1.1/24", "dev", "ipsec3"])
        ns.check(["ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "ipsec3", "nodad"])
        ns.check(["ip", "link", "set", "ipsec3", "up", "mtu", "1400"])
        ns.check(["ip", "route", "add", "10.0.2.0/24", "dev", "ipsec3"])
        ns.check(["ip", "-6", "route", "add", "2001:db8:2::/64", "dev", "ipsec3"])
        with ns.enter():
            assert link.get_mtu("ipsec3") == 1400
            assert link.route_mtu("10.0.2.9") == 1400
            assert link.route_source("2001:db8:2::9") == "2001:db8:1::1"
            assert link.route_mtu("2001:db8:2::9") == 1400


def _configure(ns: Netns, name: str) -> None:
    ns.check(["ip", "addr", "add", "10.0.1.1/24", "dev", name])
    ns.check(["ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", name, "nodad"])
    ns.check(["ip", "link", "set", name, "up"])


def test_written_packet_reaches_kernel_and_reply_comes_back(ns: Netns) -> None:
    """An echo request written into the TUN is answered by the kernel, back out of the TUN."""
    with ns.enter():
        tun = open_tun("ipsec1")
    with tun:
        _configure(ns, "ipsec1")
        request = icmp4_echo("10.0.1.2", "10.0.1.1", 0x1234, 1, b"ipsec-tunnel")
        assert tun.write(request) == len(request)
        # ICMP type 0 (echo reply) with our identifier, from 10.0.1.1 to 10.0.1.2
        reply = read_matching(tun, b"\x00\x00", 20)
        assert reply[12:16] == socket.inet_aton("10.0.1.1")
        assert reply[16:20] == socket.inet_aton("10.0.1.2")
        assert reply[24:26] == b"\x12\x34"
        assert reply.endswith(b"ipsec-tunnel")


def test_ipv6_echo_through_tun(ns: Netns) -> None:
    with ns.enter():
        tun = open_tun("ipsec1")
    with tun:
        _configure(ns, "ipsec1")
        request = icmp6_echo("2001:db8:1::2", "2001:db8:1::1", 0x4321, 7, b"six")
        tun.write(request)
        reply = read_matching(tun, bytes([129, 0]), 40)  # ICMPv6 echo reply
        assert reply[24:40] == socket.inet_pton(socket.AF_INET6, "2001:db8:1::2")
        assert reply.endswith(b"six")


def test_kernel_packets_are_read_from_tun(ns: Netns) -> None:
    """What the kernel routes to the device is read from the TUN as a bare IP packet."""
    with ns.enter():
        tun = open_tun("ipsec1")
        with tun:
            assert tun.read() is None, "non-blocking by default"
            _configure(ns, "ipsec1")
            ns.check(["ip", "route", "add", "10.0.2.0/24", "dev", "ipsec1"])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"hello tunnel", ("10.0.2.7", 5000))
            packet = read_matching(tun, socket.inet_aton("10.0.2.7"), 16)
            assert packet[0] >> 4 == 4 and packet[9] == socket.IPPROTO_UDP
            assert packet[12:16] == socket.inet_aton("10.0.1.1")
            assert packet[28:] == b"hello tunnel"


def test_blocking_mode(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec1", blocking=True) as tun:
        assert tun.blocking and os.get_blocking(tun.fd)
        tun.set_blocking(False)
        assert not os.get_blocking(tun.fd)
        assert tun.read() is None


def test_mtu_set_and_get(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec1") as tun:
        link.set_mtu(tun.name, 1380)
        assert link.get_mtu(tun.name) == 1380
        assert '"mtu":1380' in ns.check(["ip", "-j", "link", "show", tun.name])
        with pytest.raises(OSError):
            link.set_mtu(tun.name, 40)  # below the IPv4 minimum of 68


def test_features_include_what_we_use() -> None:
    if os.geteuid() != 0 and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/net/tun")
    features = tun_features()
    for flag in (IFF_TUN, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE):
        assert features & flag


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-", 1)[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def test_offloads_accepted(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec1", vnet_hdr=True) as tun:
        assert tun.vnet_hdr and tun.flags & IFF_VNET_HDR
        assert tun.get_vnet_hdr_len() == VNET_HDR_LEN
        assert tun.set_offload(TUN_F_CSUM)
        assert tun.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        uso = tun.set_offload(TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6)
        assert uso == _kernel_at_least(6, 2)
        assert not tun.set_offload(1 << 20), "unknown offload bits are refused"
        assert tun.set_offload(0)
        tun.set_vnet_hdr_len(12)
        assert tun.get_vnet_hdr_len() == 12 == tun.vnet_hdr_len
        with pytest.raises(OSError):
            tun.set_vnet_hdr_len(4)


def test_offloads_need_vnet_hdr(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec1") as tun:
        with pytest.raises(ValueError):
            tun.set_offload(TUN_F_CSUM)
        assert tun.set_offload(0)
        with pytest.raises(ValueError):
            tun.set_vnet_hdr_len(12)


def test_vnet_header_precedes_packets(ns: Netns) -> None:
    with ns.enter():
        tun = open_tun("ipsec1", vnet_hdr=True)
    with tun:
        _configure(ns, "ipsec1")
        tun.write(VNET_HDR.pack(*VnetHeader()) + icmp4_echo("10.0.1.2", "10.0.1.1", 9, 1, b"vnet"))
        reply = read_matching(tun, b"\x00\x00", 20, skip=VNET_HDR_LEN)
        header = VnetHeader._make(VNET_HDR.unpack_from(reply))
        assert header.gso_type == 0 and header.gso_size == 0
        assert reply[VNET_HDR_LEN] == 0x45
        assert reply.endswith(b"vnet")


def test_multi_queue(ns: Netns) -> None:
    with ns.enter():
        first = open_tun("ipsec1", multi_queue=True)
        second = first.open_queue()
    try:
        assert second.name == first.name and second.fd != first.fd
        assert second.flags & IFF_MULTI_QUEUE
        _configure(ns, "ipsec1")
        second.write(icmp4_echo("10.0.1.2", "10.0.1.1", 5, 1, b"queue"))

        def poll() -> bytes | None:
            for queue in (first, second):
                while (packet := queue.read()) is not None:
                    if packet.endswith(b"queue"):
                        return packet
            return None

        assert wait_for(poll)[20] == 0  # the echo reply
        second.set_queue_enabled(False)
        second.set_queue_enabled(True)
    finally:
        first.close()
        with ns.enter():
            assert link.exists("ipsec1"), "the device lives while a queue is open"
            second.close()
            assert not link.exists("ipsec1")


def test_open_queue_needs_multi_queue(ns: Netns) -> None:
    with ns.enter(), open_tun("ipsec1") as tun, pytest.raises(ValueError):
        tun.open_queue()
