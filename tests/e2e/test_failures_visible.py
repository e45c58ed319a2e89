"""Failures an operator must see (issue 12), on real hosts: a firewall dropping the outer datagrams, a
tunnel device that is down, an unknown --nextdev. Runs on the NAT example's hosts (tests/e2e/test_nat.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.hosts import IpsecHost
from tests.support.nat import A_PRIVATE, B_INNER, B_PUBLIC, NatHosts

from .test_nat import _logged, _ping, _setup, nat

__all__ = ["nat"]  # the fixture, shared with test_nat
pytestmark = pytest.mark.root


def _stats(host: IpsecHost) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = json.loads(host.adm("-j", "stats").stdout)
    return result


def test_a_firewall_dropping_esp_is_a_counted_and_logged_send_error(nat: NatHosts) -> None:
    _setup(nat)
    rules = "table ip onatfw { chain out { type filter hook output priority 0; udp dport 4500 drop; }; }"
    nat.a.sh(f"nft '{rules}'")
    assert not _ping(nat.a, B_INNER, nat.b, count=2)
    send = _stats(nat.a)["send"]
    assert send["send_error"] >= 2 and send["accepted"] == 0
    assert _logged(nat.a, "send to 203.0.113.2 failed: Operation not permitted")
    tunnel = json.loads(nat.a.adm("-j", "tunnel", "show", "ipsec1", "-s").stdout)[0]
    assert tunnel["stats"]["tx_drops"]["send_error"] >= 2 and tunnel["stats"]["tx_packets"] == 0


def test_packets_for_a_device_that_is_down_are_drops(nat: NatHosts) -> None:
    _setup(nat)
    assert _ping(nat.a, B_INNER, nat.b, count=1)
    before = _stats(nat.b)["receive"]
    nat.b.sh("ip link set ipsec1 down")
    assert not _ping(nat.a, B_INNER, nat.b, count=2)
    after = _stats(nat.b)["receive"]
    assert after["accepted"] == before["accepted"] and after["device_down"] >= 2
    assert _logged(nat.b, "packet for ipsec1 dropped: the device is down")
    assert "device down=" in nat.b.adm("tunnel", "show", "-s").stdout


def test_an_unknown_nextdev_is_refused(nat: NatHosts) -> None:
    where = (f"--local={A_PRIVATE}", f"--remote={B_PUBLIC}")
    r = nat.a.adm("tunnel", "add", "ipsec5", *where, "--nextdev=nosuchdev", check=False)
    assert r.returncode != 0 and r.stderr.strip().endswith("No such device for --nextdev: nosuchdev")
    assert len(r.stderr.strip().splitlines()) == 1
