"""Which code makes the data plane's per-packet system calls: the C extension `_pktio` (built by `pip
install`) unless it is missing or IPSEC_TUNNEL_PURE=1 asks for the pure-Python path, which stays and
gives the same results (tests/linux/test_pktio.py).

`native` is the extension module in use, or None; `linux/udp.py` and `linux/tun.py` read it."""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["NAME", "available", "native"]

available: ModuleType | None
try:
    from . import _pktio as available
except ImportError:  # not built (no compiler or headers at install): the pure-Python path
    available = None

native: ModuleType | None = (
    None if available is None or os.environ.get("IPSEC_TUNNEL_PURE") == "1" else available
)
NAME = "C extension" if native is not None else "pure Python"
