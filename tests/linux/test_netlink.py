"""rtnetlink links: decoding RTM_NEWLINK / RTM_DELLINK (any bytes, never an exception), the device list
with kinds and aliases, setting an alias, and link events for a deleted or renamed TUN device."""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipsec_tunnel.linux import link, netlink
from ipsec_tunnel.linux.tun import open_tun
from tests.support.netns import Netns, netns_available


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def message(kind: int, index: int, *attrs: bytes, flags: int = 0x1043) -> bytes:
    body = struct.pack("=BxHiII", 0, 0xFFFE, index, flags, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_parse_new_and_deleted_links_with_kind_and_alias() -> None:
    info = attr(netlink.IFLA_INFO_KIND, b"tun\0")
    data = (
        message(netlink.RTM_NEWLINK, 7, attr(netlink.IFLA_IFNAME, b"wan0\0"),
                attr(netlink.IFLA_LINKINFO | 0x8000, info), attr(netlink.IFLA_IFALIAS, b"ipsec-tunnel\0"))
        + message(netlink.RTM_DELLINK, 8, attr(netlink.IFLA_IFNAME, b"ipsec2\0"))
        + message(3, 0)  # NLMSG_DONE: skipped
    )  # fmt: skip
    assert netlink.parse(data) == [
        netlink.LinkEvent(7, "wan0", 0x1043, False, "tun", "ipsec-tunnel"),
        netlink.LinkEvent(8, "ipsec2", 0x1043, True),
    ]


def test_parse_stops_at_a_truncated_message() -> None:
    whole = message(netlink.RTM_NEWLINK, 3, attr(netlink.IFLA_IFNAME, b"a\0"))
    assert netlink.parse(whole + whole[:20]) == [netlink.LinkEvent(3, "a", 0x1043, False)]


@given(st.binary(max_size=200))
def test_parse_never_raises(data: bytes) -> None:
    netlink.parse(data)


@pytest.fixture
def ns() -> Iterator[Netns]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    with Netns(f"odv{os.getpid()}") as netns:
        yield netns


@pytest.mark.root
def test_links_alias_and_events_for_a_deleted_or_renamed_device(ns: Netns) -> None:
    with ns.enter():
        monitor = netlink.LinkMonitor()
        try:
            dev = open_tun("odv1")
            dev.set_persist(True)
            dev.close()
            index = link.ifindex("odv1")
            netlink.set_alias(index, "ipsec-tunnel")
            found = {d.name: d for d in netlink.links()}
            assert found["odv1"].kind == "tun" and found["odv1"].alias == "ipsec-tunnel"
            assert found["lo"].kind == "" and found["lo"].alias == ""
            assert link.exists("odv1"), "a persistent device outlives its last queue"
            ns.check("ip link set odv1 name odv2")
            ns.check("ip link del odv2")
            seen: list[netlink.LinkEvent] = []
            while not any(e.deleted for e in seen):
                assert select.select([monitor], [], [], 5)[0], f"no deletion event: {seen}"
                got = monitor.read()
                assert got is not None
                seen += [e for e in got if e.index == index]
            assert any(e.name == "odv2" and not e.deleted for e in seen)
            assert seen[-1].deleted
            with pytest.raises(OSError):
                netlink.set_alias(index, "x")  # gone
        finally:
            monitor.close()
