"""Tunnel devices across restarts and behind ipsecd's back (issue 12, "Devices and restarts"): a restart,
clean or `kill -9`, keeps every device with its addresses, routes and up state and traffic resumes;
`tunnel del` and `ipsecd --stop` remove devices; `ip link del` and `ip link set ... name` are followed;
IPv6 inside survives a 1280-byte path; a daemon that cannot start says why and exits 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import icmp
from tests.support.hosts import IpsecHost, TwoHosts
from tests.support.netns import netns_available

pytestmark = pytest.mark.root

DAEMON = [sys.executable, "-m", "ipsec_tunnel.daemon.main"]


def _hosts(outer6: bool) -> Iterator[TwoHosts]:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    hosts = TwoHosts(outer6=outer6)
    hosts.a, hosts.b = IpsecHost("odvA", hosts.tmp), IpsecHost("odvB", hosts.tmp)
    with hosts:
        hosts.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={hosts.key('k', 20)}")
        yield hosts


@pytest.fixture
def h() -> Iterator[TwoHosts]:
    """Hosts A and B (namespaces named after this file's helper prefix), ipsecd running, an SA pair."""
    yield from _hosts(False)


@pytest.fixture
def h6() -> Iterator[TwoHosts]:
    """`h` over IPv6 outside."""
    yield from _hosts(True)


def ping(h: TwoHosts, dst: str, *extra: str) -> bool:
    """One ping from A to `dst` (on B) answered; tried again only when B's kernel failed to send the
    reply (tests/support/icmp.py)."""
    return icmp.all_answered(h.a.ns, dst, h.b.ns, 1, "-W", "1", *extra)


def tunnel_names(host: IpsecHost) -> list[str]:
    return [t["name"] for t in json.loads(host.adm("-j", "tunnel", "show").stdout)]


def has_link(host: IpsecHost, name: str) -> bool:
    return host.sh(["ip", "link", "show", name], check=False).returncode == 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_restart_keeps_addresses_routes_and_traffic_resumes_within_2s(h: TwoHosts, sig: int) -> None:
    h.tunnels()
    assert ping(h, "10.0.2.1")
    mtu_before = json.loads(h.a.sh("ip -j link show ipsec1").stdout)[0]["mtu"]
    h.a.stop(sig)
    assert has_link(h.a, "ipsec1"), "the device outlives the daemon"
    h.a.start()  # returns once the control socket exists
    t0 = time.monotonic()
    while not ping(h, "10.0.2.1"):
        assert time.monotonic() - t0 < 2.0, "traffic did not resume within 2 s"
    link = json.loads(h.a.sh("ip -j addr show ipsec1").stdout)[0]
    assert "UP" in link["flags"], link
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.0.1.1"], link
    routes = h.a.sh("ip route show dev ipsec1").stdout
    assert "10.0.2.0/24" in routes, routes
    assert link["mtu"] == mtu_before, (link, mtu_before)
    assert tunnel_names(h.a) == ["ipsec1"]


@pytest.mark.parametrize("extra", [("--no-offload",), ()], ids=["offloads-off", "offloads-on"])
def test_ipv6_inside_resumes_after_kill_9_with_other_offloads(h: TwoHosts, extra: tuple[str, ...]) -> None:
    """Re-attaching sets the flags this ipsecd wants (virtio-net headers or not), whatever the last had."""
    h.tunnels(inner6=True)
    h.a.stop()
    h.a.start(*extra)  # the device made with these offloads ...
    assert ping(h, "2001:db8:2::1")
    h.a.stop(signal.SIGKILL)
    h.a.start(*({"--no-offload"} - set(extra)))  # ... re-attached with the others
    t0 = time.monotonic()
    while not ping(h, "2001:db8:2::1", "-s", "1400"):
        assert time.monotonic() - t0 < 2.0, "IPv6 traffic did not resume within 2 s"
    assert "2001:db8:1::1" in h.a.sh("ip -6 addr show dev ipsec1").stdout


def test_tunnel_del_and_ipsecd_stop_remove_devices(h: TwoHosts) -> None:
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    h.a.adm("tunnel", "del", "ipsec1")
    assert not has_link(h.a, "ipsec1")
    h.a.adm("tunnel", "add", "ipsec2", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    stop = h.a.sh([*DAEMON, "--stop", "--socket", str(h.a.socket)], check=False)
    assert stop.returncode == 0, stop.stderr
    assert h.a.daemon is not None and h.a.daemon.wait(timeout=10) == 0
    assert not has_link(h.a, "ipsec2") and not has_link(h.a, "ipsec0")
    assert "removed ipsec2" in stop.stderr
    h.a.start()  # the tunnel is still stored: it comes back, on a new device
    assert tunnel_names(h.a) == ["ipsec2"] and has_link(h.a, "ipsec2")


def test_start_removes_devices_whose_tunnel_is_no_longer_stored(h: TwoHosts) -> None:
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    h.a.stop(signal.SIGKILL)
    h.a.sh("ip link add odvkeep type veth peer name odvkeep2")  # not ipsecd's: left alone
    h.a.start("--state-dir", str(h.tmp / "fresh"))
    assert not has_link(h.a, "ipsec1") and has_link(h.a, "ipsec0") and has_link(h.a, "odvkeep")


def test_ip_link_del_is_followed_without_spinning(h: TwoHosts) -> None:
    h.tunnels()
    assert h.a.daemon is not None
    h.a.sh("ip link del ipsec1")
    time.sleep(1.0)
    before = cpu_seconds(h.a.daemon.pid)
    time.sleep(1.0)
    assert cpu_seconds(h.a.daemon.pid) - before < 0.5, "ipsecd spins after its device was deleted"
    log = h.a.log.read_text()
    assert log.count("ipsec1 was deleted outside ipsecd") == 1
    assert "File descriptor in bad state" not in log
    assert tunnel_names(h.a) == []
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    assert has_link(h.a, "ipsec1") and tunnel_names(h.a) == ["ipsec1"]
    h.a.stop()
    h.a.start()
    assert tunnel_names(h.a) == ["ipsec1"]


def test_a_renamed_device_keeps_its_tunnel_under_the_new_name(h: TwoHosts) -> None:
    h.tunnels()
    h.a.sh("ip link set ipsec1 down && ip link set ipsec1 name odvx && ip link set odvx up")
    deadline = time.monotonic() + 5
    while tunnel_names(h.a) != ["odvx"]:
        assert time.monotonic() < deadline, tunnel_names(h.a)
        time.sleep(0.1)
    h.a.sh("ip route replace 10.0.2.0/24 dev odvx")
    assert ping(h, "10.0.2.1")
    h.a.stop(signal.SIGKILL)
    h.a.start()
    assert tunnel_names(h.a) == ["odvx"]
    assert not has_link(h.a, "ipsec1")
    t0 = time.monotonic()
    while not ping(h, "10.0.2.1"):
        assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("outer6", [False, True], ids=["ipv4-outside", "ipv6-outside"])
def test_ipv6_inside_survives_a_1280_byte_path(request: pytest.FixtureRequest, outer6: bool) -> None:
    h: TwoHosts = request.getfixturevalue("h6" if outer6 else "h")
    h.tunnels(inner6=True)
    assert ping(h, "2001:db8:2::1")
    h.a.sh(f"ip link set {h.links[0]} mtu 1280")
    h.b.sh(f"ip link set {h.links[1]} mtu 1280")
    time.sleep(2.5)  # ipsecd looks at the path MTU once a second
    shown = json.loads(h.a.adm("-j", "tunnel", "show").stdout)[0]
    assert shown["mtu"] == 1280
    assert json.loads(h.a.sh("ip -j link show ipsec1").stdout)[0]["mtu"] == 1280
    assert "2001:db8:1::1" in h.a.sh("ip -6 addr show dev ipsec1").stdout
    assert ping(h, "2001:db8:2::1", "-s", "1232", "-M", "do")  # 1280 bytes, the outer packet fragmented


def second_ipsecd(host: IpsecHost, tmp: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.sh([*DAEMON, "--socket", f"{tmp}/s.sock", "--state-dir", f"{tmp}/state",
                    "--pidfile", f"{tmp}/d.pid", *extra],
                   check=False, timeout=20)  # fmt: skip


@pytest.mark.parametrize("mode", [["-f"], []], ids=["foreground", "daemon"])
def test_a_second_ipsecd_in_the_namespace_says_why_and_exits_1(h: TwoHosts, mode: list[str]) -> None:
    proc = second_ipsecd(h.a, str(h.tmp / "second"), *mode)
    assert proc.returncode == 1
    assert "ipsec0 already exists (another ipsecd in this network namespace?)" in proc.stderr
    assert tunnel_names(h.a) == [] and h.a.adm("version").returncode == 0  # the first one is unharmed


def test_daemon_mode_exits_0_once_ready(h: TwoHosts) -> None:
    h.a.stop(signal.SIGKILL)
    tmp = str(h.tmp / "bg")
    proc = second_ipsecd(h.a, tmp)
    try:
        assert proc.returncode == 0, proc.stderr
        assert os.path.exists(f"{tmp}/s.sock"), "the parent exited before the daemon was ready"
        assert h.a.adm("--socket", f"{tmp}/s.sock", "version", check=False).returncode == 0
        if not os.path.exists("/dev/log"):  # no syslog here: the log goes beside the control socket
            assert "no syslog at /dev/log: logging to" in proc.stderr
            assert "ready" in Path(f"{tmp}/ipsecd.log").read_text()
    finally:
        pid = Path(f"{tmp}/d.pid").read_text().strip() if Path(f"{tmp}/d.pid").exists() else ""
        h.a.sh([*DAEMON, "--stop", "--socket", f"{tmp}/s.sock", "--pidfile", f"{tmp}/d.pid"], check=False)
        if pid and Path(f"/proc/{pid}").exists():  # --stop failed: never leave the daemon behind
            os.kill(int(pid), signal.SIGKILL)
