"""The algorithm registry: names (seed CryptoAPI, Linux kernel, short) to ESP transforms on `cryptography`.

Each cipher or integrity algorithm is described once; `find_cipher`/`find_auth` resolve any of its names and
`make_cipher`/`make_auth` validate a key and build the per-SA transform used by `esp`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers import algorithms as _old  # 3DES, Blowfish, CAST5 live here
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = [
    "AUTHS",
    "CIPHERS",
    "GCM_ICV_NAMES",
    "MIN_KEY_BYTES",
    "WEAK_KEY_CIPHERS",
    "AeadTransform",
    "AlgorithmError",
    "AuthAlg",
    "AuthTransform",
    "BlockTransform",
    "CipherAlg",
    "NullAuth",
    "check_cipher_key",
    "check_icv_bits",
    "check_named_key_bits",
    "find_auth",
    "find_cipher",
    "make_auth",
    "make_cipher",
    "random_bytes",
]


class AlgorithmError(ValueError):
    """An unknown algorithm or a key or ICV length it does not accept."""


# ---------------------------------------------------------------------------------------------------------
# Transforms: what an SA holds and `esp` calls.


class AeadTransform(Protocol):
    """Combined-mode cipher (RFC 4106, RFC 7634): nonce = salt || IV."""

    iv_len: int
    icv_len: int
    block: int

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Ciphertext followed by the (possibly truncated) ICV."""
        ...

    def open(self, iv: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        """The plaintext of `sealed` (ciphertext then ICV), or None when the ICV does not verify."""
        ...


class BlockTransform(Protocol):
    """Confidentiality-only cipher (CBC, CTR, NULL) for use with a separate integrity algorithm."""

    iv_len: int
    block: int
    counter_iv: bool

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        """Encrypt `data` (already padded to `block`)."""
        ...

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        """Decrypt `data` (a multiple of `block`)."""
        ...


class _Gcm:
    """AES-GCM for ESP, RFC 4106 §3-5: 4-byte salt at the end of the key, 8-byte IV, ICV 8/12/16."""

    iv_len = 8
    block = 4  # RFC 4106 §3.2: no block alignment beyond ESP's 4 bytes

    def __init__(self, key: bytes, salt: bytes, icv_len: int) -> None:
        self._key = key
        self._salt = salt
        self._aead = AESGCM(key)
        self.icv_len = icv_len
        # for callers that seal and open packets themselves (16-byte ICV only): encrypt(salt + iv,
        # plaintext, aad) is seal(), decrypt(salt + iv, sealed, aad) is open() raising InvalidTag
        self.salt = salt
        self.full_icv_encrypt = self._aead.encrypt if icv_len == 16 else None
        self.full_icv_decrypt = self._aead.decrypt if icv_len == 16 else None
        # the same writing into a buffer of the caller's (cryptography >= 45; None before)
        self.full_icv_encrypt_into = getattr(self._aead, "encrypt_into", None) if icv_len == 16 else None
        self.full_icv_decrypt_into = getattr(self._aead, "decrypt_into", None) if icv_len == 16 else None

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        out = self._aead.encrypt(self._salt + iv, plaintext, aad)
        if self.icv_len == 16:
            return out
        return out[: len(out) - 16 + self.icv_len]

    def open(self, iv: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        try:
            if self.icv_len == 16:
                return self._aead.decrypt(self._salt + iv, sealed, aad)
            cut = len(sealed) - self.icv_len
            if cut < 0:
                return None
            dec = Cipher(
                algorithms.AES(self._key),
                modes.GCM(self._salt + iv, sealed[cut:], min_tag_length=self.icv_len),
            ).decryptor()
            dec.authenticate_additional_data(aad)
            out = dec.update(sealed[:cut])
            return out + dec.finalize()
        except InvalidTag:
            return None


class _ChaCha:
    """ChaCha20-Poly1305 for ESP, RFC 7634 §2-3: 32-byte key + 4-byte salt, 8-byte IV, 16-byte ICV."""

    iv_len = 8
    icv_len = 16
    block = 4  # RFC 7634 §3: padding only for ESP's 4-byte alignment

    def __init__(self, key: bytes, salt: bytes, icv_len: int) -> None:
        self._salt = salt
        self._aead = ChaCha20Poly1305(key)
        self.salt = salt  # as _Gcm
        self.full_icv_encrypt = self._aead.encrypt
        self.full_icv_decrypt = self._aead.decrypt
        self.full_icv_encrypt_into = getattr(self._aead, "encrypt_into", None)
        self.full_icv_decrypt_into = getattr(self._aead, "decrypt_into", None)

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, sealed: bytes, aad: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(self._salt + iv, sealed, aad)
        except InvalidTag:
            return None


class _Cbc:
    """A block cipher in CBC mode with an explicit random IV the size of a block (RFC 2451, RFC 3602).

    `encrypt` takes the IV it is given, on a context of its own. The data path instead uses two CBC
    contexts kept for the SA's life and never finalized (building one costs several times what AES does
    to a packet), each fed whole blocks only:

    - `encrypt_fresh` feeds a fresh random block Z, then the data: what comes out first,
      E_K(Z xor the last ciphertext block out), is the packet's IV, uniformly random and unpredictable
      as Z is (RFC 3602 §2; the "encrypted random value" IV of NIST SP 800-38A Appendix C), Z never
      leaves the process, and the data is then CBC-encrypted under that IV, as `encrypt` would;
    - `decrypt_joined` feeds IV || ciphertext: CBC decryption XORs each block's decryption with the
      ciphertext block before it, so every block after the IV comes out under that IV, and only the
      first block out (the IV's, chained to the previous packet) has no meaning.
    """

    counter_iv = False
    _POOL_BLOCKS = 256  # random blocks drawn at once for `encrypt_fresh`

    def __init__(self, algorithm: CipherAlgorithm, block: int) -> None:
        self._algorithm = algorithm
        self.iv_len = block
        self.block = block
        self._stream = Cipher(algorithm, modes.CBC(bytes(block))).encryptor()
        self._unstream = Cipher(algorithm, modes.CBC(bytes(block))).decryptor()
        self._pool = b""
        self._taken = 0

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        enc = Cipher(self._algorithm, modes.CBC(iv)).encryptor()
        return enc.update(data) + enc.finalize()

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        if len(iv) != self.block:
            raise ValueError(f"CBC needs an IV of {self.block} bytes")
        return self.decrypt_joined(iv + data)[self.block :]

    def decrypt_joined(self, iv_ct: bytes) -> bytes:
        """One block of no meaning, then the plaintext of `iv_ct[block:]` CBC-decrypted under the IV
        `iv_ct[:block]`; `iv_ct` is a whole number of blocks (else ValueError)."""
        if len(iv_ct) % self.block:
            raise ValueError("CBC data must be a whole number of blocks")
        out: bytes = self._unstream.update(iv_ct)
        return out

    def encrypt_fresh(self, data: bytes, tail: bytes = b"") -> bytes:
        """A fresh unpredictable IV, then `data` + `tail` (a whole number of blocks, else ValueError)
        CBC-encrypted under it."""
        block = self.block
        if (len(data) + len(tail)) % block:
            raise ValueError("CBC data must be a whole number of blocks")
        taken = self._taken
        if taken >= len(self._pool):
            self._pool = random_bytes(block * self._POOL_BLOCKS)
            taken = 0
        self._taken = taken + block
        out: bytes = self._stream.update(self._pool[taken : taken + block] + data + tail)
        return out

    def encrypt_fresh_rows(self, rows: Any) -> bytes:
        """`encrypt_fresh` of each row of a C-contiguous 2-D byte array (NumPy) whose width is a whole
        number of blocks, in one call: per row, its IV then its ciphertext."""
        count, width = rows.shape
        block = self.block
        if width % block:
            raise ValueError("CBC data must be a whole number of blocks")
        joined = np.empty((count, block + width), np.uint8)
        joined[:, :block] = np.frombuffer(random_bytes(block * count), np.uint8).reshape(count, block)
        joined[:, block:] = rows
        out: bytes = self._stream.update(joined.data.cast("B"))
        return out


class _Ctr:
    """AES-CTR for ESP, RFC 3686 §3-4: counter block = nonce(4) || IV(8) || block counter starting at 1."""

    iv_len = 8
    block = 4  # RFC 3686 §3.2: padding only for ESP's 4-byte alignment
    counter_iv = True

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._aes = algorithms.AES(key)
        self._nonce = nonce

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        enc = Cipher(self._aes, modes.CTR(self._nonce + iv + b"\x00\x00\x00\x01")).encryptor()
        return enc.update(data) + enc.finalize()

    decrypt = encrypt


class _Null:
    """The NULL cipher, RFC 2410: no IV, no change to the data."""

    iv_len = 0
    block = 4
    counter_iv = False

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        return data

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        return data


class AuthTransform:
    """HMAC with truncation (RFC 2403, 2404, 4868): sign and constant-time verify."""

    def __init__(self, algorithm: hashes.HashAlgorithm, key: bytes, icv_len: int) -> None:
        self._template = hmac.HMAC(key, algorithm)
        self.icv_len = icv_len
        # a fresh HMAC context already keyed (a copy of the template: cheaper than keying one anew), to
        # update and finalize; for callers that sign or verify packets themselves
        self.start: Callable[[], hmac.HMAC] = self._template.copy

    def sign(self, *parts: bytes) -> bytes:
        """The truncated ICV over the concatenation of `parts`."""
        h = self._template.copy()
        for part in parts:
            h.update(part)
        return h.finalize()[: self.icv_len]

    def verify(self, icv: bytes, *parts: bytes) -> bool:
        """True when `icv` matches; the comparison is constant-time."""
        return constant_time.bytes_eq(self.sign(*parts), icv)


class NullAuth:
    """No integrity (RFC 4303 §3.2: confidentiality-only ESP; RFC 8221 §5 advises against it): an empty ICV
    that every packet passes. Used only for an SA with a non-AEAD cipher and no digest."""

    icv_len = 0

    def sign(self, *parts: bytes) -> bytes:
        """The empty ICV."""
        return b""

    def verify(self, icv: bytes, *parts: bytes) -> bool:
        """True for the empty ICV."""
        return icv == b""


# ---------------------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class CipherAlg:
    """An ESP encryption algorithm and every name it answers to."""

    name: str  # the seed's CryptoAPI spelling, shown by `sa show`
    kernel: str  # Linux kernel (`ip xfrm`) name
    aliases: tuple[str, ...]
    key_sizes: tuple[int, ...]  # cipher key bytes, without the salt
    salt_len: int  # bytes of salt/nonce carried at the end of the key, as the Linux kernel expects
    aead: bool
    icv_lens: tuple[int, ...]  # for AEAD: the ICV lengths allowed, default first
    rfc: str
    build: Callable[[bytes, bytes, int], Any]
    block: int  # padding alignment, never below ESP's 4 bytes (RFC 4303 §2.4)
    iv_len: int  # bytes of explicit IV in each packet

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted spelling, canonical first."""
        return (self.name, self.kernel, *self.aliases)

    def key_bits(self, key_len: int) -> int:
        """Bits of cipher key in a key of `key_len` bytes (salt excluded), as `sa show` prints it."""
        return (key_len - self.salt_len) * 8


@dataclass(frozen=True)
class AuthAlg:
    """An ESP integrity algorithm (HMAC) and every name it answers to."""

    name: str
    kernel: str
    aliases: tuple[str, ...]
    hash: Callable[[], hashes.HashAlgorithm]
    digest_bits: int
    default_icv_bits: int  # the RFC's truncation: 96 for MD5/SHA-1, half the digest for SHA-2
    rfc: str

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted spelling, canonical first."""
        return (self.name, self.kernel, *self.aliases)

    @property
    def key_len(self) -> int:
        """Key length in bytes required by the RFC (the digest size)."""
        return self.digest_bits // 8


def _cbc(factory: Callable[[bytes], CipherAlgorithm], block: int) -> Callable[[bytes, bytes, int], Any]:
    return lambda key, salt, icv: _Cbc(factory(key), block)


# RFC 2451 §2.2 lets Blowfish and CAST5 keys go down to 40 bits; below 128 bits a key can be searched
# (RFC 8221 §1 and §5: 128-bit security at least), so shorter ones are refused.
MIN_KEY_BYTES = 16
WEAK_KEY_CIPHERS = frozenset({"blowfish-cbc", "cast5-cbc"})


def _blockalg(factory: Callable[[bytes], CipherAlgorithm]) -> Callable[[bytes], CipherAlgorithm]:
    return factory


CIPHERS: tuple[CipherAlg, ...] = (
    CipherAlg(
        "des_ede3-cbc", "cbc(des3_ede)", ("3des-cbc", "3des", "des3_ede-cbc"), (24,), 0, False, (),
        "RFC 2451", _cbc(_blockalg(_old.TripleDES), 8), 8, 8,
    ),
    CipherAlg(
        "aes-cbc", "cbc(aes)", ("aes", "aes128-cbc", "aes-128-cbc", "aes192-cbc", "aes-192-cbc", "aes256-cbc",
        "aes-256-cbc"), (16, 24, 32), 0, False, (),
        "RFC 3602", _cbc(_blockalg(algorithms.AES), 16), 16, 16,
    ),
    CipherAlg(
        "aes-ctr", "rfc3686(ctr(aes))", ("ctr(aes)",), (16, 24, 32), 4, False, (),
        "RFC 3686", lambda key, salt, icv: _Ctr(key, salt), 4, 8,
    ),
    CipherAlg(
        "aes-gcm", "rfc4106(gcm(aes))", ("aes-gcm-16", "gcm(aes)", "aes-gcm-128"), (16, 24, 32), 4, True,
        (16, 12, 8), "RFC 4106", lambda key, salt, icv: _Gcm(key, salt, icv), 4, 8,
    ),
    CipherAlg(
        "chacha20-poly1305", "rfc7539esp(chacha20,poly1305)", ("chacha20poly1305",), (32,), 4, True, (16,),
        "RFC 7634", lambda key, salt, icv: _ChaCha(key, salt, icv), 4, 8,
    ),
    CipherAlg(
        "blowfish-cbc", "cbc(blowfish)", ("blowfish",), tuple(range(MIN_KEY_BYTES, 57)), 0, False, (),
        "RFC 2451", _cbc(_blockalg(_old.Blowfish), 8), 8, 8,
    ),
    CipherAlg(
        "cast5-cbc", "cbc(cast5)", ("cast128-cbc", "cast5"), (MIN_KEY_BYTES,), 0, False, (),
        "RFC 2451", _cbc(_blockalg(_old.CAST5), 8), 8, 8,
    ),
    CipherAlg(
        "null", "ecb(cipher_null)", ("cipher_null", "none"), (0,), 0, False, (),
        "RFC 2410", lambda key, salt, icv: _Null(), 4, 0,
    ),
)  # fmt: skip

AUTHS: tuple[AuthAlg, ...] = (
    AuthAlg("md5", "hmac(md5)", ("hmac-md5", "hmac-md5-96"), hashes.MD5, 128, 96, "RFC 2403"),
    AuthAlg("sha1", "hmac(sha1)", ("hmac-sha1", "hmac-sha1-96", "sha-1"), hashes.SHA1, 160, 96, "RFC 2404"),
    AuthAlg("sha256", "hmac(sha256)", ("hmac-sha256", "hmac-sha2-256", "sha2-256"), hashes.SHA256, 256, 128,
            "RFC 4868"),
    AuthAlg("sha384", "hmac(sha384)", ("hmac-sha384", "hmac-sha2-384", "sha2-384"), hashes.SHA384, 384, 192,
            "RFC 4868"),
    AuthAlg("sha512", "hmac(sha512)", ("hmac-sha512", "hmac-sha2-512", "sha2-512"), hashes.SHA512, 512, 256,
            "RFC 4868"),
)  # fmt: skip

# AES-GCM with a shorter ICV has its own names, as strongSwan and the kernel's ICV bits say it.
GCM_ICV_NAMES = {"aes-gcm-12": 12, "aes-gcm-8": 8, "aes-gcm-96": 12, "aes-gcm-64": 8}

_CIPHER_INDEX: dict[str, CipherAlg] = {n.lower(): alg for alg in CIPHERS for n in alg.names}
_AUTH_INDEX: dict[str, AuthAlg] = {n.lower(): alg for alg in AUTHS for n in alg.names}


def find_cipher(name: str) -> tuple[CipherAlg, int | None]:
    """The cipher named `name` in any spelling, with the ICV length the name implies (AEAD only)."""
    key = name.strip().lower()
    if key in GCM_ICV_NAMES:
        return _CIPHER_INDEX["aes-gcm"], GCM_ICV_NAMES[key]
    alg = _CIPHER_INDEX.get(key)
    if alg is None:
        raise AlgorithmError(f"Unknown cipher or digest: {name!r} (see 'ipsecadm algos')")
    return alg, (alg.icv_lens[0] if alg.aead else None)


# Names with a number that states the key size (the key must have it), and a name whose number is read both
# ways: here aes-gcm-128 is the 128-bit ICV, strongSwan's aes128gcm16 is a 128-bit key.
_NAMED_KEY_BITS = {
    f"aes{sep}{bits}-cbc": bits for bits in (128, 192, 256) for sep in ("", "-")
}  # fmt: skip
_AMBIGUOUS_KEY_BITS = {"aes-gcm-128": 128}


def check_named_key_bits(name: str, key_len: int) -> None:
    """Raise AlgorithmError when the number in cipher name `name` (aes-128-cbc) contradicts a key of
    `key_len` bytes (salt included); call it once the key length suits the algorithm."""
    key = name.strip().lower()
    alg, _icv = find_cipher(name)
    bits = alg.key_bits(key_len)
    if key in _NAMED_KEY_BITS and _NAMED_KEY_BITS[key] != bits:
        raise AlgorithmError(
            f"Bad key: {name} names a {_NAMED_KEY_BITS[key]}-bit key, but the key has {bits} bits "
            f"({key_len} bytes); use {alg.name} for a key of any size it takes"
        )
    if key in _AMBIGUOUS_KEY_BITS and _AMBIGUOUS_KEY_BITS[key] != bits:
        raise AlgorithmError(
            f"Bad key: {name} is ambiguous with a {bits}-bit key: 128 is its ICV here, but a key size "
            f"elsewhere (strongSwan); use {alg.name} (128-bit ICV) for AES-{bits}-GCM"
        )


def find_auth(name: str) -> AuthAlg:
    """The integrity algorithm named `name` in any spelling."""
    alg = _AUTH_INDEX.get(name.strip().lower())
    if alg is None:
        raise AlgorithmError(f"Unknown cipher or digest: {name!r} (see 'ipsecadm algos')")
    return alg


# DES weak and semi-weak keys (FIPS 74 §3.6), parity bits cleared.
_DES_WEAK = {
    bytes.fromhex(h)
    for h in (
        "0000000000000000", "fefefefefefefefe", "e0e0e0e0f0f0f0f0", "1e1e1e1e0e0e0e0e",
        "00fe00fe00fe00fe", "fe00fe00fe00fe00", "1ee01ee00ef00ef0", "e01ee01ef00ef00e",
        "00e000e000f000f0", "e000e000f000f000", "1efe1efe0efe0efe", "fe1efe1efe0efe0e",
        "001e001e000e000e", "1e001e000e000e00", "e0fee0fef0fef0fe", "fee0fee0fef0fef0",
    )
}  # fmt: skip


def _strip_parity(block: bytes) -> bytes:
    return bytes(b & 0xFE for b in block)


def check_cipher_key(alg: CipherAlg, key: bytes) -> None:
    """Raise AlgorithmError when `key` (salt included) does not suit `alg`."""
    sizes = sorted({s + alg.salt_len for s in alg.key_sizes})
    if alg.name in WEAK_KEY_CIPHERS and len(key) < MIN_KEY_BYTES:
        raise AlgorithmError(
            f"Key too short: {alg.name} keys below {MIN_KEY_BYTES * 8} bits can be searched and are refused "
            f"(the original allowed 40); got {len(key) * 8} bits"
        )
    if len(key) not in sizes:
        if len(sizes) > 4:
            want = f"{sizes[0]} to {sizes[-1]} bytes"
        else:
            want = " or ".join(f"{s} bytes ({s * 8} bits)" for s in sizes)
        salt = f", including the {alg.salt_len}-byte salt at the end" if alg.salt_len else ""
        verdict = "Key too long" if len(key) > sizes[-1] else "Bad key"
        raise AlgorithmError(f"{verdict}: {alg.name} needs a key of {want}{salt}; got {len(key)} bytes")
    if alg.name == "des_ede3-cbc":
        parts = [_strip_parity(key[i : i + 8]) for i in (0, 8, 16)]
        if any(p in {_strip_parity(w) for w in _DES_WEAK} for p in parts):
            raise AlgorithmError("Bad key: a third of this 3DES key is a weak or semi-weak DES key")
        if parts[0] == parts[1] or parts[1] == parts[2]:
            raise AlgorithmError("Bad key: this 3DES key degenerates to single DES (K1 = K2 or K2 = K3)")


def make_cipher(alg: CipherAlg, key: bytes, icv_len: int | None = None) -> Any:
    """The transform for `alg` with `key` (salt at the end); validates key and ICV length."""
    check_cipher_key(alg, key)
    if alg.aead:
        icv = alg.icv_lens[0] if icv_len is None else icv_len
        if icv not in alg.icv_lens:
            raise AlgorithmError(
                f"{alg.name} allows an ICV of {', '.join(str(i * 8) for i in alg.icv_lens)} bits"
            )
    else:
        icv = 0
    cut = len(key) - alg.salt_len
    return alg.build(key[:cut], key[cut:], icv)


def check_icv_bits(alg: AuthAlg, bits: int | None) -> int:
    """The ICV length in bytes for `--digest-hmac=bits` (None: the RFC's default)."""
    if bits is None:
        return alg.default_icv_bits // 8
    if alg.rfc == "RFC 4868" and bits != alg.default_icv_bits:
        # RFC 4868 §2.3: HMAC-SHA-256/384/512 in ESP are truncated to half the digest, nothing else
        raise AlgorithmError(
            f"--digest-hmac for {alg.name} must be {alg.default_icv_bits} bits (RFC 4868 §2.3); got {bits}"
        )
    if bits % 32 or not 96 <= bits <= alg.digest_bits:
        raise AlgorithmError(
            f"--digest-hmac for {alg.name} must be a multiple of 32 "
            f"from 96 to {alg.digest_bits} bits; got {bits}"
        )
    return bits // 8


def make_auth(alg: AuthAlg, key: bytes, icv_bits: int | None = None) -> AuthTransform:
    """The HMAC transform for `alg` with `key`; validates key length (the RFC's: the digest size)."""
    if len(key) != alg.key_len:
        verdict = "Key too long" if len(key) > alg.key_len else "Bad key"
        raise AlgorithmError(
            f"{verdict}: hmac({alg.name}) needs a key of {alg.key_len} bytes ({alg.key_len * 8} bits), "
            f"{alg.rfc}; got {len(key)} bytes"
        )
    return AuthTransform(alg.hash(), key, check_icv_bits(alg, icv_bits))


def random_bytes(n: int) -> bytes:
    """Fresh random bytes for CBC IVs (RFC 3602 §2: unpredictable)."""
    return secrets.token_bytes(n)
