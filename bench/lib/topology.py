"""The two-namespace topology every bench plane is built on.

Topology, built once per data plane so that every plane keeps running while the others are measured:

    namespace A                                    namespace B
    lo 10.0.1.1/32                                 lo 10.0.2.1/32
    veth 192.0.2.1/24  <------------------------>  veth 192.0.2.2/24

Traffic always goes 10.0.1.1 (A) -> 10.0.2.1 (B); each plane decides how 10.0.2.0/24 is reached.
Nothing is sent outside the namespaces made here; everything started is stopped by its pid, and every
namespace and temporary directory is removed, on success, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import time

from tests.support.netns import Netns, veth_pair

from .processes import BenchError, delete_namespace

PUB_A, PUB_B = "192.0.2.1", "192.0.2.2"
IN_A, IN_B = "10.0.1.1", "10.0.2.1"
NET_A, NET_B = "10.0.1.0/24", "10.0.2.0/24"
SPI = 0x1000


class Pair:
    """Namespaces A and B joined by a veth (outer network), with the inner addresses on their loopbacks."""

    def __init__(self, a: Netns, b: Netns) -> None:
        self.a = a
        self.b = b
        self.veth = ("", "")

    def build(self) -> None:
        for ns, inner in ((self.a, IN_A), (self.b, IN_B)):
            ns.create()
            # no IPv6 chatter (router solicitations, MLD) on the measured link
            ns.check("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            ns.check(["ip", "addr", "add", f"{inner}/32", "dev", "lo"])
        self.veth = veth_pair(self.a, self.b, f"{PUB_A}/24", f"{PUB_B}/24")
        for _ in range(40):
            if self.a.run(["ping", "-c1", "-W1", PUB_B]).returncode == 0:
                return
            time.sleep(0.25)
        raise BenchError(f"veth {PUB_A} <-> {PUB_B} does not pass traffic")

    def close(self) -> None:
        for ns in (self.a, self.b):
            delete_namespace(ns)
