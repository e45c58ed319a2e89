"""ike.crypto against published vectors (RFC 7748, RFC 5903, RFC 4231/4868, RFC 3526) and independent
straightforward computations (prf+, SKEYSEED, AUTH)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from ipsec_tunnel.ike.constants import DhGroup, Integ, Prf, Protocol
from ipsec_tunnel.ike.crypto import (
    MODP_PRIMES,
    DhError,
    DhKey,
    SkCipher,
    child_keys,
    derive_ike_keys,
    prf,
    prf_plus,
    psk_auth,
    signed_octets,
)
from ipsec_tunnel.ike.proposals import parse_one

H = bytes.fromhex


# RFC 7748 §5.2, first X25519 test vector
def test_x25519_rfc7748_5_2() -> None:
    k = DhKey(DhGroup.CURVE25519, H("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"))
    out = k.shared(H("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"))
    assert out == H("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")


# RFC 7748 §6.1: Alice and Bob
def test_x25519_rfc7748_6_1() -> None:
    alice = DhKey(DhGroup.CURVE25519, H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = DhKey(DhGroup.CURVE25519, H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public == H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public == H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.shared(bob.public) == shared == bob.shared(alice.public)


def test_x25519_low_order_point_refused() -> None:
    """RFC 8031 §2: an all-zero result (here from the point 0) must be refused."""
    k = DhKey(DhGroup.CURVE25519)
    with pytest.raises(DhError):
        k.shared(bytes(32))


# RFC 5903 §8.1 (ECP-256) and §8.2 (ECP-384): KE data is x || y, g^ir the x coordinate
ECP = {
    DhGroup.ECP_256: (
        "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    ),
    DhGroup.ECP_384: (
        "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194",
        "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA"
        "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571"
        "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746",
    ),
}


@pytest.mark.parametrize("group", list(ECP))
def test_ecp_rfc5903(group: int) -> None:
    i, gi, r, gr, gir = ECP[group]  # type: ignore[index]
    ki, kr = DhKey(group, int(i, 16)), DhKey(group, int(r, 16))
    assert ki.public == H(gi) and kr.public == H(gr)
    assert ki.shared(kr.public) == H(gir) == kr.shared(ki.public)


def test_ecp_point_not_on_curve_refused() -> None:
    k = DhKey(DhGroup.ECP_256)
    bad = bytearray(k.public)
    bad[-1] ^= 1
    with pytest.raises(DhError):
        k.shared(bytes(bad))
    with pytest.raises(DhError):
        k.shared(k.public[:-1])


def _pi_times_2_pow(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula in integers."""
    one = 1 << (bits + 64)

    def atan_inv(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            total += sign * (term // (2 * n + 1))
            sign, n = -sign, n + 1
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


@pytest.mark.parametrize(
    ("group", "bits", "k"), [(DhGroup.MODP_2048, 2048, 124476), (DhGroup.MODP_3072, 3072, 1690314)]
)
def test_modp_primes_rfc3526(group: int, bits: int, k: int) -> None:
    """RFC 3526 §3/§4: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k); also scapy's copy."""
    assert MODP_PRIMES[group] == 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_times_2_pow(bits - 130) + k)
    from scapy.layers.tls.crypto import groups

    scapy_group: Any = groups.modp2048 if group == DhGroup.MODP_2048 else groups.modp3072
    assert MODP_PRIMES[group] == scapy_group.m


@pytest.mark.parametrize("group", [DhGroup.MODP_2048, DhGroup.MODP_3072])
def test_modp_exchange_and_range(group: int) -> None:
    a, b = DhKey(group, 12345), DhKey(group)
    p = MODP_PRIMES[group]
    assert len(a.public) == len(b.public) == p.bit_length() // 8
    assert a.shared(b.public) == b.shared(a.public)
    assert int.from_bytes(a.shared(b.public)) == pow(int.from_bytes(b.public), 12345, p)
    n = len(a.public)
    for bad in (bytes(n), (1).to_bytes(n), (p - 1).to_bytes(n), a.public[1:]):
        with pytest.raises(DhError):
            a.shared(bad)


# RFC 4231 §4.2 and §4.3 (test cases 1 and 2), the PRFs of RFC 4868 §2.7.1
RFC4231 = [
    (b"\x0b" * 20, b"Hi There", Prf.HMAC_SHA2_256,
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"\x0b" * 20, b"Hi There", Prf.HMAC_SHA2_384,
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"),
    (b"\x0b" * 20, b"Hi There", Prf.HMAC_SHA2_512,
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (b"Jefe", b"what do ya want for nothing?", Prf.HMAC_SHA2_256,
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "data", "alg", "out"), RFC4231)
def test_prf_rfc4231(key: bytes, data: bytes, alg: int, out: str) -> None:
    assert prf(alg, key, data) == H(out)


def test_prf_plus_independent() -> None:
    """prf+ (RFC 7296 §2.13) against T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n) written out with hmac."""
    key, seed = b"k" * 32, b"seed-bytes" * 7
    t, out = b"", b""
    for n in range(1, 8):
        t = hmac.new(key, t + seed + bytes([n]), hashlib.sha256).digest()
        out += t
    assert prf_plus(Prf.HMAC_SHA2_256, key, seed, 200) == out[:200]
    assert prf_plus(Prf.HMAC_SHA2_256, key, seed, 32) == out[:32]


def test_ike_keys_independent() -> None:
    """SKEYSEED and the SK_* split (RFC 7296 §2.14) for aes256-sha256 (CBC: SK_a present)."""
    spec = parse_one("aes256-sha256-modp2048", Protocol.IKE)
    ni, nr, shared = b"\x01" * 32, b"\x02" * 32, b"\x03" * 256
    keys = derive_ike_keys(spec, ni, nr, shared, 0x1122334455667788, 0x99AABBCCDDEEFF00)
    skeyseed = hmac.new(ni + nr, shared, hashlib.sha256).digest()
    stream = prf_plus(
        Prf.HMAC_SHA2_256, skeyseed, ni + nr + H("1122334455667788") + H("99aabbccddeeff00"), 224
    )
    lens = [32, 32, 32, 32, 32, 32, 32]  # SK_d, ai, ar (HMAC-SHA-256 keys), ei, er (AES-256), pi, pr
    parts, pos = [], 0
    for n in lens:
        parts.append(stream[pos : pos + n])
        pos += n
    assert [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr] == parts
    gcm = derive_ike_keys(parse_one("aes128gcm16-prfsha256-x25519", Protocol.IKE), ni, nr, shared[:32], 1, 2)
    assert (
        len(gcm.sk_ei) == 20 and gcm.sk_ai == b"" and len(gcm.sk_d) == 32
    )  # key + 4-byte salt (RFC 5282 §7)


def test_child_keymat_order() -> None:
    """RFC 7296 §2.17: encr then integ, initiator-to-responder first."""
    ei, ai, er, ar = child_keys(Prf.HMAC_SHA2_256, b"d" * 32, b"n" * 32, b"m" * 32, 36, 0)
    stream = prf_plus(Prf.HMAC_SHA2_256, b"d" * 32, b"n" * 32 + b"m" * 32, 72)
    assert (ei, ai, er, ar) == (stream[:36], b"", stream[36:], b"")
    ei, ai, er, ar = child_keys(Prf.HMAC_SHA2_256, b"d" * 32, b"n" * 32, b"m" * 32, 16, 32)
    stream = prf_plus(Prf.HMAC_SHA2_256, b"d" * 32, b"n" * 32 + b"m" * 32, 96)
    assert (ei, ai, er, ar) == (stream[:16], stream[16:48], stream[48:64], stream[64:])


def test_psk_auth_independent() -> None:
    """RFC 7296 §2.15: prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)."""
    msg, nonce, sk_p, idb = b"message1", b"N" * 32, b"P" * 32, b"\x02\0\0\0peer.example"
    octets = signed_octets(Prf.HMAC_SHA2_256, msg, nonce, sk_p, idb)
    assert octets == msg + nonce + hmac.new(sk_p, idb, hashlib.sha256).digest()
    pad = hmac.new(b"secret", b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert psk_auth(Prf.HMAC_SHA2_256, b"secret", octets) == hmac.new(pad, octets, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "text", ["aes128gcm16-prfsha256-x25519", "aes256-sha256-modp2048", "aes128-sha512-ecp256"]
)
def test_sk_round_trip_and_tamper(text: str) -> None:
    spec = parse_one(text, Protocol.IKE)
    ekey = b"E" * (20 if spec.aead else 16)
    akey = b"" if spec.aead else b"A" * 64
    c = SkCipher(spec, ekey, akey)
    prefix, inner = b"H" * 32, b"inner payload chain" * 3
    iv = b"\0" * c.iv_len
    sealed = c.seal(prefix, inner, iv)
    assert len(sealed) == c.sealed_len(len(inner))
    assert c.open(prefix, sealed) == inner
    for pos in (0, len(sealed) // 2, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[pos] ^= 0x40
        assert c.open(prefix, bytes(bad)) is None
    assert c.open(b"X" + prefix[1:], sealed) is None  # the header is authenticated
    assert c.open(prefix, sealed[:5]) is None
    if not spec.aead:
        assert Integ.HMAC_SHA2_512_256 in spec.integ or c.icv_len == 16  # RFC 4868 truncation
