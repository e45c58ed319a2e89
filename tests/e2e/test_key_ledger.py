"""Two hosts, each with its ipsecd: a counter-mode key deleted and added again never repeats a (key, IV)
pair on the wire and never accepts a packet captured before the delete; a hard-expired SA stays expired
across restarts (SIGTERM and SIGKILL)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support import icmp
from tests.support.hosts import IpsecHost, TwoHosts
from tests.support.pcap import capture_esp, esp_headers, stop_capture

pytestmark = pytest.mark.root


def _stats(host: IpsecHost) -> dict[str, int]:
    result: dict[str, int] = json.loads(host.adm("-j", "stats").stdout)["receive"]
    return result


def _ping(h: TwoHosts, count: int) -> bool:
    """Whether `count` pings from A to B's inner address were all answered (tried again only on replies
    B's kernel failed to send: tests/support/icmp.py)."""
    return icmp.all_answered(h.a.ns, "10.0.2.1", h.b.ns, count, "-i", "0.2", "-W", "1")


def _from_a(h: TwoHosts, pcap: Path) -> list[tuple[int, bytes]]:
    a_pub = socket.inet_aton(h.a_pub)
    return [(seq, p) for src, _dst, spi, seq, p in esp_headers(pcap) if src == a_pub and spi == 0x1000]


def test_gcm_key_readded_never_repeats_an_iv_and_rejects_old_packets(hosts: TwoHosts) -> None:
    h = hosts
    key = h.key("gcm", 20)
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={key}")
    h.tunnels()
    before_pcap, after_pcap = h.tmp / "before.pcap", h.tmp / "after.pcap"
    cap = capture_esp(h.b, h.links[1], before_pcap, immediate=True)
    try:
        assert _ping(h, 3)
    finally:
        stop_capture(cap)
    for host in (h.a, h.b):
        host.adm("sa", "del", "--spi=0x1000", f"--dst={h.b_pub}", "--duplex")
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={key}")
    cap = capture_esp(h.b, h.links[1], after_pcap, immediate=True)
    try:
        assert _ping(h, 3)
    finally:
        stop_capture(cap)
    old, new = _from_a(h, before_pcap), _from_a(h, after_pcap)
    assert len(old) >= 3 and len(new) >= 3
    assert min(s for s, _ in new) > max(s for s, _ in old), "sequence numbers started again under the key"
    assert {p[28:36] for _, p in old}.isdisjoint(p[28:36] for _, p in new)  # the IVs (after IP+ESP)

    # every packet captured before the delete, replayed at B: none delivered, all counted as replayed
    before = _stats(h.b)
    with h.a.ns.enter():
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for _seq, packet in old:
            raw.sendto(packet, (h.b_pub, 0))
    finally:
        raw.close()
    deadline = time.monotonic() + 10
    while _stats(h.b)["replayed"] - before["replayed"] < len(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _stats(h.b)
    assert after["accepted"] == before["accepted"], "a packet captured before the delete was delivered"
    assert after["replayed"] - before["replayed"] == len(old)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_hard_expired_sa_stays_expired_after_a_restart(hosts: TwoHosts, sig: int) -> None:
    h = hosts
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={h.key('lt', 20)}", "--lifetime-packets=5:10")
    h.tunnels()
    h.a.sh("ping -c 12 -i 0.2 -W 1 10.0.2.1", check=False)  # stops after 10: both ends hard-expire
    states = {sa["state"] for sa in json.loads(h.b.adm("-j", "sa", "show").stdout)}
    assert all(s.startswith("hard-expire") for s in states), states
    h.b.stop(sig)
    h.b.start()
    deadline = time.monotonic() + 10
    while h.b.sh("ip link show ipsec1", check=False).returncode != 0:
        assert time.monotonic() < deadline, "ipsec1 was not restored"
        time.sleep(0.05)
    h.b.sh("ip addr add 10.0.2.1/24 dev ipsec1 && ip link set ipsec1 up", check=False)
    states = {sa["state"] for sa in json.loads(h.b.adm("-j", "sa", "show").stdout)}
    assert all(s.startswith("hard-expire") for s in states), f"a restart revived the SA: {states}"
    assert not _ping(h, 3), "an expired SA carried traffic after the restart"
