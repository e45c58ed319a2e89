"""ipsecd --sched-slice: parsed (bad values: tests/robustness/test_queue_options.py), and the slice
applied to the daemon's thread as the kernel reports it back (sched_getattr), its nice value and policy
kept."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_tunnel.daemon import main as ipsecd
from ipsec_tunnel.linux import sched
from tests.support.hosts import IpsecHost, stop_hosts
from tests.support.netns import netns_available


def _kernel_takes_slices() -> bool:
    # a child, so the test runner's own slice stays the kernel's
    code = "from ipsec_tunnel.linux import sched; print(sched.set_slice(500) is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.strip() == "True"


def test_default_and_values() -> None:
    assert ipsecd.parse_args([]).sched_slice is None  # the default, DEFAULT_SCHED_SLICE_US
    assert sched.MIN_SLICE_US <= ipsecd.DEFAULT_SCHED_SLICE_US <= sched.MAX_SLICE_US
    assert ipsecd.parse_args(["--sched-slice=0"]).sched_slice == 0
    assert ipsecd.parse_args(["--sched-slice=100"]).sched_slice == 100
    assert ipsecd.parse_args(["--sched-slice", "100000"]).sched_slice == 100_000


@pytest.mark.parametrize("us", [0, 99, 100_001])
def test_set_slice_refuses_out_of_range(us: int) -> None:
    why = sched.set_slice(us)
    assert why is not None and str(us) in why and "\n" not in why


def test_attr_layout_is_sched_attr_ver0() -> None:
    # linux/sched/types.h: u32 size, u32 policy, u64 flags, s32 nice, u32 priority, u64 runtime,
    # u64 deadline, u64 period = 48 bytes, the runtime at offset 24
    assert sched._ATTR.size == 48
    packed = sched._ATTR.pack(48, 0, 0, 0, 0, 300_000, 0, 0)
    assert struct.unpack_from("=Q", packed, 24)[0] == 300_000


def test_a_kernel_without_slices_is_said_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # before 6.12 sched_setattr succeeds and sched_getattr reports no runtime for SCHED_OTHER
    monkeypatch.setattr(sched, "get_slice_us", lambda: 0)

    class Libc:
        def syscall(self, *args: object) -> int:
            return 0

    monkeypatch.setattr(sched, "_libc", Libc)
    why = sched.set_slice(400)
    assert why is not None and "6.12" in why and "\n" not in why


def test_a_real_time_daemon_is_said_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_FIFO)
    why = sched.set_slice(400)
    assert why is not None and "real-time" in why and "\n" not in why


def test_refused_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Libc:
        def syscall(self, *args: object) -> int:
            return -1

    monkeypatch.setattr(sched, "_libc", Libc)
    monkeypatch.setattr(ctypes, "get_errno", lambda: 1)
    why = sched.set_slice(400)
    assert why is not None and "400 us" in why and os.strerror(1) in why and "\n" not in why


@pytest.mark.skipif(not _kernel_takes_slices(), reason="this kernel has no slice per thread (Linux < 6.12)")
def test_applied_to_the_thread_keeping_nice_and_policy() -> None:
    # in a child: a positive nice needs no privilege, nor does a custom slice
    code = (
        "import os; from ipsec_tunnel.linux import sched; os.nice(4); "
        "before = sched.get_slice_us(); why = sched.set_slice(350); "
        "print(before, why, sched.get_slice_us(), os.getpriority(0, 0), os.sched_getscheduler(0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, why, after, nice, policy = out.split()
    assert int(before) != 350
    assert why == "None"
    assert (int(after), int(nice), int(policy)) == (350, 4, os.SCHED_OTHER)


@pytest.mark.root
@pytest.mark.skipif(not _kernel_takes_slices(), reason="this kernel has no slice per thread (Linux < 6.12)")
def test_the_daemon_serves_with_the_slice(tmp_path: Path) -> None:
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    host = IpsecHost("slc", tmp_path)
    try:
        host.ns.create()
        host.start("--sched-slice=700")
        assert host.daemon is not None
        assert sched.get_slice_us(host.daemon.pid) == 700
        assert "--sched-slice" not in host.log.read_text()  # no warning
        host.stop()
        host.start()  # the default
        assert host.daemon is not None
        assert sched.get_slice_us(host.daemon.pid) == ipsecd.DEFAULT_SCHED_SLICE_US
        host.stop()
        host.start("--sched-slice=0")  # the kernel's own slice stays
        assert host.daemon is not None
        assert sched.get_slice_us(host.daemon.pid) not in (None, 700, ipsecd.DEFAULT_SCHED_SLICE_US)
    finally:
        stop_hosts(host)
