"""ipsecd to ipsecd with IKEv2, both roles: established on both sides, the SAs marked as IKE's, ping both
ways and a TCP transfer through the negotiated CHILD SAs; `ike down` on one side clears the other."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.support import icmp
from tests.support.hosts import IpsecHost, TwoHosts

pytestmark = pytest.mark.root
A_IN, B_IN = "10.62.1.1", "10.62.2.1"
A_NET, B_NET = "10.62.1.0/24", "10.62.2.0/24"


@pytest.fixture
def hosts(hosts: TwoHosts) -> TwoHosts:
    """The e2e hosts (tests/e2e/conftest.py), each with an inner address and an IKE peer for the other."""
    h = hosts
    psk = h.tmp / "psk"
    psk.write_text("ipsecd-to-ipsecd psk\n")
    psk.chmod(0o600)
    for host, mine, pub, other, lnet, rnet in ((h.a, A_IN, h.a_pub, h.b_pub, A_NET, B_NET),
                                                (h.b, B_IN, h.b_pub, h.a_pub, B_NET, A_NET)):  # fmt: skip
        host.sh(f"ip addr add {mine}/32 dev lo")
        host.adm("ike", "add", "peer", f"--local={pub}", f"--remote={other}", f"--psk-file={psk}",
                 f"--local-net={lnet}", f"--remote-net={rnet}",
                 "--proposals=aes256gcm16-prfsha384-ecp256", "--esp-proposals=aes256gcm16")  # fmt: skip
    return h


def _show(host: IpsecHost) -> dict[str, object]:
    out = json.loads(host.adm("ike", "show", "peer", "-j").stdout)[0]
    assert isinstance(out, dict)
    return out


def _wait(what: str, check: object, h: TwoHosts, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out: {what}\nA:\n{h.a.log.read_text()[-3000:]}\nB:\n{h.b.log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


def _up(h: TwoHosts) -> bool:
    return all(_show(x)["state"] == "established" and _show(x)["children"] for x in (h.a, h.b))


def _ping(h: TwoHosts) -> None:
    assert icmp.all_answered(h.a.ns, B_IN, h.b.ns, 2, "-i", "0.2", "-W", "2", "-I", A_IN)
    assert icmp.all_answered(h.b.ns, A_IN, h.a.ns, 2, "-i", "0.2", "-W", "2", "-I", B_IN)


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ipsecd_to_ipsecd(hosts: TwoHosts, initiator: str) -> None:
    h = hosts
    first, second = (h.a, h.b) if initiator == "a" else (h.b, h.a)
    first.adm("ike", "up", "peer")
    _wait("established", lambda: _up(h), h)
    for host in (h.a, h.b):
        sas = json.loads(host.adm("sa", "show", "-j").stdout)
        assert {s["origin"] for s in sas} == {"ike:peer"} and len(sas) == 2
        assert {s["cipher"] for s in sas} == {"aes-gcm"} and {s["cipher_bits"] for s in sas} == {256}
        assert "Origin" in host.adm("sa", "show").stdout
    _ping(h)
    recv = h.b.popen([sys.executable, "-m", "tests.support.transfer", "recv", "5202", B_IN],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert recv.stdout is not None and recv.stdout.readline().strip() == "listening"
    sent = h.a.sh([sys.executable, "-m", "tests.support.transfer", "send", B_IN, "5202", "1000000"])
    got, _ = recv.communicate(timeout=60)
    assert sent.stdout.split() == got.split()
    second.adm("ike", "down", "peer")
    _wait("both down", lambda: all(not json.loads(x.adm("sa", "show", "-j").stdout) for x in (h.a, h.b)), h)
    assert B_NET not in h.a.sh("ip route").stdout


def test_on_traffic_starts_ike(hosts: TwoHosts) -> None:
    h = hosts
    psk = h.tmp / "psk"
    h.a.adm("ike", "del", "peer")
    h.a.adm("ike", "add", "peer", f"--local={h.a_pub}", f"--remote={h.b_pub}", f"--psk-file={psk}",
            f"--local-net={A_NET}", f"--remote-net={B_NET}", "--start=on-traffic",
            "--tunnel=ipsec3")  # fmt: skip
    assert B_NET in h.a.sh("ip route show dev ipsec3").stdout  # routed before any SA
    assert _show(h.a)["state"] == "down"
    h.a.sh(f"ping -c 1 -W 1 -I {A_IN} {B_IN}", check=False)  # lost, but it starts IKE
    _wait("established by traffic", lambda: _up(h), h)
    _ping(h)
    assert [s["origin"] for s in json.loads(h.a.adm("sa", "show", "-j").stdout)] == ["ike:peer"] * 2
