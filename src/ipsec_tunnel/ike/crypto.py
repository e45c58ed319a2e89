"""IKEv2 cryptography on `cryptography`: Diffie-Hellman groups, PRFs and prf+, key derivation, PSK AUTH
and the SK payload's encryption (RFC 7296 §2.13-2.15, §2.17, §3.14; RFC 5282 for AES-GCM).
"""

from __future__ import annotations

import hmac as _hmac
import struct
import warnings
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.utils import CryptographyDeprecationWarning

from .constants import KEY_PAD, DhGroup, Encr, Integ, Prf
from .proposals import Spec


class DhError(ValueError):
    """A peer's key exchange data that is not a valid public value of its group."""


# RFC 3526 §3 and §4: p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k), g = 2
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
MODP_PRIMES: dict[int, int] = {DhGroup.MODP_2048: _MODP_2048, DhGroup.MODP_3072: _MODP_3072}
_CURVES: dict[int, tuple[ec.EllipticCurve, int]] = {
    DhGroup.ECP_256: (ec.SECP256R1(), 32),  # RFC 5903 §3.1
    DhGroup.ECP_384: (ec.SECP384R1(), 48),  # RFC 5903 §3.2
}
_MODP_PARAMS: dict[int, dh.DHParameters] = {}


class DhKey:
    """Our half of one key exchange: `public` is the KE payload's data, `shared()` gives g^ir."""

    def __init__(self, group: int, private: int | bytes | None = None) -> None:
        with warnings.catch_warnings():  # FFDH is deprecated in `cryptography` 46 but still RFC 7296's MODP
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            self._init(group, private)

    def _init(self, group: int, private: int | bytes | None) -> None:
        self.group = group
        if group in MODP_PRIMES:
            p = MODP_PRIMES[group]
            params = _MODP_PARAMS.get(group)
            if params is None:
                params = _MODP_PARAMS[group] = dh.DHParameterNumbers(p, 2).parameters()
            if private is None:
                self._dh = params.generate_private_key()
            else:
                num = int.from_bytes(private) if isinstance(private, bytes) else private
                pub = dh.DHPublicNumbers(pow(2, num, p), params.parameter_numbers())
                self._dh = dh.DHPrivateNumbers(num, pub).private_key()
            self._len = (p.bit_length() + 7) // 8
            self.public = self._dh.public_key().public_numbers().y.to_bytes(self._len)
        elif group in _CURVES:
            curve, self._len = _CURVES[group]
            if private is None:
                self._ec = ec.generate_private_key(curve)
            else:
                num = int.from_bytes(private) if isinstance(private, bytes) else private
                self._ec = ec.derive_private_key(num, curve)
            nums = self._ec.public_key().public_numbers()
            self.public = nums.x.to_bytes(self._len) + nums.y.to_bytes(self._len)  # RFC 5903 §7: x || y
        elif group == DhGroup.CURVE25519:
            if private is None:
                self._x = x25519.X25519PrivateKey.generate()
            else:
                raw = private if isinstance(private, bytes) else private.to_bytes(32)
                self._x = x25519.X25519PrivateKey.from_private_bytes(raw)
            self.public = self._x.public_key().public_bytes_raw()
        else:
            raise DhError(f"unsupported DH group {group}")

    def shared(self, peer: bytes) -> bytes:
        """g^ir for the peer's public value (RFC 7296 §2.14: MODP padded to the modulus length)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return self._shared(peer)

    def _shared(self, peer: bytes) -> bytes:
        try:
            if self.group in MODP_PRIMES:
                p = MODP_PRIMES[self.group]
                if len(peer) != self._len:
                    raise DhError("MODP public value length")
                y = int.from_bytes(peer)
                if not 1 < y < p - 1:  # RFC 6989 §2.1
                    raise DhError("MODP public value out of range")
                pub = dh.DHPublicNumbers(y, self._dh.parameters().parameter_numbers()).public_key()
                return self._dh.exchange(pub).rjust(self._len, b"\0")
            if self.group in _CURVES:
                if len(peer) != 2 * self._len:
                    raise DhError("ECP public value length")
                curve = _CURVES[self.group][0]
                epub = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer)  # validates
                return self._ec.exchange(ec.ECDH(), epub)  # RFC 5903 §7: the x coordinate
            if len(peer) != 32:
                raise DhError("X25519 public value length")
            out = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        except ValueError as exc:  # includes DhError
            raise DhError(str(exc)) from None
        if not any(out):  # RFC 8031 §2: all-zero output MUST be rejected
            raise DhError("X25519 all-zero shared secret")
        return out


# ---------------------------------------------------------------------------------------------------------
# PRF and prf+


_PRF_HASH: dict[int, type[hashes.HashAlgorithm]] = {
    Prf.HMAC_SHA2_256: hashes.SHA256,  # RFC 4868 §2.1
    Prf.HMAC_SHA2_384: hashes.SHA384,
    Prf.HMAC_SHA2_512: hashes.SHA512,
}
# RFC 4868 §2.1: HMAC-SHA-256-128, -384-192, -512-256; key length = hash output length
_INTEG: dict[int, tuple[type[hashes.HashAlgorithm], int, int]] = {
    Integ.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    Integ.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    Integ.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}
INTEG_DIGEST: dict[int, str] = {
    Integ.HMAC_SHA2_256_128: "sha256",
    Integ.HMAC_SHA2_384_192: "sha384",
    Integ.HMAC_SHA2_512_256: "sha512",
}


def prf(alg: int, key: bytes, data: bytes) -> bytes:
    """prf(key, data): HMAC with the PRF's hash (RFC 4868 §2.1)."""
    h = hmac.HMAC(key, _PRF_HASH[alg]())
    h.update(data)
    return h.finalize()


def prf_len(alg: int) -> int:
    return int(_PRF_HASH[alg]().digest_size)


def prf_plus(alg: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+(K, S) = T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), truncated to `length` (RFC 7296 §2.13)."""
    out = bytearray()
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ output too long")
        t = prf(alg, key, t + seed + bytes([n]))
        out += t
        n += 1
    return bytes(out[:length])


def encr_key_len(algo: tuple[int, int | None]) -> int:
    """Key material for an encryption transform, in bytes; AES-GCM adds the 4-byte salt (RFC 5282 §7.1)."""
    tid, bits = algo
    if bits not in (128, 192, 256):
        raise ValueError("key length")
    return bits // 8 + (4 if tid == Encr.AES_GCM_16 else 0)


def integ_key_len(alg: int) -> int:
    return _INTEG[alg][1] if alg in _INTEG else 0


@dataclass(frozen=True)
class IkeKeys:
    """SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr (RFC 7296 §2.14); never printed."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def derive_ike_keys(spec: Spec, ni: bytes, nr: bytes, shared: bytes, spi_i: int, spi_r: int) -> IkeKeys:
    """SKEYSEED = prf(Ni | Nr, g^ir) and prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) split (RFC 7296 §2.14)."""
    alg = spec.prf[0]
    skeyseed = prf(alg, ni + nr, shared)
    plen = prf_len(alg)
    elen = encr_key_len(spec.encr[0])
    ilen = integ_key_len(spec.integ[0]) if spec.integ else 0
    total = plen + 2 * ilen + 2 * elen + 2 * plen
    km = prf_plus(alg, skeyseed, ni + nr + struct.pack("!QQ", spi_i, spi_r), total)
    parts = []
    pos = 0
    for n in (plen, ilen, ilen, elen, elen, plen, plen):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(*parts)


def child_keys(
    prf_alg: int, sk_d: bytes, ni: bytes, nr: bytes, encr_len: int, integ_len: int
) -> tuple[bytes, bytes, bytes, bytes]:
    """KEYMAT = prf+(SK_d, Ni | Nr) (RFC 7296 §2.17): (encr i->r, integ i->r, encr r->i, integ r->i)."""
    km = prf_plus(prf_alg, sk_d, ni + nr, 2 * (encr_len + integ_len))
    e1 = km[:encr_len]
    a1 = km[encr_len : encr_len + integ_len]
    rest = km[encr_len + integ_len :]
    return e1, a1, rest[:encr_len], rest[encr_len:]


def psk_auth(prf_alg: int, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15)."""
    return prf(prf_alg, prf(prf_alg, psk, KEY_PAD), signed_octets)


def signed_octets(prf_alg: int, message: bytes, peer_nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
    """<message> | <peer's nonce> | prf(SK_p, IDType | RESERVED | ID data) (RFC 7296 §2.15)."""
    return message + peer_nonce + prf(prf_alg, sk_p, id_body)


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return _hmac.compare_digest(a, b)


# ---------------------------------------------------------------------------------------------------------
# SK payload (RFC 7296 §3.14; AES-GCM per RFC 5282 §3, §5)


class SkCipher:
    """Encrypts and decrypts SK payloads in one direction with SK_e and SK_a."""

    def __init__(self, spec: Spec, sk_e: bytes, sk_a: bytes) -> None:
        self._aead = spec.aead
        if self._aead:
            self._gcm = AESGCM(sk_e[:-4])
            self._salt = sk_e[-4:]
            self.iv_len = 8
            self.icv_len = 16
        else:
            self._key = sk_e
            self._hash, _, self.icv_len = _INTEG[spec.integ[0]]
            self._sk_a = sk_a
            self.iv_len = 16

    def _mac(self, data: bytes) -> bytes:
        h = hmac.HMAC(self._sk_a, self._hash())
        h.update(data)
        return h.finalize()[: self.icv_len]

    def seal(self, prefix: bytes, inner: bytes, iv: bytes) -> bytes:
        """IV | ciphertext | ICV for the inner payload chain; `prefix` is the IKE header and the SK
        payload's generic header, already carrying the final lengths (`sealed_len`)."""
        if self._aead:
            return iv + self._gcm.encrypt(self._salt + iv, inner + b"\0", prefix)  # pad length 0
        pad = (-(len(inner) + 1)) % 16
        plain = inner + bytes(pad) + bytes([pad])
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        body = iv + enc.update(plain) + enc.finalize()
        return body + self._mac(prefix + body)

    def sealed_len(self, inner_len: int) -> int:
        if self._aead:
            return self.iv_len + inner_len + 1 + self.icv_len
        return self.iv_len + inner_len + 1 + (-(inner_len + 1)) % 16 + self.icv_len

    def open(self, prefix: bytes, body: bytes) -> bytes | None:
        """The inner payload chain of an SK payload body, or None if its ICV fails or it is malformed."""
        if len(body) < self.iv_len + self.icv_len + 1:
            return None
        iv = body[: self.iv_len]
        if self._aead:
            try:
                plain = self._gcm.decrypt(self._salt + iv, body[self.iv_len :], prefix)
            except InvalidTag:
                return None
        else:
            icv = body[-self.icv_len :]
            if not equal(self._mac(prefix + body[: -self.icv_len]), icv):
                return None
            ct = body[self.iv_len : -self.icv_len]
            if not ct or len(ct) % 16:
                return None
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            plain = dec.update(ct) + dec.finalize()
        pad = plain[-1]
        if pad + 1 > len(plain):
            return None
        return plain[: -pad - 1]
