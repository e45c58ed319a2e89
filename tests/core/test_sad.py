"""The SA database: one SA per (destination, source, SPI), inbound lookup, and the SA a tunnel sends with."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec_tunnel.core.sa import SAConfig, SAError, SecurityAssociation
from ipsec_tunnel.core.sad import SADatabase

KEY = bytes(range(20))


def _sa(spi: int, dst: str = "10.0.0.2", src: str = "10.0.0.1") -> SecurityAssociation:
    return SecurityAssociation(SAConfig(spi, dst, src, "aes-gcm", KEY).validated(), 0.0)


def _p(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def test_add_and_get_by_destination_source_spi() -> None:
    sad = SADatabase()
    a, b = _sa(0x100), _sa(0x101)
    sad.add(a)
    sad.add(b)
    assert len(sad) == 2
    assert sad.get(_p("10.0.0.2"), _p("10.0.0.1"), 0x100) is a
    assert sad.get(_p("10.0.0.2"), _p("10.0.0.1"), 0x101) is b
    assert sad.get(_p("10.0.0.1"), _p("10.0.0.2"), 0x100) is None  # the other direction
    assert sad.get(_p("10.0.0.2"), _p("10.0.0.9"), 0x100) is None
    assert list(sad) == [a, b]


def test_duplicate_key_is_refused() -> None:
    sad = SADatabase()
    sad.add(_sa(0x100))
    with pytest.raises(SAError, match="SA already exists") as info:
        sad.add(_sa(0x100))
    assert info.value.errno == "EEXIST"
    assert len(sad) == 1
    sad.add(_sa(0x100, dst="10.0.0.1", src="10.0.0.2"))  # same SPI, other direction: a different SA
    sad.add(_sa(0x100, dst="2001:db8::2", src="2001:db8::1"))
    assert len(sad) == 3


def test_remove_is_idempotent() -> None:
    sad = SADatabase()
    a = _sa(0x100)
    sad.add(a)
    sad.remove(a)
    sad.remove(a)
    assert len(sad) == 0
    assert sad.get(*a.key) is None
    assert sad.for_tunnel(_p("10.0.0.2"), _p("10.0.0.1"), 0) is None
    sad.add(a)  # can be added again
    assert sad.get(*a.key) is a


def test_tunnel_uses_its_spi_or_the_first_live_sa_of_the_pair() -> None:
    sad = SADatabase()
    first, second = _sa(0x100), _sa(0x200)
    sad.add(first)
    sad.add(second)
    remote, local = _p("10.0.0.2"), _p("10.0.0.1")
    assert sad.for_tunnel(remote, local, 0x200) is second
    assert sad.for_tunnel(remote, local, 0x300) is None
    assert sad.for_tunnel(remote, local, 0) is first
    first.dead = "hard-expire (bytes)"
    assert sad.for_tunnel(remote, local, 0) is second  # a replacement takes over
    second.dead = "sequence numbers exhausted"
    assert sad.for_tunnel(remote, local, 0) is first  # all dead: still the first, which drops EXPIRED
    assert sad.for_tunnel(local, remote, 0) is None


def test_find_filters_by_any_field() -> None:
    sad = SADatabase()
    a, b, c = _sa(0x100), _sa(0x101), _sa(0x100, dst="10.0.0.1", src="10.0.0.2")
    for sa in (a, b, c):
        sad.add(sa)
    assert sad.find() == [a, b, c]
    assert sad.find(spi=0x100) == [a, c]
    assert sad.find(dst=_p("10.0.0.2")) == [a, b]
    assert sad.find(src=_p("10.0.0.2"), spi=0x100) == [c]
    assert sad.find(dst=_p("10.9.9.9")) == []


def test_iteration_is_a_snapshot() -> None:
    sad = SADatabase()
    for spi in (0x100, 0x101, 0x102):
        sad.add(_sa(spi))
    for sa in sad:
        sad.remove(sa)  # removing while iterating is safe
    assert len(sad) == 0
