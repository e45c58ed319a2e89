"""Hostile networks for tests of live daemons: a lossy, reordering, duplicating path between two ipsecd
hosts (no netem needed), and a garbage flood.

Topology (`LossyHosts`): host A (192.0.2.1/24) -- router R (192.0.2.254, 198.51.100.254) -- host B
(198.51.100.2/24), each in its own network namespace, A and B running ipsecd. R forwards in the kernel
(ip_forward=1), except ESP (IP protocol 50) and ESP-in-UDP (UDP port 4500): nftables drops those in R's
forward chain and a userspace relay (`python -m tests.support.lossy relay`, run inside R) takes
them instead. The relay reads every such packet from an AF_PACKET socket on the interface it arrived on
(packet sockets see a frame before netfilter does), cuts UDP GSO bursts into their datagrams as a router
would, may duplicate a packet or hold it back behind later ones, and sends it on through an IP_HDRINCL
raw socket, unchanged but for cleared UDP checksums (same outer addresses, so the SAs need no
rewriting). Loss is nftables again: `numgen random` in R's output chain drops relayed packets at the
given rate, counted. The relay prints its counters as one JSON line when it gets SIGTERM;
`LossyHosts.figures` gathers them with the nftables counters. IPv4 outer only.

`python -m tests.support.lossy flood` sends garbage ESP or ESP-in-UDP as fast as one process can.
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .hosts import IpsecHost, TwoHosts
from .netns import veth_pair

ETH_P_IP = 0x0800
PACKET_HOST = 0  # linux/if_packet.h: addressed to this host (not outgoing, not a copy of a broadcast)
SOL_PACKET = 263
PACKET_VNET_HDR = 15  # linux/if_packet.h: each frame comes after a struct virtio_net_hdr
VNET_HDR = struct.Struct("=BBHHHH")  # linux/virtio_net.h: flags, gso_type, hdr_len, gso_size, csum_*
ETH_HLEN = 14
GSO_NONE = 0
GSO_UDP_L4 = 5  # VIRTIO_NET_HDR_GSO_UDP_L4: a UDP GSO super-packet (UDP_SEGMENT)
PROTO_ESP = 50
PROTO_UDP = 17
NAT_T_PORT = 4500
MAX_HOLD = 0.003  # seconds a held packet waits at most when no later packet overtakes it
TABLE = "lossy"


def diverted(packet: bytes | bytearray | memoryview) -> bool:
    """Whether the relay carries this IPv4 packet: ESP, or UDP from or to port 4500 (unfragmented or
    first fragment), exactly what R's nftables forward rules drop."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return False
    proto = packet[9]
    if proto == PROTO_ESP:
        return True
    if proto != PROTO_UDP or (int.from_bytes(packet[6:8], "big") & 0x1FFF):
        return False
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 4:
        return False
    sport = int.from_bytes(packet[ihl : ihl + 2], "big")
    dport = int.from_bytes(packet[ihl + 2 : ihl + 4], "big")
    return NAT_T_PORT in (sport, dport)


def segments(vnet: bytes, packet: bytes) -> list[bytes] | None:
    """The packets a router would forward for one frame read with its virtio-net header: a UDP GSO
    super-packet (an ESP-in-UDP burst, which crosses a veth whole) cut into its datagrams; None for a
    super-packet of another kind. UDP checksums are cleared (none, RFC 768): the sender's may be partial
    (checksum offload), and the relay cannot finish it the way a NIC would without recomputing it."""
    _flags, gso_type, _hdr_len, gso_size, _start, _offset = VNET_HDR.unpack(vnet)
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != PROTO_UDP:
        return [packet] if gso_type == GSO_NONE else None
    header = bytearray(packet[:ihl])
    sport_dport = packet[ihl : ihl + 4]
    payload = packet[ihl + 8 :]
    if gso_type == GSO_NONE:
        step = len(payload) or 1
    elif gso_type == GSO_UDP_L4 and gso_size:
        step = gso_size
    else:
        return None
    out = []
    for off in range(0, len(payload), step) if payload else [0]:
        chunk = payload[off : off + step]
        header[2:4] = (ihl + 8 + len(chunk)).to_bytes(2, "big")
        if gso_type != GSO_NONE:
            header[4:6] = bytes(2)  # the kernel picks an ID for each
        udp = sport_dport + (8 + len(chunk)).to_bytes(2, "big") + bytes(2)
        out.append(bytes(header) + udp + chunk)
    return out


@dataclass
class Direction:
    """One direction through the relay: its counters and the packets it holds back."""

    name: str
    taken: int = 0  # packets read from the ingress interface
    sent: int = 0  # copies sent on (originals and duplicates) that nftables let through
    duplicated: int = 0  # extra copies sent
    held: int = 0  # packets held back behind later ones
    reordered: int = 0  # held packets that at least one later packet overtook
    lost: int = 0  # sends nftables dropped (EPERM from the output hook): the loss
    errors: int = 0  # sends the kernel refused for another reason
    bursts: int = 0  # UDP GSO super-packets cut into datagrams
    unsplit: int = 0  # super-packets of another kind, dropped
    held_queue: deque[tuple[int, float, bytes, int, bool]] = field(default_factory=deque)

    def counters(self) -> dict[str, int]:
        """The counters as a dict."""
        names = ("taken", "sent", "duplicated", "held", "reordered", "lost", "errors", "bursts", "unsplit")
        return {k: getattr(self, k) for k in names}


class Relay:
    """Carries diverted packets between two interfaces with random duplication and reordering."""

    def __init__(
        self,
        ifaces: tuple[str, str],
        *,
        dup: float,
        reorder: float,
        seed: int,
        labels: tuple[str, str] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.dup = dup
        self.reorder = reorder
        self.out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sel = selectors.DefaultSelector()
        self.dirs: dict[str, Direction] = {}
        self.socks: list[socket.socket] = []
        names = labels or ifaces
        for (src, _dst), (here, there) in zip((ifaces, ifaces[::-1]), (names, names[::-1]), strict=True):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            sock.setsockopt(
                SOL_PACKET, PACKET_VNET_HDR, 1
            )  # SOCK_RAW only: frames with their Ethernet header
            sock.bind((src, ETH_P_IP))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
            self.socks.append(sock)
            direction = Direction(f"{here}->{there}")
            self.dirs[direction.name] = direction
            self.sel.register(sock, selectors.EVENT_READ, direction)
        self.running = True
        self.buf = bytearray(65536)

    def _send(self, d: Direction, packet: bytes) -> None:
        try:
            self.out.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
            d.sent += 1
        except PermissionError:
            d.lost += 1
        except OSError:
            d.errors += 1

    def _release(self, d: Direction, now: float, *, flush: bool = False) -> None:
        """Send the held packets whose turn has come: enough later packets went past, or time is up."""
        q = d.held_queue
        ready = [e for e in q if flush or e[0] <= d.taken or e[1] <= now]
        for entry in ready:
            q.remove(entry)
            _count, _deadline, packet, taken_at, duplicate = entry
            if d.taken > taken_at and not duplicate:
                d.reordered += 1
            self._send(d, packet)

    def _hold(self, d: Direction, packet: bytes, now: float, *, duplicate: bool) -> None:
        """Hold `packet` back until 1 to 8 later packets have gone past (or MAX_HOLD has passed)."""
        d.held_queue.append((d.taken + self.rng.randint(1, 8), now + MAX_HOLD, packet, d.taken, duplicate))

    def _forward(self, d: Direction, packet: bytes, now: float) -> None:
        d.taken += 1
        r = self.rng.random()
        if r < self.reorder:
            d.held += 1
            self._hold(d, packet, now, duplicate=False)
        else:
            self._send(d, packet)
        if self.rng.random() < self.dup:
            d.duplicated += 1
            if self.rng.random() < 0.5:  # half the duplicates come right after, half later
                self._send(d, packet)
            else:
                self._hold(d, packet, now, duplicate=True)
        self._release(d, now)

    def _read(self, sock: socket.socket, d: Direction) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                n, addr = sock.recvfrom_into(self.buf)
            except BlockingIOError:
                return
            if addr[2] != PACKET_HOST or n < VNET_HDR.size + ETH_HLEN:  # our own sends going out, broadcasts
                continue
            packet = bytes(self.buf[VNET_HDR.size + ETH_HLEN : n])
            if not diverted(packet):
                continue
            cut = segments(bytes(self.buf[: VNET_HDR.size]), packet)
            if cut is None:
                d.unsplit += 1
                continue
            if len(cut) > 1:
                d.bursts += 1
            for segment in cut:
                self._forward(d, segment, now)

    def run(self) -> None:
        """Serve until `stop`."""
        while self.running:
            held = any(d.held_queue for d in self.dirs.values())
            for key, _mask in self.sel.select(timeout=MAX_HOLD / 2 if held else 0.2):
                assert isinstance(key.fileobj, socket.socket)
                self._read(key.fileobj, key.data)
            now = time.monotonic()
            for d in self.dirs.values():
                if d.held_queue:
                    self._release(d, now)
        for d in self.dirs.values():
            self._release(d, time.monotonic(), flush=True)

    def stop(self, _sig: int = 0, _frame: FrameType | None = None) -> None:
        """Stop after the current round (a signal handler)."""
        self.running = False

    def counters(self) -> dict[str, dict[str, int]]:
        """Every direction's counters."""
        return {name: d.counters() for name, d in self.dirs.items()}


def relay_main(argv: list[str]) -> int:
    """`relay IF1 IF2 [--dup P] [--reorder P] [--seed N] [--labels A B]`: run until SIGTERM, then print
    the counters as JSON."""
    p = argparse.ArgumentParser(prog="lossy relay")
    p.add_argument("if1")
    p.add_argument("if2")
    p.add_argument("--dup", type=float, default=0.0)
    p.add_argument("--reorder", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", nargs=2, default=None, help="names for the two sides in the counters")
    args = p.parse_args(argv)
    labels = (args.labels[0], args.labels[1]) if args.labels else None
    relay = Relay((args.if1, args.if2), dup=args.dup, reorder=args.reorder, seed=args.seed, labels=labels)
    signal.signal(signal.SIGTERM, relay.stop)
    signal.signal(signal.SIGINT, relay.stop)
    print("ready", flush=True)
    relay.run()
    print(json.dumps(relay.counters()), flush=True)
    return 0


# -- a garbage flood ----------------------------------------------------------------------------------


def garbage(rng: random.Random, *, spi: int, udp: bool) -> bytes:
    """One hostile ESP (or ESP-in-UDP) payload: random bytes of random length, half of them under the real
    SPI (so they reach the replay check and the ICV), with keepalives and non-ESP markers on UDP."""
    size = rng.choice((0, 1, 7, 8, 9, 16, 40, 64, 100, 200, 576, 1000, 1400, rng.randrange(1401)))
    body = rng.randbytes(size)
    kind = rng.random()
    if udp and kind < 0.05:
        return b"\xff"  # RFC 3948 keepalive
    if udp and kind < 0.10:
        return bytes(4) + body  # non-ESP marker (IKE)
    if kind < 0.55 and size >= 8:
        return spi.to_bytes(4, "big") + body[4:]
    return body


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = PROTO_ESP) -> bytes:
    """An IPv4 packet for an IP_HDRINCL raw socket (the kernel fills in the ID and the checksum)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + payload


def flood_main(argv: list[str]) -> int:
    """`flood DST --src A [--spoof NET] [--udp] [--seconds S] [--spi N] [--seed N]`: send garbage at DST
    as fast as one process can for S seconds, then print {"sent", "refused", "seconds"} as JSON.

    Raw ESP packets come from --src under the real SPI and, with --spoof, half of them from random
    addresses of NET (IP_HDRINCL); ESP-in-UDP ones from --src to port 4500."""
    p = argparse.ArgumentParser(prog="lossy flood")
    p.add_argument("dst")
    p.add_argument("--src", required=True)
    p.add_argument("--spoof", default=None, help="an IPv4 /24 to pick spoofed sources from")
    p.add_argument("--udp", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--spi", type=lambda v: int(v, 0), default=0x1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    batch: list[tuple[bytes, tuple[str, int]]] = []
    if args.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(4096):
            batch.append((garbage(rng, spi=args.spi, udp=True), (args.dst, NAT_T_PORT)))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        prefix = args.spoof.split("/")[0].rsplit(".", 1)[0] if args.spoof else None
        for _ in range(4096):
            src = args.src
            if prefix is not None and rng.random() < 0.5:
                src = f"{prefix}.{rng.randrange(3, 254)}"
            batch.append((ipv4_packet(src, args.dst, garbage(rng, spi=args.spi, udp=False)), (args.dst, 0)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = refused = 0
    send = sock.sendto
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        for packet, addr in batch:
            try:
                send(packet, addr)
            except OSError:
                refused += 1
        sent += len(batch)
    print(json.dumps({"sent": sent - refused, "refused": refused, "seconds": time.monotonic() - start}))
    return 0


def main(argv: list[str]) -> int:
    """`python -m tests.support.lossy relay|flood ...`."""
    commands = {"relay": relay_main, "flood": flood_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m tests.support.lossy relay|flood ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


@dataclass(frozen=True)
class Impairment:
    """What R does to ESP and ESP-in-UDP: loss (by nftables), duplication and reordering (by the relay),
    each a probability per packet and direction."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    seed: int = 0


class LossyHosts(TwoHosts):
    """Hosts A and B running ipsecd, joined through router R that impairs their ESP (see the module)."""

    def __init__(self, impairment: Impairment = Impairment()) -> None:
        super().__init__()
        self.impairment = impairment
        self.a_pub, self.b_pub = "192.0.2.1", "198.51.100.2"
        self.r = IpsecHost("R", self.tmp)  # a namespace only: R runs no ipsecd
        self.r_links: tuple[str, str] = ("", "")
        self.relay: subprocess.Popen[str] | None = None
        self.relay_counters: dict[str, dict[str, int]] | None = None

    def open(self) -> None:
        """Create A, R and B with R routing between them through the impairing relay, start both daemons."""
        for host in (self.a, self.r, self.b):
            host.ns.create()
        a_if, r_a = veth_pair(self.a.ns, self.r.ns, f"{self.a_pub}/24", "192.0.2.254/24")
        r_b, b_if = veth_pair(self.r.ns, self.b.ns, "198.51.100.254/24", f"{self.b_pub}/24")
        self.links = (a_if, b_if)
        self.r_links = (r_a, r_b)
        self.a.sh("ip route add 198.51.100.0/24 via 192.0.2.254")
        self.b.sh("ip route add 192.0.2.0/24 via 198.51.100.254")
        self.r.sh("sysctl -qw net.ipv4.ip_forward=1")
        self._nft()
        self._start_relay()
        self.a.start()
        self.b.start()

    def _nft(self) -> None:
        permille = round(self.impairment.loss * 1000)
        rules = f"""
table inet {TABLE} {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        meta l4proto esp counter drop
        udp sport {NAT_T_PORT} counter drop
        udp dport {NAT_T_PORT} counter drop
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        meta l4proto esp jump impair
        udp sport {NAT_T_PORT} jump impair
        udp dport {NAT_T_PORT} jump impair
    }}
    chain impair {{
        numgen random mod 1000 < {permille} counter drop
        counter accept
    }}
}}
"""
        path = self.tmp / "lossy.nft"
        path.write_text(rules)
        self.r.sh(["nft", "-f", str(path)])

    def _start_relay(self) -> None:
        imp = self.impairment
        cmd = [sys.executable, "-m", "tests.support.lossy", "relay", *self.r_links, f"--dup={imp.dup}",
               f"--reorder={imp.reorder}", f"--seed={imp.seed}", "--labels", "a", "b"]  # fmt: skip
        self.relay = self.r.popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the relay did not start: {line!r}")

    def stop_relay(self) -> dict[str, dict[str, int]]:
        """Stop the relay and return its counters per direction ("rX->rY")."""
        if self.relay is not None:
            self.relay.send_signal(signal.SIGTERM)
            out, _ = self.relay.communicate(timeout=10)
            self.relay = None
            lines = out.strip().splitlines()
            self.relay_counters = json.loads(lines[-1]) if lines else {}
        return self.relay_counters or {}

    def nft_counters(self) -> dict[str, list[int]]:
        """Packets per nftables rule with a counter, by chain: [forward drops...] and impair [lost, kept]."""
        data = json.loads(self.r.sh(["nft", "-j", "list", "table", "inet", TABLE]).stdout)
        out: dict[str, list[int]] = {}
        for item in data["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    out.setdefault(rule["chain"], []).append(int(expr["counter"]["packets"]))
        return out

    def figures(self) -> dict[str, Any]:
        """The impairment achieved: relay counters per direction, nftables loss, and the rates."""
        relay = self.stop_relay()
        nft = self.nft_counters()
        lost, kept = nft.get("impair", [0, 0])
        sent = sum(d["sent"] for d in relay.values())
        taken = sum(d["taken"] for d in relay.values())
        return {
            "relay": relay,
            "lost": lost,
            "kept": kept,
            "diverted": sum(nft.get("forward", [])),
            "loss_rate": lost / (lost + kept) if lost + kept else 0.0,
            "dup_rate": sum(d["duplicated"] for d in relay.values()) / taken if taken else 0.0,
            "reorder_rate": sum(d["reordered"] for d in relay.values()) / taken if taken else 0.0,
            "relayed": sent,
        }

    def close(self) -> None:
        """Stop the relay and both daemons, delete the three namespaces and the work directory."""
        try:
            if self.relay is not None and self.relay.poll() is None:
                self.relay.kill()
                self.relay.wait(timeout=10)
            self.relay = None
        finally:
            try:
                self.r.ns.delete()
            finally:
                super().close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
