"""Outer traffic captured between the hosts, decoded by tshark's ESP dissector (an implementation we did
not write): every packet's ICV is good and the inner packets are the pings that were sent."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.support import icmp, tshark
from tests.support.hosts import TwoHosts
from tests.support.tshark import EspSa

pytestmark = pytest.mark.root

# (ipsecadm cipher, key bytes, tshark cipher, digest, digest key bytes)
CASES = {
    "aes-gcm-16": ("aes-gcm", 20, "aes-gcm/16", None, 0),
    "aes-gcm-12": ("aes-gcm-12", 20, "aes-gcm/12", None, 0),
    "aes-gcm-8": ("aes-gcm-8", 20, "aes-gcm/8", None, 0),
    "aes-256-cbc-sha256": ("aes-cbc", 32, "aes-cbc", "sha256", 32),
    "3des-sha1": ("des_ede3-cbc", 24, "des_ede3-cbc", "sha1", 20),
    "aes-ctr-sha512": ("aes-ctr", 20, "aes-ctr", "sha512", 64),
    "null-sha384": (None, 0, "null", "sha384", 48),
}


@pytest.mark.parametrize("encap", ["raw", "udp"])
@pytest.mark.parametrize("case", list(CASES))
def test_tshark_decrypts_and_authenticates_our_packets(hosts: TwoHosts, case: str, encap: str) -> None:
    reason = tshark.available()
    if reason:
        pytest.skip(reason)
    h = hosts
    cipher, ksize, ts_cipher, digest, dsize = CASES[case]
    args: list[str] = []
    ckey = dkey = b""
    if cipher:
        path = h.key("c.key", ksize)
        ckey = path.read_bytes()
        args += [f"--cipher={cipher}", f"--cipher-keyfile={path}"]
    if digest:
        path = h.key("d.key", dsize)
        dkey = path.read_bytes()
        args += [f"--digest={digest}", f"--digest-keyfile={path}"]
    if encap == "udp":
        args.append("--encap=udp")
    h.sa_pair(*args)
    a_in, b_in = h.tunnels()
    pcap = h.tmp / "wire.pcap"

    def captured() -> bool:
        """Five pings A -> B captured on B's link (a new capture each attempt); whether all were answered."""
        cap = h.b.popen(
            ["tcpdump", "-i", h.links[1], "-w", str(pcap), "-U", "--immediate-mode", "esp or udp port 4500"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert cap.stderr is not None
        cap.stderr.readline()
        try:
            return h.a.sh(f"ping -c 5 -i 0.1 -W 2 -s 300 -I {a_in} {b_in}", check=False).returncode == 0
        finally:
            time.sleep(0.3)
            cap.send_signal(signal.SIGINT)
            cap.wait(timeout=10)

    # tried again only on replies B's kernel failed to send (tests/support/icmp.py)
    assert icmp.answered(captured, lambda: icmp.counters(h.b.ns)), "the pings were not all answered"
    if encap == "udp":  # one SA per direction, each with its own keys (h.sa_pair)
        crev = (h.tmp / "c.key.rev").read_bytes() if cipher else b""
        drev = (h.tmp / "d.key.rev").read_bytes() if digest else b""
        back = EspSa(h.b_pub, h.a_pub, 0x1001, ts_cipher, crev, digest, drev)
    else:
        back = EspSa(h.b_pub, h.a_pub, 0x1000, ts_cipher, ckey, digest, dkey)
    sas = [EspSa(h.a_pub, h.b_pub, 0x1000, ts_cipher, ckey, digest, dkey), back]
    rows = tshark.decode(pcap, sas, ["esp.spi", "esp.sequence", "esp.icv_good", "esp.icv_bad", "ip.src",
                                     "ip.dst", "icmp.type", "data.len"], "esp and icmp")  # fmt: skip
    assert len(rows) == 10, rows  # 5 requests and 5 replies
    for spi, seq, good, bad, src, dst, icmp_type, _dlen in rows:
        assert int(spi, 16) in {sa.spi for sa in sas} and int(seq) >= 1
        assert good == "1" and bad in ("", "0"), f"tshark says the ICV is not good: {good!r} {bad!r}"
        outer_src, inner_src = src.split(",")[:2]
        outer_dst, inner_dst = dst.split(",")[:2]
        assert {outer_src, outer_dst} == {h.a_pub, h.b_pub}
        assert {inner_src, inner_dst} == {a_in, b_in}
        assert icmp_type in ("8", "0")
    assert sorted(r[6] for r in rows) == ["0"] * 5 + ["8"] * 5
