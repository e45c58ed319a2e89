"""A NAT between two ipsecd hosts: A on a private network behind an nftables masquerade in namespace N,
B outside, as the README's NAT example sets them up.

    A  10.77.0.2/24 ----- 10.77.0.1/24  N  203.0.113.254/24 ----- 203.0.113.2/24  B
       (default via N)                  masquerade out of the wan side
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
from pathlib import Path

from .hosts import IpsecHost, Topology, stop_hosts
from .netns import Netns, veth_pair

A_PRIVATE, NAT_LAN, NAT_PUBLIC, B_PUBLIC = "10.77.0.2", "10.77.0.1", "203.0.113.254", "203.0.113.2"
A_INNER, B_INNER = "10.0.1.1", "10.0.2.1"
TABLE = "onatnat"
NETLINK_NETFILTER = 12  # linux/netlink.h
NFNL_SUBSYS_CTNETLINK = 1  # linux/netfilter/nfnetlink.h
IPCTNL_MSG_CT_DELETE = 2  # linux/netfilter/nfnetlink_conntrack.h: with no tuple, flushes the table
NLM_F_REQUEST, NLM_F_ACK = 1, 4


def flush_conntrack() -> None:
    """Forget every connection-tracking entry (NAT mappings included) of the current namespace, as
    `conntrack -F` does, without that tool."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        nfgen = struct.pack("=BBH", socket.AF_INET, 0, 0)
        header = struct.pack("=IHHII", 16 + len(nfgen), NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE,
                             NLM_F_REQUEST | NLM_F_ACK, 1, 0)  # fmt: skip
        sock.sendto(header + nfgen, (0, 0))
        reply = sock.recv(4096)
        error = struct.unpack_from("=i", reply, 16)[0]  # struct nlmsgerr after the header
        if error not in (0, -2):  # ENOENT: nothing to flush
            raise OSError(-error, "conntrack flush failed")


class NatHosts(Topology):
    """Hosts A (behind the NAT) and B (outside), each running ipsecd, and the NAT namespace N."""

    def __init__(self, prefix: str = "onat") -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ipsec-tunnel-nat-"))
        self.a = IpsecHost(f"{prefix}A", self.tmp)
        self.b = IpsecHost(f"{prefix}B", self.tmp)
        self.n = Netns(f"{prefix}N")
        self.wan = ""

    def open(self) -> None:
        """Create the three namespaces and their links, N's NAT, start both daemons."""
        for ns in (self.a.ns, self.b.ns, self.n):
            ns.create()
        veth_pair(self.a.ns, self.n, f"{A_PRIVATE}/24", f"{NAT_LAN}/24")
        _, self.wan = veth_pair(self.b.ns, self.n, f"{B_PUBLIC}/24", f"{NAT_PUBLIC}/24")
        self.a.ns.check(["ip", "route", "add", "default", "via", NAT_LAN])
        self.n.check(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.masquerade("masquerade")
        self.a.start()
        self.b.start()

    def masquerade(self, udp: str) -> None:
        """(Re)make N's NAT table: UDP leaves with `udp` ("masquerade", "masquerade to :20000-20010"),
        the rest with a plain masquerade; nothing new is forwarded from outside in."""
        self.n.run(["nft", "delete", "table", "ip", TABLE])
        self.n.check(f"""nft -f - <<'EOF'
table ip {TABLE} {{
    chain outbound {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{self.wan}" meta l4proto udp {udp}
        oifname "{self.wan}" masquerade
    }}
    chain inbound {{
        type filter hook forward priority filter; policy accept;
        iifname "{self.wan}" ct state new drop
    }}
}}
EOF""")

    def flush(self) -> None:
        """The NAT forgets its mappings (a reboot, or their timeout)."""
        with self.n.enter():
            flush_conntrack()

    def close(self) -> None:
        """Stop both daemons, delete the namespaces (N's too) and the work directory."""
        stop_hosts(self.a, self.b)
        self.n.delete()
        shutil.rmtree(self.tmp, ignore_errors=True)
