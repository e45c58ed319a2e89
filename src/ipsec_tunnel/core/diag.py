"""Drop diagnostics without I/O: the last drops with who sent them and which SPI, and rate-limited log
lines naming them ("unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 192.0.2.2"); a send-side drop
names the tunnel device it was read from ("state store not writable: SPI 0x1000 from 192.0.2.1 to
192.0.2.2, sending on ipsec1"), a decrypted packet its device did not take the device it was for
("device down: from 192.0.2.2 to 192.0.2.1, into ipsec1")."""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from .drops import Drop

__all__ = ["LOG_EVERY", "RING_SIZE", "DropLog", "DropRecord", "RateLimit", "spi_of"]

RING_SIZE = 32  # drops kept for `ipsecadm stats --last-drops`
LOG_EVERY = 10.0  # seconds between two log lines of one reason


class RateLimit:
    """At most one event per key every `every` seconds, counting the ones held back."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable, now: float) -> int | None:
        """None when an event of `key` at `now` is held back; else how many were held back before it."""
        if now < self._next.get(key, float("-inf")):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self.every
        return self._held.pop(key, 0)


@dataclass(frozen=True, slots=True)
class DropRecord:
    """One dropped packet: when, why, its SPI (None when it had none), outer addresses and UDP port; for a
    packet dropped on the way out, the tunnel device it came from (None: a received one)."""

    time: float
    reason: Drop
    spi: int | None
    src: bytes
    dst: bytes
    sport: int | None = None  # the UDP source port, for ESP-in-UDP
    device: str | None = None  # send side: the tunnel device the packet was read from
    into: str | None = None  # receive side, decrypted: the tunnel device that did not take it

    def text(self) -> str:
        """'unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 192.0.2.2' (received), 'no route: SPI
        0x1000 from 192.0.2.1 to 192.0.2.2, sending on ipsec1' or 'unknown SA: sending on nope' (sent)."""
        src = str(ipaddress.ip_address(self.src)) if self.src else "?"
        if self.sport is not None:
            src = f"[{src}]:{self.sport}" if ":" in src else f"{src}:{self.sport}"
        dst = str(ipaddress.ip_address(self.dst)) if self.dst else "?"
        spi = f"SPI {self.spi:#x} " if self.spi is not None else ""
        if self.into is not None:
            return f"{self.reason.label}: {spi}from {src} to {dst}, into {self.into}"
        if self.device is None:
            return f"{self.reason.label}: {spi}from {src} to {dst}"
        where = f"{spi}from {src} to {dst}, " if self.src else spi
        return f"{self.reason.label}: {where}sending on {self.device}"

    def to_dict(self) -> dict[str, object]:
        """The record for the control protocol ("device" only for a send-side drop, "into" only for a
        decrypted packet its device did not take)."""
        out: dict[str, object] = {
            "time": self.time, "reason": self.reason.value, "spi": self.spi,
            "src": str(ipaddress.ip_address(self.src)) if self.src else None,
            "dst": str(ipaddress.ip_address(self.dst)) if self.dst else None,
            "sport": self.sport,
        }  # fmt: skip
        if self.device is not None:
            out["device"] = self.device
        if self.into is not None:
            out["into"] = self.into
        return out


class DropLog:
    """The last `size` drops, and log lines for them: at most one per reason every `every` seconds."""

    def __init__(self, size: int = RING_SIZE, every: float = LOG_EVERY) -> None:
        self.ring: deque[DropRecord] = deque(maxlen=size)
        self.limit = RateLimit(every)
        self.lines: list[str] = []  # log lines not yet taken

    def add(self, record: DropRecord) -> None:
        """Remember `record`, and queue a log line for it unless its reason logged one lately."""
        self.ring.append(record)
        held = self.limit.allow(record.reason, record.time)
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            self.lines.append(f"dropped, {record.text()}{more}")

    def remember(self, record: DropRecord) -> None:
        """Remember `record` without a log line (its drop is logged where it happened)."""
        self.ring.append(record)

    def take_lines(self) -> list[str]:
        """The log lines queued since the last call."""
        lines, self.lines = self.lines, []
        return lines


def spi_of(esp: bytes) -> int | None:
    """The SPI of ESP packet `esp` (RFC 4303 §2.1), None when it is too short to have one."""
    return int.from_bytes(esp[:4], "big") if len(esp) >= 4 else None
