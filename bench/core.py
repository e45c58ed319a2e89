"""Per-packet cost of the ESP core: encapsulation and decapsulation through `SecurityAssociation.encrypt`
and `.decrypt`, beside the bare `cryptography` calls doing the same cryptographic work (same key sizes,
same payload length including ESP's padding and trailer), at 64, 1400 and 8000-byte inner packets.

Figures only; nothing is asserted. Run: `.venv/bin/python bench/core.py [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import cryptography
from cryptography.hazmat.decrepit.ciphers import algorithms as old_algorithms
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ipsec_tunnel.core.events import SAEvent
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation

SIZES = (64, 1400, 8000)


@dataclass(frozen=True)
class Suite:
    label: str
    cipher: str
    key: bytes
    digest: str | None = None
    digest_key: bytes = b""


SUITES = (
    Suite("aes-gcm-128", "aes-gcm", os.urandom(20)),
    Suite("aes-gcm-256", "aes-gcm", os.urandom(36)),
    Suite("chacha20-poly1305", "chacha20-poly1305", os.urandom(36)),
    Suite("aes-cbc-128/sha256", "aes-cbc", os.urandom(16), "sha256", os.urandom(32)),
    Suite("aes-cbc-128/sha1", "aes-cbc", os.urandom(16), "sha1", os.urandom(20)),
    Suite("aes-ctr-128/sha256", "aes-ctr", os.urandom(20), "sha256", os.urandom(32)),
    Suite("3des/sha1", "3des", bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123"), "sha1",
          os.urandom(20)),
    Suite("null/sha256", "null", b"", "sha256", os.urandom(32)),
)  # fmt: skip


def _emit(_event: SAEvent) -> None:
    pass


def _config(suite: Suite) -> SAConfig:
    return SAConfig(
        0x1000, "10.0.0.2", "10.0.0.1", suite.cipher, suite.key, suite.digest, suite.digest_key
    ).validated()


def _inner(size: int) -> bytes:
    return bytes([0x45]) + os.urandom(size - 1)


def _time(op: Callable[[int], None], count: int, repeat: int) -> float:
    """Best seconds per call of op(i) for i in range(count), over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        op(count)
        best = min(best, (time.perf_counter() - start) / count)
    return best


# ---------------------------------------------------------------------------------------------------------
# Ours


def ours_encap(suite: Suite, size: int, count: int, repeat: int) -> float:
    inner = _inner(size)
    sa = SecurityAssociation(_config(suite), 0.0)
    encrypt = sa.encrypt

    def run(n: int) -> None:
        for _ in range(n):
            encrypt(inner, 4, 0.0, _emit)

    return _time(run, count, repeat)


def ours_decap(suite: Suite, size: int, count: int, repeat: int) -> float:
    config = _config(suite)
    sender = SecurityAssociation(config, 0.0)
    inner = _inner(size)
    packets = [sender.encrypt(inner, 4, 0.0, _emit) for _ in range(count)]
    sealed = [p for p in packets if isinstance(p, bytes)]
    best = float("inf")
    for _ in range(repeat):
        receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(config.replay_window))
        decrypt = receiver.decrypt
        start = time.perf_counter()
        for packet in sealed:
            decrypt(packet, 0.0, _emit)
        best = min(best, (time.perf_counter() - start) / count)
        assert receiver.packets == count  # every packet really went through
    return best


# ---------------------------------------------------------------------------------------------------------
# Bare `cryptography`: the same primitive calls, no ESP framing, no SA bookkeeping


def _payload_len(suite: Suite, size: int) -> int:
    block = {"aes-cbc": 16, "3des": 8}.get(suite.cipher, 4)
    return size + (-(size + 2)) % block + 2  # RFC 4303 §2.4 padding


def _hash(name: str) -> hashes.HashAlgorithm:
    return hashes.SHA256() if name == "sha256" else hashes.SHA1()


def _block_cipher(
    suite: Suite,
) -> tuple[CipherAlgorithm, int, Callable[[bytes], modes.ModeWithInitializationVector | modes.ModeWithNonce]]:
    if suite.cipher == "aes-cbc":
        return algorithms.AES(suite.key), 16, modes.CBC
    if suite.cipher == "3des":
        return old_algorithms.TripleDES(suite.key), 8, modes.CBC
    return algorithms.AES(suite.key[:-4]), 16, modes.CTR  # RFC 3686: counter block of 16 bytes


def bare_encap(suite: Suite, size: int, count: int, repeat: int) -> float:
    plain = os.urandom(_payload_len(suite, size))
    aad = os.urandom(8)
    if suite.cipher in ("aes-gcm", "chacha20-poly1305"):
        aead = AESGCM(suite.key[:-4]) if suite.cipher == "aes-gcm" else ChaCha20Poly1305(suite.key[:-4])
        nonce = os.urandom(12)

        def run_aead(n: int) -> None:
            for _ in range(n):
                aead.encrypt(nonce, plain, aad)

        return _time(run_aead, count, repeat)
    assert suite.digest is not None
    mac = hmac.HMAC(suite.digest_key, _hash(suite.digest))
    if suite.cipher == "null":

        def run_mac(n: int) -> None:
            for _ in range(n):
                h = mac.copy()
                h.update(plain)
                h.finalize()

        return _time(run_mac, count, repeat)
    algorithm, iv_len, mode = _block_cipher(suite)

    def run_cipher(n: int) -> None:
        for _ in range(n):
            iv = os.urandom(iv_len)
            enc = Cipher(algorithm, mode(iv)).encryptor()
            ct = enc.update(plain) + enc.finalize()
            h = mac.copy()
            h.update(ct)
            h.finalize()

    return _time(run_cipher, count, repeat)


def bare_decap(suite: Suite, size: int, count: int, repeat: int) -> float:
    plain = os.urandom(_payload_len(suite, size))
    aad = os.urandom(8)
    if suite.cipher in ("aes-gcm", "chacha20-poly1305"):
        aead = AESGCM(suite.key[:-4]) if suite.cipher == "aes-gcm" else ChaCha20Poly1305(suite.key[:-4])
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, plain, aad)

        def run_aead(n: int) -> None:
            for _ in range(n):
                aead.decrypt(nonce, sealed, aad)

        return _time(run_aead, count, repeat)
    assert suite.digest is not None
    mac = hmac.HMAC(suite.digest_key, _hash(suite.digest))
    tag = mac.copy()
    tag.update(plain)
    icv = tag.finalize()
    if suite.cipher == "null":

        def run_mac(n: int) -> None:
            for _ in range(n):
                h = mac.copy()
                h.update(plain)
                h.verify(icv)

        return _time(run_mac, count, repeat)
    algorithm, iv_len, mode = _block_cipher(suite)
    iv = os.urandom(iv_len)

    def run_cipher(n: int) -> None:
        for _ in range(n):
            h = mac.copy()
            h.update(plain)
            h.verify(icv)
            dec = Cipher(algorithm, mode(iv)).decryptor()
            dec.update(plain)
            dec.finalize()

    return _time(run_cipher, count, repeat)


# ---------------------------------------------------------------------------------------------------------


def _count(size: int, quick: bool) -> int:
    base = {64: 20000, 1400: 10000, 8000: 3000}[size]
    return base // 10 if quick else base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer packets per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is shown")
    args = parser.parse_args(argv)
    print(
        f"ipsec_tunnel core bench: Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__}, {platform.machine()}; "
        f"best of {args.repeat}; microseconds per packet"
    )
    header = (
        f"{'algorithm':<20} {'bytes':>5} | {'encap':>8} {'bare':>8} {'ratio':>6} | "
        f"{'decap':>8} {'bare':>8} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for suite in SUITES:
        for size in SIZES:
            count = _count(size, args.quick)
            enc = enc_bare = dec = dec_bare = float("inf")
            for _ in range(args.repeat):  # interleaved, so a busy machine slows both sides alike
                enc = min(enc, ours_encap(suite, size, count, 1))
                enc_bare = min(enc_bare, bare_encap(suite, size, count, 1))
                dec = min(dec, ours_decap(suite, size, count, 1))
                dec_bare = min(dec_bare, bare_decap(suite, size, count, 1))
            print(
                f"{suite.label:<20} {size:>5} | "
                f"{enc * 1e6:8.2f} {enc_bare * 1e6:8.2f} {enc / enc_bare:5.2f}x | "
                f"{dec * 1e6:8.2f} {dec_bare * 1e6:8.2f} {dec / dec_bare:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
