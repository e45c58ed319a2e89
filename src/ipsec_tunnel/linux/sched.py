"""The CPU scheduler's time slice of the calling thread (sched_setattr(2), sched_getattr(2)).

Linux 6.12 and later (EEVDF) let a SCHED_OTHER thread ask for a shorter slice than the kernel's base
slice: its virtual deadline comes sooner, so on wake-up it preempts a thread running a longer slice,
at the same share of the CPU. Earlier kernels accept the request and ignore it; `set_slice` says so.
"""

from __future__ import annotations

import ctypes
import os
import struct

# asm/unistd_64.h (x86_64); other architectures number them differently (asm-generic: 274, 275)
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275)}

SCHED_FLAG_KEEP_POLICY = 0x08  # linux/sched.h: the thread's policy stays what it is
_ATTR = struct.Struct("=IIQiIQQQ")  # struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): linux/sched/types.h

_FAIR = (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE)  # the policies a slice applies to

MIN_SLICE_US = 100  # kernel/sched/syscalls.c clamps a custom slice to 0.1 ms ...
MAX_SLICE_US = 100_000  # ... to 100 ms


def _numbers() -> tuple[int, int] | None:
    return _SYSCALLS.get(os.uname().machine)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def get_slice_us(tid: int = 0) -> int | None:
    """Thread `tid`'s slice (0: the calling thread's) in microseconds as the kernel reports it (0 when
    it reports none: kernels before 6.12), or None when it cannot be read."""
    numbers = _numbers()
    if numbers is None:
        return None
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _libc().syscall(numbers[1], tid, buf, _ATTR.size, 0) != 0:
        return None
    runtime_ns = _ATTR.unpack(buf.raw)[5]
    return int(runtime_ns // 1000)


def set_slice(us: int) -> str | None:
    """Ask for a slice of `us` microseconds for the calling thread (and threads it starts later),
    keeping its policy and nice value; why it did not take effect, in one line, or None."""
    if not MIN_SLICE_US <= us <= MAX_SLICE_US:
        return f"a slice of {us} us is outside {MIN_SLICE_US} to {MAX_SLICE_US} us"
    numbers = _numbers()
    if numbers is None:
        return f"no sched_setattr number known for {os.uname().machine}"
    if os.sched_getscheduler(0) not in _FAIR:
        return "the daemon runs under a real-time or deadline policy, which has no such slice"
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, 0, SCHED_FLAG_KEEP_POLICY, nice, 0, us * 1000, 0, 0)
    )
    if _libc().syscall(numbers[0], 0, attr, 0) != 0:
        err = ctypes.get_errno()
        return f"cannot set the scheduler slice to {us} us: {os.strerror(err)}"
    got = get_slice_us()
    if got != us:
        return f"the kernel keeps its own slice (reports {got} us): a slice per thread needs Linux 6.12+"
    return None
