"""ESP with encryption only (RFC 4303 §3.2), as the seed's walk-through creates it (`--cipher=des_ede3-cbc`
without a digest): accepted, no ICV on the wire, and byte-for-byte what scapy's independent ESP produces
with its NULL authentication."""

from __future__ import annotations

import os
from typing import Any

import pytest
from scapy.layers import ipsec as scapy_ipsec
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

from ipsec_tunnel.core import esp
from ipsec_tunnel.core.engine import Engine, packed
from ipsec_tunnel.core.plane import Deliver, Outbound, inner_mtu
from ipsec_tunnel.core.replay import ReplayWindow
from ipsec_tunnel.core.sa import SAConfig, SAError, SecurityAssociation
from ipsec_tunnel.core.tunnel import Tunnel

ScapySA: Any = scapy_ipsec.SecurityAssociation
DES3_KEY = bytes.fromhex("8f3a5c71e2d94b06a7c3e18f5d2b9064c1f7a83e6d5b0e29")
SUITES = [("des_ede3-cbc", "3DES", DES3_KEY), ("aes-cbc", "AES-CBC", os.urandom(16))]


def _config(cipher: str, key: bytes, dst: str = "10.0.0.1", src: str = "10.0.0.2") -> SAConfig:
    return SAConfig(0x1000, dst, src, cipher, key).validated()


def test_the_seed_sa_is_accepted_and_marked_without_integrity() -> None:
    config = _config("des_ede3-cbc", DES3_KEY)
    assert config.digest is None and config.integrity is False
    with_digest = SAConfig(0x1000, "10.0.0.1", "10.0.0.2", "3des", DES3_KEY, "sha1", bytes(20)).validated()
    assert with_digest.integrity is True
    assert SAConfig(0x1000, "10.0.0.1", "10.0.0.2", "aes-gcm", bytes(20)).validated().integrity is True


def test_a_null_cipher_without_a_digest_is_still_refused() -> None:
    with pytest.raises(SAError, match="protects nothing"):
        SAConfig(0x1000, "10.0.0.1", "10.0.0.2", "null").validated()


@pytest.mark.parametrize(("ours", "theirs", "key"), SUITES, ids=[s[0] for s in SUITES])
def test_encryption_only_matches_scapy_both_ways(ours: str, theirs: str, key: bytes) -> None:
    config = _config(ours, key)
    sender = SecurityAssociation(config, 0.0, seq_out=40)
    receiver = SecurityAssociation(config, 0.0, replay=ReplayWindow(64, top=40))
    peer = ScapySA(ESP, spi=0x1000, crypt_algo=theirs, crypt_key=key, auth_algo="NULL",
                   tunnel_header=IP(src="10.0.0.2", dst="10.0.0.1"))  # fmt: skip
    inner = IP(src="192.168.1.1", dst="192.168.2.1") / UDP(sport=1, dport=2) / Raw(os.urandom(29))
    packet = sender.encrypt(bytes(inner), 4, 0.0, lambda _e: None)
    assert isinstance(packet, bytes)
    iv_len = sender.cipher.iv_len
    iv = packet[esp.HEADER_LEN : esp.HEADER_LEN + iv_len]
    expected = bytes(peer.encrypt(inner, seq_num=41, iv=iv)[ESP])
    assert packet == expected  # no ICV: header, IV, ciphertext and nothing after
    assert (len(packet) - esp.HEADER_LEN - iv_len) % sender.cipher.block == 0
    wire = IP(bytes(IP(src="10.0.0.2", dst="10.0.0.1", proto=50) / Raw(packet)))
    assert bytes(peer.decrypt(wire)) == bytes(inner)
    inner2 = IP(src="192.168.2.1", dst="192.168.1.1") / Raw(os.urandom(50))
    sealed = bytes(peer.encrypt(inner2, seq_num=42)[ESP])
    assert receiver.decrypt(sealed, 0.0, lambda _e: None) == (bytes(inner2), 4)


def test_the_engine_carries_encryption_only_traffic_and_sizes_the_mtu_without_an_icv() -> None:
    engines = {}
    for local, remote in (("192.0.2.1", "192.0.2.2"), ("192.0.2.2", "192.0.2.1")):
        e = Engine()
        e.tunnels.add(Tunnel("ipsec1", local, remote))
        config = _config("des_ede3-cbc", DES3_KEY, dst="192.0.2.2", src="192.0.2.1")
        for c in (config, config.reversed()):
            e.sad.add(SecurityAssociation(c, 0.0))
        engines[local] = e
    a, b = engines["192.0.2.1"], engines["192.0.2.2"]
    inner = bytes(IP(src="10.0.1.1", dst="10.0.2.1") / Raw(b"x" * 100))
    out = a.send("ipsec1", inner, 1.0)
    assert isinstance(out, Outbound)
    assert b.receive(out.src, out.dst, out.payload, 1.0) == Deliver("ipsec1", inner)
    sa = a.sad.get(packed("192.0.2.2"), packed("192.0.2.1"), 0x1000)
    assert sa is not None
    with_digest = SecurityAssociation(
        SAConfig(0x1000, "192.0.2.2", "192.0.2.1", "3des", DES3_KEY, "sha1", bytes(20)).validated(), 0.0
    )
    mtu = inner_mtu(sa, 1500)
    assert mtu > inner_mtu(with_digest, 1500)  # no room kept for an ICV it does not carry
    full = bytes(IP(src="10.0.1.1", dst="10.0.2.1", len=mtu) / Raw(b"y" * (mtu - 20)))
    sent = a.send("ipsec1", full, 2.0)
    assert isinstance(sent, Outbound) and 20 + len(sent.payload) <= 1500
