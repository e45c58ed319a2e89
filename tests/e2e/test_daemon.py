"""ipsecd as a daemon: one instance only, devices created and kept across restarts, state restored, the
seed's receive rules (ipsec0 catch-all, protocol-unreachable), --nextdev and --peer-net."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support import icmp
from tests.support.hosts import TwoHosts
from tests.support.netns import veth_pair

pytestmark = pytest.mark.root


def gcm_pair(h: TwoHosts) -> None:
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}")


def test_second_instance_refuses_to_start(hosts: TwoHosts) -> None:
    a = hosts.a
    proc = a.sh(
        [sys.executable, "-m", "ipsec_tunnel.daemon.main", "-f", "--socket", str(a.socket), "--state-dir",
         str(a.state)],
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"ipsecd: another ipsecd answers on {a.socket}"
    assert a.adm("version").returncode == 0  # the first one is unharmed
    # another socket and pid file, the same state directory: refused by the directory's lock
    other = a.dir / "other.sock"
    proc = a.sh(
        [sys.executable, "-m", "ipsec_tunnel.daemon.main", "-f", "--socket", str(other), "--state-dir",
         str(a.state)],
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert re.fullmatch(rf"ipsecd: state directory {a.state} in use by pid \d+", proc.stderr.strip())
    assert not other.exists()
    assert a.adm("version").returncode == 0


def test_sigterm_keeps_devices_and_restart_restores_them(hosts: TwoHosts) -> None:
    h = hosts
    gcm_pair(h)
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    assert h.a.sh("ip link show ipsec1", check=False).returncode == 0
    assert h.a.stop(signal.SIGTERM) == 0
    assert h.a.sh("ip link show ipsec1", check=False).returncode == 0  # kept for the next ipsecd
    assert h.a.sh("ip link show ipsec0", check=False).returncode == 0
    assert not h.a.socket.exists()
    h.a.start()
    shown = json.loads(h.a.adm("-j", "tunnel", "show").stdout)
    assert [(t["name"], t["local"], t["remote"]) for t in shown] == [("ipsec1", h.a_pub, h.b_pub)]
    sas = json.loads(h.a.adm("-j", "sa", "show").stdout)
    assert sorted((s["src"], s["dst"]) for s in sas) == sorted([(h.a_pub, h.b_pub), (h.b_pub, h.a_pub)])
    assert h.a.sh("ip link show ipsec1", check=False).returncode == 0


def test_remove_devices_on_exit(hosts: TwoHosts) -> None:
    h = hosts
    h.a.stop()
    h.a.start("--remove-devices-on-exit")
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}")
    assert h.a.stop(signal.SIGTERM) == 0
    assert h.a.sh("ip link show ipsec1", check=False).returncode != 0
    assert h.a.sh("ip link show ipsec0", check=False).returncode != 0


def test_no_matching_tunnel_sends_protocol_unreachable(hosts: TwoHosts) -> None:
    h = hosts
    gcm_pair(h)
    # B has a tunnel; A has none, so what B sends reaches A's ipsec0 or nothing.
    h.b.adm("tunnel", "add", "ipsec1", f"--local={h.b_pub}", f"--remote={h.a_pub}")
    h.b.sh("ip addr add 10.0.2.1/32 dev lo && ip link set ipsec1 up && ip route add 10.0.1.0/24 dev ipsec1")
    h.a.sh("ip addr add 10.0.1.1/32 dev lo")
    # ipsec0 down: no matching tunnel, an ICMP protocol-unreachable goes back to B.
    cap = h.b.popen(["tcpdump", "-i", h.links[1], "-n", "-l", "--immediate-mode", "-c", "1", "icmp"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    time.sleep(0.5)
    h.b.sh("ping -c 1 -W 1 10.0.1.1", check=False)
    out, _ = cap.communicate(timeout=10)
    assert "protocol 50 unreachable" in out or "unreachable" in out, out
    st = json.loads(h.a.adm("-j", "stats").stdout)["receive"]
    assert st["no_tunnel"] >= 1 and st["accepted"] == 0


def test_ipsec0_delivers_when_up(hosts: TwoHosts) -> None:
    h = hosts
    gcm_pair(h)
    h.b.adm("tunnel", "add", "ipsec1", f"--local={h.b_pub}", f"--remote={h.a_pub}")
    h.b.sh("ip addr add 10.0.2.1/32 dev lo && ip link set ipsec1 up && ip route add 10.0.1.0/24 dev ipsec1")
    h.a.sh("ip addr add 10.0.1.1/32 dev lo && ip link set ipsec0 up")
    time.sleep(1.5)
    h.b.sh("ping -c 2 -i 0.2 -W 1 10.0.1.1", check=False)
    shown = json.loads(h.a.adm("-j", "stats").stdout)["receive"]
    assert shown["accepted"] >= 2 and shown["no_tunnel"] == 0
    rx = int(h.a.sh("cat /sys/class/net/ipsec0/statistics/rx_packets").stdout)
    assert rx >= 2


def test_peer_net_drops_inner_sources_outside_it(hosts: TwoHosts) -> None:
    h = hosts
    gcm_pair(h)
    _a_in, b_in = h.tunnels()
    h.a.adm("tunnel", "change", "ipsec1", "--peer-net=10.0.2.0/24")
    assert icmp.all_answered(h.a.ns, b_in, h.b.ns, 2, "-i", "0.2", "-W", "2")
    h.a.adm("tunnel", "change", "ipsec1", "--peer-net=10.9.0.0/16")
    out = h.a.sh(f"ping -c 2 -i 0.2 -W 1 {b_in}", check=False).stdout
    assert "100% packet loss" in out
    st = json.loads(h.a.adm("-j", "stats").stdout)["receive"]
    assert st["policy"] >= 2


def test_nextdev_binds_outer_traffic_to_that_interface(hosts: TwoHosts) -> None:
    h = hosts
    gcm_pair(h)
    # A second link between the hosts; --nextdev picks it although the route prefers the first.
    nd0, _ = veth_pair(h.a.ns, h.b.ns, "198.51.100.1/24", "198.51.100.2/24", names=("nd0", "nd1"))
    h.a.sh(f"ip route add {h.b_pub}/32 dev {nd0} metric 100")
    h.a.adm("tunnel", "add", "ipsec1", f"--local={h.a_pub}", f"--remote={h.b_pub}", "--nextdev=nd0")
    h.a.sh("ip addr add 10.0.1.1/32 dev lo && ip link set ipsec1 up && ip route add 10.0.2.0/24 dev ipsec1")
    before = int(h.a.sh("cat /sys/class/net/nd0/statistics/tx_packets").stdout)
    h.a.sh("ping -c 3 -i 0.1 -W 1 -I 10.0.1.1 10.0.2.1", check=False)
    after = int(h.a.sh("cat /sys/class/net/nd0/statistics/tx_packets").stdout)
    assert after - before >= 3, "the ESP packets did not leave through --nextdev"
    shown = json.loads(h.a.adm("-j", "tunnel", "show", "ipsec1").stdout)
    assert shown[0]["nextdev"] == "nd0"


def test_not_running_message(hosts: TwoHosts) -> None:
    h = hosts
    h.a.stop()
    out = h.a.adm("sa", "show", check=False)
    assert out.returncode != 0
    assert "is it running? Start it with 'ipsecd'" in out.stderr
    assert "kernel module" not in out.stderr  # there is none: the daemon is what is missing
    assert "Traceback" not in out.stderr
