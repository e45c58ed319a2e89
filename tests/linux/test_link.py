"""Interface ioctls (MTU, up/down, index) and the read-only route questions (MTU, source)."""

from __future__ import annotations

import errno
import json
import socket

import pytest

from ipsec_tunnel.linux import link
from ipsec_tunnel.linux.tun import open_tun
from tests.support.netns import Netns

from .conftest import ADDR_A4, ADDR_A6, ADDR_B4, ADDR_B6, Pair, wait_for


def test_invalid_names() -> None:
    for bad in ("", "x" * 16, "a\0b"):
        with pytest.raises(ValueError):
            link.get_mtu(bad)
        assert not link.exists(bad)


def test_loopback_questions_need_no_privilege() -> None:
    assert link.route_source("127.0.0.1") == "127.0.0.1"
    assert link.exists("lo")
    assert link.ifindex("lo") == socket.if_nametoindex("lo")


@pytest.mark.root
def test_missing_interface(ns: Netns) -> None:
    with ns.enter():
        assert not link.exists("nosuch0")
        with pytest.raises(OSError) as exc:
            link.get_mtu("nosuch0")
        assert exc.value.errno == errno.ENODEV
        with pytest.raises(OSError):
            link.ifindex("nosuch0")


@pytest.mark.root
def test_mtu_up_index(ns: Netns) -> None:
    with ns.enter(), open_tun("dum0"):
        assert link.exists("dum0")
        assert (
            link.ifindex("dum0") == json.loads(ns.check(["ip", "-j", "link", "show", "dum0"]))[0]["ifindex"]
        )
        assert link.get_mtu("dum0") == 1500
        link.set_mtu("dum0", 1280)
        assert link.get_mtu("dum0") == 1280
        assert not link.is_up("dum0")
        link.set_up("dum0", True)
        assert link.is_up("dum0")
        assert link.get_flags("dum0") & link.IFF_UP
        link.set_up("dum0", True)  # no change
        assert '"mtu":1280' in ns.check(["ip", "-j", "link", "show", "dum0"])
        assert "UP" in json.loads(ns.check(["ip", "-j", "link", "show", "dum0"]))[0]["flags"]
        link.set_up("dum0", False)
        assert not link.is_up("dum0")


@pytest.mark.root
def test_route_mtu_and_source(pair: Pair) -> None:
    pair.a.check(["ip", "link", "set", pair.dev_a, "mtu", "1400"])
    with pair.a.enter():
        assert link.route_mtu(ADDR_B4) == 1400
        assert link.route_mtu(ADDR_B6) == 1400
        assert link.route_source(ADDR_B4) == ADDR_A4
        assert link.route_source(ADDR_B6) == ADDR_A6
        assert link.route_mtu(ADDR_B4, oif=pair.dev_a) == 1400
        assert link.route_mtu("127.0.0.1") == 65535  # the lo MTU 65536 is capped at IP_MAX_MTU


@pytest.mark.root
def test_route_mtu_uses_the_route(pair: Pair) -> None:
    """A route's own mtu attribute wins over the device's, and the preferred source is honoured."""
    pair.a.check(["ip", "addr", "add", "192.0.2.11/24", "dev", pair.dev_a])
    pair.a.check(
        ["ip", "route", "add", "198.51.100.0/24", "via", ADDR_B4, "mtu", "1300", "src", "192.0.2.11"]
    )
    pair.a.check(["ip", "-6", "route", "add", "2001:db8:5::/64", "via", ADDR_B6, "mtu", "1350"])
    with pair.a.enter():
        assert link.route_mtu("198.51.100.7") == 1300
        assert link.route_source("198.51.100.7") == "192.0.2.11"
        assert link.route_mtu("2001:db8:5::7") == 1350
        assert link.route_source("2001:db8:5::7") == ADDR_A6


@pytest.mark.root
def test_no_route_is_none(pair: Pair) -> None:
    pair.a.check(["ip", "route", "add", "unreachable", "198.51.100.0/24"])
    pair.a.check(["ip", "route", "add", "prohibit", "198.51.100.128/25"])
    pair.a.check(["ip", "route", "add", "blackhole", "192.0.2.128/25"])
    with pair.a.enter():
        assert link.route_mtu("203.0.113.1") is None  # no default route in the namespace
        assert link.route_source("203.0.113.1") is None
        assert link.route_mtu("2001:db8:ffff::1") is None
        assert link.route_mtu("198.51.100.1") is None
        assert link.route_mtu("198.51.100.200") is None
        assert link.route_mtu("192.0.2.200") is None


@pytest.mark.root
def test_route_lookup_restricted_to_oif(pair: Pair) -> None:
    with pair.a.enter():
        other = open_tun("dum0")
    pair.a.check(["ip", "link", "set", "dum0", "mtu", "1280"])
    pair.a.check(["ip", "addr", "add", "10.9.0.1/24", "dev", "dum0"])
    pair.a.check(["ip", "link", "set", "dum0", "up"])
    with pair.a.enter(), other:
        assert link.route_mtu(ADDR_B4) == 1500
        # bound to dum0 the kernel takes the destination as on-link there (like SO_BINDTODEVICE sends)
        assert link.route_mtu(ADDR_B4, oif="dum0") == 1280
        assert link.route_source(ADDR_B4, oif="dum0") == "10.9.0.1"
        assert link.route_mtu("10.9.0.2", oif=pair.dev_a) == 1500
        with pytest.raises(OSError):
            link.route_mtu(ADDR_B4, oif="nosuch0")


@pytest.mark.root
def test_link_local_with_zone(pair: Pair) -> None:
    with pair.a.enter():
        # the kernel adds fe80::/64 only once the veth has carrier, i.e. once its peer in the other
        # namespace is up too; on a loaded machine that can come after the fixture returns
        assert wait_for(lambda: link.route_mtu(f"fe80::1%{pair.dev_a}")) == 1500
        # the link-local address may still be tentative (DAD), so the global one may be chosen
        assert link.route_source(f"fe80::1%{pair.dev_a}") is not None


def test_is_local_address_of_this_namespace() -> None:
    """`tunnel add` refuses a --local that is not ours (issue 11 item 5); no privilege needed."""
    assert link.is_local_address("127.0.0.1")
    assert not link.is_local_address("192.0.2.254")  # RFC 5737: never assigned on a test machine
    assert not link.is_local_address("2001:db8::fe")  # RFC 3849
    if link.route_source("::1") == "::1":  # IPv6 enabled
        assert link.is_local_address("::1")
