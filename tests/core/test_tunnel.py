"""The tunnel table: validation, one tunnel per name and per address pair, and the receive-side choice of
device (exact pair, then remote only, then local only)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from ipsec_tunnel.core.sa import ConfigError, SAError, parse_address
from ipsec_tunnel.core.tunnel import BASE_DEVICE, Tunnel, TunnelError, TunnelTable, check_name, parse_networks


def _p(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def test_add_validates_and_canonicalises() -> None:
    table = TunnelTable()
    t = table.add(Tunnel("t0", " 2001:DB8::1", "2001:db8::2", spi=0x100, peer_nets=("192.168.1.7/24",)))
    assert (t.local, t.remote) == ("2001:db8::1", "2001:db8::2")
    assert t.peer_nets == ("192.168.1.0/24",)
    assert table.get("t0") == t
    assert len(table) == 1


@pytest.mark.parametrize(
    ("tunnel", "message", "errno"),
    [
        (Tunnel("", "10.0.0.1", "10.0.0.2"), "1 to 15 characters", "EINVAL"),
        (Tunnel("a" * 16, "10.0.0.1", "10.0.0.2"), "1 to 15 characters", "EINVAL"),
        (Tunnel("bad name", "10.0.0.1", "10.0.0.2"), "may hold only", "EINVAL"),
        (Tunnel("..", "10.0.0.1", "10.0.0.2"), "may hold only", "EINVAL"),
        (Tunnel(BASE_DEVICE, "10.0.0.1", "10.0.0.2"), "base device", "EPERM"),
        (Tunnel("t0", "10.0.0.1", "2001:db8::2"), "both be IPv4 or both IPv6", "EINVAL"),
        (Tunnel("t0", "10.0.0.1", "10.0.0.1"), "must differ", "EINVAL"),
        (Tunnel("t0", "10.0.0.1", "10.0.0.2", spi=255), "reserved or out of range", "EINVAL"),
        (Tunnel("t0", "10.0.0.1", "10.0.0.2", nextdev="x" * 20), "1 to 15 characters", "EINVAL"),
        (Tunnel("t0", "10.0.0.1", "10.0.0.2", peer_nets=("10.0.0.0/33",)), "Bad network", "EINVAL"),
        (Tunnel("t0", "10.0.0.1", "ff02::1"), "Wildcard or multicast remote", "EINVAL"),
    ],
)
def test_bad_tunnels_are_refused(tunnel: Tunnel, message: str, errno: str) -> None:
    with pytest.raises(TunnelError, match=message) as info:
        TunnelTable().add(tunnel)
    assert info.value.errno == errno


def test_one_tunnel_per_name_and_per_pair() -> None:
    table = TunnelTable()
    table.add(Tunnel("t0", "10.0.0.1", "10.0.0.2"))
    with pytest.raises(TunnelError, match="Tunnel t0 already exists") as info:
        table.add(Tunnel("t0", "10.0.0.1", "10.0.0.3"))
    assert info.value.errno == "EEXIST"
    with pytest.raises(TunnelError, match=r"Tunnel t0 already connects 10\.0\.0\.1 and 10\.0\.0\.2"):
        table.add(Tunnel("t1", "10.0.0.1", "10.0.0.2"))
    table.add(Tunnel("t1", "10.0.0.2", "10.0.0.1"))  # the reverse pair is another tunnel


def test_change_and_remove() -> None:
    table = TunnelTable()
    table.add(Tunnel("t0", "10.0.0.1", "10.0.0.2"))
    table.add(Tunnel("t1", "10.0.0.1", "10.0.0.3"))
    changed = table.change("t0", spi=0x300, peer_nets=("10.9.0.0/16",))
    assert changed.spi == 0x300 and changed.networks == (ipaddress.ip_network("10.9.0.0/16"),)
    with pytest.raises(TunnelError, match="already connects"):
        table.change("t0", remote="10.0.0.3")
    assert table.get("t0") == changed  # a refused change leaves the tunnel as it was
    with pytest.raises(TunnelError, match="No such tunnel: nope") as info:
        table.change("nope", spi=0x300)
    assert info.value.errno == "ENOENT"
    verbs: list[Callable[[], object]] = [
        lambda: table.change(BASE_DEVICE, spi=0x300),
        lambda: table.remove(BASE_DEVICE),
    ]
    for verb in verbs:
        with pytest.raises(TunnelError, match=BASE_DEVICE) as denied:
            verb()
        assert denied.value.errno == "EPERM"
    assert table.remove("t0").name == "t0"
    with pytest.raises(TunnelError, match="No such tunnel"):
        table.remove("t0")
    assert [t.name for t in table] == ["t1"]


def test_free_name_is_the_first_unused() -> None:
    table = TunnelTable()
    assert table.free_name() == "ipsec1"
    table.add(Tunnel("ipsec1", "10.0.0.1", "10.0.1.1"))
    table.add(Tunnel("ipsec3", "10.0.0.1", "10.0.1.3"))
    assert table.free_name() == "ipsec2"
    for i in range(2, 100):
        if i != 3:
            table.add(Tunnel(f"ipsec{i}", "10.0.0.1", f"10.0.2.{i}"))
    with pytest.raises(TunnelError, match="No free tunnel name") as info:
        table.free_name()
    assert info.value.errno == "ENOSPC"


def test_receive_prefers_exact_pair_then_remote_then_local() -> None:
    table = TunnelTable()
    local, remote = "10.0.0.2", "10.0.0.1"
    table.add(Tunnel("local-only", local, "10.0.0.77"))
    table.add(Tunnel("remote-only", "10.0.0.99", remote))
    table.add(Tunnel("exact", local, remote))
    assert table.for_receive(_p(local), _p(remote))
    chosen = table.for_receive(_p(local), _p(remote))
    assert chosen is not None and chosen.name == "exact"
    table.remove("exact")
    chosen = table.for_receive(_p(local), _p(remote))
    assert chosen is not None and chosen.name == "remote-only"
    table.remove("remote-only")
    chosen = table.for_receive(_p(local), _p(remote))
    assert chosen is not None and chosen.name == "local-only"
    table.remove("local-only")
    assert table.for_receive(_p(local), _p(remote)) is None


def test_first_added_wins_among_remote_only_matches() -> None:
    table = TunnelTable()
    table.add(Tunnel("a", "10.0.0.50", "10.0.0.1"))
    table.add(Tunnel("b", "10.0.0.51", "10.0.0.1"))
    chosen = table.for_receive(_p("10.0.0.2"), _p("10.0.0.1"))
    assert chosen is not None and chosen.name == "a"


def test_peer_nets_limit_inner_sources() -> None:
    t = Tunnel("t0", "10.0.0.1", "10.0.0.2", peer_nets=("192.168.1.0/24", "2001:db8:1::/48")).validated()
    assert t.allows(_p("192.168.1.200"))
    assert not t.allows(_p("192.168.2.1"))
    assert t.allows(_p("2001:db8:1::5"))
    assert not t.allows(_p("2001:db8:2::5"))
    assert Tunnel("t1", "10.0.0.1", "10.0.0.2").validated().allows(_p("8.8.8.8"))  # no --peer-net: any


def test_names_and_networks_helpers() -> None:
    assert check_name("ipsec1.vlan-2_x") == "ipsec1.vlan-2_x"
    assert parse_networks(["10.1.2.3/8", " ::/0 "]) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::/0"),
    )


def test_tunnel_errors_are_not_sa_errors_but_share_their_base() -> None:
    """A bad tunnel name is a TunnelError, not an SAError; callers catching ConfigError get both."""
    with pytest.raises(TunnelError) as info:
        check_name("a/b")
    assert not isinstance(info.value, SAError) and isinstance(info.value, ConfigError)
    with pytest.raises(TunnelError, match="Bad local address"):
        Tunnel("t0", "nonsense", "10.0.0.2").validated()
    with pytest.raises(SAError) as sa_info:
        parse_address("nonsense", "destination")
    assert isinstance(sa_info.value, ConfigError) and sa_info.value.errno == "EINVAL"
