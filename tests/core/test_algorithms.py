"""The algorithm registry and transforms against published vectors (RFC 3602, 3686, 4868, 2202, the GCM
specification, NIST SP 800-67), and key validation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes

from ipsec_tunnel.core import algorithms
from ipsec_tunnel.core.algorithms import (
    AlgorithmError,
    AuthTransform,
    check_cipher_key,
    check_icv_bits,
    find_auth,
    find_cipher,
    make_auth,
    make_cipher,
)

from .vectors import (
    GCM_SPEC,
    RFC2202,
    RFC3602_CBC,
    RFC3686_CTR,
    RFC4868_AUTH,
    RFC4868_PRF_CASES,
    SP800_67_ECB,
    SP800_67_KEY,
    SP800_67_PLAIN,
    CbcCase,
    CtrCase,
    GcmCase,
    MacCase,
)

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# ---------------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "canonical", "icv"),
    [
        ("aes-cbc", "aes-cbc", None),
        ("cbc(aes)", "aes-cbc", None),
        ("AES", "aes-cbc", None),
        ("3des", "des_ede3-cbc", None),
        ("cbc(des3_ede)", "des_ede3-cbc", None),
        ("rfc3686(ctr(aes))", "aes-ctr", None),
        ("rfc4106(gcm(aes))", "aes-gcm", 16),
        ("aes-gcm-16", "aes-gcm", 16),
        ("aes-gcm-12", "aes-gcm", 12),
        ("aes-gcm-96", "aes-gcm", 12),
        ("aes-gcm-8", "aes-gcm", 8),
        ("rfc7539esp(chacha20,poly1305)", "chacha20-poly1305", 16),
        ("cipher_null", "null", None),
        (" Blowfish ", "blowfish-cbc", None),
        ("cast5", "cast5-cbc", None),
    ],
)
def test_find_cipher_resolves_every_spelling(name: str, canonical: str, icv: int | None) -> None:
    alg, icv_len = find_cipher(name)
    assert alg.name == canonical
    assert icv_len == icv


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("hmac(sha256)", "sha256"), ("hmac-sha1-96", "sha1"), ("MD5", "md5"), ("sha2-512", "sha512")],
)
def test_find_auth_resolves_every_spelling(name: str, canonical: str) -> None:
    assert find_auth(name).name == canonical


def test_unknown_names_are_refused() -> None:
    with pytest.raises(AlgorithmError, match="Unknown cipher or digest: 'rot13'"):
        find_cipher("rot13")
    with pytest.raises(AlgorithmError, match="Unknown cipher or digest: 'crc32'"):
        find_auth("crc32")


def test_every_name_is_unique_across_algorithms() -> None:
    names = [n.lower() for alg in algorithms.CIPHERS for n in alg.names]
    assert len(names) == len(set(names))
    names = [n.lower() for alg in algorithms.AUTHS for n in alg.names]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("name", "default_bits", "key_len"),
    [("md5", 96, 16), ("sha1", 96, 20), ("sha256", 128, 32), ("sha384", 192, 48), ("sha512", 256, 64)],
)
def test_auth_defaults_are_the_rfc_truncations(name: str, default_bits: int, key_len: int) -> None:
    # RFC 2403 §3, RFC 2404 §3: 96 bits; RFC 4868 §2.3 and §2.6: half the digest, key of the digest's size.
    alg = find_auth(name)
    assert check_icv_bits(alg, None) * 8 == default_bits
    assert alg.key_len == key_len


def test_icv_bits_must_be_a_multiple_of_32_within_the_digest() -> None:
    alg = find_auth("sha1")
    assert check_icv_bits(alg, 96) == 12
    assert check_icv_bits(alg, 160) == 20
    for bad in (64, 100, 192):
        with pytest.raises(AlgorithmError, match="multiple of 32"):
            check_icv_bits(alg, bad)


@pytest.mark.parametrize(("name", "bits"), [("sha256", 128), ("sha384", 192), ("sha512", 256)])
def test_sha2_icv_is_only_the_rfc4868_truncation(name: str, bits: int) -> None:
    """Protocol review finding 9: HMAC-SHA-2 truncated to 96 bits was accepted; RFC 4868 §2.3 fixes
    half the digest."""
    alg = find_auth(name)
    assert check_icv_bits(alg, bits) == bits // 8
    for bad in (96, bits - 32, bits + 32):
        with pytest.raises(AlgorithmError, match=rf"must be {bits} bits \(RFC 4868 §2.3\); got {bad}"):
            check_icv_bits(alg, bad)


@pytest.mark.parametrize("name", ["blowfish", "cast5"])
@pytest.mark.parametrize("key_len", [5, 8, 15])
def test_short_blowfish_and_cast5_keys_are_refused(name: str, key_len: int) -> None:
    """Protocol review finding 9: keys down to 40 bits were accepted silently."""
    alg, _ = find_cipher(name)
    with pytest.raises(AlgorithmError, match="below 128 bits can be searched and are refused"):
        make_cipher(alg, bytes(range(1, key_len + 1)))
    assert make_cipher(alg, bytes(range(1, 17))).block == 8


# ---------------------------------------------------------------------------------------------------------
# Ciphers against vectors


@pytest.mark.parametrize("case", RFC3602_CBC, ids=lambda c: c.name)
def test_aes_cbc_rfc3602_section4(case: CbcCase) -> None:
    alg, _ = find_cipher("aes-cbc")
    cipher = make_cipher(alg, case.key)
    assert cipher.encrypt(case.iv, case.plaintext) == case.ciphertext
    assert cipher.decrypt(case.iv, case.ciphertext) == case.plaintext


@pytest.mark.parametrize("case", RFC3686_CTR, ids=lambda c: c.name)
def test_aes_ctr_rfc3686_section6(case: CtrCase) -> None:
    # RFC 3686 §5.1: the keying material is the AES key followed by the 4-byte nonce, as the kernel takes it.
    alg, _ = find_cipher("aes-ctr")
    cipher = make_cipher(alg, case.key + case.nonce)
    assert cipher.encrypt(case.iv, case.plaintext) == case.ciphertext
    assert cipher.decrypt(case.iv, case.ciphertext) == case.plaintext


@pytest.mark.parametrize("case", GCM_SPEC, ids=lambda c: c.name)
@pytest.mark.parametrize("icv_len", [16, 12, 8])
def test_aes_gcm_spec_vectors(case: GcmCase, icv_len: int) -> None:
    # RFC 4106 §8.1: key || 4-byte salt; §4: nonce = salt || 8-byte IV; §6: a shorter ICV is the tag's prefix.
    alg, _ = find_cipher("aes-gcm")
    cipher = make_cipher(alg, case.key + case.nonce[:4], icv_len)
    iv = case.nonce[4:]
    sealed = cipher.seal(iv, case.plaintext, case.aad)
    assert sealed == case.ciphertext + case.tag[:icv_len]
    assert cipher.open(iv, case.ciphertext + case.tag[:icv_len], case.aad) == case.plaintext


@pytest.mark.parametrize("icv_len", [16, 12, 8])
def test_aes_gcm_rejects_a_wrong_tag_or_aad(icv_len: int) -> None:
    case = GCM_SPEC[3]  # test case 4: with AAD
    alg, _ = find_cipher("aes-gcm")
    cipher = make_cipher(alg, case.key + case.nonce[:4], icv_len)
    iv, tag = case.nonce[4:], case.tag[:icv_len]
    bad_tag = bytes([tag[0] ^ 1]) + tag[1:]
    assert cipher.open(iv, case.ciphertext + bad_tag, case.aad) is None
    assert cipher.open(iv, case.ciphertext + tag, case.aad + b"x") is None
    assert cipher.open(iv, b"\x00" + case.ciphertext[1:] + tag, case.aad) is None


def test_3des_cbc_sp800_67_known_answer() -> None:
    """NIST SP 800-67 Appendix B gives TDEA in ECB mode; a CBC chain is built from it exactly: each
    plaintext block is the ECB block XOR the previous ciphertext block (the IV first)."""
    alg, _ = find_cipher("3des")
    cipher = make_cipher(alg, SP800_67_KEY)
    iv = bytes.fromhex("0001020304050607")
    prev, plain = iv, b""
    for i in range(0, 24, 8):
        plain += bytes(a ^ b for a, b in zip(SP800_67_PLAIN[i : i + 8], prev, strict=True))
        prev = SP800_67_ECB[i : i + 8]
    assert cipher.encrypt(iv, plain) == SP800_67_ECB
    assert cipher.decrypt(iv, SP800_67_ECB) == plain


def test_null_cipher_changes_nothing() -> None:
    # RFC 2410 §2: NULL encryption is the identity, with no IV.
    alg, _ = find_cipher("null")
    cipher = make_cipher(alg, b"")
    assert cipher.iv_len == 0
    assert cipher.encrypt(b"", b"abcd") == b"abcd"
    assert cipher.decrypt(b"", b"abcd") == b"abcd"


@pytest.mark.parametrize(
    ("name", "iv_len", "block"),
    [("aes-cbc", 16, 16), ("3des", 8, 8), ("blowfish", 8, 8), ("cast5", 8, 8), ("aes-ctr", 8, 4)],
)
def test_transform_geometry(name: str, iv_len: int, block: int) -> None:
    # RFC 3602 §3: 16-byte IV and blocks; RFC 2451 §2.3: 8; RFC 3686 §3: 8-byte IV, ESP's 4-byte alignment.
    alg, _ = find_cipher(name)
    key = bytes(range(1, 1 + (alg.key_sizes[-1] + alg.salt_len)))
    if name == "3des":
        key = SP800_67_KEY
    cipher = make_cipher(alg, key)
    assert (cipher.iv_len, cipher.block) == (iv_len, block)
    assert (alg.iv_len, alg.block) == (iv_len, block)


# ---------------------------------------------------------------------------------------------------------
# Integrity against vectors


@pytest.mark.parametrize("case", RFC4868_PRF_CASES, ids=lambda c: c.name)
def test_hmac_sha2_rfc4868_prf_vectors(case: MacCase) -> None:
    # Keys of any length (RFC 4231 style): the transform itself, untruncated.
    auth = AuthTransform(_HASHES[case.digest](), case.key, len(case.mac))
    assert auth.sign(case.data) == case.mac


@pytest.mark.parametrize("case", RFC4868_AUTH, ids=lambda c: c.name)
def test_hmac_sha2_rfc4868_authenticator_vectors(case: MacCase) -> None:
    # The key is the digest's size, as RFC 4868 §2.1.1 requires and make_auth enforces; the ICV is the
    # RFC's truncation (§2.3, §2.6).
    assert case.icv is not None
    auth = make_auth(find_auth(case.digest), case.key)
    assert auth.icv_len == len(case.icv)
    assert auth.sign(case.data) == case.icv
    assert auth.sign(case.data[:3], case.data[3:]) == case.icv  # parts are concatenated
    assert auth.verify(case.icv, case.data)
    assert not auth.verify(bytes([case.icv[0] ^ 0x80]) + case.icv[1:], case.data)
    full = AuthTransform(_HASHES[case.digest](), case.key, len(case.mac))  # RFC 4868 allows no other ICV
    assert full.sign(case.data) == case.mac


@pytest.mark.parametrize("case", RFC2202, ids=lambda c: c.name)
def test_hmac_md5_sha1_rfc2202_with_96_bit_truncation(case: MacCase) -> None:
    # RFC 2403 §2 / RFC 2404 §2: HMAC-MD5-96 and HMAC-SHA1-96 send the first 96 bits.
    full = AuthTransform(_HASHES[case.digest](), case.key, len(case.mac))
    assert full.sign(case.data) == case.mac
    auth96 = AuthTransform(_HASHES[case.digest](), case.key, 12)
    assert auth96.sign(case.data) == case.mac[:12]
    if case.icv is not None:  # test case 5 prints the truncated value itself
        assert auth96.sign(case.data) == case.icv
    alg = find_auth(case.digest)
    if len(case.key) == alg.key_len:  # the cases whose key is the size the ESP RFCs require
        assert make_auth(alg, case.key).sign(case.data) == case.mac[:12]


# ---------------------------------------------------------------------------------------------------------
# Key validation


@pytest.mark.parametrize(
    ("name", "key_len", "message"),
    [
        ("aes-cbc", 15, r"Bad key: aes-cbc needs a key of 16 bytes \(128 bits\) or 24 bytes \(192 bits\) or "
                        r"32 bytes \(256 bits\); got 15 bytes"),
        ("aes-cbc", 33, r"Key too long: aes-cbc needs a key of 16 bytes"),
        ("aes-gcm", 16, r"Bad key: aes-gcm needs a key of 20 bytes \(160 bits\) or 28 bytes \(224 bits\) or "
                        r"36 bytes \(288 bits\), including the 4-byte salt at the end; got 16 bytes"),
        ("chacha20-poly1305", 32, r"needs a key of 36 bytes \(288 bits\), including the 4-byte salt"),
        ("3des", 16, r"Bad key: des_ede3-cbc needs a key of 24 bytes \(192 bits\); got 16 bytes"),
        ("blowfish", 4, r"Key too short: blowfish-cbc keys below 128 bits can be searched and are refused"),
        ("blowfish", 57, r"Key too long: blowfish-cbc needs a key of 16 to 56 bytes; got 57 bytes"),
        ("null", 1, r"Key too long: null needs a key of 0 bytes"),
    ],
)  # fmt: skip
def test_wrong_key_lengths_say_what_is_needed(name: str, key_len: int, message: str) -> None:
    alg, _ = find_cipher(name)
    with pytest.raises(AlgorithmError, match=message):
        make_cipher(alg, bytes(range(1, key_len + 1)))


@pytest.mark.parametrize(
    "weak",
    ["0101010101010101", "fefefefefefefefe", "e0e0e0e0f1f1f1f1", "1f1f1f1f0e0e0e0e", "01fe01fe01fe01fe"],
)
@pytest.mark.parametrize("third", [0, 1, 2])
def test_3des_refuses_a_weak_des_third(weak: str, third: int) -> None:
    # FIPS 74 §3.6 weak and semi-weak keys, here with odd parity set: the check ignores parity bits.
    parts = [SP800_67_KEY[i : i + 8] for i in (0, 8, 16)]
    parts[third] = bytes.fromhex(weak)
    alg, _ = find_cipher("3des")
    with pytest.raises(AlgorithmError, match="weak or semi-weak DES key"):
        check_cipher_key(alg, b"".join(parts))


@pytest.mark.parametrize(
    ("k1", "k2", "k3"),
    [("a", "a", "b"), ("a", "b", "b"), ("a", "a", "a")],
)
def test_3des_refuses_keys_that_degenerate_to_single_des(k1: str, k2: str, k3: str) -> None:
    blocks = {
        "a": bytes.fromhex("0123456789abcdef"),
        "b": bytes.fromhex("fedcba9876543210"),
    }
    alg, _ = find_cipher("3des")
    with pytest.raises(AlgorithmError, match=r"degenerates to single DES \(K1 = K2 or K2 = K3\)"):
        check_cipher_key(alg, blocks[k1] + blocks[k2] + blocks[k3])


def test_3des_degenerate_check_ignores_parity_bits() -> None:
    k1 = bytes.fromhex("0123456789abcdef")
    k2 = bytes(b ^ 1 for b in k1)  # differs only in the parity bits
    alg, _ = find_cipher("3des")
    with pytest.raises(AlgorithmError, match="degenerates to single DES"):
        check_cipher_key(alg, k1 + k2 + bytes.fromhex("fedcba9876543210"))


def test_3des_k1_equal_k3_is_allowed() -> None:
    # Two-key 3DES (K1 = K3) is weaker but not single DES; only K1 = K2 and K2 = K3 collapse.
    alg, _ = find_cipher("3des")
    k = bytes.fromhex("0123456789abcdef")
    check_cipher_key(alg, k + bytes.fromhex("fedcba9876543210") + k)


@pytest.mark.parametrize(("digest", "key_len"), [("sha256", 16), ("sha1", 32), ("md5", 20)])
def test_auth_key_must_be_the_digest_size(digest: str, key_len: int) -> None:
    alg = find_auth(digest)
    verdict = "Key too long" if key_len > alg.key_len else "Bad key"
    with pytest.raises(
        AlgorithmError, match=rf"{verdict}: hmac\({digest}\) needs a key of {alg.key_len} bytes"
    ):
        make_auth(alg, bytes(key_len))


def test_aead_icv_length_is_checked() -> None:
    gcm, _ = find_cipher("aes-gcm")
    with pytest.raises(AlgorithmError, match="aes-gcm allows an ICV of 128, 96, 64 bits"):
        make_cipher(gcm, bytes(20), 4)
    chacha, _ = find_cipher("chacha20-poly1305")
    with pytest.raises(AlgorithmError, match="allows an ICV of 128 bits"):
        make_cipher(chacha, bytes(36), 8)


def test_key_bits_exclude_the_salt() -> None:
    gcm, _ = find_cipher("aes-gcm")
    assert gcm.key_bits(36) == 256
    cbc, _ = find_cipher("aes-cbc")
    assert cbc.key_bits(24) == 192


def test_random_bytes_are_fresh() -> None:
    a, b = algorithms.random_bytes(16), algorithms.random_bytes(16)
    assert len(a) == 16
    assert a != b


@pytest.mark.parametrize("alg", algorithms.CIPHERS, ids=lambda a: a.name)
def test_every_transform_aligns_to_at_least_esp_4_bytes(alg: algorithms.CipherAlg) -> None:
    # RFC 4303 §2.4: the payload, padding and trailer end on a 4-byte boundary whatever the cipher; esp.seal
    # relies on every transform's block being a multiple of 4.
    key = SP800_67_KEY if alg.name == "des_ede3-cbc" else bytes(range(1, 1 + alg.key_sizes[0] + alg.salt_len))
    cipher = make_cipher(alg, key)
    assert cipher.block >= 4
    assert cipher.block % 4 == 0
    assert (cipher.block, cipher.iv_len) == (alg.block, alg.iv_len)
