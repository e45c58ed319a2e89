"""Interoperability with the Linux kernel's own IPsec stack (issue 4).

Host A is ipsecd, configured only with `ipsecadm`, in the UML guest's host-side namespace (192.0.2.1 on the
TAP, 2001:db8::1); host B is the guest's Linux 6.1 kernel (192.0.2.2, 2001:db8::2), configured with
`ip xfrm` lines that tests/kernel/xfrm.py derives from the same `ipsecadm sa add` options and key files.
Inner networks: A 10.0.1.1 on ipsec1 (2001:db8:1::1), B 10.0.2.1 on a dummy device (2001:db8:2::1).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support import ROOT, icmp
from tests.support.hosts import IpsecHost
from tests.support.uml import UmlPeer

from . import xfrm

pytestmark = [pytest.mark.kernel, pytest.mark.root]

# The guest runs the host's programs over hostfs; Debian's python3 starts fastest there.
GUEST_PYTHON = (
    "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)
)
GUEST_TRANSFER = f"env PYTHONPATH={ROOT} {GUEST_PYTHON} -m tests.support.transfer"
TRANSFER_BYTES = 2 << 20  # A -> B; B -> A carries half as much
REQID = 1
SPI_AB, SPI_BA, SPI_DUPLEX = 0x2001, 0x2002, 0x3000
_ETH_P_ALL = 0x0003

# family: (A's inner address, A's inner net, B's inner address, B's inner net, prefix length)
INNER = {
    4: ("10.0.1.1", "10.0.1.0/24", "10.0.2.1", "10.0.2.0/24", 24),
    6: ("2001:db8:1::1", "2001:db8:1::/64", "2001:db8:2::1", "2001:db8:2::/64", 64),
}


@dataclass(frozen=True)
class Suite:
    """An algorithm suite as ipsecadm options; key files of the given sizes are made per SA."""

    name: str
    cipher: str | None
    cipher_key: int = 0  # bytes, salt included
    digest: str | None = None
    digest_key: int = 0

    def args(self, keydir: Path, tag: str) -> list[str]:
        """`--cipher=... --cipher-keyfile=...` etc., writing fresh random key files (mode 0600)."""
        out = []
        for kind, name, size in (
            ("cipher", self.cipher, self.cipher_key),
            ("digest", self.digest, self.digest_key),
        ):
            if name is None:
                continue
            path = keydir / f"{tag}-{kind}.key"
            path.write_bytes(os.urandom(size))
            path.chmod(0o600)
            out += [f"--{kind}={name}", f"--{kind}-keyfile={path}"]
        return out


SUITES = {
    s.name: s
    for s in (
        Suite("aes-gcm-128", "aes-gcm", 20),
        Suite("aes-gcm-256", "aes-gcm", 36),
        Suite("aes-gcm-128-icv8", "aes-gcm-8", 20),
        Suite("aes-gcm-256-icv12", "aes-gcm-12", 36),
        Suite("chacha20-poly1305", "chacha20-poly1305", 36),
        Suite("aes-cbc-hmac-sha256", "aes-cbc", 32, "sha256", 32),
        Suite("aes-cbc-hmac-sha1", "aes-cbc", 16, "sha1", 20),
        Suite("3des-cbc-hmac-sha1", "des_ede3-cbc", 24, "sha1", 20),
        Suite("3des-cbc-seed", "des_ede3-cbc", 24),  # the seed's SA: encryption only, no ICV
        Suite("aes-cbc-no-digest", "aes-cbc", 16),
        Suite("aes-ctr-hmac-sha256", "aes-ctr", 20, "sha256", 32),
        Suite("null-hmac-sha256", None, 0, "sha256", 32),
    )
}


@dataclass
class Link:
    """A tunnel between ipsecd (A) and the guest kernel (B) and everything needed to check it."""

    peer: UmlPeer
    host: IpsecHost
    keydir: Path
    outer: int = 4
    inner: int = 4
    a: str = ""
    b: str = ""
    sa_argv: list[list[str]] = field(default_factory=list)  # each `ipsecadm sa add` argument list
    kernel_script: list[str] = field(default_factory=list)
    states: list[tuple[str, str, int]] = field(default_factory=list)  # (src, dst, spi) per SA

    @property
    def a_in(self) -> str:
        return INNER[self.inner][0]

    @property
    def b_in(self) -> str:
        return INNER[self.inner][2]

    # -- configuration ----------------------------------------------------------------------------------

    def sa_options(
        self, suite: Suite, *, esn: bool, window: int | None, encap: bool, duplex: bool
    ) -> list[list[str]]:
        extra = [f"--replay-window={window}"] if window is not None else []
        extra += ["--esn"] if esn else []
        extra += ["--encap=udp"] if encap else []
        if duplex:
            keys = suite.args(self.keydir, "dx")
            return [
                [f"--spi={SPI_DUPLEX:#x}", f"--dst={self.b}", f"--src={self.a}", *keys, *extra, "--duplex"]
            ]
        ab, ba = suite.args(self.keydir, "ab"), suite.args(self.keydir, "ba")
        return [
            [f"--spi={SPI_AB:#x}", f"--dst={self.b}", f"--src={self.a}", *ab, *extra],
            [f"--spi={SPI_BA:#x}", f"--dst={self.a}", f"--src={self.b}", *ba, *extra],
        ]

    def configure_ipsecd(self) -> None:
        """`ipsecadm sa add` for each SA and `ipsecadm tunnel add ipsec1`."""
        for argv in self.sa_argv:
            self.host.adm("sa", "add", *argv)
        self.host.adm("tunnel", "add", "ipsec1", f"--local={self.a}", f"--remote={self.b}")
        self.inner_up()

    def inner_up(self) -> None:
        """A's inner address on ipsec1 and the route to B's inner network through it."""
        a_in, _, _, b_net, plen = INNER[self.inner]
        nodad = " nodad" if self.inner == 6 else ""
        self.host.sh(
            f"ip addr add {a_in}/{plen} dev ipsec1{nodad} && ip link set ipsec1 up && "
            f"ip -{self.inner} route replace {b_net} dev ipsec1"
        )

    def kernel_lines(self, extra: dict[str, str] | None = None) -> list[str]:
        """The guest's `ip xfrm` states and policies for `sa_argv`; `extra` words by direction ab/ba."""
        _, a_net, _, b_net, _ = INNER[self.inner]
        lines = []
        self.states = []
        for argv in self.sa_argv:
            first = xfrm.SaOptions.parse(argv)
            for o in (first, first.reversed()) if first.duplex else (first,):
                direction = "ab" if o.src == self.a else "ba"
                nets = (a_net, b_net) if direction == "ab" else (b_net, a_net)
                sel = nets if self.inner != self.outer else None  # the inner family, when it differs
                lines.append(xfrm.state_add(o, reqid=REQID, sel=sel, extra=(extra or {}).get(direction, "")))
                self.states.append((o.src, o.dst, o.spi))
        lines.append(xfrm.policy_add(b_net, a_net, "out", self.b, self.a, REQID))
        lines.append(xfrm.policy_add(a_net, b_net, "in", self.a, self.b, REQID))
        return lines

    def configure_kernel(self, extra: dict[str, str] | None = None) -> None:
        """B's inner address, its route towards A's inner network, the states and the policies."""
        _, a_net, b_in, _, plen = INNER[self.inner]
        via = self.peer.host_ip if self.inner == 4 else self.peer.host_ip6
        self.peer.add_inner_address(f"{b_in}/{plen}")
        self.kernel_script = [
            f"ip -{self.inner} route replace {a_net} via {via} dev eth0 src {b_in}",
            *self.kernel_lines(extra),
        ]
        self.peer.check("set -e\n" + "\n".join(self.kernel_script))

    # -- traffic ----------------------------------------------------------------------------------------

    def ping_both(self, count: int = 3) -> None:
        """Echo requests A -> B (from the namespace) and B -> A (from the guest); all answered."""
        assert self.peer.ping(self.b_in, count=count) == count, self.diagnostics()
        self.guest_ping(count)

    def guest_ping(self, count: int, size: int = 56) -> None:
        """`ping` from B to A, every request answered. A's echo replies come from A's kernel, whose replies
        other namespaces of the machine can make fail (tests/support/icmp.py): only such an attempt is
        tried again."""
        cmd = f"ping -{self.inner} -c {count} -i 0.2 -W 1 -s {size} -I {self.b_in} {self.a_in}"
        outs: list[str] = []

        def ping() -> bool:
            outs.append(self.peer.run(cmd, timeout=30)[1])
            return f" {count} received" in outs[-1]

        if not icmp.answered(ping, lambda: icmp.counters(self.host.ns, self.inner)):
            raise AssertionError(outs[-1] + self.diagnostics())

    def transfer_to_guest(self, nbytes: int = TRANSFER_BYTES, port: int = 5001) -> None:
        """TCP A -> B: a receiver in the guest, the sender in A's namespace; same size and SHA-256."""
        share = self.peer.workdir / "share" if self.peer.workdir else Path("/nonexistent")
        out = share / f"recv-{uuid.uuid4().hex[:8]}.out"
        bind = "::" if self.inner == 6 else "0.0.0.0"
        self.peer.check(f"setsid {GUEST_TRANSFER} recv {port} {bind} > {out} 2>&1 < /dev/null &")
        try:
            wait_for(lambda: "listening" in read(out), 10, f"guest receiver: {read(out)}")
            sent = self.host.sh([sys.executable, "-m", "tests.support.transfer", "send", self.b_in,
                                 str(port), str(nbytes)], timeout=120).stdout.split()  # fmt: skip
            wait_for(lambda: len(read(out).split()) >= 3, 20, f"guest receiver: {read(out)}")
            assert read(out).split()[1:3] == sent, self.diagnostics()
            assert int(sent[0]) == nbytes
        finally:
            self.peer.run(f"pkill -f 'transfer recv {port}' || true")
            out.unlink(missing_ok=True)

    def transfer_from_guest(self, nbytes: int = TRANSFER_BYTES // 2, port: int = 5002) -> None:
        """TCP B -> A: the receiver in A's namespace, the sender in the guest."""
        bind = "::" if self.inner == 6 else "0.0.0.0"
        recv = self.host.popen(
            [sys.executable, "-m", "tests.support.transfer", "recv", str(port), bind],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert recv.stdout is not None
            assert recv.stdout.readline().strip() == "listening"
            sent = self.peer.check(f"{GUEST_TRANSFER} send {self.a_in} {port} {nbytes}", timeout=120).split()
            got = recv.communicate(timeout=20)[0].split()
            assert got == sent, self.diagnostics()
            assert int(sent[0]) == nbytes
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()

    # -- counters ---------------------------------------------------------------------------------------

    def kernel_states(self) -> dict[tuple[str, str, int], xfrm.StateStats]:
        return xfrm.parse_state_stats(self.peer.xfrm_state_stats())

    def ipsecd_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.host.adm("-j", "stats").stdout)
        return result

    def ipsecd_sas(self) -> dict[tuple[str, str, int], dict[str, Any]]:
        sas = json.loads(self.host.adm("-j", "sa", "show", "-s").stdout)
        return {(sa["src"], sa["dst"], sa["spi"]): sa for sa in sas}

    def snapshot(self) -> Snapshot:
        return Snapshot(self.peer.xfrm_stat(), self.ipsecd_stats())

    def assert_no_errors(self, before: Snapshot) -> None:
        """Nothing dropped anywhere since `before`, and every SA carried packets both ways."""
        after = self.snapshot()
        kernel = {
            k: v - before.kernel.get(k, 0) for k, v in after.kernel.items() if v != before.kernel.get(k, 0)
        }
        assert kernel == {}, f"kernel /proc/net/xfrm_stat moved: {kernel}"
        states = self.kernel_states()
        assert sorted(states) == sorted(self.states)
        for st in states.values():
            assert (st.replay_window, st.replay, st.integrity_failed) == (0, 0, 0), st
            assert st.packets > 0, st
        drops = counter_delta(before.ipsecd, after.ipsecd)
        assert drops == {}, f"ipsecd counters moved: {drops}"
        for key, sa in self.ipsecd_sas().items():
            if key in states:
                assert sa["stats"]["drops"] == {}, sa
                assert sa["stats"]["packets"] > 0, sa

    def diagnostics(self) -> str:
        try:
            return (
                f"\n--- guest ip -s xfrm state\n{self.peer.run('ip -s xfrm state; ip xfrm policy')[1]}"
                f"\n--- xfrm_stat {self.peer.xfrm_stat()}\n--- ipsecd stats {self.ipsecd_stats()}"
                f"\n--- ipsecadm sa show -s\n{self.host.adm('sa', 'show', '-s', check=False).stdout}"
                f"\n--- ipsecd log (tail)\n{''.join(self.host.log.read_text().splitlines(True)[-15:])}"
                # where a packet stopped: each side's interface counters and neighbour entries
                f"\n--- guest ip -s link; ip neigh\n{self.peer.run('ip -s link; ip neigh')[1]}"
                f"\n--- host ip -s link; ip neigh\n{self.host.sh('ip -s link; ip neigh', check=False).stdout}"
            )
        except Exception as exc:  # diagnostics must not hide the failure
            return f"(no diagnostics: {exc})"


@dataclass
class Snapshot:
    kernel: dict[str, int]
    ipsecd: dict[str, Any]


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """ipsecd drop counters (receive and send, not `accepted`, nor the AQM's drops: CoDel's signal to a
    TCP sender, by design) that changed."""
    out = {}
    for side in ("receive", "send"):
        for name, value in after[side].items():
            if name not in ("accepted", "aqm") and value != before[side].get(name, 0):
                out[f"{side}.{name}"] = value - before[side].get(name, 0)
    return out


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ fixtures


class Ends(NamedTuple):
    """Both ends of a test: the guest kernel (B), ipsecd (A) and a directory for key files."""

    peer: UmlPeer
    host: IpsecHost
    keydir: Path


@pytest.fixture
def ends(uml_clean: UmlPeer, uml_ipsecd: IpsecHost, tmp_path: Path) -> Iterator[Ends]:
    """The guest with no XFRM state and ipsecd with no SA or tunnel, before and after the test."""
    host = uml_ipsecd
    if host.daemon is None or host.daemon.poll() is not None:
        host.start()
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    try:
        yield Ends(uml_clean, host, keydir)
    finally:
        if host.daemon is None or host.daemon.poll() is not None:
            host.start()
        host.adm("tunnel", "del", "--all", check=False)
        host.adm("sa", "del", "--all", check=False)
        uml_clean.run(
            "ip link del inner0 2>/dev/null; ip route del 10.0.1.0/24 2>/dev/null;"
            " ip -6 route del 2001:db8:1::/64 2>/dev/null; true"
        )


@pytest.fixture(scope="module")
def guest_encap_sockets(uml_peer: UmlPeer) -> Iterator[None]:
    """UDP sockets on port 4500 in the guest with UDP_ENCAP_ESPINUDP set, as an IKE daemon keeps them: the
    kernel decapsulates ESP-in-UDP only on such a socket."""
    share = uml_peer.workdir / "share" if uml_peer.workdir else Path("/nonexistent")
    log = share / "encap.log"
    code = (
        "import socket, signal\n"
        "socks = []\n"
        "for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):\n"
        "    s = socket.socket(fam, socket.SOCK_DGRAM)\n"
        "    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "    s.setsockopt(socket.IPPROTO_UDP, 100, 2)  # UDP_ENCAP, UDP_ENCAP_ESPINUDP\n"
        "    s.bind((addr, 4500)); socks.append(s)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    script = share / "encap.py"
    script.write_text(code)
    pid = uml_peer.check(f"setsid {GUEST_PYTHON} {script} > {log} 2>&1 < /dev/null & echo $!").strip()
    wait_for(lambda: "ready" in read(log), 10, f"the guest's encapsulation sockets: {read(log)}")
    yield
    uml_peer.run(f"kill {pid}")


def connect(
    ends: Ends,
    suite: Suite,
    *,
    outer: int = 4,
    inner: int = 4,
    esn: bool = False,
    window: int | None = None,
    encap: bool = False,
    duplex: bool = False,
) -> Link:
    """Configure both ends and return the link."""
    peer, host, keydir = ends
    link = Link(peer, host, keydir, outer=outer, inner=inner)
    link.a, link.b = (
        (peer.host_ip, peer.guest_ip) if outer == 4 else (peer.host_ip6 or "", peer.guest_ip6 or "")
    )
    link.sa_argv = link.sa_options(suite, esn=esn, window=window, encap=encap, duplex=duplex)
    link.configure_ipsecd()
    link.configure_kernel()
    return link


# ------------------------------------------------------------------------------------------------ packets


def esp_offset(packet: bytes) -> tuple[int, bool]:
    """(offset of the ESP header, UDP-encapsulated?) in an outer IPv4/IPv6 packet."""
    if packet[0] >> 4 == 4:
        proto, off = packet[9], (packet[0] & 0xF) * 4
    else:
        proto, off = packet[6], 40
    return (off + 8, True) if proto == socket.IPPROTO_UDP else (off, False)


def capture_sent(
    peer: UmlPeer, trigger: Callable[[], object], count: int = 1, timeout: float = 3.0
) -> list[bytes]:
    """Outer ESP packets (raw or in UDP) that A's namespace sends to the guest while `trigger()` runs."""
    return peer.capture_esp(trigger, count, timeout, to_guest=True)


def inject(peer: UmlPeer, packet: bytes) -> None:
    """Send a whole outer IPv4 packet, as captured, from A's namespace (to the guest or to ipsecd)."""
    with peer.netns_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))


def flipped(packet: bytes) -> bytes:
    """The packet with one bit flipped in the middle of its ESP payload (past SPI and sequence number)."""
    start, _ = esp_offset(packet)
    pos = start + 8 + (len(packet) - start - 8) // 2
    return packet[:pos] + bytes([packet[pos] ^ 0x10]) + packet[pos + 1 :]


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("suite", list(SUITES))
def test_suite_passes_traffic_both_ways(ends: Ends, suite: str) -> None:
    """Each algorithm suite: two SAs with their own SPIs and keys, ping both ways, TCP both ways."""
    link = connect(ends, SUITES[suite])
    before = link.snapshot()
    link.ping_both()
    link.transfer_to_guest()
    link.transfer_from_guest()
    link.assert_no_errors(before)


@pytest.mark.parametrize(("suite", "window"), [("aes-gcm-128", 128), ("aes-cbc-hmac-sha256", 1024)])
def test_esn_with_wide_replay_window(ends: Ends, suite: str, window: int) -> None:
    """64-bit sequence numbers (`--esn` / `flag esn`) and windows wider than the kernel's legacy 32."""
    link = connect(ends, SUITES[suite], esn=True, window=window)
    listing = link.peer.check("ip xfrm state")
    assert listing.count("flag esn") == 2
    assert listing.count(f"replay_window {window},") == 2
    assert all(sa["esn"] and sa["replay_window"] == window for sa in link.ipsecd_sas().values())
    before = link.snapshot()
    link.ping_both()
    link.transfer_to_guest()
    link.assert_no_errors(before)


@pytest.mark.parametrize(
    ("suite", "outer", "esn"),
    [("aes-gcm-128", 4, False), ("aes-cbc-hmac-sha1", 4, True), ("chacha20-poly1305", 6, False)],
    ids=["aes-gcm-128-4", "aes-cbc-hmac-sha1-esn-4", "chacha20-poly1305-6"],
)
def test_esp_in_udp(ends: Ends, guest_encap_sockets: None, suite: str, outer: int, esn: bool) -> None:
    """RFC 3948 ESP-in-UDP: `--encap=udp` on ours, `encap espinudp 4500 4500 0.0.0.0` on the kernel's."""
    link = connect(ends, SUITES[suite], outer=outer, esn=esn, window=256 if esn else None, encap=True)
    before = link.snapshot()
    ours = capture_sent(link.peer, lambda: link.ping_both(1))
    theirs = link.peer.capture_esp(lambda: link.ping_both(1))
    for pkt in (*ours, *theirs):
        start, udp = esp_offset(pkt)
        assert udp and struct.unpack("!HH", pkt[start - 8 : start - 4]) == (4500, 4500)
    assert ours and theirs
    link.transfer_to_guest()
    link.assert_no_errors(before)


@pytest.mark.parametrize(
    ("suite", "outer", "inner"),
    [("aes-gcm-128", 4, 6), ("aes-cbc-hmac-sha256", 6, 6), ("chacha20-poly1305", 6, 4)],
    ids=["6in4-aes-gcm-128", "6in6-aes-cbc-hmac-sha256", "4in6-chacha20-poly1305"],
)
def test_ipv6(ends: Ends, suite: str, outer: int, inner: int) -> None:
    """IPv6 inside IPv4 (the kernel state carries `sel`), inside IPv6, and IPv4 inside IPv6."""
    link = connect(ends, SUITES[suite], outer=outer, inner=inner)
    assert ("sel src" in " ".join(link.kernel_script)) == (inner != outer)
    before = link.snapshot()
    link.ping_both()
    link.transfer_to_guest()
    link.assert_no_errors(before)


def test_duplex_sa_with_the_kernel(ends: Ends) -> None:
    """`--duplex` (one SPI and key for both directions) is two kernel states with the same SPI and key.
    ipsecd's counter IVs carry a direction bit; the kernel reads the IV from the packet and does not care."""
    link = connect(ends, SUITES["aes-gcm-128"], duplex=True)
    states = link.peer.check("ip xfrm state")
    assert states.count(f"spi {SPI_DUPLEX:#010x}") == 2
    before = link.snapshot()
    (pkt,) = capture_sent(link.peer, lambda: link.ping_both(1))
    start, _ = esp_offset(pkt)
    spi, seq, iv = struct.unpack("!IIQ", pkt[start : start + 16])
    assert (spi, iv) == (SPI_DUPLEX, seq)  # the IV is the sequence number; direction bit 0: 192.0.2.1 < .2
    link.ping_both()
    link.transfer_to_guest()
    link.transfer_from_guest()
    link.assert_no_errors(before)


def test_kernel_tfc_padding_and_fragments(ends: Ends) -> None:
    """The kernel pads its ESP payloads for traffic flow confidentiality (`tfcpad`, RFC 4303 §2.4), which
    ipsecd strips by the inner length; inner packets larger than the path are fragmented (by A's stack
    before ipsecd, by the kernel after) and reassembled at the far end."""
    peer, host, keydir = ends
    link = Link(peer, host, keydir, a=peer.host_ip, b=peer.guest_ip)
    link.sa_argv = link.sa_options(SUITES["aes-gcm-128"], esn=False, window=None, encap=False, duplex=False)
    link.configure_ipsecd()
    link.configure_kernel({"ba": "tfcpad 1000"})
    before = link.snapshot()
    link.ping_both()
    host.sh(f"ping -c 2 -i 0.2 -W 2 -s 4000 {link.b_in}")
    link.guest_ping(2, size=4000)
    (pkt,) = peer.capture_esp(lambda: peer.run(f"ping -c 1 -W 2 -I {link.b_in} {link.a_in}"))
    assert len(pkt) >= 20 + 8 + 8 + 1000 + 16  # an 84-byte echo request padded to 1000
    link.transfer_from_guest()
    link.assert_no_errors(before)


def wait_counter(get: Callable[[], int], want: int, what: str, timeout: float = 5.0) -> None:
    wait_for(lambda: get() >= want, timeout, f"{what} to reach {want} (is {get()})")


@pytest.mark.parametrize("suite", ["aes-gcm-128", "aes-cbc-hmac-sha256"])
def test_kernel_rejects_replayed_and_tampered_packets(ends: Ends, suite: str) -> None:
    """ESP that ipsecd sent, held back from the guest, then injected: a bit-flipped copy fails the kernel's
    integrity check, the original is accepted once, and its replay is refused."""
    link = connect(ends, SUITES[suite], esn=True, window=1024)
    peer, host = link.peer, link.host
    link.ping_both(1)
    key = (link.a, link.b, SPI_AB)

    def state() -> xfrm.StateStats:
        return link.kernel_states()[key]

    stat0, st0 = peer.xfrm_stat(), state()
    # A wrong MAC for the guest: frames leave the TAP (and are captured) but the guest's eth0 ignores them.
    host.sh(f"ip neigh replace {peer.guest_ip} lladdr 02:00:00:00:00:01 dev {peer.tap} nud permanent")
    try:
        packets = capture_sent(peer, lambda: peer.ping(link.b_in, count=1, timeout=1.0))
    finally:
        host.sh(f"ip neigh del {peer.guest_ip} dev {peer.tap}")
    assert len(packets) == 1
    original = packets[0]
    assert state() == st0  # the held-back packet never arrived
    inject(peer, flipped(original))
    wait_counter(
        lambda: peer.xfrm_stat()["XfrmInStateProtoError"],
        stat0["XfrmInStateProtoError"] + 1,
        "XfrmInStateProtoError",
    )
    inject(peer, original)
    wait_counter(lambda: state().packets, st0.packets + 1, "packets accepted")
    inject(peer, original)
    wait_counter(
        lambda: peer.xfrm_stat()["XfrmInStateSeqError"],
        stat0["XfrmInStateSeqError"] + 1,
        "XfrmInStateSeqError",
    )
    time.sleep(0.2)
    st, stat = state(), peer.xfrm_stat()
    assert (st.packets - st0.packets, st.integrity_failed, st.replay, st.replay_window) == (1, 1, 1, 0), st
    moved = {k: v - stat0[k] for k, v in stat.items() if v != stat0[k]}
    assert moved == {"XfrmInStateProtoError": 1, "XfrmInStateSeqError": 1}


@pytest.mark.parametrize("suite", ["aes-gcm-128", "aes-cbc-hmac-sha256"])
def test_ipsecd_rejects_replayed_and_tampered_packets(ends: Ends, suite: str) -> None:
    """ESP that the kernel sent, held back from ipsecd, then injected: ipsecd counts the bit-flipped copy as
    authentication failed, accepts the original once and counts its replay."""
    link = connect(ends, SUITES[suite], esn=True, window=1024)
    peer = link.peer
    link.ping_both(1)
    key = (link.b, link.a, SPI_BA)
    stats0, sa0 = link.ipsecd_stats()["receive"], link.ipsecd_sas()[key]["stats"]
    # A wrong MAC for A in the guest: the frames reach the TAP (and are captured), A's stack ignores them.
    peer.check(f"ip neigh replace {peer.host_ip} lladdr 02:00:00:00:00:02 dev eth0 nud permanent")
    try:
        packets = peer.capture_esp(
            lambda: peer.run(f"ping -c 1 -W 1 -I {link.b_in} {link.a_in}"), timeout=3.0
        )
    finally:
        peer.check(f"ip neigh del {peer.host_ip} dev eth0")
    assert len(packets) == 1
    original = packets[0]
    assert link.ipsecd_sas()[key]["stats"] == sa0  # the held-back packet never reached ipsecd

    def received(name: str) -> Callable[[], int]:
        return lambda: int(link.ipsecd_stats()["receive"][name])

    inject(peer, flipped(original))
    wait_counter(received("auth_failed"), stats0["auth_failed"] + 1, "ipsecd auth_failed")
    inject(peer, original)
    wait_counter(received("accepted"), stats0["accepted"] + 1, "ipsecd accepted")
    inject(peer, original)
    wait_counter(received("replayed"), stats0["replayed"] + 1, "ipsecd replayed")
    time.sleep(0.2)
    stats, sa = link.ipsecd_stats()["receive"], link.ipsecd_sas()[key]["stats"]
    moved = {k: v - stats0[k] for k, v in stats.items() if v != stats0[k]}
    assert moved == {"accepted": 1, "auth_failed": 1, "replayed": 1}
    assert sa["packets"] == sa0["packets"] + 1
    assert sa["drops"] == {"auth_failed": 1, "replayed": 1}


SEQ_OUT_START = 0xFFFF_FFC0  # ipsecd's last sent on A -> B: 64 packets before 2^32
KERNEL_SEQ_IN = 0xFFFF_FFB0  # the kernel's highest received on A -> B
SEQ_IN_START = 0xFFFF_FF80  # ipsecd's highest received on B -> A
KERNEL_SEQ_OUT = 0xFFFF_FFC0  # the kernel's last sent on B -> A


def _near_2_32(ends: Ends, suite: str, seq_out: int = SEQ_OUT_START) -> Link:
    """An ESN link whose senders start just before 2^32: ipsecd's restored position `seq_out` (edited into
    its state database while stopped; a clean stop records exact positions) and the kernel's
    `replay-oseq`; both receivers expect them (`replay-seq`, ipsecd's stored `seq_in`)."""
    peer, host, keydir = ends
    link = Link(peer, host, keydir, a=peer.host_ip, b=peer.guest_ip)
    link.sa_argv = link.sa_options(SUITES[suite], esn=True, window=1024, encap=False, duplex=False)
    for argv in link.sa_argv:
        host.adm("sa", "add", *argv)
    host.adm("tunnel", "add", "ipsec1", f"--local={link.a}", f"--remote={link.b}")
    assert host.stop() == 0
    with sqlite3.connect(host.state / "state.db") as db:
        assert db.execute("SELECT count(*) FROM sa WHERE clean = 1").fetchone() == (2,)
        db.execute("UPDATE sa SET seq_out = ? WHERE dst = ? AND spi = ?", (str(seq_out), link.b, SPI_AB))
        db.execute("UPDATE sa SET seq_in = ?, bitmap = '' WHERE dst = ? AND spi = ?",
                   (str(SEQ_IN_START), link.a, SPI_BA))  # fmt: skip
    db.close()
    host.start()
    link.inner_up()
    sas = link.ipsecd_sas()
    assert sas[link.a, link.b, SPI_AB]["stats"]["seq_out"] == seq_out
    assert sas[link.b, link.a, SPI_BA]["stats"]["replay_top"] == SEQ_IN_START
    link.configure_kernel(
        {
            "ab": f"replay-seq {min(KERNEL_SEQ_IN, seq_out - 16):#x} replay-seq-hi 0",
            "ba": f"replay-oseq {KERNEL_SEQ_OUT:#x} replay-oseq-hi 0",
        }
    )
    return link


@pytest.mark.parametrize("suite", ["aes-gcm-128", "aes-cbc-hmac-sha256"])
def test_esn_sequence_numbers_cross_2_32(ends: Ends, suite: str) -> None:
    """Both senders start 64 packets before 2^32 and send 100 (`_near_2_32`). Nothing is dropped."""
    link = _near_2_32(ends, suite)
    before = link.snapshot()
    assert link.peer.ping(link.b_in, count=100, timeout=30) == 100, link.diagnostics()
    link.assert_no_errors(before)
    states = link.kernel_states()
    inbound, outbound = states[link.a, link.b, SPI_AB], states[link.b, link.a, SPI_BA]
    assert inbound.seq == SEQ_OUT_START + 100 > 1 << 32
    assert outbound.oseq == KERNEL_SEQ_OUT + 100 > 1 << 32
    assert inbound.packets == outbound.packets == 100
    sas = link.ipsecd_sas()
    assert sas[link.a, link.b, SPI_AB]["stats"]["seq_out"] == SEQ_OUT_START + 100
    assert sas[link.b, link.a, SPI_BA]["stats"]["replay_top"] == KERNEL_SEQ_OUT + 100


@pytest.mark.parametrize("suite", ["aes-gcm-128", "aes-cbc-hmac-sha256"])
def test_esn_tcp_crosses_2_32_in_super_packets(ends: Ends, suite: str) -> None:
    """A TCP transfer A -> B from 8 packets before 2^32: ipsecd seals the TCP super-packets its device
    hands it as rows (each packet's ICV or AAD over its own high 32 bits, RFC 4303 §2.2.1, RFC 4106 §5);
    the kernel accepts every packet, below 2^32 and after it, and the transfer arrives whole. (Rows with
    wrong high bits fail this test and test_esn_with_wide_replay_window; a super-packet across 2^32 itself
    is tests/core/test_esn_seal_rows.py's.)"""
    start = (1 << 32) - 8
    link = _near_2_32(ends, suite, seq_out=start)
    before = link.snapshot()
    link.transfer_to_guest()
    link.assert_no_errors(before)
    inbound = link.kernel_states()[link.a, link.b, SPI_AB]
    assert inbound.seq > (1 << 32) + 100 and inbound.packets > 100
    assert link.ipsecd_sas()[link.a, link.b, SPI_AB]["stats"]["seq_out"] == inbound.seq
