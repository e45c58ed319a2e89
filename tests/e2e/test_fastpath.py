"""The fast path end to end: TCP transfers through ipsecd with every offload (UDP GSO/GRO, TUN virtio-net
headers, coalesced TCP writes, TSO split in userspace) and with none, checked by SHA-256 at both ends;
and the ESP that the fast path puts on the wire, decrypted and checked by tshark."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from tests.support import tshark
from tests.support.hosts import IpsecHost, TwoHosts
from tests.support.tshark import EspSa

pytestmark = pytest.mark.root

PORT = 5001
SIZE = 24 * 1024 * 1024
SAMPLE = 1024 * 1024  # what the tshark checks capture
MODES = {
    "offloads": [],  # the default: everything the kernel supports, TUN super-packets split in userspace
    "no-tso": ["--no-tso"],  # the kernel segments what goes into TUN
    "no-offload": ["--no-offload"],
    "no-gro-gso": ["--no-gso", "--no-gro"],
    "tun-read-ahead": ["--tun-read-ahead=1m"],  # the device read ahead of encryption (daemon/txahead.py)
}


def restart(h: TwoHosts, flags: list[str]) -> None:
    for host in (h.a, h.b):
        host.stop()
        host.start(*flags)


def drops(host: IpsecHost) -> dict[str, int]:
    """The drops by reason, but for the AQM's (CoDel's signal to a bulk transfer, by design)."""
    stats = json.loads(host.adm("-j", "stats").stdout)
    counts = [(k, v) for part in ("receive", "send") for k, v in stats[part].items()]
    return {k: v for k, v in counts if k not in ("accepted", "aqm") and v}


def transfer(h: TwoHosts, dst: str, size: int = SIZE) -> None:
    """`size` random bytes from A to `dst` on B over TCP; both ends' byte count and SHA-256 must agree."""
    recv = h.b.popen([sys.executable, "-m", "tests.support.transfer", "recv", str(PORT),
                      "::" if ":" in dst else "0.0.0.0"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert recv.stdout is not None
    assert recv.stdout.readline().strip() == "listening"
    cmd = [sys.executable, "-m", "tests.support.transfer", "send", dst, str(PORT), str(size)]
    send = h.a.popen(cmd, stdout=subprocess.PIPE, text=True)
    sent, _ = send.communicate(timeout=180)
    got, _ = recv.communicate(timeout=60)
    assert send.returncode == 0 and recv.returncode == 0
    assert sent.split() == got.split(), "the data arrived changed or incomplete"
    assert int(sent.split()[0]) == size


@pytest.mark.parametrize("encap", ["udp", "raw"])
@pytest.mark.parametrize("mode", list(MODES))
def test_tcp_transfer_sha256(hosts: TwoHosts, mode: str, encap: str) -> None:
    h = hosts
    restart(h, MODES[mode])
    h.sa_pair(
        "--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}", *(["--encap=udp"] if encap == "udp" else [])
    )
    _a_in, b_in = h.tunnels()
    transfer(h, b_in)
    assert drops(h.a) == {} and drops(h.b) == {}
    for host in (h.a, h.b):
        assert "refused" not in host.log.read_text(), host.log.read_text()


def test_tcp_transfer_ipv6_inner_cbc(hosts: TwoHosts) -> None:
    """IPv6 segments coalesce too; a cipher with HMAC and random IVs goes the same way."""
    h = hosts
    h.sa_pair("--cipher=aes-cbc", f"--cipher-keyfile={h.key('c', 16)}", "--digest=sha256",
              f"--digest-keyfile={h.key('d', 32)}", "--encap=udp")  # fmt: skip
    _a_in, b_in = h.tunnels(inner6=True)
    transfer(h, b_in, 8 * 1024 * 1024)
    assert drops(h.a) == {} and drops(h.b) == {}


def test_tcp_transfer_ipv6_outer_no_tso(hosts6: TwoHosts) -> None:
    h = hosts6
    restart(h, ["--no-tso"])
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}", "--encap=udp")
    _a_in, b_in = h.tunnels()
    transfer(h, b_in, 8 * 1024 * 1024)
    assert drops(h.a) == {} and drops(h.b) == {}


# -- what the fast path puts on the wire, as tshark sees it ------------------------------------------------


def unsegment(pcap: Path, out: Path) -> tuple[int, int]:
    """Write `pcap` again with every UDP GSO datagram (captured before the kernel segmented it) cut into
    the ESP packets it carries: the segment size is where the next sequence number of the same SPI
    (the datagram's first) starts. Returns (datagrams read, GSO datagrams found)."""
    packets = []
    gso_seen = 0
    pkts = rdpcap(str(pcap))
    for p in pkts:
        data = bytes(p[UDP].payload) if UDP in p else b""
        seq = int.from_bytes(data[4:8], "big")
        size = data.find(data[:4] + (seq + 1).to_bytes(4, "big"), 8) if len(data) >= 8 else -1
        if size < 0:
            assert len(data) < 1500, "a big datagram that is not a GSO burst of ESP packets"
            packets.append(p)
            continue
        gso_seen += 1
        for i in range(0, len(data), size):
            seg = Ether(src=p[Ether].src, dst=p[Ether].dst) / IP(
                src=p[IP].src, dst=p[IP].dst, tos=p[IP].tos, ttl=p[IP].ttl
            ) / UDP(sport=p[UDP].sport, dport=p[UDP].dport) / Raw(data[i : i + size])  # fmt: skip
            seg.time = p.time
            packets.append(seg)
    wrpcap(str(out), packets)
    return len(pkts), gso_seen


def decode_checked(pcap: Path, sas: list[EspSa], fields: list[str]) -> list[list[str]]:
    """tshark.decode with Wireshark's IP and TCP checksum validation on (status 1: good)."""
    args = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE", "-o", "ip.check_checksum:TRUE",
            "-o", "tcp.check_checksum:TRUE", "-Y", "esp", "-T", "fields", "-E", "separator=|",
            "-E", "occurrence=a"]  # fmt: skip
    for sa in sas:
        args += ["-o", f"uat:esp_sa:{sa.uat()}"]
    for f in fields:
        args += ["-e", f]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [line.split("|") for line in proc.stdout.splitlines() if line]


@pytest.mark.parametrize("mode", ["offloads", "no-tso"])
@pytest.mark.parametrize("encap", ["udp", "raw"])
def test_tshark_checks_fast_path_traffic(hosts: TwoHosts, mode: str, encap: str) -> None:
    reason = tshark.available()
    if reason:
        pytest.skip(reason)
    h = hosts
    restart(h, MODES[mode])
    key = h.key("k", 20)
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={key}", *(["--encap=udp"] if encap == "udp" else []))
    _a_in, b_in = h.tunnels()
    pcap = h.tmp / "wire.pcap"
    cap = h.b.popen(["tcpdump", "-i", h.links[1], "-w", str(pcap), "-U", "--immediate-mode", "-B", "131072",
                     "esp or udp port 4500"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert cap.stderr is not None
    cap.stderr.readline()
    try:
        transfer(h, b_in, SAMPLE)
    finally:
        time.sleep(0.3)
        cap.send_signal(signal.SIGINT)
        _, err = cap.communicate(timeout=10)
    lost = int(re.search(rb"(\d+) packets? dropped by kernel", err).group(1))  # type: ignore[union-attr]
    if encap == "udp":
        flat = h.tmp / "flat.pcap"
        _total, bursts = unsegment(pcap, flat)
        assert bursts > 0, "no UDP GSO burst seen: the fast path was not used"
        pcap = flat
    # Over UDP one SA per direction, B's with a key of its own (h.sa_pair); raw ESP a --duplex pair.
    back = (0x1001, key.with_name("k.rev")) if encap == "udp" else (0x1000, key)
    sas = [EspSa(h.a_pub, h.b_pub, 0x1000, "aes-gcm/16", key.read_bytes()),
           EspSa(h.b_pub, h.a_pub, back[0], "aes-gcm/16", back[1].read_bytes())]  # fmt: skip
    rows = decode_checked(pcap, sas, ["ip.src", "esp.sequence", "esp.icv_good", "ip.checksum.status",
                                      "tcp.checksum.status", "tcp.len"])  # fmt: skip
    assert len(rows) > 300, "too little traffic captured"
    seqs = []
    payload = 0
    for src, seq, good, ip_status, tcp_status, tcp_len in rows:
        assert good == "1", f"tshark says the ICV is not good: {good!r}"
        assert set(ip_status.split(",")) == {"1"}, f"bad IP header checksum: {ip_status}"
        assert tcp_status == "1", f"bad inner TCP checksum: {tcp_status!r}"
        if src.split(",")[0] == h.a_pub:
            seqs.append(int(seq))
            payload += int(tcp_len or 0)
    repeated = len(seqs) - len(set(seqs))
    assert not repeated, f"{repeated} of {len(seqs)} sequence numbers repeat: (key, nonce) reused"
    # The capture may show a packet a few places early (a busy machine, the veth's queues): fine for
    # the peer's replay window; going back further than a burst is not.
    late = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(seqs)) if b < a - 64]
    assert not late, f"sequence numbers go back by more than a burst: {late[:5]} of {len(seqs)}"
    if not lost:  # tcpdump kept up: every packet is there, one sequence number each
        assert sorted(seqs) == list(range(min(seqs), min(seqs) + len(seqs))), "sequence numbers skipped"
        assert payload >= SAMPLE, (seqs[0], len(seqs), payload)  # every byte as ordinary TCP segments
