"""Events the core raises for the daemon: lifetime expiry and sequence exhaustion."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EventKind", "SAEvent"]


class EventKind(enum.Enum):
    """What happened to an SA."""

    SOFT_EXPIRE = "soft-expire"
    HARD_EXPIRE = "hard-expire"
    SEQ_EXHAUSTED = "seq-exhausted"


@dataclass(frozen=True, slots=True)
class SAEvent:
    """An event about the SA (dst, src, spi); `limit` names the lifetime that fired."""

    kind: EventKind
    dst: str
    src: str
    spi: int
    limit: str
    now: float
