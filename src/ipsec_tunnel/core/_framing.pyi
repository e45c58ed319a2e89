"""Per-packet framing in C (`_framing.c`): segmenting, joining, checksums; no cryptography."""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")
_Buffer = bytes | bytearray | memoryview

def tcp_rows(
    packet: bytes, l4: int, hl: int, end: int, mss: int, lo: int, hi: int, trailer: bytes, /
) -> bytes: ...
def coalesce_run(
    packets: list[bytes], no_offload: _T, make_offload: Callable[[int, int], _T], /
) -> list[tuple[_T, bytes]] | None: ...
def esp_in_ipv4_batch(
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
def whole_inner(plain: bytes, at: int, /) -> bytes | None: ...
def in_order(packets: list[bytes], /) -> tuple[int, int] | None: ...
def one_spi(datagrams: list[bytes], min_len: int, /) -> bytes | None: ...
def all_tcp(packets: list[bytes], start: int, /) -> bool | None: ...
def gso_runs(
    payloads: list[bytes], max_segments: int, max_bytes: int, /
) -> list[tuple[int, int, int]] | None: ...
def one_run(datagrams: list[tuple[bytes, bytes, int, bytes]], /) -> list[bytes] | None: ...
def small_ones(got: list[tuple[bytes, bytes, int, bytes]], small: int, /) -> tuple[int, list[int]] | None: ...
def seal_rows_aead(
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
def split(buffer: _Buffer, n: int, size: int, /) -> list[bytes]: ...
def inner_head(packet: bytes, /) -> tuple[int, int, int, bool, int] | None: ...
def seal_aead16_one(
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
def pure_requested() -> bool: ...
