"""End-to-end fixtures: two hosts in network namespaces, each running ipsecd, driven with ipsecadm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hosts import TwoHosts
from tests.support.netns import netns_available


def _skip_reason() -> str | None:
    return netns_available()


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    """Hosts A (192.0.2.1) and B (192.0.2.2) with ipsecd running, no SAs yet."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with TwoHosts() as h:
        yield h


@pytest.fixture
def hosts6() -> Iterator[TwoHosts]:
    """Hosts A (2001:db8::1) and B (2001:db8::2) over IPv6, with ipsecd running."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with TwoHosts(outer6=True) as h:
        yield h
