"""IKEv2 protocol numbers: exchange, payload, notify and transform identifiers (RFC 7296 §3, IANA)."""

from __future__ import annotations

from enum import IntEnum

from ..core.sa import NAT_T_PORT as NAT_T_PORT  # RFC 7296 §2.23, RFC 3948 (defined once, in core)

IKE_VERSION = 0x20  # RFC 7296 §3.1: major 2, minor 0
IKE_PORT = 500  # RFC 7296 §2
HEADER_LEN = 28  # RFC 7296 §3.1
KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15


class Exchange(IntEnum):
    """Exchange types, RFC 7296 §3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class Flag(IntEnum):
    """Header flags, RFC 7296 §3.1."""

    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class Payload(IntEnum):
    """Payload types, RFC 7296 §3.2 (and SKF, RFC 7383 §2.5)."""

    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    SKF = 53


class Protocol(IntEnum):
    """Protocol IDs in proposals, notify and delete payloads, RFC 7296 §3.3.1."""

    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """Transform types, RFC 7296 §3.3.2."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class Encr(IntEnum):
    """Encryption algorithm transform IDs, RFC 7296 §3.3.2, RFC 5282 §7 (IANA IKEv2 Transform Type 1)."""

    AES_CBC = 12  # RFC 3602
    AES_GCM_16 = 20  # RFC 4106, RFC 5282


class Prf(IntEnum):
    """Pseudorandom function transform IDs, RFC 4868 §4 (IANA Transform Type 2)."""

    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7


class Integ(IntEnum):
    """Integrity algorithm transform IDs, RFC 4868 §4 (IANA Transform Type 3)."""

    NONE = 0
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    """Diffie-Hellman group transform IDs (IANA Transform Type 4)."""

    MODP_2048 = 14  # RFC 3526 §3
    MODP_3072 = 15  # RFC 3526 §4
    ECP_256 = 19  # RFC 5903 §3.1
    ECP_384 = 20  # RFC 5903 §3.2
    CURVE25519 = 31  # RFC 8031 §2


class Esn(IntEnum):
    """Extended sequence numbers transform IDs, RFC 7296 §3.3.2."""

    NO = 0
    YES = 1


ATTR_KEY_LENGTH = 14  # RFC 7296 §3.3.5, TV format (AF bit set)
ATTR_TV = 0x8000  # RFC 7296 §3.3.5: attribute format bit


class IdType(IntEnum):
    """Identification types, RFC 7296 §3.5."""

    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    KEY_ID = 11


class AuthMethod(IntEnum):
    """Authentication methods, RFC 7296 §3.8."""

    SHARED_KEY_MIC = 2


class TsType(IntEnum):
    """Traffic selector types, RFC 7296 §3.13.1."""

    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8


class Notify(IntEnum):
    """Notify message types, RFC 7296 §3.10.1 (errors below 16384, status from 16384)."""

    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395


ERROR_NOTIFY_MAX = 16383  # RFC 7296 §3.10.1: types 0-16383 are errors


def notify_name(value: int) -> str:
    """The RFC name of a notify type, or its number."""
    try:
        return Notify(value).name
    except ValueError:
        return f"NOTIFY_{value}"
