"""`--device-aqm` end to end: with CoDel on the sending tunnel device's ring set tight enough to act on
any transfer, a TCP transfer through ipsecd arrives whole (SHA-256 at both ends) while A cuts segments
(no ECN) or marks CE (ECN negotiated), and nothing else is dropped."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_fastpath import restart, transfer
from tests.support.hosts import IpsecHost, TwoHosts

pytestmark = pytest.mark.root

# 0.1 ms above target for 1 ms, and a --batch that ends a device turn at its first super-packet (so
# the ring is never seen empty): CoDel acts on the transfer whatever the machine's load
TIGHT = ["--device-aqm=codel:0.1/1", "--batch=16"]


def stats(host: IpsecHost) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(host.adm("-j", "stats").stdout)
    return result


def _retransmitted(host: IpsecHost) -> int:
    """The TCP segments the host's kernel retransmitted so far (TcpRetransSegs, its namespace)."""
    out = host.sh("nstat -az TcpRetransSegs").stdout.split()
    return int(out[out.index("TcpRetransSegs") + 1])


@pytest.mark.parametrize("ecn", [False, True], ids=["drop", "ecn"])
def test_a_tcp_transfer_survives_the_device_aqm(hosts: TwoHosts, ecn: bool) -> None:
    h = hosts
    restart(h, TIGHT)
    if ecn:
        for host in (h.a, h.b):
            host.sh("sysctl -qw net.ipv4.tcp_ecn=1")
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}", "--encap=udp")
    _a_in, b_in = h.tunnels()
    retrans = _retransmitted(h.a)
    transfer(h, b_in, 16 * 1024 * 1024)
    a = stats(h.a)
    send = a["send"]
    if ecn:
        # the data is marked, never dropped; a packet TCP sends without ECT (the handshake's and the
        # close's ACK and FIN, a retransmitted segment: RFC 3168 §6.1.5) can only be dropped
        non_ect = 3 + _retransmitted(h.a) - retrans
        assert a["tx_ce_marked"] > 0 and send["device_aqm"] <= non_ect, (a, non_ect)
    else:
        assert send["device_aqm"] > 0 and a["tx_ce_marked"] == 0
    others = {k: v for k, v in send.items() if k not in ("accepted", "device_aqm") and v}
    assert others == {}
    b = stats(h.b)
    counts = [(k, v) for part in ("receive", "send") for k, v in b[part].items()]
    assert {k: v for k, v in counts if k != "accepted" and v} == {}
