"""The seed's walk-through between two hosts, for each cipher family, over raw ESP and ESP-in-UDP."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import icmp
from tests.support.hosts import IpsecHost, TwoHosts

pytestmark = pytest.mark.root

# (cipher args, key sizes) for the suites the issue names.
SUITES = {
    "3des-sha1": (("--cipher=des_ede3-cbc", 24), ("--digest=sha1", 20)),
    "3des-seed": (("--cipher=des_ede3-cbc", 24), None),  # the seed's own line: encryption only
    "aes-cbc-sha256": (("--cipher=aes-cbc", 32), ("--digest=sha256", 32)),
    "aes-gcm": (("--cipher=aes-gcm", 20), None),
    "chacha20-poly1305": (("--cipher=chacha20-poly1305", 36), None),
}


def add_suite(h: TwoHosts, suite: str, *extra: str) -> None:
    (cipher, ksize), digest = SUITES[suite]
    args = [cipher, f"--cipher-keyfile={h.key('c.key', ksize)}"]
    if digest:
        args += [digest[0], f"--digest-keyfile={h.key('d.key', digest[1])}"]
    h.sa_pair(*args, *extra)


def stats(host: IpsecHost, what: str = "stats") -> dict[str, Any]:
    result: dict[str, Any] = json.loads(host.adm("-j", *what.split()).stdout)
    return result


@pytest.mark.parametrize("encap", ["raw", "udp"])
@pytest.mark.parametrize("suite", list(SUITES))
def test_ping_through_tunnel(hosts: TwoHosts, suite: str, encap: str) -> None:
    add_suite(hosts, suite, *(["--encap=udp"] if encap == "udp" else []))
    a_in, b_in = hosts.tunnels()
    assert icmp.all_answered(hosts.a.ns, b_in, hosts.b.ns, 3, "-i", "0.2", "-W", "2", "-I", a_in)
    a = stats(hosts.a)
    b = stats(hosts.b)
    assert a["send"]["accepted"] >= 3 and a["receive"]["accepted"] >= 3
    assert b["receive"]["accepted"] >= 3
    assert sum(v for k, v in b["receive"].items() if k != "accepted") == 0


def test_ipsec0_is_created_down(hosts: TwoHosts) -> None:
    out = hosts.a.sh("ip -o link show ipsec0").stdout
    assert "ipsec0" in out and "state DOWN" in out


def test_ipv6_inner_over_ipv4_outer(hosts: TwoHosts) -> None:
    add_suite(hosts, "aes-gcm")
    _a_in, b_in = hosts.tunnels(inner6=True)
    assert icmp.all_answered(hosts.a.ns, b_in, hosts.b.ns, 3, "-6", "-i", "0.2", "-W", "2")


def test_ipv4_inner_over_ipv6_outer(hosts6: TwoHosts) -> None:
    add_suite(hosts6, "aes-cbc-sha256")
    a_in, b_in = hosts6.tunnels()
    assert icmp.all_answered(hosts6.a.ns, b_in, hosts6.b.ns, 3, "-i", "0.2", "-W", "2", "-I", a_in)


def test_tunnel_device_mtu_leaves_room_for_esp(hosts: TwoHosts) -> None:
    add_suite(hosts, "aes-cbc-sha256")
    hosts.tunnels()
    mtu = int(hosts.a.sh("cat /sys/class/net/ipsec1/mtu").stdout)
    # AES-CBC + HMAC-SHA-256-128 over IPv4: outer header 20, ESP header 8, IV 16, ICV 16; payload and
    # trailer (2) padded to the 16-byte block (RFC 4303 §2.4), as Linux's esp4_get_mtu computes it
    assert mtu == (1500 - (20 + 8 + 16 + 16)) // 16 * 16 - 2 == 1438
    # a full-size DF packet passes; one byte more is refused by the kernel with the device MTU
    assert icmp.all_answered(
        hosts.a.ns, "10.0.2.1", hosts.b.ns, 1, "-W", "2", "-M", "do", "-s", str(mtu - 28)
    )


def test_df_packet_too_big_gets_icmp_frag_needed(hosts: TwoHosts) -> None:
    add_suite(hosts, "aes-gcm")
    hosts.tunnels()
    hosts.a.sh("ip link set ipsec1 mtu 1500")  # an operator override larger than the path allows
    out = hosts.a.sh("ping -c 2 -i 0.3 -W 1 -M do -s 1472 10.0.2.1", check=False)
    assert "Frag needed" in out.stdout or "mtu = " in out.stdout, out.stdout + out.stderr
    st = stats(hosts.a)
    assert st["send"]["too_big"] >= 1
