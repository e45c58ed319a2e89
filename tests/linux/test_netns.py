"""The namespace helper: unique names, commands inside, thread switching, cleanup even on errors."""

from __future__ import annotations

import os
import subprocess

import pytest

from ipsec_tunnel.linux import link
from tests.support.netns import Netns, in_netns, netns_available, veth_pair

pytestmark = pytest.mark.root


def _require() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"kernel test skipped: {reason}")


def _listed() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _current_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_unique_names_and_cleanup() -> None:
    _require()
    with Netns("iptx") as one, Netns("iptx") as two:
        assert one.name != two.name
        assert one.name.startswith(f"iptx-{os.getpid()}-")
        assert {one.name, two.name} <= _listed()
        assert "lo" in one.check(["ip", "-br", "link"])
        assert "UP" in one.check("ip -br link show lo") or "UNKNOWN" in one.check("ip -br link show lo")
    assert not {one.name, two.name} & _listed()
    one.delete()  # idempotent


def test_deleted_on_exception_and_children_killed() -> None:
    _require()
    names: list[str] = []
    with pytest.raises(RuntimeError), Netns("iptx") as ns:
        names.append(ns.name)
        proc = ns.popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert proc.poll() is not None, "processes started inside are killed"
    assert names[0] not in _listed()


def test_run_and_check() -> None:
    _require()
    with Netns("iptx") as ns:
        assert ns.run(["true"]).returncode == 0
        assert ns.run("exit 3").returncode == 3
        with pytest.raises(RuntimeError, match="exit 4"):
            ns.check("echo nope >&2; exit 4")


def test_in_netns_switches_this_thread_and_back() -> None:
    _require()
    outside = _current_netns()
    with Netns("iptx") as a, Netns("iptx") as b:
        veth_pair(a, b, "10.7.0.1/24", ["10.7.0.2/24", "2001:db8:7::2/64"], names=("left", "right"), mtu=1400)
        with in_netns(a.name):
            inside = _current_netns()
            assert inside != outside
            assert link.exists("left") and not link.exists("right")
            assert link.get_mtu("left") == 1400
            assert link.route_source("10.7.0.2") == "10.7.0.1"
        assert _current_netns() == outside
        with b.enter():
            assert link.exists("right")
        with pytest.raises(ZeroDivisionError), a.enter():
            _ = 1 // 0
        assert _current_netns() == outside, "switched back after an exception too"
        assert "2001:db8:7::2" in b.check(["ip", "-6", "addr", "show", "right"])
