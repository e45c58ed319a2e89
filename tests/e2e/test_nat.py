"""NAT traversal with manual SAs (README "Behind a NAT"): A behind an nftables masquerade, B outside,
one SA per direction, ESP-in-UDP. The NAT maps A's port 4500 to another port (B replies to the port
A's authenticated packets come from), and loses its mapping (A's keepalives make it anew, so B reaches
A again without A sending anything)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.support import icmp
from tests.support.hosts import IpsecHost
from tests.support.nat import A_INNER, A_PRIVATE, B_INNER, B_PUBLIC, NAT_PUBLIC, NatHosts
from tests.support.netns import netns_available

pytestmark = pytest.mark.root


@pytest.fixture
def nat() -> Iterator[NatHosts]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("nft") is None:
        pytest.skip("needs nft (nftables) for the NAT")
    with NatHosts() as hosts:
        yield hosts


def _setup(h: NatHosts, *, b_keepalive: str = "0") -> None:
    """The README's example, word for word: A names itself by its private address, B names A by the
    NAT's public one; each direction its own SPI and key."""
    ab = h.tmp / "a-to-b.key"
    ba = h.tmp / "b-to-a.key"
    for path in (ab, ba):
        path.write_bytes(os.urandom(20))
        path.chmod(0o600)
    sa = ["sa", "add", "--cipher=aes-gcm", "--encap=udp"]
    h.a.adm(
        *sa,
        "--keepalive=1",
        "--spi=0x1000",
        f"--src={A_PRIVATE}",
        f"--dst={B_PUBLIC}",
        f"--cipher-keyfile={ab}",
    )
    h.a.adm(
        *sa,
        "--keepalive=1",
        "--spi=0x2000",
        f"--src={B_PUBLIC}",
        f"--dst={A_PRIVATE}",
        f"--cipher-keyfile={ba}",
    )
    h.a.adm("tunnel", "add", "ipsec1", f"--local={A_PRIVATE}", f"--remote={B_PUBLIC}")
    h.b.adm(*sa, f"--keepalive={b_keepalive}", "--spi=0x1000", f"--src={NAT_PUBLIC}", f"--dst={B_PUBLIC}",
            f"--cipher-keyfile={ab}")  # fmt: skip
    h.b.adm(*sa, f"--keepalive={b_keepalive}", "--spi=0x2000", f"--src={B_PUBLIC}", f"--dst={NAT_PUBLIC}",
            f"--cipher-keyfile={ba}")  # fmt: skip
    h.b.adm("tunnel", "add", "ipsec1", f"--local={B_PUBLIC}", f"--remote={NAT_PUBLIC}")
    h.a.sh(
        f"ip addr add {A_INNER} dev ipsec1 && ip link set ipsec1 up && ip route add 10.0.2.0/24 dev ipsec1"
    )
    h.b.sh(
        f"ip addr add {B_INNER} dev ipsec1 && ip link set ipsec1 up && ip route add 10.0.1.0/24 dev ipsec1"
    )


def _logged(host: IpsecHost, text: str, wait: float = 3.0) -> bool:
    """Whether `text` shows up in the host's ipsecd log within `wait` seconds (lines go out once a second)."""
    deadline = time.monotonic() + wait
    while text not in host.log.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _ping(host: IpsecHost, dst: str, replier: IpsecHost, count: int = 3) -> bool:
    """Whether `count` pings from `host` to `dst` were all answered by `replier` (tried again only on
    replies `replier`'s kernel failed to send: tests/support/icmp.py)."""
    return icmp.all_answered(host.ns, dst, replier.ns, count, "-i", "0.2", "-W", "1")


def test_a_nat_that_maps_4500_to_another_port(nat: NatHosts) -> None:
    nat.masquerade("masquerade to :20000-20010")
    _setup(nat)
    assert _ping(nat.a, B_INNER, nat.b), nat.b.log.read_text()[-3000:]
    assert _ping(nat.b, A_INNER, nat.a)
    assert _logged(nat.b, "ESP-in-UDP peer 203.0.113.254 (SPI 0x1000) now sends from port 200")


def test_traffic_in_resumes_after_the_nat_lost_its_mapping(nat: NatHosts) -> None:
    _setup(nat)
    assert _ping(nat.a, B_INNER, nat.b)
    nat.flush()  # the mapping is gone; A's next keepalive (1 s) makes it anew
    time.sleep(3.5)  # A keepalive goes within 2 s of the last packet, once a second after
    assert _ping(nat.b, A_INNER, nat.a), nat.a.log.read_text()[-3000:]
    stats = nat.a.adm("stats").stdout
    assert "NAT keepalives sent" in stats


def test_an_unknown_spi_through_the_nat_is_named_in_the_log(nat: NatHosts) -> None:
    _setup(nat)
    nat.b.adm("sa", "del", "--spi=0x1000", f"--src={NAT_PUBLIC}", f"--dst={B_PUBLIC}")
    _ping(nat.a, B_INNER, nat.b, count=1)
    assert _logged(nat.b, "dropped, unknown SA: SPI 0x1000 from 203.0.113.254:")
    shown = nat.b.adm("stats", "--last-drops").stdout
    assert "unknown SA: SPI 0x1000 from 203.0.113.254:" in shown
