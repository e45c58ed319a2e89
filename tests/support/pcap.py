"""Capturing ESP with tcpdump on a test host, and reading the packets of a pcap file (as tcpdump -w writes
it) for tests: IP packets with timestamps."""

from __future__ import annotations

import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .hosts import IpsecHost

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
_ETH_IP = {0x0800, 0x86DD}


def capture_esp(host: IpsecHost, dev: str, path: Path, *, immediate: bool = False) -> subprocess.Popen[bytes]:
    """tcpdump on `dev` of `host` writing the ESP packets it sees to `path` (`immediate`: with
    --immediate-mode), returned once it is listening."""
    mode = ["--immediate-mode"] if immediate else []
    proc = host.popen(["tcpdump", "-i", dev, "-w", str(path), "-U", *mode, "ip proto 50"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    proc.stderr.readline()  # "listening on ..."
    return proc


def stop_capture(proc: subprocess.Popen[bytes]) -> None:
    """Stop a capture (SIGINT) after a moment for the last packets to reach it."""
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)


def ip_packets(path: str | Path) -> Iterator[tuple[float, bytes]]:
    """(timestamp, IP packet) for every IPv4/IPv6 packet in the capture."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if linktype == LINKTYPE_ETHERNET:
            if len(frame) >= 14 and int.from_bytes(frame[12:14], "big") in _ETH_IP:
                yield ts, frame[14:]
        elif linktype == LINKTYPE_LINUX_SLL:
            if len(frame) >= 16 and int.from_bytes(frame[14:16], "big") in _ETH_IP:
                yield ts, frame[16:]
        elif linktype == LINKTYPE_RAW:
            yield ts, frame


def esp_headers(path: str | Path) -> Iterator[tuple[bytes, bytes, int, int, bytes]]:
    """(src, dst, SPI, sequence number, whole IP packet) for every raw ESP packet in an IPv4 capture."""
    for _ts, pkt in ip_packets(path):
        if pkt[0] >> 4 == 4 and pkt[9] == 50:
            ihl = (pkt[0] & 0x0F) * 4
            spi, seq = struct.unpack("!II", pkt[ihl : ihl + 8])
            yield pkt[12:16], pkt[16:20], spi, seq, pkt
