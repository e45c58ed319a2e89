"""Interoperability with scapy's independent ESP implementation (`scapy.layers.ipsec`), tunnel mode.

For every algorithm both support, IPv4 and IPv6 inside and outside, with and without ESN:
- a packet our SA seals is byte-for-byte the packet scapy seals with the same SPI, sequence number and IV
  (so padding, IV placement, AAD and ICV coverage all agree), and scapy decrypts it to our inner packet;
- a packet scapy seals (its own random IV) decrypts with our SA to scapy's inner packet.

Key formats agree with the Linux kernel's: for AES-GCM, AES-CTR and ChaCha20-Poly1305 the salt or nonce is
the last four bytes of the key in both. Not supported by scapy 2.x, so not tested here: AES-GCM with an 8-
or 12-byte ICV (scapy's AEAD path always emits a 16-byte tag and cannot verify a shorter one; see
`test_gcm_short_icv_is_the_truncated_full_tag` for what is checked instead).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers import ipsec as scapy_ipsec
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.packet import Packet, Raw

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Burst, Deliver, Outbound
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel


@dataclass(frozen=True)
class Cipher:
    ours: str
    scapy: str
    key_len: int  # salt included


@dataclass(frozen=True)
class Auth:
    ours: str
    scapy: str
    key_len: int


CIPHERS = (
    Cipher("aes-cbc", "AES-CBC", 16),
    Cipher("aes-cbc", "AES-CBC", 24),
    Cipher("aes-cbc", "AES-CBC", 32),
    Cipher("aes-ctr", "AES-CTR", 20),
    Cipher("aes-ctr", "AES-CTR", 28),
    Cipher("aes-ctr", "AES-CTR", 36),
    Cipher("3des", "3DES", 24),
    Cipher("blowfish", "Blowfish", 16),
    Cipher("cast5", "CAST", 16),
    Cipher("null", "NULL", 0),
)
AUTHS = (
    Auth("md5", "HMAC-MD5-96", 16),
    Auth("sha1", "HMAC-SHA1-96", 20),
    Auth("sha256", "SHA2-256-128", 32),
    Auth("sha384", "SHA2-384-192", 48),
    Auth("sha512", "SHA2-512-256", 64),
)
AEADS = (
    Cipher("aes-gcm", "AES-GCM", 20),
    Cipher("aes-gcm", "AES-GCM", 28),
    Cipher("aes-gcm", "AES-GCM", 36),
    Cipher("chacha20-poly1305", "CHACHA20-POLY1305", 36),
)
SUITES: list[tuple[Cipher, Auth | None]] = [(c, a) for c in CIPHERS for a in AUTHS] + [
    (c, None) for c in AEADS
]
# scapy's SecurityAssociation is unannotated; calls go through Any so strict mypy accepts them.
ScapySA: Any = scapy_ipsec.SecurityAssociation
FAMILIES = {4: ("10.0.0.1", "10.0.0.2"), 6: ("2001:db8::1", "2001:db8::2")}


def _suite_id(suite: tuple[Cipher, Auth | None]) -> str:
    cipher, auth = suite
    return f"{cipher.ours}-{cipher.key_len}" + (f"+{auth.ours}" if auth else "")


def _key(cipher: Cipher) -> bytes:
    if cipher.ours == "3des":
        while True:  # our SA refuses weak and degenerate 3DES keys; a random one almost never is
            key = os.urandom(24)
            if key[:8] != key[8:16] and key[8:16] != key[16:]:
                return key
    return os.urandom(cipher.key_len)


def _inner(version: int) -> Packet:
    body = UDP(sport=5000, dport=53) / Raw(os.urandom(37))
    if version == 4:
        return IP(src="192.168.1.1", dst="192.168.2.1", ttl=9) / body
    return IPv6(src="fd00:1::1", dst="fd00:2::1", hlim=9) / body


def _outer(version: int, src: str, dst: str) -> Packet:
    return IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)


def _wrap(version: int, src: str, dst: str, esp_bytes: bytes) -> Packet:
    """The received outer packet scapy will decrypt, as it arrives off the wire."""
    if version == 4:
        return IP(bytes(IP(src=src, dst=dst, proto=50) / Raw(esp_bytes)))
    return IPv6(bytes(IPv6(src=src, dst=dst, nh=50) / Raw(esp_bytes)))


@pytest.mark.parametrize("suite", SUITES, ids=_suite_id)
@pytest.mark.parametrize("outer", [4, 6], ids=["outer4", "outer6"])
@pytest.mark.parametrize("inner_version", [4, 6], ids=["inner4", "inner6"])
@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
def test_interop_with_scapy(
    suite: tuple[Cipher, Auth | None], outer: int, inner_version: int, esn: bool
) -> None:
    cipher, auth = suite
    key = _key(cipher)
    auth_key = os.urandom(auth.key_len) if auth else b""
    # The remote's address sorts below ours, so counter-mode IVs carry the direction bit (RFC 4106 §3.1
    # lets the sender choose the IV; scapy takes whatever it is given).
    local, remote = FAMILIES[outer][1], FAMILIES[outer][0]
    config = SAConfig(
        0x12345678, remote, local, cipher.ours, key, auth.ours if auth else None, auth_key, esn=esn
    ).validated()
    start = ((7 << 32) | 0xFFFFFFF0) if esn else 41  # with ESN, cross a 2^32 boundary
    ours_out = SecurityAssociation(config, 0.0, seq_out=start)
    ours_in = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, esn=esn, top=start))
    theirs = ScapySA(
        ESP, spi=0x12345678, crypt_algo=cipher.scapy, crypt_key=key,
        auth_algo=auth.scapy if auth else None, auth_key=auth_key or None,
        tunnel_header=_outer(outer, local, remote),
    )  # fmt: skip
    nh = 4 if inner_version == 4 else 41
    for step in (1, 17):  # with ESN, one each side of the 2^32 boundary
        seq = start + step
        ours_out.seq_out = seq - 1
        inner = _inner(inner_version)
        raw_inner = bytes(inner)
        # Ours -> scapy, byte for byte.
        packet = ours_out.encrypt(raw_inner, nh, 0.0, lambda _e: None)
        assert isinstance(packet, bytes)
        iv = packet[esp.HEADER_LEN : esp.HEADER_LEN + ours_out.cipher.iv_len]
        expected = theirs.encrypt(inner, seq_num=seq & 0xFFFFFFFF, iv=iv, esn_en=esn, esn=seq >> 32)
        assert bytes(expected[ESP]) == packet
        decrypted = theirs.decrypt(_wrap(outer, local, remote, packet), esn_en=esn, esn=seq >> 32)
        assert bytes(decrypted) == raw_inner
        # Scapy -> ours.
        inner2 = _inner(inner_version)
        seq2 = seq + 1
        sealed = theirs.encrypt(inner2, seq_num=seq2 & 0xFFFFFFFF, esn_en=esn, esn=seq2 >> 32)
        assert ours_in.decrypt(bytes(sealed[ESP]), 0.0, lambda _e: None) == (bytes(inner2), nh)


@pytest.mark.parametrize("icv_len", [8, 12])
@pytest.mark.parametrize("esn", [False, True])
def test_gcm_short_icv_is_the_truncated_full_tag(icv_len: int, esn: bool) -> None:
    """RFC 4106 §6: the 8- and 12-byte ICVs are the first bytes of the GCM tag. Scapy only produces the
    16-byte form, so our short-ICV packet must be scapy's packet with the tag cut, and we must open scapy's
    packet so cut."""
    key = os.urandom(20)
    config = SAConfig(0x2222, "10.0.0.1", "10.0.0.2", f"aes-gcm-{icv_len}", key, esn=esn).validated()
    start = (3 << 32) | 5 if esn else 5
    sender = SecurityAssociation(config, 0.0, seq_out=start)
    receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, esn=esn, top=start))
    theirs = ScapySA(ESP, spi=0x2222, crypt_algo="AES-GCM", crypt_key=key,
                     tunnel_header=IP(src="10.0.0.2", dst="10.0.0.1"))  # fmt: skip
    inner = _inner(4)
    packet = sender.encrypt(bytes(inner), 4, 0.0, lambda _e: None)
    assert isinstance(packet, bytes)
    seq = start + 1
    full = bytes(
        theirs.encrypt(inner, seq_num=seq & 0xFFFFFFFF, iv=packet[8:16], esn_en=esn, esn=seq >> 32)[ESP]
    )
    assert packet == full[: len(full) - 16 + icv_len]
    inner2 = _inner(4)
    seq2 = seq + 1
    full2 = bytes(theirs.encrypt(inner2, seq_num=seq2 & 0xFFFFFFFF, esn_en=esn, esn=seq2 >> 32)[ESP])
    assert receiver.decrypt(full2[: len(full2) - 16 + icv_len], 0.0, lambda _e: None) == (bytes(inner2), 4)


_ENGINE_SUITES = [
    s for s in SUITES if _suite_id(s) in ("aes-cbc-16+sha256", "aes-gcm-20", "chacha20-poly1305-36")
]


@pytest.mark.parametrize("outer", [4, 6], ids=["outer4", "outer6"])
@pytest.mark.parametrize("suite", _ENGINE_SUITES, ids=_suite_id)
def test_engine_output_decrypts_in_scapy_and_back(suite: tuple[Cipher, Auth | None], outer: int) -> None:
    """The same through the engine: its Outbound, outer addresses included, as scapy receives it; and
    scapy's packet through `Engine.receive` to the tunnel device."""
    cipher, auth = suite
    key, auth_key = _key(cipher), os.urandom(auth.key_len) if auth else b""
    local, remote = FAMILIES[outer]
    digest = auth.ours if auth else None
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", local, remote))
    engine.sad.add(
        SecurityAssociation(
            SAConfig(0x5000, remote, local, cipher.ours, key, digest, auth_key).validated(), 0.0
        )
    )
    engine.sad.add(
        SecurityAssociation(
            SAConfig(0x6000, local, remote, cipher.ours, key, digest, auth_key).validated(), 0.0
        )
    )

    def scapy_sa(spi: int, src: str, dst: str) -> Any:
        return ScapySA(ESP, spi=spi, crypt_algo=cipher.scapy, crypt_key=key,
                       auth_algo=auth.scapy if auth else None, auth_key=auth_key or None,
                       tunnel_header=_outer(outer, src, dst))  # fmt: skip

    inner = _inner(4)
    out = engine.send("t0", bytes(inner), 1.0)
    assert isinstance(out, Outbound)
    src, dst = str(ipaddress.ip_address(out.src)), str(ipaddress.ip_address(out.dst))
    assert (src, dst) == (local, remote)
    assert bytes(scapy_sa(0x5000, local, remote).decrypt(_wrap(outer, src, dst, out.payload))) == bytes(inner)
    reply = _inner(6)
    sealed = scapy_sa(0x6000, remote, local).encrypt(reply)
    received = engine.receive(packed(sealed.src), packed(sealed.dst), bytes(sealed[ESP]), 1.0)
    assert received == Deliver("t0", bytes(reply))


@pytest.mark.parametrize("suite", _ENGINE_SUITES, ids=_suite_id)
def test_engine_batches_against_scapy(suite: tuple[Cipher, Auth | None]) -> None:
    """The batch branches against the independent reference: 40 packets through `send_batch` all open in
    scapy, in order, with sequence numbers 1 to 40; 40 scapy packets of one SA through one
    `receive_batch` (the `decrypt_many` branch for AEAD) come out as scapy's inner packets, in order."""
    cipher, auth = suite
    key, auth_key = _key(cipher), os.urandom(auth.key_len) if auth else b""
    local, remote = FAMILIES[4]
    digest = auth.ours if auth else None
    engine = Engine()
    engine.tunnels.add(Tunnel("t0", local, remote))
    for spi, dst, src in ((0x5000, remote, local), (0x6000, local, remote)):
        engine.sad.add(
            SecurityAssociation(SAConfig(spi, dst, src, cipher.ours, key, digest, auth_key).validated(), 0.0)
        )

    def scapy_sa(spi: int, src: str, dst: str) -> Any:
        return ScapySA(ESP, spi=spi, crypt_algo=cipher.scapy, crypt_key=key,
                       auth_algo=auth.scapy if auth else None, auth_key=auth_key or None,
                       tunnel_header=_outer(4, src, dst))  # fmt: skip

    packets = [_inner(4 if i % 3 else 6) for i in range(40)]
    inners = [bytes(p) for p in packets]
    out = engine.send_batch("t0", inners, 1.0)
    theirs = scapy_sa(0x5000, local, remote)
    wrapped = [_wrap(4, local, remote, p) for b in out if isinstance(b, Burst) for p in b.payloads]
    assert [p[ESP].seq for p in wrapped] == list(range(1, 41))
    assert [bytes(theirs.decrypt(p)) for p in wrapped] == inners
    mine = scapy_sa(0x6000, remote, local)
    sealed = [mine.encrypt(p, seq_num=i + 1) for i, p in enumerate(packets)]
    deliver, rejects = engine.receive_batch(
        packed(remote), packed(local), [bytes(s[ESP]) for s in sealed], 1.0
    )
    assert not rejects and deliver == {"t0": inners}
