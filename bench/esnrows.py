"""bench/esnrows: what sealing costs per packet for an SA with ESN (AES-CBC + HMAC-SHA-256, AES-GCM), one by
one against the batch way (rows), on the C loops and the pure-Python ones.

Two measures, each three ways in one process, interleaved (A B C C B A per round), the best round of
each: before (one by one as before this change: an ESN AEAD SA through the generic `esp.seal`), one by one
now, and the batch way:
- seal: `SecurityAssociation.encrypt` of each of a batch's inner packets against `encrypt_rows` of the
  batch laid out as rows;
- send: a TCP super-packet (TSO) through the send pipeline, `Engine.send_batch` of the segments
  `gso.split` cuts (before: an ESN SA took no rows) against `send_batch` of the super-packet with its
  virtio-net header (the rows branch, `send._rows`).
Sequence numbers run on from just below 2^32 and cross it; never one used twice. Optionally the same
for an SA without ESN, as the reference. Run: `.venv/bin/python bench/esnrows.py [--rounds 15]` (no
root, no network). See docs/performance.md, "ESN SAs sealed the batch way".
"""

from __future__ import annotations

import argparse
import itertools
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


SUITES = {  # name: (cipher, key bytes, digest)
    "AES-128-CBC + HMAC-SHA-256": ("aes-cbc", 16, "sha256"),
    "AES-128-GCM": ("aes-gcm", 20, None),
}


def _config(suite: str, esn: bool) -> SAConfig:
    cipher, key_len, digest = SUITES[suite]
    digest_key = os.urandom(32) if digest else b""
    return SAConfig(
        0x1000, "192.0.2.2", "192.0.2.1", cipher, os.urandom(key_len), digest, digest_key, esn=esn
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


def _engine(suite: str, esn: bool, seq_out: int) -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", "192.0.2.1", "192.0.2.2"))
    engine.sad.add(SecurityAssociation(_config(suite, esn), 0.0, seq_out=seq_out))
    return engine


def _as_before(sa: SecurityAssociation) -> None:
    """`sa` seals one by one as before this change: an ESN AEAD SA by the generic `esp.seal` (a CBC SA,
    and any SA without ESN, sealed the same way before)."""
    if sa._esn:
        sa._esn_aead_encrypt = None
        sa._seal_one = None


Case = tuple[Callable[[], int], Callable[[], int], Callable[[], int]]


def cases(suite: str, esn: bool, pure: bool) -> dict[str, Case]:
    """name: (one by one as before, one by one now, the batch way), each sealing one round and returning
    how many packets; `pure`: a lone AEAD packet sealed in Python too (not the C seal_aead16_one)."""
    start = (1 << 32) - 20_000 if esn else 1  # crosses 2^32 in the first rounds
    old, single, batch = (SecurityAssociation(_config(suite, esn), 0.0, seq_out=start) for _ in range(3))
    assert batch.seals_rows
    _as_before(old)
    if pure:
        old._seal_one = single._seal_one = None
    inner = [_inner(n) for n in range(SEAL_BATCH)]
    trailer = esp.block_trailer(INNER, esp.NH_IPV4, max(4, batch.cipher.block))
    rows = np.frombuffer(b"".join(p + trailer for p in inner), np.uint8).reshape(SEAL_BATCH, -1)

    def seal_each(sa: SecurityAssociation) -> Callable[[], int]:
        def run() -> int:
            encrypt = sa.encrypt
            for _ in range(BATCHES):
                for p in inner:
                    encrypt(p, esp.NH_IPV4, 1.0, print)
            return BATCHES * SEAL_BATCH

        return run

    def seal_rows() -> int:
        for _ in range(BATCHES):
            assert batch.encrypt_rows([(rows, INNER)], 1.0, print) is not None
        return BATCHES * SEAL_BATCH

    packet, offload = _super_packet()
    segments = gso.split(packet, offload)
    old_engine, split_engine, rows_engine = (_engine(suite, esn, start) for _ in range(3))
    for sa in old_engine.sad:
        _as_before(sa)
    if pure:
        for sa in [*old_engine.sad, *split_engine.sad]:
            sa._seal_one = None

    def send_split(engine: Engine) -> Callable[[], int]:  # cut by gso.split, sealed one by one
        def run() -> int:
            for _ in range(BATCHES):
                engine.send_batch("t0", gso.split(packet, offload), 1.0)
            return BATCHES * len(segments)

        return run

    def send_rows() -> int:
        for _ in range(BATCHES):
            out = rows_engine.send_batch("t0", [packet], 1.0, {0: offload})
            assert len(out) == 1 and len(out[0].payloads) == len(segments)  # type: ignore[union-attr]
        return BATCHES * len(segments)

    return {
        "seal": (seal_each(old), seal_each(single), seal_rows),
        "send (TSO)": (send_split(old_engine), send_split(split_engine), send_rows),
    }


def _us_per_packet(call: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = call()
    return (time.perf_counter() - start) / count * 1e6


def _measure(suite: str, esn: bool, pure: bool, rounds: int) -> dict[str, list[float]]:
    """measure: best us per packet of (one by one as before, one by one now, the batch way), on the C
    loops or (`pure`) the pure-Python ones, as IPSEC_TUNNEL_PURE=1 chooses them; each round runs the
    three in the order A B C C B A."""
    native = esp._native  # type: ignore[attr-defined]
    if pure:
        esp._native = None  # type: ignore[attr-defined]
    try:
        best: dict[str, list[float]] = {}
        for name, calls in cases(suite, esn, pure).items():
            for call in calls:
                call()  # warm
            times: list[list[float]] = [[], [], []]
            for _ in range(rounds):
                for k in (0, 1, 2, 2, 1, 0):
                    times[k].append(_us_per_packet(calls[k]))
            best[name] = [min(t) for t in times]
        return best
    finally:
        esp._native = native  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="ABBA rounds (default 15)")
    parser.add_argument("--also-no-esn", action="store_true", help="also SAs without ESN, for reference")
    args = parser.parse_args()
    paths = [False, True] if framing.native is not None else [True]
    print(f"{INNER}-byte inner IPv4 packets, {SEGMENTS}x{MSS}-byte TSO segments;")
    print(f"best of {args.rounds} rounds (A B C C B A), us per packet")
    head = ("suite", "SA", "path", "measure", "before", "one by one", "rows")
    print("{:27s} {:7s} {:12s} {:11s} {:>9s} {:>10s} {:>9s}".format(*head))
    for suite, esn, pure in itertools.product(SUITES, [True, False] if args.also_no_esn else [True], paths):
        for name, (before, each, rows) in _measure(suite, esn, pure, args.rounds).items():
            sa, path = "ESN" if esn else "no ESN", "pure Python" if pure else "C extension"
            print(f"{suite:27s} {sa:7s} {path:12s} {name:11s} {before:6.2f} us {each:7.2f} us {rows:6.2f} us")


if __name__ == "__main__":
    main()
