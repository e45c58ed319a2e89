"""Namespaces for the kernel tests: each test gets fresh ones and they are deleted afterwards."""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pytest

from tests.support.netns import Netns, netns_available, veth_pair

T = TypeVar("T")


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)

ADDR_A4, ADDR_B4 = "192.0.2.1", "192.0.2.2"
ADDR_A6, ADDR_B6 = "2001:db8::1", "2001:db8::2"


def _require_netns() -> None:
    reason = netns_available()
    if reason is not None:
        pytest.skip(f"kernel test skipped: {reason}")


@dataclass
class Pair:
    """Two namespaces joined by a veth: a (192.0.2.1, 2001:db8::1) and b (192.0.2.2, 2001:db8::2)."""

    a: Netns
    b: Netns
    dev_a: str
    dev_b: str


@pytest.fixture
def ns() -> Iterator[Netns]:
    _require_netns()
    with Netns("ipt") as netns:
        yield netns


@pytest.fixture
def pair() -> Iterator[Pair]:
    _require_netns()
    with Netns("ipta") as a, Netns("iptb") as b:
        dev_a, dev_b = veth_pair(a, b, [f"{ADDR_A4}/24", f"{ADDR_A6}/64"], [f"{ADDR_B4}/24", f"{ADDR_B6}/64"])
        yield Pair(a, b, dev_a, dev_b)


@contextlib.contextmanager
def opened(ns: Netns, make: Callable[[], C]) -> Iterator[C]:
    """What `make` opens inside `ns` (a socket opened there stays there), closed when the block ends."""
    with ns.enter():
        thing = make()
    try:
        yield thing
    finally:
        thing.close()


def wait_for(poll: Callable[[], T | None], fileno: int | None = None, timeout: float = 3.0) -> T:
    """Call ``poll`` until it returns something, waiting on ``fileno`` in between; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = poll()
        if got is not None:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting")
        if fileno is None:
            time.sleep(min(left, 0.02))
        else:
            select.select([fileno], [], [], min(left, 0.2))
