"""Published test vectors for the ESP core, each beside the document and section it comes from, and the
small packet builders the core tests share.

Every vector here was printed by a standards document; none was produced by this project's code. Where a
document's values were transcribed from a third-party copy, the test that uses them reproduces them with
our code, so a transcription error could only make a test fail, never pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


def hx(text: str) -> bytes:
    """Bytes from hex as the RFCs print it (spaces and line breaks ignored)."""
    return bytes.fromhex("".join(text.split()))


# ---------------------------------------------------------------------------------------------------------
# RFC 3602 §4: AES-CBC. Cases 1-4 are raw AES-128-CBC; cases 5-8 are whole ESP packets (5, 6 transport
# mode carrying ICMP, 7, 8 tunnel mode carrying IPv4) encrypted with AES-CBC and no ICV.


@dataclass(frozen=True)
class CbcCase:
    name: str
    key: bytes
    iv: bytes
    plaintext: bytes
    ciphertext: bytes


RFC3602_CBC = (
    CbcCase(
        "RFC 3602 §4 case 1 (16 bytes)",
        hx("06a9214036b8a15b512e03d534120006"),
        hx("3dafba429d9eb430b422da802c9fac41"),
        b"Single block msg",
        hx("e353779c1079aeb82708942dbe77181a"),
    ),
    CbcCase(
        "RFC 3602 §4 case 2 (32 bytes)",
        hx("c286696d887c9aa0611bbb3e2025a45a"),
        hx("562e17996d093d28ddb3ba695a2e6f58"),
        hx("000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f"),
        hx("d296cd94c2cccf8a3a863028b5e1dc0a 7586602d253cfff91b8266bea6d61ab1"),
    ),
    CbcCase(
        "RFC 3602 §4 case 3 (48 bytes)",
        hx("6c3ea0477630ce21a2ce334aa746c2cd"),
        hx("c782dc4c098c66cbd9cd27d825682c81"),
        b"This is a 48-byte message (exactly 3 AES blocks)",
        hx(
            "d0a02b3836451753d493665d33f0e886 2dea54cdb293abc7506939276772f8d5"
            "021c19216bad525c8579695d83ba2684"
        ),
    ),
    CbcCase(
        "RFC 3602 §4 case 4 (64 bytes)",
        hx("56e47a38c5598974bc46903dba290349"),
        hx("8ce82eefbea0da3c44699ed7db51b7d9"),
        hx(
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
            "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
        ),
        hx(
            "c30e32ffedc0774e6aff6af0869f71aa 0f3af07a9a31a9c684db207eb0ef8e4e"
            "35907aa632c3ffdf868bb7b29d3d46ad 83ce9f9a102ee99d49a53e87f4c3da55"
        ),
    ),
)


@dataclass(frozen=True)
class EspCase:
    """An ESP packet vector: `packet` is SPI through ICV (no outer IP header)."""

    name: str
    key: bytes  # as the Linux kernel takes it: cipher key, then the salt for counter modes
    spi: int
    seq: int  # the full sequence number (64 bits where the case uses ESN)
    esn: bool
    iv: bytes
    payload: bytes  # what ESP protects, before padding
    next_header: int
    packet: bytes


RFC3602_ESP = (
    EspCase(
        "RFC 3602 §4 case 5 (transport mode, ICMP, 64 bytes)",
        hx("90d382b4 10eeba7a d938c46c ec1a82bf"),
        0x4321,
        1,
        False,
        hx("e96e8c08 ab465763 fd098d45 dd3ff893"),
        hx(
            "08000ebd a70a0000 8e9c083d b95b0700 08090a0b 0c0d0e0f 10111213 14151617"
            "18191a1b 1c1d1e1f 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637"
        ),
        1,
        hx(
            "00004321 00000001 e96e8c08 ab465763 fd098d45 dd3ff893"
            "f663c25d 325c18c6 a9453e19 4e120849 a4870b66 cc6b9965 330013b4 898dc856"
            "a4699e52 3a55db08 0b59ec3a 8e4b7e52 775b07d1 db34ed9c 538ab50c 551b874a"
            "a269add0 47ad2d59 13ac19b7 cfbad4a6"
        ),
    ),
    EspCase(
        "RFC 3602 §4 case 6 (transport mode, ICMP, 28 bytes)",
        hx("90d382b4 10eeba7a d938c46c ec1a82bf"),
        0x4321,
        8,
        False,
        hx("69d08df7 d203329d b093fc49 24e5bd80"),
        hx("0800b5e8 a80a0500 a69c083d 0b660e00 77777777 77777777 77777777"),
        1,
        hx(
            "00004321 00000008 69d08df7 d203329d b093fc49 24e5bd80"
            "f5199588 1ec4e0c4 488987ce 742e8109 689bb379 d2d750c0 d915dca3 46a89f75"
        ),
    ),
    EspCase(
        "RFC 3602 §4 case 7 (tunnel mode, IPv4 ICMP, 84 bytes)",
        hx("01234567 89abcdef 01234567 89abcdef"),
        0x8765,
        2,
        False,
        hx("f4e76524 4f6407ad f13dc138 0f673f37"),
        hx(
            "45000054 09040000 4001f988 c0a87b03 c0a87bc8 08009f76 a90a0100 b49c083d"
            "02a20400 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f 20212223"
            "24252627 28292a2b 2c2d2e2f 30313233 34353637"
        ),
        4,
        hx(
            "00008765 00000002 f4e76524 4f6407ad f13dc138 0f673f37"
            "773b5241 a4c44922 5e4f3ce5 ed611b0c 237ca96c f74a9301 3c1b0ea1 a0cf70f8"
            "e4ecaec7 8ac53aad 7a0f022b 859243c6 47752e94 a859352b 8a4d4d2d ecd136e5"
            "c177f132 ad3fbfb2 201ac990 4c74ee0a 109e0ca1 e4dfe9d5 a100b842 f1c22f0d"
        ),
    ),
    EspCase(
        "RFC 3602 §4 case 8 (tunnel mode, IPv4 ICMP, 68 bytes)",
        hx("01234567 89abcdef 01234567 89abcdef"),
        0x8765,
        5,
        False,
        hx("85d47224 b5f3dd5d 2101d4ea 8dffab22"),
        hx(
            "45000044 090c0000 4001f990 c0a87b03 c0a87bc8 0800d63c aa0a0200 c69c083d"
            "a3de0300 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff"
            "ffffffff"
        ),
        4,
        hx(
            "00008765 00000005 85d47224 b5f3dd5d 2101d4ea 8dffab22"
            "15b92683 819596a8 047232cc 00f7048f e45318e1 1f8a0f62 ede3c3fc 61203bb5"
            "0f980a08 c9843fd3 a1b06d5c 07ff9639 b7eb7dfb 3512e5de 435e7207 ed971ef3"
            "d2726d9b 5ef6affc 6d17a0de cbb13892"
        ),
    ),
)

# ---------------------------------------------------------------------------------------------------------
# RFC 3686 §6: AES-CTR. `nonce` and `iv` make the counter block nonce || IV || 00000001.


@dataclass(frozen=True)
class CtrCase:
    name: str
    key: bytes
    nonce: bytes
    iv: bytes
    plaintext: bytes
    ciphertext: bytes


_P16 = hx("53696e676c6520626c6f636b206d7367")  # "Single block msg"
_P32 = bytes(range(32))
_P36 = bytes(range(36))

RFC3686_CTR = (
    CtrCase(
        "RFC 3686 §6 test vector #1 (AES-128, 16 octets)",
        hx("AE6852F8121067CC4BF7A5765577F39E"),
        hx("00000030"),
        hx("0000000000000000"),
        _P16,
        hx("E4095D4FB7A7B3792D6175A3261311B8"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #2 (AES-128, 32 octets)",
        hx("7E24067817FAE0D743D6CE1F32539163"),
        hx("006CB6DB"),
        hx("C0543B59DA48D90B"),
        _P32,
        hx("5104A106168A72D9790D41EE8EDAD388EB2E1EFC46DA57C8FCE630DF9141BE28"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #3 (AES-128, 36 octets)",
        hx("7691BE035E5020A8AC6E618529F9A0DC"),
        hx("00E0017B"),
        hx("27777F3F4A1786F0"),
        _P36,
        hx("C1CF48A89F2FFDD9CF4652E9EFDB72D74540A42BDE6D7836D59A5CEAAEF3105325B2072F"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #4 (AES-192, 16 octets)",
        hx("16AF5B145FC9F579C175F93E3BFB0EED863D06CCFDB78515"),
        hx("00000048"),
        hx("36733C147D6D93CB"),
        _P16,
        hx("4B55384FE259C9C84E7935A003CBE928"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #5 (AES-192, 32 octets)",
        hx("7C5CB2401B3DC33C19E7340819E0F69C678C3DB8E6F6A91A"),
        hx("0096B03B"),
        hx("020C6EADC2CB500D"),
        _P32,
        hx("453243FC609B23327EDFAAFA7131CD9F8490701C5AD4A79CFC1FE0FF42F4FB00"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #6 (AES-192, 36 octets)",
        hx("02BF391EE8ECB159B959617B0965279BF59B60A786D3E0FE"),
        hx("0007BDFD"),
        hx("5CBD60278DCC0912"),
        _P36,
        hx("96893FC55E5C722F540B7DD1DDF7E758D288BC95C69165884536C811662F2188ABEE0935"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #7 (AES-256, 16 octets)",
        hx("776BEFF2851DB06F4C8A0542C8696F6C6A81AF1EEC96B4D37FC1D689E6C1C104"),
        hx("00000060"),
        hx("DB5672C97AA8F0B2"),
        _P16,
        hx("145AD01DBF824EC7560863DC71E3E0C0"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #8 (AES-256, 32 octets)",
        hx("F6D66D6BD52D59BB0796365879EFF886C66DD51A5B6A99744B50590C87A23884"),
        hx("00FAAC24"),
        hx("C1585EF15A43D875"),
        _P32,
        hx("F05E231B3894612C49EE000B804EB2A9B8306B508F839D6A5530831D9344AF1C"),
    ),
    CtrCase(
        "RFC 3686 §6 test vector #9 (AES-256, 36 octets)",
        hx("FF7A617CE69148E4F1726E2F43581DE2AA62D9F805532EDFF1EED687FB54153D"),
        hx("001CC5B7"),
        hx("51A51D70A1C11148"),
        _P36,
        hx("EB6C52821D0BBBF7CE7594462ACA4FAAB407DF866569FD07F48CC0B583D6071F1EC0E6B8"),
    ),
)

# ---------------------------------------------------------------------------------------------------------
# HMAC. RFC 4868 §2.7.1 (PRF test cases, the RFC 4231 keys of any length) and §2.7.2 (the authenticator
# test cases with keys of the digest's size and the truncated ICV ESP sends); RFC 2202 §2 (HMAC-MD5) and
# §3 (HMAC-SHA-1), which RFC 2403 §5 and RFC 2404 §5 point to, with the 96-bit truncation they define.


@dataclass(frozen=True)
class MacCase:
    name: str
    digest: str  # our algorithm name
    key: bytes
    data: bytes
    mac: bytes  # the full HMAC output
    icv: bytes | None  # the truncated ICV the RFC prints, when it prints one


_LARGE_KEY = b"\xaa" * 131
_LARGE_DATA = (
    b"This is a test using a larger than block-size key and a larger than block-size data. "
    b"The key needs to be hashed before being used by the HMAC algorithm."
)

RFC4868_PRF = (
    ("PRF-1", b"\x0b" * 20, b"Hi There", (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    )),
    ("PRF-2", b"Jefe", b"what do ya want for nothing?", (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
    )),
    ("PRF-3", b"\xaa" * 20, b"\xdd" * 50, (
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
        "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
        "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
    )),
    ("PRF-4", bytes(range(1, 26)), b"\xcd" * 50, (
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
        "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
        "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
    )),
    ("PRF-5", _LARGE_KEY, b"Test Using Larger Than Block-Size Key - Hash Key First", (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    )),
    ("PRF-6", _LARGE_KEY, _LARGE_DATA, (
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e",
        "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
        "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
    )),
)  # fmt: skip

RFC4868_PRF_CASES = tuple(
    MacCase(f"RFC 4868 §2.7.1 {name} {digest}", digest, key, data, hx(mac), None)
    for name, key, data, macs in RFC4868_PRF
    for digest, mac in zip(("sha256", "sha384", "sha512"), macs, strict=True)
)

RFC4868_AUTH = (
    MacCase(
        "RFC 4868 §2.7.2.1 AUTH256-1", "sha256", b"\x0b" * 32, b"Hi There",
        hx("198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"),
        hx("198a607eb44bfbc69903a0f1cf2bbdc5"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.1 AUTH256-2", "sha256", b"Jefe" * 8, b"what do ya want for nothing?",
        hx("167f928588c5cc2eef8e3093caa0e87c9ff566a14794aa61648d81621a2a40c6"),
        hx("167f928588c5cc2eef8e3093caa0e87c"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.1 AUTH256-3", "sha256", b"\xaa" * 32, b"\xdd" * 50,
        hx("cdcb1220d1ecccea91e53aba3092f962e549fe6ce9ed7fdc43191fbde45c30b0"),
        hx("cdcb1220d1ecccea91e53aba3092f962"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.1 AUTH256-4", "sha256", bytes(range(1, 33)), b"\xcd" * 50,
        hx("372efcf9b40b35c2115b1346903d2ef42fced46f0846e7257bb156d3d7b30d3f"),
        hx("372efcf9b40b35c2115b1346903d2ef4"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.2 AUTH384-1", "sha384", b"\x0b" * 48, b"Hi There",
        hx("b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc4c5df61d5b3297b4fb68dab9f1b582c2"),
        hx("b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.2 AUTH384-2", "sha384", b"Jefe" * 12, b"what do ya want for nothing?",
        hx("2c7353974f1842fd66d53c452ca42122b28c0b594cfb184da86a368e9b8e16f5349524ca4e82400cbde0686d403371c9"),
        hx("2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.2 AUTH384-3", "sha384", b"\xaa" * 48, b"\xdd" * 50,
        hx("809f439be00274321d4a538652164b53554a508184a0c3160353e3428597003d35914a18770f9443987054944b7c4b4a"),
        hx("809f439be00274321d4a538652164b53554a508184a0c316"),
    ),
    MacCase(
        # The key as the RFC prints it (erratum 5507 notes it breaks the pattern; the result matches it).
        "RFC 4868 §2.7.2.2 AUTH384-4", "sha384", bytes(range(1, 33)) + bytes(range(0x0A, 0x1A)), b"\xcd" * 50,
        hx("5b540085c6e6358096532b2493609ed1cb298f774f87bb5c2ebf182c83cc7428707fb92eab2536a5812258228bc96687"),
        hx("5b540085c6e6358096532b2493609ed1cb298f774f87bb5c"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.3 AUTH512-1", "sha512", b"\x0b" * 64, b"Hi There",
        hx("637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"
           "ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b"),
        hx("637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.3 AUTH512-2", "sha512", b"Jefe" * 16, b"what do ya want for nothing?",
        hx("cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"
           "6aa334ae9fb9afc2184932d8695e397bfa0ffb93466cfcceaae38c833b7dba38"),
        hx("cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"),
    ),
    MacCase(
        "RFC 4868 §2.7.2.3 AUTH512-3", "sha512", b"\xaa" * 64, b"\xdd" * 50,
        hx("2ee7acd783624ca9398710f3ee05ae41b9f9b0510c87e49e586cc9bf961733d8"
           "623c7b55cebefccf02d5581acc1c9d5fb1ff68a1de45509fbe4da9a433922655"),
        hx("2ee7acd783624ca9398710f3ee05ae41b9f9b0510c87e49e586cc9bf961733d8"),
    ),
    MacCase(
        # The key as corrected by erratum 1785.
        "RFC 4868 §2.7.2.3 AUTH512-4", "sha512", bytes(range(1, 65)), b"\xcd" * 50,
        hx("5e6688e5a3daec826ca32eaea224eff5e700628947470e13ad01302561bab108"
           "b8c48cbc6b807dcfbd850521a685babc7eae4a2a2e660dc0e86b931d65503fd2"),
        hx("5e6688e5a3daec826ca32eaea224eff5e700628947470e13ad01302561bab108"),
    ),
)  # fmt: skip

_BIG = b"\xaa" * 80
_FIRST = b"Test Using Larger Than Block-Size Key - Hash Key First"
_BOTH = b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data"

RFC2202 = (
    MacCase("RFC 2202 §2 test case 1", "md5", b"\x0b" * 16, b"Hi There",
            hx("9294727a3638bb1c13f48ef8158bfc9d"), None),
    MacCase("RFC 2202 §2 test case 2", "md5", b"Jefe", b"what do ya want for nothing?",
            hx("750c783e6ab0b503eaa86e310a5db738"), None),
    MacCase("RFC 2202 §2 test case 3", "md5", b"\xaa" * 16, b"\xdd" * 50,
            hx("56be34521d144c88dbb8c733f0e8b3f6"), None),
    MacCase("RFC 2202 §2 test case 4", "md5", bytes(range(1, 26)), b"\xcd" * 50,
            hx("697eaf0aca3a3aea3a75164746ffaa79"), None),
    MacCase("RFC 2202 §2 test case 5", "md5", b"\x0c" * 16, b"Test With Truncation",
            hx("56461ef2342edc00f9bab995690efd4c"), hx("56461ef2342edc00f9bab995")),
    MacCase("RFC 2202 §2 test case 6", "md5", _BIG, _FIRST, hx("6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"), None),
    MacCase("RFC 2202 §2 test case 7", "md5", _BIG, _BOTH, hx("6f630fad67cda0ee1fb1f562db3aa53e"), None),
    MacCase("RFC 2202 §3 test case 1", "sha1", b"\x0b" * 20, b"Hi There",
            hx("b617318655057264e28bc0b6fb378c8ef146be00"), None),
    MacCase("RFC 2202 §3 test case 2", "sha1", b"Jefe", b"what do ya want for nothing?",
            hx("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"), None),
    MacCase("RFC 2202 §3 test case 3", "sha1", b"\xaa" * 20, b"\xdd" * 50,
            hx("125d7342b9ac11cd91a39af48aa17b4f63f175d3"), None),
    MacCase("RFC 2202 §3 test case 4", "sha1", bytes(range(1, 26)), b"\xcd" * 50,
            hx("4c9007f4026250c6bc8414f9bf50c86c2d7235da"), None),
    MacCase("RFC 2202 §3 test case 5", "sha1", b"\x0c" * 20, b"Test With Truncation",
            hx("4c1a03424b55e07fe7f27be1d58bb9324a9a5a04"), hx("4c1a03424b55e07fe7f27be1")),
    MacCase("RFC 2202 §3 test case 6", "sha1", _BIG, _FIRST,
            hx("aa4ae5e15272d00e95705637ce8a3b55ed402112"), None),
    MacCase("RFC 2202 §3 test case 7", "sha1", _BIG, _BOTH,
            hx("e8e99d0f45237d786d6bbaa7965c7808bbff1a91"), None),
)  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# AES-GCM: McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", Appendix B, the test cases with a
# 96-bit IV (the only IV length ESP uses: RFC 4106 §4, salt(4) || IV(8)).


@dataclass(frozen=True)
class GcmCase:
    name: str
    key: bytes
    nonce: bytes  # 12 bytes: RFC 4106's salt is the first 4, the ESP IV the last 8
    plaintext: bytes
    aad: bytes
    ciphertext: bytes
    tag: bytes


_GCM_K = hx("feffe9928665731c6d6a8f9467308308")
_GCM_IV = hx("cafebabefacedbaddecaf888")
_GCM_P64 = hx(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
)
_GCM_P60 = _GCM_P64[:60]
_GCM_A = hx("feedfacedeadbeeffeedfacedeadbeefabaddad2")

GCM_SPEC = (
    GcmCase("GCM spec test case 1", bytes(16), bytes(12), b"", b"", b"",
            hx("58e2fccefa7e3061367f1d57a4e7455a")),
    GcmCase("GCM spec test case 2", bytes(16), bytes(12), bytes(16), b"",
            hx("0388dace60b6a392f328c2b971b2fe78"), hx("ab6e47d42cec13bdf53a67b21257bddf")),
    GcmCase("GCM spec test case 3", _GCM_K, _GCM_IV, _GCM_P64, b"",
            hx("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
               "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"),
            hx("4d5c2af327cd64a62cf35abd2ba6fab4")),
    GcmCase("GCM spec test case 4 (with AAD)", _GCM_K, _GCM_IV, _GCM_P60, _GCM_A,
            hx("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
               "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"),
            hx("5bc94fbc3221a5db94fae95ae7121a47")),
    GcmCase("GCM spec test case 13 (AES-256)", bytes(32), bytes(12), b"", b"", b"",
            hx("530f8afbc74536b9a963b4f1c4cb738b")),
    GcmCase("GCM spec test case 14 (AES-256)", bytes(32), bytes(12), bytes(16), b"",
            hx("cea7403d4d606b6e074ec5d3baf39d18"), hx("d0d1c8a799996bf0265b98b5d48ab919")),
    GcmCase("GCM spec test case 15 (AES-256)", _GCM_K * 2, _GCM_IV, _GCM_P64, b"",
            hx("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
               "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"),
            hx("b094dac5d93471bdec1a502270e3cc6c")),
    GcmCase("GCM spec test case 16 (AES-256, with AAD)", _GCM_K * 2, _GCM_IV, _GCM_P60, _GCM_A,
            hx("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
               "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"),
            hx("76fc6ece0f4e1768cddf8853bb2d551b")),
)  # fmt: skip


# draft-mcgrew-gcm-test-01 ("Test Cases for the use of GCM and GMAC in IPsec ESP"): whole ESP packets,
# AES-GCM with a 16-byte ICV. `nonce` is salt || IV; `plaintext` ends with padding, pad length, next header.
@dataclass(frozen=True)
class GcmEspCase:
    name: str
    key: bytes  # AES key, without the salt
    spi: int
    seq: int  # 64 bits when the AAD carries the extended sequence number
    esn: bool
    nonce: bytes
    plaintext: bytes  # payload || padding || pad length || next header
    packet: bytes


def _mcgrew(key: str, spi: str, seq: str, nonce: str, plaintext: str, packet: str) -> GcmEspCase:
    seqb = hx(seq)
    return GcmEspCase(
        f"draft-mcgrew-gcm-test-01 spi={spi} seq={seq} ({len(hx(key)) * 8}-bit key)",
        hx(key), int(spi, 16), int.from_bytes(seqb, "big"), len(seqb) == 8, hx(nonce), hx(plaintext),
        hx(packet),
    )  # fmt: skip


_MCGREW = (
    _mcgrew(
        "4c80cdefbb5d10da906ac73c3613a634", "00004321", "8765432100000000", "2e443b684956ed7e3b244cfe",
        """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000
        00000000045f736970045f7564700373 69700963796265726369747902646b00 0021000101020201""",
        """00004321000000004956ed7e3b244cfe fecf537e729d5b07dc30df528dd22b76
        8d1b98736696a6fd348509fa13ceac34 cfa2436f14a3f3cf65925bf1f4a13c5d 15b21e1884f5ff6247aeabb786b93bce
        61bc17d768fd9732459018148f6cbe72 2fd04796562dfdb4""",
    ),
    _mcgrew(
        "feffe9928665731c6d6a8f9467308308", "0000a5f8", "0000000a", "cafebabefacedbaddecaf888",
        """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100
        00010000000000000373697009637962 65726369747902646b00000100010001""",
        """0000a5f80000000afacedbaddecaf888 deb22cd9b07c72c16e3a65beeb8df304
        a5a5897d33ae530f1ba76d5d114d2a5c 3de81827c10e9a4f51330d0eec416642 cfbb85a5b47e48a4ec3b9ba95d918bd1
        83b70d3aa8bc6ee4c309e9d85a41ad4a""",
    ),
    _mcgrew(
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "4a2cbfe3", "00000002",
        "112233440102030405060708",
        """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
        7002400020bf0000020405b401010402 01020201""",
        """4a2cbfe3000000020102030405060708 ff425c9b724599df7a3bcd510194e00d
        6a78107f1b0b1cbf06efae9d65a5d763 748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49
        15956c96""",
    ),
    _mcgrew(
        "00000000000000000000000000000000", "00000000", "00000001", "000000000000000000000000",
        """4500003c99c500008001cb7a40679318 010101010800075c0200440061626364
        65666768696a6b6c6d6e6f7071727374 75767761626364656667686901020201""",
        """00000000000000010000000000000000 4688daf2f973a392732909c331d56d60
        f694abaa414b5e7ff5fdcdfff5e9a284 456476492719ffb64de7d9dca1e1d894 bc3bd57873ed4d181d19d4d5c8c18af3
        f821d496eeb096e98ad2b69e4799c71d""",
    ),
    _mcgrew(
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010", "57690e434e280000a2fca1a3",
        """4500003c99c300008001cb7c40679318 010101010800085c0200430061626364
        65666768696a6b6c6d6e6f7071727374 75767761626364656667686901020201""",
        """42f67e3f101010104e280000a2fca1a3 fba2caa4853cf9f0f22cb10d86dd83b0
        fec75691cf1a04b00d1138ec9c357917 65acbd8701ad79845bf9fe3fba487bc9 1755e6662b4c8d0d1f5e22739530320a
        e0d731cc978ecafaeae88f00e80d6e48""",
    ),
    _mcgrew(
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010", "57690e434e280000a2fca1a3",
        "4500001c42a200008001441f406793b6 e00000020a00f5ff01020201",
        """42f67e3f101010104e280000a2fca1a3 fba2ca845e5df9f0f22c3e6e86dd831e
        1fc65792cd1af9130e1379ed369f071f 35e034be95f112e4e7d05d35""",
    ),
    _mcgrew(
        "feffe9928665731c6d6a8f9467308308feffe9928665731c", "0000a5f8", "0000000a",
        "cafebabefacedbaddecaf888",
        "45000028a4ad4000400678800a01038f 0a010612802306b8cb712602dd6bb03e 501016d075680001",
        """0000a5f80000000afacedbaddecaf888 a5b1f8066029aea40e598b8122de0242
        0938b3ab33f828e687b8858b5bfbdbd0 315b27452144cc7795457b9652037f53 18027b5b4cd7a636""",
    ),
    _mcgrew(
        "abbccddef00112233445566778899aab", "00000100", "0000000000000001", "decaf888cafedebaceface74",
        """4500004933ba00007f119106c3fb1d10 c2b1d326c02831ce0035dd7b800302d5
        00004e20001e8c18d75b81dc91baa047 6b91b924b280389d92c963bac046ec95 9b6266c04722b14923010101""",
        """0000010000000001cafedebaceface74 18a6fd42f72cbf4ab2a2ea901f73d814
        e3e7f243d95412e1c349c1d2fbec168f 9190feebaf2cb01984e65863965d7472 b79da345e0e780191f0d2f0e0f496c22
        6f2127b27db35724e7845d68651f57e6 5f354f75ff17015769623436""",
    ),
    _mcgrew(
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "17405e67", "156f3126dd0db99b",
        "73616c74616e640169766563",
        "45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602 50101f646d540001",
        """17405e67dd0db99b616e640169766563 f2d69ecdbd5a0d5b8d5ef38bad4da58d
        1f278fde98ef67549d524a3018d9a57f f4d3a31ce673119e451626c2415771e3 b7eebca614c89b35""",
    ),
    _mcgrew(
        "3de09874b388e6491988d0c3607eae1f", "42f67e3f", "1010101010101010", "57690e434e280000a2fca1a3",
        """45000049333e00007f119182c3fb1d10 c2b1d326c02831ce0035cb458003025b
        000001e0001e8c18d65759d52284a035 2c71475c8880391c764d6e5ee0496b32 5ae270c03899493915010101""",
        """42f67e3f101010104e280000a2fca1a3 fba2cad12fc1f9f00d3cebf305410db8
        3d7784b607323d220f24b0a97d541828 00cadb0f68d99ef0e0c0c89ae9bea888 4e52d65bc1afd0740f742444747b5b39
        ab533163aad4550ee5160975cdb608c5 769189609763b8e18caa81e2""",
    ),
    _mcgrew(
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab", "17405e67", "156f3126dd0db99b",
        "73616c74616e640169766563",
        """636973636f0172756c65730174686501 6e6574776501646566696e6501746865
        746563686e6f6c6f6769657301746861 7477696c6c01646566696e65746f6d6f 72726f7701020201""",
        """17405e67dd0db99b616e640169766563 d4b7ed86a1777f2ea13d6973d324c69e
        7b43f826fb56831226508bebd2dceb18 d0a6df10e5487df074113e14c641024e 3e6773d91a62ee429b043a10e3efe6b0
        12a49363412364f8c0cac587f249e56b 11e24f30e44ccc76""",
    ),
    _mcgrew(
        "7d773d00c144c525ac619d18c84a3f47", "335467ae", "ffffffff", "d966426743457e9182443bc6",
        "01020201",
        "335467aeffffffff43457e9182443bc6 437f866bcb3f699fe9b0822bac961c45 04bef270",
    ),
    _mcgrew(
        "abbccddef00112233445566778899aab", "00000100", "0000000000000001", "decaf888cafedebaceface74",
        "746f016265016f72016e6f7401746f01 62650001",
        """0000010000000001cafedebaceface74 29c9fc69a197d038ccdd14e2ddfcaa05
        43332164412503524303ed3c6c5f2838 43af8c3e""",
    ),
    _mcgrew(
        "6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961", "796b6963", "ffffffffffffffff",
        "7475726e333021696765746d",
        """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364
        65666768696a6b6c6d6e6f7071727374 01020201""",
        """796b6963ffffffff333021696765746d f97ab2aa356d8edce17644ac8c78e25d
        d24dedbb29ebf1b64a274b39b49c3a86 4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32
        9fb4c053""",
    ),
)  # fmt: skip

# Some share SPI and sequence number, so their position in this list names them.
MCGREW_GCM_ESP = tuple(replace(c, name=f"{c.name} #{i}") for i, c in enumerate(_MCGREW, 1))

# ---------------------------------------------------------------------------------------------------------
# RFC 7634 Appendix A: ChaCha20-Poly1305 ESP example (tunnel mode, an IPv4 ICMP echo request).

RFC7634_ESP = EspCase(
    "RFC 7634 Appendix A",
    hx("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3"),
    0x01020304,
    5,
    False,
    hx("1011121314151617"),
    hx(
        "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10"
        "000736270809 0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
        "3031323334353637"
    ),
    4,
    hx(
        "0102030400000005 1011121314151617"
        "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6"
        "14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3"
        "cbec163fac469b502773f6fb94e664da9165b82829f641e0"
        "76aaa8266b7fb0f7b11b369907e1ad43"
    ),
)

# ---------------------------------------------------------------------------------------------------------
# 3DES: NIST SP 800-67 Rev. 1 Appendix B (the TDEA example: three independent keys, ECB on the three
# blocks of "The qufck brown fox jump", the typo being the document's).

SP800_67_KEY = hx("0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123")
SP800_67_PLAIN = hx("5468652071756663 6B2062726F776E20 666F78206A756D70")
SP800_67_ECB = hx("A826FD8CE53B855F CCE21C8112256FE6 68D5C05DD9B6B900")
