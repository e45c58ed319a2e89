"""Sans-I/O IKEv2 (RFC 7296) for ipsecd: PSK-authenticated IKE SAs that key tunnel-mode ESP CHILD SAs."""

from __future__ import annotations

from .config import IkeConfigError, PeerConfig
from .events import ChildDown, ChildUp, Event, KeysForTest, PeerStatus, Send
from .machine import Ike
from .proposals import ProposalError

__all__ = [
    "ChildDown",
    "ChildUp",
    "Event",
    "Ike",
    "IkeConfigError",
    "KeysForTest",
    "PeerConfig",
    "PeerStatus",
    "ProposalError",
    "Send",
]
