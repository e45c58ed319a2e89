"""bench/esnrows: what sealing costs per packet for an SA with ESN and AES-CBC + HMAC, one by one against
the batch way (rows), on the C loops and the pure-Python ones.

Two measures, each both ways in one process, interleaved ABBA, the best round of each:
- seal: `SecurityAssociation.encrypt` of each of a batch's inner packets (how ESN CBC SAs sealed
  before) against `encrypt_rows` of the batch laid out as rows;
- send: a TCP super-packet (TSO) through the send pipeline, `Engine.send_batch` of the segments
  `gso.split` cuts (before: an ESN CBC SA took no rows) against `send_batch` of the super-packet with its
  virtio-net header (the rows branch, `send._rows`).
Sequence numbers run on from just below 2^32 and cross it; never one used twice. Optionally the same
for an SA without ESN, as the reference. Run: `.venv/bin/python bench/esnrows.py [--rounds 15]` (no
root, no network). See docs/performance.md, "ESN CBC+HMAC sealed the batch way".
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from ipsec_tunnel.core import esp, framing, gso
from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel

BATCHES = 40  # batches per round
SEAL_BATCH = 64  # inner packets per batch (as the daemon reads up to 256 at a time)
INNER = 1400  # bytes of each inner IPv4 packet
MSS = 1386  # a super-packet's segment payload (TCP over a 1,500-byte path through the tunnel)
SEGMENTS = 45  # segments of a super-packet (at most 64 KiB)


def _config(esn: bool) -> SAConfig:
    return SAConfig(
        0x1000, "192.0.2.2", "192.0.2.1", "aes-cbc", os.urandom(16), "sha256", os.urandom(32), esn=esn
    ).validated()


def _inner(n: int) -> bytes:
    return bytes([0x45, 0, INNER >> 8, INNER & 0xFF]) + n.to_bytes(4, "big") * ((INNER - 4) // 4)


def _super_packet() -> tuple[bytes, gso.VnetHeader]:
    """A TCP/IPv4 super-packet of SEGMENTS full segments as Linux hands it to a TSO device."""
    payload = os.urandom(SEGMENTS * MSS)
    total = 40 + len(payload)
    ip = bytearray([0x45, 0, total >> 8, total & 0xFF, 0, 77, 0x40, 0, 63, 6, 0, 0, 10, 0, 1, 1, 10, 0, 2, 1])
    csum = 0xFFFF - gso.fold(sum(int.from_bytes(ip[i : i + 2], "big") for i in range(0, 20, 2)))
    ip[10:12] = csum.to_bytes(2, "big")
    tcp = bytearray((40000).to_bytes(2, "big") + (5201).to_bytes(2, "big") + (1000).to_bytes(4, "big"))
    tcp += (99).to_bytes(4, "big") + bytes([5 << 4, 0x10]) + (500).to_bytes(2, "big") + bytes(4)
    partial = gso.pseudo_sum(bytes(ip[12:16]), bytes(ip[16:20]), 6, 20 + len(payload))
    tcp[16:18] = partial.to_bytes(2, "big")
    return bytes(ip + tcp) + payload, gso.VnetHeader(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 40, MSS, 20, 16)


def _engine(esn: bool, seq_out: int) -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", "192.0.2.1", "192.0.2.2"))
    engine.sad.add(SecurityAssociation(_config(esn), 0.0, seq_out=seq_out))
    return engine


def cases(esn: bool) -> dict[str, tuple[Callable[[], int], Callable[[], int]]]:
    """name: (one by one, the batch way), each sealing one round and returning how many packets."""
    start = (1 << 32) - 20_000 if esn else 1  # crosses 2^32 in the first rounds
    single = SecurityAssociation(_config(esn), 0.0, seq_out=start)
    batch = SecurityAssociation(_config(esn), 0.0, seq_out=start)
    inner = [_inner(n) for n in range(SEAL_BATCH)]
    trailer = esp.block_trailer(INNER, esp.NH_IPV4, 16)
    rows = np.frombuffer(b"".join(p + trailer for p in inner), np.uint8).reshape(SEAL_BATCH, -1)

    def seal_each() -> int:
        encrypt = single.encrypt
        for _ in range(BATCHES):
            for p in inner:
                encrypt(p, esp.NH_IPV4, 1.0, print)
        return BATCHES * SEAL_BATCH

    def seal_rows() -> int:
        for _ in range(BATCHES):
            assert batch.encrypt_rows([(rows, INNER)], 1.0, print) is not None
        return BATCHES * SEAL_BATCH

    packet, offload = _super_packet()
    segments = gso.split(packet, offload)
    split_engine, rows_engine = _engine(esn, start), _engine(esn, start)

    def send_split() -> int:  # what an ESN CBC SA did before: cut by gso.split, sealed one by one
        for _ in range(BATCHES):
            split_engine.send_batch("t0", gso.split(packet, offload), 1.0)
        return BATCHES * len(segments)

    def send_rows() -> int:
        for _ in range(BATCHES):
            out = rows_engine.send_batch("t0", [packet], 1.0, {0: offload})
            assert len(out) == 1 and len(out[0].payloads) == len(segments)  # type: ignore[union-attr]
        return BATCHES * len(segments)

    return {"seal": (seal_each, seal_rows), "send (TSO)": (send_split, send_rows)}


def _us_per_packet(call: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = call()
    return (time.perf_counter() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="ABBA rounds (default 15)")
    parser.add_argument("--also-no-esn", action="store_true", help="also an SA without ESN, for reference")
    args = parser.parse_args()
    native = framing.native
    paths = (
        [("C extension", native), ("pure Python", None)] if native is not None else [("pure Python", None)]
    )
    print(f"AES-128-CBC + HMAC-SHA-256, {INNER}-byte inner IPv4 packets, {SEGMENTS}x{MSS}-byte TSO segments;")
    print(f"best of {args.rounds} ABBA rounds, us per packet")
    print(f"{'SA':7s} {'path':12s} {'measure':11s} {'one by one':>11s} {'batch way':>10s}")
    for esn in [True, False] if args.also_no_esn else [True]:
        for path_name, path in paths:
            esp._native = path  # type: ignore[attr-defined]  # the loops core/esp.py calls: IPSEC_TUNNEL_PURE=1 chooses None
            try:
                table = cases(esn)
                for name, (each, rows) in table.items():
                    each(), rows()  # warm
                    a: list[float] = []
                    b: list[float] = []
                    for _ in range(args.rounds):
                        a.append(_us_per_packet(each))
                        b.append(_us_per_packet(rows))
                        b.append(_us_per_packet(rows))
                        a.append(_us_per_packet(each))
                    sa = "ESN" if esn else "no ESN"
                    print(f"{sa:7s} {path_name:12s} {name:11s} {min(a):8.2f} us {min(b):7.2f} us")
            finally:
                esp._native = native  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
