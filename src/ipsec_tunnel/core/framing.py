"""Which code frames packets: the C extension `_framing` (built by `pip install`) unless it is missing
or IPSEC_TUNNEL_PURE=1 asks for the pure-Python path, which stays and gives the same bytes.

`native` is the extension module in use, or None; `core/tso.py` and `core/gro.py` read it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["NAME", "Framing", "available", "native"]

_T = TypeVar("_T")
_Buffer = bytes | bytearray | memoryview  # what the C functions read or write (the buffer protocol)


class Framing(Protocol):
    """What `_framing.c` offers (its stub, `_framing.pyi`, says the same)."""

    def tcp_rows(
        self, packet: bytes, l4: int, hl: int, end: int, mss: int, lo: int, hi: int, trailer: bytes, /
    ) -> bytes: ...

    def coalesce_run(
        self, packets: list[bytes], no_offload: _T, make_offload: Callable[[int, int], _T], /
    ) -> list[tuple[_T, bytes]] | None: ...

    def esp_in_ipv4_batch(
        self,
        view: _Buffer,
        hdrs: _Buffer,
        n: int,
        slot: int,
        msg_size: int,
        len_off: int,
        flags_off: int,
        trunc: int,
        /,
    ) -> list[tuple[bytes, bytes, int, bytes]]: ...

    def ipv4_gather(
        self,
        headers: _Buffer,
        payloads: Sequence[bytes],
        start: int,
        batch: int,
        tos: int,
        frag: int,
        ttl: int,
        src: bytes,
        dst: bytes,
        iov: _Buffer,
        iov_size: int,
        iov_base_off: int,
        iov_len_off: int,
        /,
    ) -> int: ...

    def whole_inner(self, plain: bytes, at: int, /) -> bytes | None: ...

    def in_order(self, packets: list[bytes], /) -> tuple[int, int] | None: ...
    def one_spi(self, datagrams: list[bytes], min_len: int, /) -> bytes | None: ...
    def all_tcp(self, packets: list[bytes], start: int, /) -> bool | None: ...
    def gso_runs(
        self, payloads: list[bytes], max_segments: int, max_bytes: int, /
    ) -> list[tuple[int, int, int]] | None: ...
    def one_run(self, datagrams: list[tuple[bytes, bytes, int, bytes]], /) -> list[bytes] | None: ...
    def small_ones(
        self, got: list[tuple[bytes, bytes, int, bytes]], small: int, /
    ) -> tuple[int, list[int]] | None: ...
    def inner_head(self, packet: bytes, /) -> tuple[int, int, int, bool, int] | None: ...

    def seal_rows_aead(
        self,
        encrypt_into: Callable[[bytes, Any, Any, Any], int],
        spi: int,
        first_seq: int,
        split: bool,
        salt: bytes,
        rows: Any,
        width: int,
        esn: bool = False,
        /,
    ) -> list[bytes]: ...

    def open_aead16_many(
        self,
        decrypt_into: Callable[[bytes, Any, Any, Any], int],
        salt: bytes,
        packets: list[bytes],
        invalid_tag: type[BaseException],
        malformed: _T,
        auth_failed: _T,
        unpadded: Callable[[bytes], Any],
        /,
    ) -> tuple[list[Any], int] | None: ...

    def seal_rows_cbc(
        self,
        start: Callable[[], Any],
        icv_len: int,
        spi: int,
        first_seq: int,
        sealed: _Buffer,
        step: int,
        esn: bool = False,
        /,
    ) -> list[bytes]: ...

    def open_cbc_many(
        self,
        start: Callable[[], Any],
        icv_len: int,
        decrypt_joined: Callable[[Any], bytes],
        block: int,
        packets: list[bytes],
        malformed: _T,
        auth_failed: _T,
        unpadded: Callable[[bytes], Any],
        seq_hi: int = -1,
        /,
    ) -> tuple[list[Any], int] | None: ...

    def split(self, buffer: _Buffer, n: int, size: int, /) -> list[bytes]: ...

    def pure_requested(self) -> bool: ...

    def seal_aead16_one(
        self,
        encrypt: Callable[[bytes, bytes, bytes], bytes],
        spi: int,
        seq: int,
        split: bool,
        salt: bytes,
        inner: bytes,
        next_header: int,
        esn: bool = False,
        /,
    ) -> bytes: ...


available: Framing | None
try:
    from . import _framing as available
except ImportError:  # not built (no compiler or headers at install): the pure-Python path
    available = None

native: Framing | None = None if available is None or available.pure_requested() else available
NAME = "C extension" if native is not None else "pure Python"
