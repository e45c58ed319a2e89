"""Per-packet framing in C (`_framing.c`): segmenting, joining, checksums; no cryptography."""

from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")

def tcp_rows(
    packet: bytes, l4: int, hl: int, end: int, mss: int, lo: int, hi: int, trailer: bytes, /
) -> bytes: ...
def coalesce_run(
    packets: list[bytes], no_offload: _T, make_offload: Callable[[int, int], _T], /
) -> list[tuple[_T, bytes]] | None: ...
def pure_requested() -> bool: ...
