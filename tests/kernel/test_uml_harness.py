"""The UML kernel peer harness: boot, command channel, reachability, XFRM, ESP on the wire, cleanup."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.uml import UmlBootError, UmlPeer

pytestmark = [pytest.mark.kernel, pytest.mark.root]

KEY_GCM = bytes(range(16)) + bytes.fromhex("a0a1a2a3")  # RFC 4106 section 8.1: AES key || 4-byte salt
K16, K20, K24, K32, K36 = ("0x" + "5a" * n for n in (16, 20, 24, 32, 36))

ALGORITHMS = {
    "gcm-aes-icv64": f"aead 'rfc4106(gcm(aes))' {K20} 64",
    "gcm-aes-icv96": f"aead 'rfc4106(gcm(aes))' {K20} 96",
    "gcm-aes-icv128": f"aead 'rfc4106(gcm(aes))' {K20} 128",
    "gcm-aes256-icv128": f"aead 'rfc4106(gcm(aes))' {K36} 128",
    "chacha20-poly1305": f"aead 'rfc7539esp(chacha20,poly1305)' {K36} 128",
    "cbc-aes-hmac-sha256-128": f"enc 'cbc(aes)' {K16} auth-trunc 'hmac(sha256)' {K32} 128",
    "cbc-aes-hmac-sha1": f"enc 'cbc(aes)' {K16} auth 'hmac(sha1)' {K20}",
    "cbc-3des-hmac-sha1": f"enc 'cbc(des3_ede)' {K24} auth 'hmac(sha1)' {K20}",
    "ctr-aes-hmac-sha256": f"enc 'rfc3686(ctr(aes))' {K20} auth-trunc 'hmac(sha256)' {K32} 128",
    "null-hmac-sha256": f"enc 'ecb(cipher_null)' '' auth-trunc 'hmac(sha256)' {K32} 128",
}
VARIANTS = {
    "plain": "",
    "esn": "flag esn replay-window 128",
    "espinudp": "encap espinudp 4500 4500 0.0.0.0",
    "esn-espinudp": "flag esn replay-window 128 encap espinudp 4500 4500 0.0.0.0",
}


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def live_processes_in_session(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if d.name.isdigit() and int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(d.name))
        except (OSError, IndexError, ValueError):
            pass
    return pids


def test_guest_runs_a_6_1_kernel(uml_peer: UmlPeer) -> None:
    rc, out = uml_peer.run("uname -r")
    assert rc == 0
    assert out.strip().startswith("6.1.")
    assert uml_peer.kernel_release == out.strip()
    assert 0 < uml_peer.boot_seconds < 60
    assert "xfrm_user" in uml_peer.modules_loaded
    assert "esp4" in uml_peer.modules_loaded


def test_run_returns_status_and_combined_output(uml_peer: UmlPeer) -> None:
    assert uml_peer.run("echo out; echo err >&2; exit 7") == (7, "out\nerr\n")
    assert uml_peer.run("printf '%s' \"$((6 * 7))\"") == (0, "42")


def test_run_times_out_and_the_channel_survives(uml_peer: UmlPeer) -> None:
    with pytest.raises(TimeoutError):
        uml_peer.run("sleep 30", timeout=1)
    assert uml_peer.run("echo alive") == (0, "alive\n")


def test_mconsole_answers(uml_peer: UmlPeer) -> None:
    assert "6.1." in uml_peer.mconsole("version")


def test_host_namespace_pings_guest_ipv4(uml_peer: UmlPeer) -> None:
    assert uml_peer.ping(uml_peer.guest_ip, count=3) >= 2


def test_host_namespace_pings_guest_ipv6(uml_peer: UmlPeer) -> None:
    assert uml_peer.guest_ip6 is not None
    assert uml_peer.ping(uml_peer.guest_ip6, count=3) >= 2


def test_unreachable_address_gets_no_answer(uml_peer: UmlPeer) -> None:
    assert uml_peer.ping("192.0.2.77", count=1, timeout=1.0) == 0


def test_aes_gcm_tunnel_state_is_listed(uml_clean: UmlPeer) -> None:
    peer = uml_clean
    peer.check(
        f"ip xfrm state add src {peer.guest_ip} dst {peer.host_ip} proto esp spi 0x1001 reqid 1 mode tunnel"
        f" aead 'rfc4106(gcm(aes))' 0x{KEY_GCM.hex()} 128"
    )
    listing = peer.check("ip xfrm state")
    assert f"src {peer.guest_ip} dst {peer.host_ip}" in listing
    assert "spi 0x00001001" in listing
    assert "rfc4106(gcm(aes))" in listing
    assert "mode tunnel" in listing
    assert "spi 0x00001001" in peer.xfrm_state_stats()


@pytest.mark.parametrize("outer", ["ipv4", "ipv6"])
@pytest.mark.parametrize("alg", list(ALGORITHMS))
def test_kernel_accepts_algorithm(uml_clean: UmlPeer, alg: str, outer: str) -> None:
    peer = uml_clean
    src, dst = (peer.guest_ip, peer.host_ip) if outer == "ipv4" else (peer.guest_ip6, peer.host_ip6)
    algo = ALGORITHMS[alg]
    for spi, (variant, extra) in enumerate(VARIANTS.items(), start=0x100):
        rc, out = peer.run(
            f"ip xfrm state add src {src} dst {dst} proto esp spi {spi} mode tunnel {extra} {algo}"
        )
        assert rc == 0, f"{variant}: {out}"
    assert peer.check("ip xfrm state | grep -c '^src'").strip() == str(len(VARIANTS))


def test_kernel_rejects_gcm_key_without_salt(uml_clean: UmlPeer) -> None:
    rc, _ = uml_clean.run(
        f"ip xfrm state add src {uml_clean.guest_ip} dst {uml_clean.host_ip} proto esp spi 0x2002"
        f" mode tunnel aead 'rfc4106(gcm(aes))' {K16} 128"
    )
    assert rc != 0


def test_xfrm_stat_reads_every_counter_and_sees_one_move(uml_clean: UmlPeer) -> None:
    """Every line of /proc/net/xfrm_stat, by name; a packet that an outbound policy has no state for
    moves XfrmOutNoStates (by one per route lookup: a UDP send makes several)."""
    peer = uml_clean
    before = peer.xfrm_stat()
    assert len(before) == int(peer.check("wc -l < /proc/net/xfrm_stat")) > 20
    peer.add_inner_address("10.0.1.1/24")
    peer.check(
        f"ip route replace 10.0.2.0/24 via {peer.host_ip} dev eth0 src 10.0.1.1\n"
        "ip xfrm policy add src 10.0.1.0/24 dst 10.0.2.0/24 dir out"
        f" tmpl src {peer.guest_ip} dst {peer.host_ip} proto esp reqid 9 mode tunnel"
    )
    peer.run("echo no-state > /dev/udp/10.0.2.1/9")  # dropped (xfrm_larval_drop): no SA to put it in
    after = peer.xfrm_stat()
    assert after["XfrmOutNoStates"] > before["XfrmOutNoStates"], (before, after)
    assert after["XfrmInNoStates"] == before["XfrmInNoStates"]
    assert after.keys() == before.keys()


INNER = {  # family: (local address, local net, remote net, remote address, route via)
    4: ("10.0.1.1/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.2.1", "192.0.2.1"),
    6: ("2001:db8:1::1/64", "2001:db8:1::/64", "2001:db8:2::/64", "2001:db8:2::1", "2001:db8::1"),
}


@pytest.mark.parametrize(
    ("outer", "inner", "encap"),
    [(4, 4, False), (4, 4, True), (6, 4, False), (6, 6, False), (4, 6, False), (6, 6, True)],
    ids=["4in4", "4in4-espinudp", "4in6", "6in6", "6in4", "6in6-espinudp"],
)
def test_guest_sends_decryptable_esp(uml_clean: UmlPeer, outer: int, inner: int, encap: bool) -> None:
    """The guest's kernel encrypts inner traffic; the host namespace sees RFC 4303 / RFC 4106 ESP."""
    peer = uml_clean
    src, dst = (peer.guest_ip6, peer.host_ip6) if outer == 6 else (peer.guest_ip, peer.host_ip)
    local, local_net, remote_net, remote, via = INNER[inner]
    encap_opt = "encap espinudp 4500 4500 0.0.0.0" if encap else ""
    peer.add_inner_address(local)
    local_ip = local.split("/")[0]
    # The state's selector names the inner family: needed when it differs from the outer one.
    peer.check(
        f"ip route replace {remote_net} via {via} dev eth0 src {local_ip}\n"
        f"ip xfrm state add src {src} dst {dst} proto esp spi 0x3001 reqid 7 mode tunnel {encap_opt}"
        f" sel src {local_net} dst {remote_net} aead 'rfc4106(gcm(aes))' 0x{KEY_GCM.hex()} 128\n"
        f"ip xfrm policy add src {local_net} dst {remote_net} dir out"
        f" tmpl src {src} dst {dst} proto esp reqid 7 mode tunnel"
    )
    packets = peer.capture_esp(lambda: peer.check(f"echo hello-esp > /dev/udp/{remote}/9"), count=1)
    assert len(packets) == 1, peer.xfrm_stat()
    pkt = packets[0]
    assert pkt[0] >> 4 == outer
    if outer == 6:
        proto, outer_src, esp = pkt[6], socket.inet_ntop(socket.AF_INET6, pkt[8:24]), pkt[40:]
    else:
        proto, outer_src, esp = pkt[9], socket.inet_ntoa(pkt[12:16]), pkt[(pkt[0] & 0xF) * 4 :]
    assert outer_src == src
    if encap:  # RFC 3948: UDP header, then ESP
        assert proto == 17 and struct.unpack("!HH", esp[:4]) == (4500, 4500)
        esp = esp[8:]
    else:
        assert proto == 50
    assert struct.unpack("!II", esp[:8]) == (0x3001, 1)
    plain = AESGCM(KEY_GCM[:16]).decrypt(KEY_GCM[16:] + esp[8:16], esp[16:], esp[:8])
    pad_len, next_header = plain[-2], plain[-1]
    assert plain[-2 - pad_len : -2] == bytes(range(1, pad_len + 1))  # RFC 4303 section 2.4
    packet = plain[: -2 - pad_len]
    if inner == 6:
        assert next_header == 41 and packet[6] == 17
        assert socket.inet_ntop(socket.AF_INET6, packet[8:24]) == local_ip
        assert socket.inet_ntop(socket.AF_INET6, packet[24:40]) == remote
        assert packet[48:] == b"hello-esp\n"
    else:
        assert next_header == 4 and packet[9] == 17
        assert (socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])) == (local_ip, remote)
        assert packet[28:] == b"hello-esp\n"
    assert "oseq 0x1," in peer.check("ip -s xfrm state list spi 0x3001")


def test_unavailable_binary_is_reported() -> None:
    reason = UmlPeer.available(uml_binary="/nonexistent/linux.uml")
    assert reason is not None and "/nonexistent/linux.uml" in reason


def test_close_removes_namespace_processes_and_files(uml_peer: UmlPeer) -> None:
    """A second, separately booted instance leaves nothing behind, also when the test body fails."""
    other = UmlPeer()
    with pytest.raises(RuntimeError, match="test body failed"), other:
        assert other.netns != uml_peer.netns
        assert other.netns in netns_names()
        assert other.ping(other.guest_ip) == 1
        pid, workdir = other.pid, other.workdir
        assert pid is not None and workdir is not None and workdir.is_dir()
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(other.uml_binary)
        raise RuntimeError("test body failed")
    assert pid is not None and workdir is not None
    assert other.netns not in netns_names()
    assert not Path("/run/netns", other.netns).exists()
    assert not workdir.exists()
    assert other.pid is None
    assert live_processes_in_session(pid) == []
    other.close()  # idempotent
    assert uml_peer.run("true")[0] == 0  # the session's guest is untouched


def test_boot_timeout_raises_and_cleans_up(uml_available: None) -> None:
    peer = UmlPeer(boot_timeout=0.2)
    with pytest.raises(UmlBootError, match="not ready after"):
        peer.start()
    assert peer.netns and peer.netns not in netns_names()
    assert peer.workdir is not None and not peer.workdir.exists()
    assert peer.pid is None
