"""Network namespaces for tests: throwaway topologies that leave nothing behind.

Owns creating and deleting named namespaces (``ip netns``), running commands inside them, veth pairs
between them, and moving the calling thread into one (setns(2)) so a test can open TUN devices and
sockets there from its own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Self

__all__ = ["Netns", "in_netns", "netns_available", "veth_pair"]

CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_RUN_DIR = "/run/netns"  # where iproute2 keeps its named namespaces

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _next_id() -> int:
    with _counter_lock:
        return next(_counter)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@functools.cache
def netns_available() -> str | None:
    """None if namespace tests can run here (root, ``ip netns`` and /dev/net/tun work), else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices, raw sockets)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    name = f"probe-{os.getpid()}-{_next_id()}"
    try:
        added = _ip("netns", "add", name, check=False)
        if added.returncode != 0:
            return f"ip netns add failed: {added.stderr.strip()}"
        inside = _ip("-n", name, "link", "set", "lo", "up", check=False)
        if inside.returncode != 0:
            return f"cannot configure a namespace: {inside.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns does not work: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``name``, then switch it back.

    Sockets and TUN devices opened inside stay in that namespace after the switch back.
    Other threads are unaffected; child processes started inside inherit the namespace.
    """
    target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(original)
    finally:
        os.close(target)


class Netns:
    """A uniquely named network namespace (``<prefix>-<pid>-<n>``), with lo up; deleted on exit.

    Processes started with ``popen`` are killed on exit; veths inside go away with the namespace.
    """

    def __init__(self, prefix: str = "t") -> None:
        self.name = f"{prefix}-{os.getpid()}-{_next_id()}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def create(self) -> Self:
        """Create the namespace and bring its loopback up (done by ``with``)."""
        _ip("netns", "add", self.name)
        self._created = True
        try:
            self.run(["ip", "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        """Kill what ``popen`` started and delete the namespace. Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        if self._created:
            self._created = False
            _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.delete()

    def _argv(self, cmd: Sequence[str] | str) -> list[str]:
        args = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self, cmd: Sequence[str] | str, *, check: bool = False, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (argv, or a string for ``sh -c``) inside the namespace; output is captured text."""
        return subprocess.run(
            self._argv(cmd), capture_output=True, text=True, check=check, timeout=timeout, input=input
        )

    def check(self, cmd: Sequence[str] | str, *, timeout: float = 30) -> str:
        """Run ``cmd`` inside the namespace, raise with its stderr if it fails; return its stdout."""
        proc = self.run(cmd, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd!r} in {self.name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace (``subprocess.Popen`` keywords); killed on exit."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        """``in_netns`` for this namespace."""
        with in_netns(self.name):
            yield

    def __repr__(self) -> str:
        return f"<Netns {self.name}>"


def veth_pair(
    ns_a: Netns,
    ns_b: Netns,
    addr_a: str | Sequence[str] = (),
    addr_b: str | Sequence[str] = (),
    *,
    names: tuple[str, str] | None = None,
    mtu: int | None = None,
) -> tuple[str, str]:
    """Connect two namespaces with a veth pair, address both ends (``"192.0.2.1/24"``) and bring them up.

    IPv6 addresses skip duplicate address detection so they are usable at once.
    Returns the two interface names (default ``va<n>``/``vb<n>``).
    """
    if names is None:
        n = _next_id()
        names = (f"va{n}", f"vb{n}")
    name_a, name_b = names
    ns_a.check(["ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b.name])
    for ns, name, addrs in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        if mtu is not None:
            ns.check(["ip", "link", "set", name, "mtu", str(mtu)])
        for addr in [addrs] if isinstance(addrs, str) else addrs:
            extra = ["nodad"] if ":" in addr else []
            ns.check(["ip", "addr", "add", addr, "dev", name, *extra])
        ns.check(["ip", "link", "set", name, "up"])
    for ns, name in ((ns_a, name_a), (ns_b, name_b)):
        _wait_operstate_up(ns, name)
    return name_a, name_b


def _wait_operstate_up(ns: Netns, name: str, timeout: float = 5.0) -> None:
    """Wait until the kernel's link watch has seen the carrier of veth `name` come up (operstate UP):
    until then its queueing discipline drops what is sent, and its IPv6 link-local route is missing
    (the link watch runs deferred, and later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        links = json.loads(ns.check(["ip", "-j", "link", "show", "dev", name]))
        if links and links[0].get("operstate") == "UP":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} in {ns.name} is not up after {timeout:g} s: {links}")
        time.sleep(0.01)
