"""Small datagrams apart from the bulk, chosen by the kernel on arrival (`--flow-queues`).

- UDP: of the sockets sharing a port through SO_REUSEPORT, a datagram whose payload is at most `small`
  bytes goes to the second socket bound, any other to the first. A classic BPF program (filter.h's
  `struct sock_filter`) attached with SO_ATTACH_REUSEPORT_CBPF (Linux 4.5) decides; a UDP GSO/GRO
  super-datagram (the bulk, coalesced) counts its whole length.
- Raw sockets: every raw socket of a protocol gets its own copy of each packet, so each of the two
  drops the other's share with a socket filter (SO_ATTACH_FILTER) on the packet's length.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ipsec_tunnel.linux._sockopt import SO_ATTACH_FILTER

__all__ = ["keep_sizes", "steer_small"]

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h (Linux 4.5)
_WHOLE = 0xFFFFFFFF  # a socket filter's verdict: keep this many bytes of the packet (all); 0 drops it

# linux/filter.h, linux/bpf_common.h: the classic BPF opcodes used here
_LD_W_LEN = 0x00 | 0x00 | 0x80  # BPF_LD | BPF_W | BPF_LEN: A = the packet's length
_JGT_K = 0x05 | 0x20 | 0x00  # BPF_JMP | BPF_JGT | BPF_K: A > k ?
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K: return k
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h): the program's length in instructions, and where it is."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _program(small: int, if_small: int, if_big: int) -> bytes:
    """A = len; return A > small ? if_big : if_small."""
    return b"".join(
        _INSN.pack(*insn)
        for insn in (
            (_LD_W_LEN, 0, 0, 0),
            (_JGT_K, 1, 0, small),
            (_RET_K, 0, 0, if_small),
            (_RET_K, 0, 0, if_big),
        )
    )


def _attach(sock: socket.socket, option: int, program: bytes) -> None:
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _INSN.size, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, option, bytes(fprog))  # the kernel copies the program


def steer_small(sock: socket.socket, small: int) -> None:
    """Of the reuseport group `sock` belongs to: payloads of at most `small` bytes to its second socket,
    the others to its first. OSError if the kernel refuses."""
    _attach(sock, SO_ATTACH_REUSEPORT_CBPF, _program(small, 1, 0))


def keep_sizes(sock: socket.socket, small: int, *, smalls: bool) -> None:
    """Let `sock` receive only the packets of at most `small` bytes as its filter sees them (`smalls`),
    or only the others. OSError if the kernel refuses."""
    _attach(sock, SO_ATTACH_FILTER, _program(small, _WHOLE, 0) if smalls else _program(small, 0, _WHOLE))
