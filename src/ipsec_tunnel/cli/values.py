"""Option values of ipsecadm: SPIs, counts with unit suffixes, lifetimes (`SOFT[:HARD]`) and `--encap`,
parsed from the command line and formatted back the same way for tables.

Units: bytes take K, M, G, T (powers of 1024, as dd(1) counts; an optional B or iB is ignored); packets
take k, M, G (powers of 1000); seconds take s, m, h, d. Suffixes are case-insensitive.
"""

from __future__ import annotations

import re
from typing import Literal

from ..core.sa import LIFETIME_MAX, NAT_T_PORT, lifetime_problem

Kind = Literal["bytes", "packets", "seconds"]

_UNITS: dict[str, dict[str, int]] = {
    "bytes": {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40},
    "packets": {"": 1, "k": 10**3, "m": 10**6, "g": 10**9},
    "seconds": {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400},
}
_SHOWN_UNITS: dict[str, tuple[tuple[str, int], ...]] = {
    "bytes": (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)),
    "packets": (("G", 10**9), ("M", 10**6), ("k", 10**3)),
    "seconds": (("d", 86400), ("h", 3600), ("m", 60)),
}
_COUNT = {
    "bytes": re.compile(r"^(\d+)([kmgt]?)(?:i?b)?$", re.IGNORECASE),
    "packets": re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE),
    "seconds": re.compile(r"^(\d+)([smhd]?)$", re.IGNORECASE),
}
_UNIT_HELP = {
    "bytes": "a number of bytes, optionally with K, M, G or T (powers of 1024)",
    "packets": "a number of packets, optionally with k, M or G (powers of 1000)",
    "seconds": "a number of seconds, optionally with s, m, h or d",
}
_EXAMPLE = {"bytes": "900M:1G", "packets": "900k:1M", "seconds": "50m:1h"}
_NUMBER = re.compile(r"^(?:0[xX][0-9a-fA-F]+|[0-9]+)$")


class ValueInputError(ValueError):
    """An option value that does not parse; the message names the option."""


def parse_number(text: str, option: str) -> int:
    """A non-negative integer written in decimal or as 0x hex (e.g. an SPI)."""
    t = text.strip()
    if not _NUMBER.match(t):
        raise ValueInputError(f"Bad {option}: {_shown(text)!r} is not a number (use decimal or 0x hex)")
    return int(t[2:], 16) if t[:2].lower() == "0x" else int(t, 10)


def parse_count(text: str, kind: Kind, option: str) -> int:
    """A count of `kind` with an optional unit suffix."""
    m = _COUNT[kind].match(text.strip())
    if not m:
        raise ValueInputError(f"Bad {option}: {_shown(text)!r} is not {_UNIT_HELP[kind]}")
    value = int(m.group(1)) * _UNITS[kind][m.group(2).lower()]
    if value > LIFETIME_MAX:  # the core's maximum, said with the option's own text
        raise ValueInputError(f"Bad {option}: {_shown(text)} is too large")
    return value


def parse_lifetime(text: str, kind: Kind, option: str) -> tuple[int, int]:
    """(soft, hard) from `SOFT[:HARD]`; an empty part or 0 means no limit; soft must be below hard."""
    soft_text, _, hard_text = text.partition(":")
    if ":" in hard_text or not (soft_text.strip() or hard_text.strip()):
        raise ValueInputError(f"Bad {option}: use SOFT, SOFT:HARD or :HARD, e.g. {option}={_EXAMPLE[kind]}")
    soft = parse_count(soft_text, kind, option) if soft_text.strip() else 0
    hard = parse_count(hard_text, kind, option) if hard_text.strip() else 0
    problem = lifetime_problem(soft, hard)  # what ipsecd checks for every client
    if problem:
        raise ValueInputError(f"Bad {option}: {problem}")
    return soft, hard


def parse_encap(text: str) -> tuple[int, int]:
    """(source port, destination port) from `udp` or `udp:SPORT:DPORT`."""
    parts = text.strip().split(":")
    if parts[0].lower() != "udp" or len(parts) not in (1, 3):
        raise ValueInputError("Bad --encap: use --encap=udp or --encap=udp:SPORT:DPORT")
    if len(parts) == 1:
        return NAT_T_PORT, NAT_T_PORT
    return parse_number(parts[1], "--encap source port"), parse_number(parts[2], "--encap destination port")


def format_count(value: int, kind: Kind) -> str:
    """`value` with the largest unit that divides it exactly (what parse_count reads back)."""
    for suffix, unit in _SHOWN_UNITS[kind]:
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return f"{value}s" if kind == "seconds" and value else str(value)


def format_lifetime(soft: int, hard: int, kind: Kind) -> str:
    """`SOFT:HARD` as the lifetime options take it; empty when there is no limit."""
    if not soft and not hard:
        return ""
    if not hard:
        return format_count(soft, kind)
    return f"{format_count(soft, kind) if soft else ''}:{format_count(hard, kind)}"


_HEXLIKE = re.compile(r"(?:0[xX])?[0-9a-fA-F]{16,}")


def redact(text: str) -> str:
    """`text` with every run of 16 or more hex digits (possibly a key) replaced by <hidden>."""
    return _HEXLIKE.sub("<hidden>", text)


def _shown(text: str) -> str:
    return redact(text)[:64]
