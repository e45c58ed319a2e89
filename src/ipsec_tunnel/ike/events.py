"""What `Ike` hands out: datagrams to send, CHILD SAs to install or remove, peer status changes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Send:
    """One datagram; if either port is 4500 the daemon prepends the non-ESP marker (RFC 3948 §2.2)."""

    local: tuple[str, int]
    remote: tuple[str, int]
    data: bytes


@dataclass(frozen=True)
class ChildUp:
    """A tunnel-mode ESP CHILD SA pair to install; keys are never in repr."""

    peer: str
    child_id: int
    spi_in: int
    spi_out: int
    cipher: str
    icv_bits: int | None
    digest: str | None
    key_in: bytes = field(repr=False)
    key_out: bytes = field(repr=False)
    auth_key_in: bytes | None = field(repr=False)
    auth_key_out: bytes | None = field(repr=False)
    local_addr: str
    remote_addr: str
    encap: tuple[int, int] | None
    local_ts: str
    remote_ts: str
    nat_local: bool
    nat_remote: bool


@dataclass(frozen=True)
class ChildDown:
    """A CHILD SA pair to remove."""

    peer: str
    child_id: int
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class PeerStatus:
    """A peer's state, for `ike show`; also emitted whenever it changes."""

    peer: str
    state: str  # "down" | "connecting" | "established"
    reason: str | None
    ike_spi_i: int | None = None
    ike_spi_r: int | None = None
    remote: tuple[str, int] | None = None
    proposal: str | None = None
    children: tuple[int, ...] = ()


@dataclass(frozen=True)
class KeysForTest:
    """IKE SA keys for tshark's ikev2_decryption_table; only with Ike(log_keys_for_test=True)."""

    peer: str
    spi_i: int
    spi_r: int
    encr: str  # strongSwan token, e.g. "aes128gcm16", "aes256"
    integ: str | None  # e.g. "sha256" (HMAC-SHA2-256-128), None for AEAD
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)


Event = Send | ChildUp | ChildDown | PeerStatus | KeysForTest
