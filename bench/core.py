"""Per-packet cost of the ESP core: encapsulation and decapsulation through `SecurityAssociation.encrypt`
and `.decrypt`, beside the bare `cryptography` calls doing the same cryptographic work (same key sizes,
same payload length including ESP's padding and trailer), at 64, 1400 and 8000-byte inner packets; then
the whole pipelines, `Engine.send_batch` and `Engine.receive_batch` (ESP-in-UDP, batches of 64, as the
data plane calls them), per packet.

Figures only; nothing is asserted. Run: `.venv/bin/python bench/core.py [--quick] [--engine]`.
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

from ipsec_tunnel.core.engine import Engine
from ipsec_tunnel.core.events import SAEvent
from ipsec_tunnel.core.plane import Burst
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation, UdpEncap
from ipsec_tunnel.core.tunnel import Tunnel

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
# The pipelines: Engine.send_batch and Engine.receive_batch, one SA each way, ESP-in-UDP

ENGINE_SUITES = (SUITES[0], SUITES[2], SUITES[3])  # AES-GCM-128, ChaCha20-Poly1305, AES-CBC/SHA-256
ENGINE_BATCH = 64  # packets per call
_A, _B = "10.0.0.1", "10.0.0.2"


def _engine(suite: Suite, local: str, remote: str) -> Engine:
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", local, remote))
    for dst, src in ((remote, local), (local, remote)):
        config = SAConfig(
            0x1000, dst, src, suite.cipher, suite.key, suite.digest, suite.digest_key, encap=UdpEncap()
        ).validated()
        engine.sad.add(SecurityAssociation(config, 0.0))
    return engine


def _inner_ipv4(size: int) -> bytes:
    """An IPv4 packet of `size` bytes (no options, its total length true), as a tunnel device gives it."""
    header = bytes(
        [0x45, 0, size >> 8, size & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 1, 1, 192, 168, 2, 1]
    )
    return header + os.urandom(size - len(header))


def engine_batches(suite: Suite, size: int, count: int) -> tuple[float, float]:
    """Seconds per packet through `send_batch` and through `receive_batch`, batches of ENGINE_BATCH."""
    batch = [_inner_ipv4(size)] * ENGINE_BATCH
    calls = max(1, count // ENGINE_BATCH)
    sender = _engine(suite, _A, _B)
    start = time.perf_counter()
    sent = [sender.send_batch("t0", batch, 0.0) for _ in range(calls)]
    send_time = (time.perf_counter() - start) / (calls * ENGINE_BATCH)
    bursts = [b for out in sent for b in out if isinstance(b, Burst)]
    receiver = _engine(suite, _B, _A)
    receive = receiver.receive_batch
    start = time.perf_counter()
    for burst in bursts:
        receive(burst.src, burst.dst, burst.payloads, 0.0, 0, udp=True, sport=4500)
    receive_time = (time.perf_counter() - start) / (calls * ENGINE_BATCH)
    assert receiver.rx_accepted == calls * ENGINE_BATCH  # every packet really went through
    return send_time, receive_time


def engine_table(quick: bool, repeat: int) -> None:
    header = f"{'pipeline':<20} {'bytes':>5} | {'send_batch':>10} | {'receive_batch':>13}"
    print()
    print(f"Engine pipelines, ESP-in-UDP, batches of {ENGINE_BATCH}; microseconds per packet")
    print(header)
    print("-" * len(header))
    for suite in ENGINE_SUITES:
        for size in (64, 1400):
            count = _count(size, quick)
            send = receive = float("inf")
            for _ in range(repeat):
                s, r = engine_batches(suite, size, count)
                send, receive = min(send, s), min(receive, r)
            print(f"{suite.label:<20} {size:>5} | {send * 1e6:10.2f} | {receive * 1e6:13.2f}")


# ---------------------------------------------------------------------------------------------------------


def _count(size: int, quick: bool) -> int:
    base = {64: 20000, 1400: 10000, 8000: 3000}[size]
    return base // 10 if quick else base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer packets per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is shown")
    parser.add_argument("--engine", action="store_true", help="the engine pipelines' table only")
    args = parser.parse_args(argv)
    if args.engine:
        engine_table(args.quick, args.repeat)
        return 0
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
    engine_table(args.quick, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
