"""The ESP-in-UDP socket's per-datagram system calls in C (`_pktio.c`); no cryptography."""

from typing import Any

_Buffer = bytes | bytearray | memoryview

def recv_udp(
    fd: int, buffer: bytearray, v6: bool, ancillary: int, cls: type[Any], /
) -> tuple[Any, int, int] | bool | None: ...
def send_udp(fd: int, payload: _Buffer, control: bytes, address: bytes, /) -> int: ...
def control(cmsgs: list[tuple[int, int, bytes]], /) -> bytes: ...
