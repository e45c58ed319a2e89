"""Interop with strongSwan 5.9.8 charon (kernel-libipsec) in a network namespace: both roles reach
ESTABLISHED/INSTALLED for each proposal set; a wrong PSK fails on both sides; a DH mismatch is settled
through INVALID_KE_PAYLOAD. Needs root; skipped when charon or namespaces are not available."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsec_tunnel.ike import ChildDown, ChildUp, Ike, PeerConfig, PeerStatus, Send
from ipsec_tunnel.ike import message as m
from ipsec_tunnel.ike.constants import Exchange, Notify
from tests.support.netns import Netns, in_netns, netns_available, veth_pair

from .charon import HERE, Charon, charon_missing
from .driver import Driver

pytestmark = pytest.mark.root

US, THEM = "198.51.100.1", "198.51.100.2"
US6, THEM6 = "2001:db8:91::1", "2001:db8:91::2"
US_NET, THEM_NET = "10.91.1.0/24", "10.91.2.0/24"
PSK = "interop-psk-for-tests-0123"
_count = iter(range(1, 10**6))


@dataclass
class Setup:
    us: Netns
    charon: Charon

    def load(self, proposals: str, esp: str, psk: str = PSK, us: str = US, them: str = THEM) -> None:
        self.charon.load(
            LOCAL_ADDR=them, REMOTE_ADDR=us, LOCAL_ID="charon.example", REMOTE_ID="ipsecd.example",
            LOCAL_NET=THEM_NET, REMOTE_NET=US_NET, PSK=psk, PROPOSALS=proposals, ESP_PROPOSALS=esp,
        )  # fmt: skip

    def driver(self, proposals: str, esp: str, psk: str = PSK, us: str = US, them: str = THEM) -> Driver:
        ike = Ike()
        ike.add_peer(
            PeerConfig(
                "ch", us, them, psk.encode(), local_id="ipsecd.example", remote_id="charon.example",
                local_nets=(US_NET,), remote_nets=(THEM_NET,), proposals=(proposals,), esp_proposals=(esp,),
            )
        )  # fmt: skip
        return Driver(ike, self.us.name, us)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    why = netns_available() or charon_missing()
    if why is not None:
        pytest.skip(f"charon interop skipped: {why}")
    with Netns("ikc") as us, Netns("ikc") as them:
        veth_pair(us, them, [f"{US}/24", f"{US6}/64"], [f"{THEM}/24", f"{THEM6}/64"])
        us.check(["ip", "addr", "add", "10.91.1.1/32", "dev", "lo"])
        them.check(["ip", "addr", "add", "10.91.2.1/32", "dev", "lo"])
        charon = Charon(f"ikc{os.getpid() % 100000}-{next(_count)}", them.name, tmp_path)
        try:
            charon.start()
            yield Setup(us, charon)
        finally:
            charon.stop()


def _charon_child(sas: str) -> tuple[int, int]:
    """charon's (spi-in, spi-out) of its one INSTALLED child."""
    assert "state=ESTABLISHED" in sas and "state=INSTALLED" in sas, sas
    spi_in = re.search(r"spi-in=([0-9a-f]+)", sas)
    spi_out = re.search(r"spi-out=([0-9a-f]+)", sas)
    assert spi_in and spi_out, sas
    return int(spi_in.group(1), 16), int(spi_out.group(1), 16)


def _up(s: Setup, d: Driver, initiator: str) -> ChildUp:
    if initiator == "charon":
        out = s.charon.swanctl("--initiate", "--child", "net", "--timeout", "20", timeout=40)
        assert "initiate completed successfully" in out, out + s.charon.log(40)
    else:
        d.call(lambda ike, now: ike.initiate("ch", now))
    assert d.wait(lambda: bool(d.events(ChildUp)), 20), (d.ike.drops, d.events(PeerStatus), s.charon.log(40))
    up: ChildUp = d.events(ChildUp)[0]
    assert len(d.events(ChildUp)) == 1
    assert d.wait(lambda: "state=INSTALLED" in s.charon.sas(), 10), s.charon.log(40)
    sas = s.charon.sas()
    assert _charon_child(sas) == (up.spi_out, up.spi_in)
    assert "encap=yes" in sas and up.encap == (4500, 4500)  # kernel-libipsec always fakes a NAT
    assert (up.local_ts, up.remote_ts) == (US_NET, THEM_NET)
    assert d.ike.peers()[0].state == "established"
    return up


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
@pytest.mark.parametrize(
    ("proposals", "esp"),
    [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes256-sha256-modp2048", "aes256-sha256"),
        ("aes256gcm16-prfsha384-ecp256", "aes256gcm16"),
        ("default", "default"),
    ],
)
def test_established(setup: Setup, proposals: str, esp: str, initiator: str) -> None:
    setup.load(proposals, esp)
    d = setup.driver(proposals, esp)
    try:
        up = _up(setup, d, initiator)
        if esp == "aes256-sha256":
            assert up.cipher == "aes-cbc" and up.digest == "sha256" and len(up.key_in) == 32
        assert not d.ike.drops, d.ike.drops
        counters = setup.charon.swanctl("--counters")
        assert re.search(r"^\s*invalid\s*:\s*0$", counters, re.M), counters  # charon refused nothing of ours
        assert re.search(r"^\s*invalid-spi\s*:\s*0$", counters, re.M), counters
        # our DELETE removes charon's SAs
        d.call(lambda ike, now: ike.terminate("ch", now))
        assert d.wait(lambda: "ESTABLISHED" not in setup.charon.sas(), 10), setup.charon.sas()
    finally:
        d.close()


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
def test_wrong_psk(setup: Setup, initiator: str) -> None:
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16", psk="the-other-psk-0123456789")
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        if initiator == "charon":
            out = setup.charon.swanctl("--initiate", "--child", "net", "--timeout", "20", timeout=40)
            assert "initiate completed successfully" not in out
        else:
            d.call(lambda ike, now: ike.initiate("ch", now))
        assert d.wait(lambda: (d.ike.peers()[0].reason or "").startswith("AUTHENTICATION_FAILED"), 20), (
            d.ike.peers(), setup.charon.log(30)
        )  # fmt: skip
        assert d.ike.peers()[0].state == "down" and not d.events(ChildUp) and not d.ike.sas
        assert d.wait(lambda: "ESTABLISHED" not in setup.charon.sas(), 10), setup.charon.sas()
        log = setup.charon.log(60)
        assert "AUTHENTICATION_FAILED" in log or "MAC mismatched" in log, log
    finally:
        d.close()


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
def test_dh_mismatch_settled_by_invalid_ke(setup: Setup, initiator: str) -> None:
    """The initiator's first group is not the responder's: INVALID_KE_PAYLOAD, then the responder's."""
    wide, narrow = "aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16-prfsha256-ecp256"
    theirs, ours = (wide, narrow) if initiator == "charon" else (narrow, wide)
    setup.load(theirs, "aes128gcm16")
    d = setup.driver(ours, "aes128gcm16")
    try:
        _up(setup, d, initiator)
        assert "dh-group=ECP_256" in setup.charon.sas()
        assert d.ike.peers()[0].proposal == "aes128gcm16-prfsha256-ecp256"
        if initiator == "charon":
            assert d.ike.drops["invalid_ke_sent"] == 1
        else:
            assert "INVALID_KE_PAYLOAD" in setup.charon.log(60) or "unacceptable" in setup.charon.log(60)
    finally:
        d.close()


def test_charon_dpd_answered_and_its_delete_honoured(setup: Setup) -> None:
    """charon's liveness checks (dpd_delay 1s) are answered; `swanctl --terminate` brings our child down."""
    setup.charon.env["DPD_DELAY"] = "1s"
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        up = _up(setup, d, "charon")

        def answered() -> bool:
            m = re.search(r"^\s*info-in-resp\s*:\s*(\d+)$", setup.charon.swanctl("--counters"), re.M)
            return m is not None and int(m.group(1)) >= 2

        assert d.wait(answered, 15), setup.charon.swanctl("--counters")
        assert "state=ESTABLISHED" in setup.charon.sas()
        setup.charon.swanctl("--terminate", "--ike", "gw", "--timeout", "10")
        assert d.wait(lambda: any(x.spi_in == up.spi_in for x in d.events(ChildDown)), 10)
        assert d.ike.peers()[0].state == "down" and d.ike.peers()[0].reason == "deleted by peer"
        assert not d.ike.sas and not d.ike.drops
    finally:
        d.close()


def test_cookie_from_charon(setup: Setup, tmp_path: Path) -> None:
    """charon with cookie_threshold = 1 and one half-open IKE SA demands a COOKIE (§2.6); we get in."""
    setup.charon.stop()
    setup.charon.env["PEER_CHARON_EXTRA"] = "cookie_threshold = 1"
    setup.charon.start()
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    # a half-open IKE SA on charon: an IKE_SA_INIT from another port, never followed by IKE_AUTH
    other = Ike()
    other.add_peer(PeerConfig("x", US, THEM, b"x", proposals=("aes128gcm16-prfsha256-x25519",)))
    other.initiate("x", 0.0)
    (first,) = [e for e in other.events() if isinstance(e, Send)]
    with in_netns(setup.us.name), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((US, 5000))
        s.settimeout(5)
        s.sendto(first.data, (THEM, 500))
        s.recvfrom(4096)
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        _up(setup, d, "ipsecd")
        inits = [e.data for e in d.events(Send) if m.parse_header(e.data).exchange == Exchange.IKE_SA_INIT]
        assert len(inits) == 2, setup.charon.log(30)
        first_payload = m.parse_chain(inits[1], m.parse_header(inits[1]).next_payload, 28).payloads[0]
        assert m.decode_notify(first_payload.body).ntype == Notify.COOKIE
    finally:
        d.close()


def test_charon_rekeying_ends_in_one_working_pair(setup: Setup) -> None:
    """Rekeying is part 2: CREATE_CHILD_SA gets NO_ADDITIONAL_SAS; charon then rebuilds the SAs from
    scratch, and both sides end with exactly one IKE SA and one matching CHILD SA."""
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        _up(setup, d, "ipsecd")
        for what in (("--child", "net"), ("--ike", "gw")):
            out = setup.charon.swanctl("--rekey", *what)
            assert "rekey completed successfully" in out, out

        def settled() -> bool:
            sas = setup.charon.sas()
            return sas.count("state=ESTABLISHED") == 1 and "state=INSTALLED" in sas and len(d.ike.sas) == 1

        assert d.wait(settled, 20), (setup.charon.sas(), d.ike.sas, setup.charon.log(30))
        downed = {x.spi_in for x in d.events(ChildDown)}
        (current,) = [u for u in d.events(ChildUp) if u.spi_in not in downed]
        assert _charon_child(setup.charon.sas()) == (current.spi_out, current.spi_in)
        assert d.ike.drops["create_child_refused"] >= 1, (d.ike.drops, setup.charon.log(40))
        assert d.ike.drops["internal_error"] == 0
        assert d.ike.peers()[0].state == "established"
    finally:
        d.close()


@pytest.mark.parametrize("masq", ["masquerade", "masquerade random"])
def test_through_a_nat(tmp_path: Path, masq: str) -> None:
    """We are behind a NAT (tests/ike/nat.sh, nftables masquerade): NAT detected on both sides (charon's
    own view, not only its faked one), IKE moves to 4500, the CHILD SA is UDP-encapsulated."""
    why = netns_available() or charon_missing() or (None if shutil.which("nft") else "nft missing (nftables)")
    if why is not None:
        pytest.skip(f"charon NAT interop skipped: {why}")
    nat = f"ikc{os.getpid() % 10000}{next(_count) % 1000}"
    env = dict(os.environ, NAT=nat, NAT_MASQ=masq)
    with Netns("ikc") as inside, Netns("ikc") as outside:
        subprocess.run(
            [str(HERE / "nat.sh"), "up", inside.name, outside.name], env=env, check=True, capture_output=True
        )
        charon = Charon(f"ikn{os.getpid() % 10000}-{next(_count) % 100}", outside.name, tmp_path)
        try:
            inside.check(["ip", "addr", "add", "10.91.1.1/32", "dev", "lo"])
            outside.check(["ip", "addr", "add", "10.91.2.1/32", "dev", "lo"])
            charon.start()
            charon.load(
                LOCAL_ADDR=THEM, REMOTE_ADDR="%any", LOCAL_ID="charon.example", REMOTE_ID="ipsecd.example",
                LOCAL_NET=THEM_NET, REMOTE_NET=US_NET, PSK=PSK,
            )  # fmt: skip
            ike = Ike()
            ike.add_peer(
                PeerConfig(
                    "ch", "192.0.2.2", THEM, PSK.encode(), local_id="ipsecd.example",
                    remote_id="charon.example", local_nets=(US_NET,), remote_nets=(THEM_NET,),
                    proposals=("aes128gcm16-prfsha256-x25519",), esp_proposals=("aes128gcm16",),
                )
            )  # fmt: skip
            d = Driver(ike, inside.name, "192.0.2.2")
            try:
                d.call(lambda i, now: i.initiate("ch", now))
                assert d.wait(lambda: bool(d.events(ChildUp)), 20), (ike.drops, ike.peers(), charon.log(30))
                (up,) = d.events(ChildUp)
                assert up.nat_local and up.encap == (4500, 4500) and up.local_addr == "192.0.2.2"
                sas = charon.sas()
                assert _charon_child(sas) == (up.spi_out, up.spi_in)
                assert "remote-host=198.51.100.1" in sas and "nat-remote=yes" in sas and "encap=yes" in sas, (
                    sas
                )
                port = re.search(r"remote-port=(\d+)", sas)
                assert port is not None and (masq == "masquerade random" or port.group(1) == "4500"), sas
                assert not ike.drops
            finally:
                d.close()
        finally:
            charon.stop()
            subprocess.run([str(HERE / "nat.sh"), "down"], env=env, capture_output=True)


def _charon_pid(s: Setup) -> int:
    info = s.charon.run("info")
    found = re.search(r"pid=(\d+)", info)
    assert found is not None, info
    return int(found.group(1))


def test_charon_stopped_during_the_handshake(setup: Setup) -> None:
    """charon SIGSTOPped while we initiate, resumed 4 s later: our retransmissions and its retransmit
    detection leave exactly one IKE SA and one CHILD SA on each side."""
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    pid = _charon_pid(setup)
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            d.call(lambda ike, now: ike.initiate("ch", now))
            time.sleep(4)  # we send at 0, 1, 3 s
        finally:
            os.kill(pid, signal.SIGCONT)
        assert d.wait(lambda: bool(d.events(ChildUp)), 20), (d.ike.drops, setup.charon.log(30))
        time.sleep(2)
        sas = setup.charon.sas()
        assert sas.count("state=ESTABLISHED") == 1 and sas.count("state=INSTALLED") == 1, sas
        assert len(d.events(ChildUp)) == 1 and len(d.ike.sas) == 1 and not d.events(ChildDown)
        (up,) = d.events(ChildUp)
        assert _charon_child(sas) == (up.spi_out, up.spi_in)
    finally:
        d.close()


def test_restart_initial_contact_clears_charons_stale_sa(setup: Setup) -> None:
    """We lose all state (a new Ike, as after kill -9) and initiate again: INITIAL_CONTACT makes charon
    drop the stale IKE SA, leaving only the new one."""
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        old = _up(setup, d, "ipsecd")
    finally:
        d.close()
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16")
    try:
        d.call(lambda ike, now: ike.initiate("ch", now))
        assert d.wait(lambda: bool(d.events(ChildUp)), 20), setup.charon.log(30)
        (new,) = d.events(ChildUp)

        def only_new() -> bool:
            sas = setup.charon.sas()
            return sas.count("state=ESTABLISHED") == 1 and f"spi-in={new.spi_out:08x}" in sas

        assert d.wait(only_new, 10), setup.charon.sas()
        assert f"spi-in={old.spi_out:08x}" not in setup.charon.sas()
    finally:
        d.close()


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
@pytest.mark.parametrize("mismatch", ["ike", "esp", "ts"])
def test_failures_leave_no_sa(setup: Setup, initiator: str, mismatch: str) -> None:
    """NO_PROPOSAL_CHOSEN (IKE or ESP) and TS_UNACCEPTABLE: a one-line reason on our side and no IKE SA
    left on either side."""
    ike, esp = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
    theirs_ike = "aes256-sha256-modp2048" if mismatch == "ike" else ike
    theirs_esp = "aes256-sha256" if mismatch == "esp" else esp
    them_net = "10.91.3.0/24" if mismatch == "ts" else US_NET  # what charon wants of our side
    setup.charon.load(
        LOCAL_ADDR=THEM, REMOTE_ADDR=US, LOCAL_ID="charon.example", REMOTE_ID="ipsecd.example",
        LOCAL_NET=THEM_NET, REMOTE_NET=them_net, PSK=PSK, PROPOSALS=theirs_ike, ESP_PROPOSALS=theirs_esp,
    )  # fmt: skip
    d = setup.driver(ike, esp)
    try:
        if initiator == "charon":
            out = setup.charon.swanctl("--initiate", "--child", "net", "--timeout", "15", timeout=40)
            assert "initiate completed successfully" not in out
        else:
            d.call(lambda i, now: i.initiate("ch", now))
        want = {"ike": "NO_PROPOSAL_CHOSEN", "esp": "NO_PROPOSAL_CHOSEN", "ts": "TS_UNACCEPTABLE"}[mismatch]
        assert d.wait(lambda: (d.ike.peers()[0].reason or "").startswith(want), 20), (
            d.ike.peers(), setup.charon.log(30)
        )  # fmt: skip
        reason = d.ike.peers()[0].reason or ""
        assert "\n" not in reason
        if initiator == "charon" and mismatch == "ike":
            assert reason == f"NO_PROPOSAL_CHOSEN (ours: {ike}; theirs: aes256-sha256-prfsha256-modp2048)"
        assert d.wait(lambda: not d.ike.sas and "ESTABLISHED" not in setup.charon.sas(), 15), (
            d.ike.sas, setup.charon.sas()
        )  # fmt: skip
        assert not d.events(ChildUp)
        assert d.ike.peers()[0].state == "down"
    finally:
        d.close()


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
def test_ipv6_outer(setup: Setup, initiator: str) -> None:
    """IKE over IPv6 (NAT-D hashes over 16-byte addresses, RFC 7296 §2.23), IPv4 traffic selectors."""
    setup.load("aes128gcm16-prfsha256-x25519", "aes128gcm16", us=US6, them=THEM6)
    d = setup.driver("aes128gcm16-prfsha256-x25519", "aes128gcm16", us=US6, them=THEM6)
    try:
        up = _up(setup, d, initiator)
        assert (up.local_addr, up.remote_addr) == (US6, THEM6)
        assert f"remote-host={US6}" in setup.charon.sas()
        # a loaded machine may make us resend a request; charon then answers twice (§2.1), and only
        # those duplicate answers may be dropped
        assert set(d.ike.drops) <= {"unexpected_response"}, d.ike.drops
        assert d.ike.drops["unexpected_response"] <= d.ike.retransmits, (d.ike.drops, d.ike.retransmits)
    finally:
        d.close()


@pytest.mark.parametrize("initiator", ["charon", "ipsecd"])
def test_narrowing(setup: Setup, initiator: str) -> None:
    """The initiator asks for 10.91.0.0/16 on our side, the responder has only 10.91.1.0/24: the
    responder narrows (RFC 7296 §2.9) and both sides install the /24."""
    wide = "10.91.0.0/16"
    them_net = wide if initiator == "charon" else US_NET  # charon's idea of our side
    setup.charon.load(
        LOCAL_ADDR=THEM, REMOTE_ADDR=US, LOCAL_ID="charon.example", REMOTE_ID="ipsecd.example",
        LOCAL_NET=THEM_NET, REMOTE_NET=them_net, PSK=PSK,
    )  # fmt: skip
    ike = Ike()
    ike.add_peer(
        PeerConfig(
            "ch", US, THEM, PSK.encode(), local_id="ipsecd.example", remote_id="charon.example",
            local_nets=(US_NET if initiator == "charon" else wide,), remote_nets=(THEM_NET,),
            proposals=("aes128gcm16-prfsha256-x25519",), esp_proposals=("aes128gcm16",),
        )
    )  # fmt: skip
    d = Driver(ike, setup.us.name, US)
    try:
        up = _up(setup, d, initiator)
        assert "local-ts=[10.91.2.0/24] remote-ts=[10.91.1.0/24]" in setup.charon.sas()
        assert up.local_ts == US_NET
    finally:
        d.close()
