"""bench/coldcall: what one cipher call, and one SA's seal and open, cost on cold caches.

Each case runs alone after 50 ms asleep (as an idle ping's hop finds the process), the cases
interleaved and their order rotated from round to round; the median of the rounds, in microseconds.
Run: `.venv/bin/python bench/coldcall.py [--rounds 60]` (no root, no network). See docs/performance.md,
"Idle RTT: the cold call, the woken read-ahead turn and the loopback rehearsal".
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation

GAP = 0.05  # seconds asleep before each case


def cases() -> dict[str, tuple[Callable[[], object] | None, Callable[[], object]]]:
    """name: (what runs just before, the call timed)."""
    k1, k2, salt = AESGCM(os.urandom(16)), AESGCM(os.urandom(16)), os.urandom(4)
    ecb = Cipher(algorithms.AES(os.urandom(16)), modes.ECB()).encryptor()
    plain, aad, buf, count = bytes(84), bytes(8), bytearray(100), [0]

    def nonce() -> bytes:  # never the same twice
        count[0] += 1
        return salt + count[0].to_bytes(8, "big")

    def bad() -> None:
        try:
            k1.decrypt(nonce(), bytes(100), aad)
        except InvalidTag:
            pass

    def sa(key: bytes) -> SecurityAssociation:
        config = SAConfig(0x1000, "192.0.2.2", "192.0.2.1", "aes-gcm", key, None, b"").validated()
        return SecurityAssociation(config, 0.0)

    c_seal, py_seal = sa(os.urandom(20)), sa(os.urandom(20))  # keys of their own: no nonce twice
    py_seal._seal_one = None
    key = os.urandom(20)
    sealer, opener = sa(key), sa(key)
    inner = bytes([0x45, 0, 0, 84]) + bytes(80)
    ready = iter([sealer.encrypt(inner, 4, 1.0, print) for _ in range(4000)])  # opened in order

    def seal(by: SecurityAssociation) -> None:
        assert isinstance(by.encrypt(inner, 4, 1.0, print), bytes)

    def open_(by: SecurityAssociation) -> None:
        packet = next(ready)
        assert isinstance(packet, bytes) and by.decrypt(packet, 1.0, print) == (inner, 4)

    def k1_encrypt() -> None:
        k1.encrypt(nonce(), plain, aad)

    def k2_encrypt(wait: float = 0.0) -> None:
        k2.encrypt(nonce(), plain, aad)
        time.sleep(wait)

    return {
        "AESGCM.encrypt, 84 bytes": (None, k1_encrypt),
        "AESGCM.encrypt_into, 84 bytes": (None, lambda: k1.encrypt_into(nonce(), plain, aad, buf)),
        "AESGCM.decrypt, a bad ICV": (None, bad),
        "AES-ECB context kept, update 16 bytes": (None, lambda: ecb.update(bytes(16))),
        "k1.encrypt right after k2.encrypt": (k2_encrypt, k1_encrypt),
        "k1.encrypt 2 ms after k2.encrypt": (lambda: k2_encrypt(0.002), k1_encrypt),
        "SA encrypt, one C call (seal_aead16_one)": (None, lambda: seal(c_seal)),
        "SA encrypt, Python (esp.seal_aead16)": (None, lambda: seal(py_seal)),
        "SA decrypt (esp.open_aead16)": (None, lambda: open_(opener)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    rounds = parser.parse_args().rounds
    table = cases()
    names = list(table)
    cold: dict[str, list[float]] = {name: [] for name in names}
    warm: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before, call = table[name]
            time.sleep(GAP)
            if before is not None:
                before()
            start = time.perf_counter()
            call()
            cold[name].append((time.perf_counter() - start) * 1e6)
            start = time.perf_counter()
            call()
            warm[name].append((time.perf_counter() - start) * 1e6)
    print(f"{'after 50 ms asleep, median of ' + str(rounds):48s} {'cold':>8s} {'again':>8s}")
    for name in names:
        print(f"  {name:46s} {statistics.median(cold[name]):6.1f} us {statistics.median(warm[name]):6.1f} us")


if __name__ == "__main__":
    main()
