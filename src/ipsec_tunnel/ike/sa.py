"""One IKE SA's state (RFC 7296 §2.1-2.3 message IDs and retransmission), its CHILD SA, and the small
helpers the state machine uses: traffic selectors (§2.9) and NAT detection hashes (§2.23).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives import hashes

from .config import PeerConfig
from .crypto import DhKey, IkeKeys, SkCipher
from .message import TrafficSelector
from .proposals import Spec

RETRANSMIT_TRIES = 5  # sends of one request before giving up: after 1, 2, 4, 8, 16 s (RFC 7296 §2.4)
RETRANSMIT_BASE = 1.0
HALF_OPEN_TIMEOUT = 30.0  # a responder's IKE SA waiting for IKE_AUTH
MAX_HALF_OPEN = 1024  # responder IKE SAs waiting for IKE_AUTH; more IKE_SA_INITs are dropped
MAX_KE_RETRIES = 2  # INVALID_KE_PAYLOAD answers followed as initiator (§1.3)
MAX_COOKIE_RETRIES = 2  # COOKIE answers followed as initiator (§2.6)


class State(Enum):
    """IKE SA states; initiator INIT_SENT -> AUTH_SENT -> ESTABLISHED, responder INIT_DONE -> ESTABLISHED."""

    INIT_SENT = "init-sent"
    AUTH_SENT = "auth-sent"
    INIT_DONE = "init-done"
    ESTABLISHED = "established"
    DELETING = "deleting"
    DEAD = "dead"


@dataclass
class Pending:
    """Our outstanding request (window 1): its bytes for retransmission and what it was for."""

    mid: int
    data: bytes
    kind: str  # "init" | "auth" | "dpd" | "delete_ike" | "delete_child"
    deadline: float
    sends: int = 1


@dataclass
class Child:
    """The CHILD SA pair of this IKE SA (one in this part)."""

    child_id: int
    spi_in: int
    spi_out: int


@dataclass(eq=False)
class IkeSa:
    """Everything about one IKE SA; the machine owns the transitions."""

    cfg: PeerConfig
    initiator: bool
    spi_i: int
    spi_r: int
    local: tuple[str, int]
    remote: tuple[str, int]
    created: float
    state: State
    ni: bytes = field(default=b"", repr=False)
    nr: bytes = field(default=b"", repr=False)
    dh: DhKey | None = field(default=None, repr=False)
    spec: Spec | None = None
    keys: IkeKeys | None = field(default=None, repr=False)
    out: SkCipher | None = field(default=None, repr=False)
    inn: SkCipher | None = field(default=None, repr=False)
    init_request: bytes = field(default=b"", repr=False)
    init_response: bytes = field(default=b"", repr=False)
    next_mid: int = 0  # our next request's message ID
    expect_mid: int = 0  # the peer's next request's message ID
    pending: Pending | None = None
    # (mid, the peer's request, our response): a byte-identical request gets the response again (§2.1)
    cached: tuple[int, bytes, bytes] | None = field(default=None, repr=False)
    request: bytes = field(default=b"", repr=False)  # the peer's request being answered
    cookie: bytes = b""
    cookie_tries: int = 0
    ke_tries: int = 0
    child_spi: int = 0  # the inbound SPI we offered in IKE_AUTH
    child: Child | None = None
    peer_id: tuple[int, bytes] | None = None  # the peer's authenticated identity (type, data)
    nat_local: bool = False
    nat_remote: bool = False
    last_recv: float = 0.0
    iv_counter: int = 0

    @property
    def our_spi(self) -> int:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED


def nat_hash(spi_i: int, spi_r: int, addr: str, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) for NAT_DETECTION_*_IP (RFC 7296 §2.23)."""
    h = hashes.Hash(hashes.SHA1())  # noqa: S303 - mandated by RFC 7296 §2.23
    h.update(struct.pack("!QQ", spi_i, spi_r) + ipaddress.ip_address(addr).packed + struct.pack("!H", port))
    return h.finalize()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def net_of(cidr: str | None, addr: str) -> Network:
    """A configured net, or the host's own address when none is configured."""
    return ipaddress.ip_network(cidr if cidr else addr, strict=False)


def ts_of(net: Network) -> TrafficSelector:
    """A traffic selector covering `net`, any protocol and port (RFC 7296 §3.13.1)."""
    ts_type = 7 if net.version == 4 else 8
    return TrafficSelector(ts_type, 0, 0, 65535, net.network_address.packed, net.broadcast_address.packed)


def narrow(theirs: list[TrafficSelector], ours: Network) -> tuple[TrafficSelector, Network] | None:
    """The first of `theirs` that overlaps `ours`, narrowed to a CIDR inside both (RFC 7296 §2.9)."""
    for ts in theirs:
        if (ts.ts_type == 7) != (ours.version == 4) or ts.start_port > ts.end_port:
            continue
        start = max(int.from_bytes(ts.start), int(ours.network_address))
        end = min(int.from_bytes(ts.end), int(ours.broadcast_address))
        if start > end:
            continue
        net = ipaddress.ip_network(
            str(next(ipaddress.summarize_address_range(_addr(ours.version, start), _addr(ours.version, end))))
        )
        picked = TrafficSelector(
            ts.ts_type,
            ts.ip_proto,
            ts.start_port,
            ts.end_port,
            net.network_address.packed,
            net.broadcast_address.packed,
        )
        return picked, net
    return None


def ts_net(ts: TrafficSelector) -> Network | None:
    """The CIDR a selector covers exactly, or None."""
    version = 4 if ts.ts_type == 7 else 6
    try:
        nets: list[Network] = list(
            ipaddress.summarize_address_range(
                _addr(version, int.from_bytes(ts.start)), _addr(version, int.from_bytes(ts.end))
            )
        )
    except (ValueError, TypeError):
        return None
    return nets[0] if len(nets) == 1 else None


def _addr(version: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
