"""`--flow-queues=on` end to end, against the real kernel: each tunnel device gets two queues (ipsec0
keeps one); a TCP transfer from A to B with pings alongside (both address families inside, ESP-in-UDP
and raw ESP) arrives whole (SHA-256 at both ends) and in order (B's TCP queued nothing out of order),
every ping is answered (but for replies B's kernel failed to send: tests/support/icmp.py), and nothing
is dropped."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.e2e.test_fastpath import drops, restart, transfer
from tests.support import icmp
from tests.support.hosts import IpsecHost, TwoHosts

pytestmark = pytest.mark.root


def queues(host: IpsecHost, device: str) -> int:
    """The device's transmit queues (one per open TUN queue)."""
    return len(host.sh(f"ls /sys/class/net/{device}/queues | grep tx-").stdout.split())


def out_of_order(host: IpsecHost) -> int:
    """Segments this host's TCP received out of order, since its namespace was made."""
    out = host.sh("nstat -az TcpExtTCPOFOQueue").stdout
    match = re.search(r"TcpExtTCPOFOQueue\s+(\d+)", out)
    assert match, out
    return int(match.group(1))


def where_lost(h: TwoHosts) -> str:
    """Both ends' counted drops, tunnel device counters and UDP receive-buffer overflows."""
    lines = []
    for host in (h.a, h.b):
        links = host.sh("ip -s link show ipsec1", check=False).stdout
        udp = host.sh("nstat -az UdpRcvbufErrors Udp6RcvbufErrors", check=False).stdout
        lines.append(f"--- {host.label}: drops {drops(host)}\n{links}{udp}")
    return "\n".join(lines)


@pytest.mark.parametrize("inner6", [False, True], ids=["inner4", "inner6"])
@pytest.mark.parametrize("encap", ["udp", "raw"])
def test_a_transfer_with_pings_alongside_arrives_whole_and_in_order(
    hosts: TwoHosts, encap: str, inner6: bool
) -> None:
    h = hosts
    restart(h, ["--flow-queues=on"])
    h.sa_pair(
        "--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}", *(["--encap=udp"] if encap == "udp" else [])
    )
    a_in, b_in = h.tunnels(inner6=inner6)
    assert queues(h.a, "ipsec1") == 2 and queues(h.b, "ipsec1") == 2
    assert queues(h.a, "ipsec0") == 1  # a second ipsecd must still find it held
    before = out_of_order(h.b)
    family = 6 if inner6 else 4
    echo = icmp.counters(h.b.ns, family)
    ping = h.a.popen(["ping", "-n", "-c", "40", "-i", "0.05", "-I", a_in, b_in],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    transfer(h, b_in, 16 * 1024 * 1024)
    out, _ = ping.communicate(timeout=30)
    at_b = icmp.counters(h.b.ns, family) - echo
    received = re.search(r"(\d+) received", out)
    assert received, out
    # every request reached B, every reply B's kernel sent reached A; a reply B's kernel failed to send
    # (another namespace's doing: tests/support/icmp.py) is the only loss allowed
    why = f"{out}\nB's kernel: {at_b}\n{where_lost(h)}"
    assert at_b.in_echos == 40 and int(received.group(1)) == at_b.out_echo_reps == 40 - at_b.out_errors, why
    assert out_of_order(h.b) == before
    assert drops(h.a) == {} and drops(h.b) == {}
    for host in (h.a, h.b):  # the transfer's flow was moved apart at both ends (read at A, written at B)
        assert json.loads(host.adm("-j", "stats").stdout)["bulk_flows"] >= 1
    # the echo requests reached B's small-datagram socket, the replies A's (with the transfer's ACKs)
    assert json.loads(h.b.adm("-j", "stats").stdout)["sparse_read"] >= 40, why
    assert json.loads(h.a.adm("-j", "stats").stdout)["sparse_read"] >= int(received.group(1)), why
