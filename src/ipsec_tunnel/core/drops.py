"""Why a packet was dropped: one reason per failure, each with its own counter."""

from __future__ import annotations

import enum

__all__ = ["RECEIVE_DROPS", "SEND_DROPS", "Drop"]


class Drop(enum.Enum):
    """A dropped packet's reason. Receive reasons first, then send reasons."""

    # Receive side (the seed's counters, then the ones the original lacked).
    UNKNOWN_SA = "unknown_sa"
    AUTH_FAILED = "auth_failed"
    BAD_PADDING = "bad_padding"
    NOT_TUNNEL_MODE = "not_tunnel_mode"
    NO_TUNNEL = "no_tunnel"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    MALFORMED = "malformed"
    DUMMY = "dummy"  # RFC 4303 §2.6: next header 59, traffic-flow-confidentiality padding packet
    POLICY = "policy"  # inner source outside the tunnel's --peer-net
    NON_ESP = "non_esp"  # RFC 3948 §2.2: non-ESP marker (IKE) on the encapsulation port; we run no IKE
    ECN = "ecn"  # RFC 6040 §4.2: CE outer with a Not-ECT inner must be dropped
    WRONG_DIRECTION = "wrong_direction"  # a --duplex counter-mode IV this host sends itself: reflected
    ENCAP_MISMATCH = "encap_mismatch"  # raw ESP for an --encap=udp SA, or ESP-in-UDP for a raw-ESP SA
    DEVICE_DOWN = "device_down"  # decrypted, but the tunnel device refused it (down: EIO)
    AQM = "aqm"  # RFC 8289 CoDel: a TCP packet that waited too long in the receive queue, not ECN-capable
    # Send side.
    NO_SA = "no_sa"
    SEQ_EXHAUSTED = "seq_exhausted"
    TOO_BIG = "too_big"
    NOT_IP = "not_ip"
    NO_ROUTE = "no_route"
    SEND_ERROR = "send_error"  # the kernel refused the outer datagram (a firewall, an unknown --nextdev)
    DEVICE_AQM = "device_aqm"  # RFC 8289 CoDel on a tunnel device's ring: one TCP segment, not ECN-capable
    # Both sides: the state store could not commit the reservation a sequence number or a lifetime count
    # needs (disk full, read-only, I/O error); the packet is dropped rather than used unrecorded.
    STORE_FAILED = "store_failed"
    # Only a decrypted packet the tunnel device refused with an error other than EIO (which is
    # DEVICE_DOWN): ENOBUFS, ENOMEM, EINVAL from the TUN write, logged with its strerror. No send-side
    # path counts it; it stays in SEND_DROPS so every table keeps the seed's "other" column.
    OTHER = "other"

    @property
    def label(self) -> str:
        """A short human label for tables."""
        return _LABELS[self]


_LABELS: dict[Drop, str] = {
    Drop.UNKNOWN_SA: "unknown SA",
    Drop.AUTH_FAILED: "authentication failed",
    Drop.BAD_PADDING: "bad padding",
    Drop.NOT_TUNNEL_MODE: "not tunnel mode",
    Drop.NO_TUNNEL: "no matching tunnel",
    Drop.REPLAYED: "replayed",
    Drop.EXPIRED: "expired",
    Drop.MALFORMED: "malformed",
    Drop.DUMMY: "dummy (TFC)",
    Drop.POLICY: "inner address not allowed",
    Drop.NON_ESP: "non-ESP (IKE)",
    Drop.ECN: "ECN mismatch",
    Drop.WRONG_DIRECTION: "own direction (reflected)",
    Drop.ENCAP_MISMATCH: "encapsulation mismatch",
    Drop.DEVICE_DOWN: "device down",
    Drop.AQM: "queue too long (AQM)",
    Drop.NO_SA: "unknown SA",
    Drop.SEQ_EXHAUSTED: "sequence exhausted",
    Drop.TOO_BIG: "packet too big",
    Drop.NOT_IP: "not IP",
    Drop.NO_ROUTE: "no route",
    Drop.SEND_ERROR: "send failed",
    Drop.DEVICE_AQM: "queue too long (device AQM)",
    Drop.STORE_FAILED: "state store not writable",
    Drop.OTHER: "other",
}

RECEIVE_DROPS: tuple[Drop, ...] = (
    Drop.UNKNOWN_SA,
    Drop.AUTH_FAILED,
    Drop.BAD_PADDING,
    Drop.NOT_TUNNEL_MODE,
    Drop.NO_TUNNEL,
    Drop.REPLAYED,
    Drop.EXPIRED,
    Drop.MALFORMED,
    Drop.DUMMY,
    Drop.POLICY,
    Drop.NON_ESP,
    Drop.ECN,
    Drop.WRONG_DIRECTION,
    Drop.ENCAP_MISMATCH,
    Drop.DEVICE_DOWN,
    Drop.AQM,
    Drop.STORE_FAILED,
    Drop.OTHER,
)
SEND_DROPS: tuple[Drop, ...] = (
    Drop.NO_SA,
    Drop.SEQ_EXHAUSTED,
    Drop.EXPIRED,
    Drop.TOO_BIG,
    Drop.NOT_IP,
    Drop.NO_ROUTE,
    Drop.SEND_ERROR,
    Drop.DEVICE_AQM,
    Drop.STORE_FAILED,
    Drop.OTHER,
)
