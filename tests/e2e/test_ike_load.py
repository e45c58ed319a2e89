"""An IKE_SA_INIT flood at a live ipsecd must not stall its data plane: the ping RTT through an existing
(manual) tunnel is measured idle and while ~200 IKE_SA_INIT/s arrive on port 500, each costing ipsecd a
Diffie-Hellman; the figures are printed (`-s`) and the flood's RTT bounded. Also a fuzz smoke test:
thousands of mutated datagrams at ports 500 and 4500, after which the tunnel still works and the drops
are counted in `ipsecadm stats`."""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.support import icmp
from tests.support.hosts import TwoHosts

pytestmark = pytest.mark.root
RATE = 200  # IKE_SA_INIT per second


def _tunnel(h: TwoHosts) -> tuple[str, str]:
    key = h.key("gcm.key", 20)
    h.sa_pair("--cipher=aes-gcm", f"--cipher-keyfile={key}")
    return h.tunnels()


def _init_message(h: TwoHosts, proposal: str) -> bytes:
    """A real IKE_SA_INIT from B to A (made by the ike package as an initiator)."""
    from ipsec_tunnel.ike import Ike, PeerConfig, Send

    ike = Ike()
    ike.add_peer(PeerConfig(name="x", local_addr=h.b_pub, remote_addr=h.a_pub, psk=b"flood-psk",
                            local_nets=("10.0.2.0/24",), remote_nets=("10.0.1.0/24",),
                            proposals=(proposal,)))  # fmt: skip
    ike.initiate("x", 0.0)
    sends = [e for e in ike.events() if isinstance(e, Send)]
    assert sends
    return sends[0].data


def _rtts(h: TwoHosts, b_in: str, count: int = 60) -> tuple[list[float], int]:
    """The RTTs of `count` pings A -> B, and how many of the missing ones B's kernel failed to reply to
    (the replies another namespace's queued ICMP can make fail: tests/support/icmp.py)."""
    before = icmp.counters(h.b.ns)
    out = h.a.sh(f"ping -c {count} -i 0.05 -W 1 -I 10.0.1.1 {b_in}", check=False).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    return rtts, min(count - len(rtts), (icmp.counters(h.b.ns) - before).out_errors)


_FLOOD = """
import socket, sys, time
msg = bytes.fromhex(sys.argv[1]); dst = sys.argv[2]; rate = int(sys.argv[3]); secs = float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.monotonic(); n = 0
while time.monotonic() - t0 < secs:
    m = n.to_bytes(8, "big") + msg[8:]   # a new initiator SPI each time: a new half-open SA, a new DH
    s.sendto(m, (dst, 500)); n += 1
    time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
print(n)
"""


# Measured here (2 cores shared with other work, load 2-7): x25519 idle median 0.84-0.94 ms, under flood
# 0.91-1.24 ms (max 9-21); MODP-2048 (one core saturated with DH, ~2.4 ms each) idle 0.90-1.0 ms, under
# flood 6.3-13.9 ms (max 30-47), no ping lost. The bounds below leave room for a busy machine.
# A DH thread does not help: cryptography holds the GIL through the DH (a busy DH thread made the loop
# thread's wake-ups 7.8 ms late, median), so IKE stays in the loop, one DH's worth per turn.
@pytest.mark.parametrize(
    ("proposal", "slack_ms"), [("aes128gcm16-prfsha256-x25519", 10.0), ("aes256-sha256-modp2048", 30.0)]
)
def test_ike_sa_init_flood_does_not_stall_the_data_plane(
    hosts: TwoHosts, proposal: str, slack_ms: float
) -> None:
    h = hosts
    _a_in, b_in = _tunnel(h)
    psk = h.tmp / "flood.psk"
    psk.write_text("flood-psk")
    h.a.adm("ike", "add", "flood", f"--local={h.a_pub}", f"--remote={h.b_pub}", f"--psk-file={psk}",
            "--local-net=10.0.1.0/24", "--remote-net=10.0.2.0/24", f"--proposals={proposal}")  # fmt: skip
    idle, idle_excused = _rtts(h, b_in)
    assert len(idle) == 60 - idle_excused
    msg = _init_message(h, proposal)
    flood = h.b.popen([sys.executable, "-c", textwrap.dedent(_FLOOD), msg.hex(), h.a_pub, str(RATE), "6"],
                      stdout=subprocess.PIPE, text=True)  # fmt: skip
    loaded, excused = _rtts(h, b_in, 80)
    sent, _ = flood.communicate(timeout=30)
    stats = json.loads(h.a.adm("stats", "-j").stdout)
    print(
        f"\n{proposal}: {sent.strip()} IKE_SA_INIT at {RATE}/s; ping RTT ms idle median "
        f"{statistics.median(idle):.3f} max {max(idle):.3f}; under flood median "
        f"{statistics.median(loaded):.3f} max {max(loaded):.3f}; ipsecd IKE {stats.get('ike')}"
    )
    assert len(loaded) >= 80 - excused  # no ping lost but replies B's kernel failed to send
    assert stats["ike"]["received"] > 0
    assert statistics.median(loaded) < statistics.median(idle) + slack_ms
    # A liveness bound, not a speed figure: a ping held for a second is a stalled data plane. (250 ms
    # was seen exceeded, 647 ms, on a 2-core machine shared with benchmarks, with nothing stalled.)
    assert max(loaded) < 1000.0


FUZZ_EACH = 50_000  # mutated datagrams to port 500 and as many to 4500: 100,000 (issue 15, proof 12)


def _mutants(seed: bytes, n: int, rng: random.Random) -> Iterator[bytes]:
    for _ in range(n):
        m = bytearray(seed)
        kind = rng.randrange(4)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            m = m[: rng.randrange(len(m))]
        elif kind == 2:  # garbage
            m = bytearray(rng.randbytes(rng.randint(0, 600)))
        else:  # lengths and payload types
            for off in (16, 17, 18, 19, 24, 25, 26, 27, 28, 30, 31):
                if off < len(m) and rng.random() < 0.3:
                    m[off] = rng.randrange(256)
        yield bytes(m)


_SEND = """
import socket, sys
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
for line in sys.stdin:
    port, hexdata = line.split()
    s.sendto(bytes.fromhex(hexdata), (dst, int(port))); n += 1
print(n)
"""


def test_fuzz_100000_datagrams_at_500_and_4500(hosts: TwoHosts) -> None:
    h = hosts
    _a_in, b_in = _tunnel(h)
    psk = h.tmp / "fuzz.psk"
    psk.write_text("fuzz-psk")
    h.a.adm("ike", "add", "fz", f"--local={h.a_pub}", f"--remote={h.b_pub}", f"--psk-file={psk}",
            "--local-net=10.0.1.0/24", "--remote-net=10.0.2.0/24")  # fmt: skip
    rng = random.Random(15)
    seed = _init_message(h, "aes128gcm16-prfsha256-x25519")
    lines = []
    for m in _mutants(seed, FUZZ_EACH, rng):
        lines.append(f"500 {m.hex() or '00'}")
    for m in _mutants(seed, FUZZ_EACH, rng):
        lines.append(f"4500 {(bytes(4) + m).hex()}")  # with the non-ESP marker: to IKE
    sender = h.b.popen([sys.executable, "-c", textwrap.dedent(_SEND), h.a_pub], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = sender.communicate("\n".join(lines) + "\n", timeout=120)
    assert out.strip() == str(2 * FUZZ_EACH)
    assert h.a.daemon is not None and h.a.daemon.poll() is None  # still running
    assert icmp.all_answered(h.a.ns, b_in, h.b.ns, 3, "-i", "0.2", "-W", "2", "-I", "10.0.1.1")
    ike = json.loads(h.a.adm("stats", "-j").stdout)["ike"]
    assert ike["received"] > 1000
    assert sum(ike["drops"].values()) > 1000, ike
    assert "IKE:" in h.a.adm("stats").stdout
    assert "Traceback" not in h.a.log.read_text()
