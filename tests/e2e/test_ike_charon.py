"""ipsecd's IKEv2 against strongSwan 5.9.8 charon (kernel-libipsec, always ESP-in-UDP), each in its own
network namespace over a veth: both roles, ping both ways, a TCP transfer, teardown from either side,
kill -9 of ipsecd, and a datagram fuzz at the live daemon. Skipped when charon is not installed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .charon_peer import PSK, IkePair, charon_missing

pytestmark = pytest.mark.root
PORT = 5201


@pytest.fixture
def pair() -> Iterator[IkePair]:
    reason = charon_missing()
    if reason:
        pytest.skip(reason)
    with IkePair() as p:
        yield p


def _sas(p: IkePair) -> list[dict[str, Any]]:
    out = json.loads(p.d.adm("sa", "show", "-j").stdout)
    assert isinstance(out, list)
    return out


def _routes(p: IkePair) -> str:
    return p.d.sh("ip route show").stdout


def _transfer(p: IkePair, size: int = 2_000_000) -> None:
    recv = p.cns.popen([sys.executable, "-m", "tests.support.transfer", "recv", str(PORT), p.C_IN],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert recv.stdout is not None
    assert recv.stdout.readline().strip() == "listening"
    sent = p.d.sh([sys.executable, "-m", "tests.support.transfer", "send", p.C_IN, str(PORT), str(size)])
    got, _ = recv.communicate(timeout=60)
    assert sent.stdout.split() == got.split() and got.split()[0] == str(size)


def test_charon_initiates(pair: IkePair) -> None:
    p = pair
    p.ike_add()
    p.load_charon()
    out = p.charon.swanctl("--initiate", "--child", "net", "--timeout", "15", check=False)
    assert "initiate completed successfully" in out, out + p.dlog() + p.charon.log()
    p.wait("ipsecd established", p.ipsecd_up)
    assert p.charon_up()
    sas = _sas(p)
    assert len(sas) == 2 and {s["origin"] for s in sas} == {"ike:gw"}
    assert all(s["encap"] for s in sas)  # kernel-libipsec: always ESP-in-UDP
    assert p.C_NET in _routes(p)
    p.ping_both()
    _transfer(p)


def test_ipsecd_initiates_and_teardown_both_ways(pair: IkePair) -> None:
    p = pair
    p.load_charon()
    p.ike_add("--start=now")
    p.wait("charon established", p.charon_up)
    p.wait("ipsecd established", p.ipsecd_up)
    p.ping_both()
    # (7) charon terminates: ipsecd's SAs and routes go
    p.charon.swanctl("--terminate", "--ike", "gw", "--timeout", "10", check=False)
    p.wait("ipsecd SAs gone", lambda: not _sas(p))
    assert p.C_NET not in _routes(p)
    # up again from ipsecd, then `ike down` removes charon's
    p.d.adm("ike", "up", "gw")
    p.wait("charon established again", p.charon_up)
    p.wait("ipsecd established again", p.ipsecd_up)
    p.ping_both(1)
    p.d.adm("ike", "down", "gw")
    p.wait("charon SAs gone", lambda: "ESTABLISHED" not in p.charon.sas())
    p.wait("ipsecd SAs gone after down", lambda: not _sas(p))


def test_kill9_restart_reestablishes(pair: IkePair) -> None:
    p = pair
    p.load_charon()
    p.ike_add("--start=now")
    p.wait("established", lambda: p.charon_up() and p.ipsecd_up())
    p.ping_both(1)
    p.d.stop(signal.SIGKILL)
    t0 = time.monotonic()
    p.d.start()
    p.wait("re-established after kill -9", lambda: p.ipsecd_up(), timeout=10)
    p.ping_both(1)
    assert time.monotonic() - t0 < 10
    sas = _sas(p)
    assert len(sas) == 2, sas  # the stale pair was not restored
    # INITIAL_CONTACT: charon holds one IKE SA only, the new one
    assert p.charon.sas().count("state=ESTABLISHED") == 1, p.charon.sas()


def test_through_nat_ipsecd_inside(tmp_path: object) -> None:
    reason = charon_missing()
    if reason:
        pytest.skip(reason)
    with IkePair(nat="ipsecd-inside") as p:
        p.load_charon(REMOTE_ADDR="%any", REMOTE_ID=p.D_OUT)
        p.ike_add("--start=now")
        p.wait("established through the NAT", lambda: p.charon_up() and p.ipsecd_up())
        raw = p.charon.sas()
        assert "nat-remote=yes" in raw and "remote-host=198.51.100.1" in raw, raw
        show = json.loads(p.d.adm("ike", "show", "gw", "-j").stdout)[0]
        assert show["remote_seen"] == f"{p.C_OUT}:4500"  # IKE moved to 4500
        sas = _sas(p)
        assert all(s["encap"] for s in sas)
        outbound = [s for s in sas if s["src"] == p.D_OUT]
        assert [s["encap"]["keepalive"] for s in outbound] == [20]  # behind the NAT: keepalives (RFC 3948 §4)
        p.ping_both()


def test_through_nat_charon_inside_random_ports() -> None:
    reason = charon_missing()
    if reason:
        pytest.skip(reason)
    with IkePair(nat="charon-inside", PEER_CHARON_EXTRA="keep_alive = 5s") as p:
        p.load_charon()
        p.ike_add("--remote-id=" + p.C_OUT, remote="%any")
        out = p.charon.swanctl("--initiate", "--child", "net", "--timeout", "15", check=False)
        assert "initiate completed successfully" in out, out + p.dlog() + p.charon.log()
        p.wait("ipsecd established", p.ipsecd_up)
        show = json.loads(p.d.adm("ike", "show", "gw", "-j").stdout)[0]
        host, port = show["remote_seen"].rsplit(":", 1)
        assert host == "198.51.100.1"  # the NAT, with a port of its choosing
        sas = _sas(p)
        outbound = [s for s in sas if s["src"] == p.D_OUT]
        assert len(outbound) == 1 and outbound[0]["dst"] == "198.51.100.1"
        assert outbound[0]["encap"] == {"sport": 4500, "dport": int(port), "keepalive": 0}  # not behind it
        tunnel = json.loads(p.d.adm("tunnel", "show", "-j").stdout)
        assert [t["remote"] for t in tunnel] == ["198.51.100.1"]
        p.ping_both()


def test_wrong_psk_is_reported_in_one_line(pair: IkePair) -> None:
    p = pair
    p.load_charon(PSK="not-the-same-psk")
    p.ike_add("--start=now")

    def reason() -> str | None:
        show = json.loads(p.d.adm("ike", "show", "gw", "-j").stdout)[0]
        return show["reason"] if show["state"] == "down" and show["reason"] else None

    why = p.wait("AUTHENTICATION_FAILED in ike show", reason)
    assert "AUTHENTICATION_FAILED" in why and "\n" not in why
    line = p.d.adm("ike", "show").stdout.splitlines()[1]
    assert line.split()[:2] == ["gw", "down"] and "AUTHENTICATION_FAILED" in line
    assert _sas(p) == [] and "ESTABLISHED" not in p.charon.sas()
    assert "AUTHENTICATION_FAILED" in p.d.log.read_text()
    log = p.d.log.read_text()
    assert PSK not in log and PSK.encode().hex() not in log  # ipsecd's key is never logged


def test_dpd_answered_and_clean_restart(pair: IkePair) -> None:
    p = pair
    p.load_charon(DPD_DELAY="1s")
    p.ike_add("--start=now", "--dpd=5")  # charon's probes every second keep ipsecd's from being needed
    p.wait("established", lambda: p.charon_up() and p.ipsecd_up())
    spis = re.findall(r"spi-in=([0-9a-f]+)", p.charon.sas())
    time.sleep(8)  # DPD both ways, several rounds
    assert re.findall(r"spi-in=([0-9a-f]+)", p.charon.sas()) == spis  # the same SAs, still up
    counters = p.charon.swanctl("--counters", "--raw")
    assert int(re.search(r"info-in-resp=(\d+)", counters).group(1)) >= 3, counters  # type: ignore[union-attr]
    assert "invalid=0 invalid-spi=0" in counters, counters
    p.ping_both(1)
    # a clean stop tells charon (DELETE); the restart brings the tunnel back with new SAs
    assert p.d.stop() == 0
    p.wait("charon's SAs deleted by ipsecd's stop", lambda: "ESTABLISHED" not in p.charon.sas(), timeout=5)
    p.d.start()
    p.wait("back after the restart", lambda: p.charon_up() and p.ipsecd_up(), timeout=10)
    p.ping_both(1)
