"""Fixtures for tests against the Linux kernel's ESP stack, running in a user-mode-linux guest."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.hosts import IpsecHost
from tests.support.uml import UmlPeer


@pytest.fixture(scope="session")
def uml_available() -> None:
    """Skips the test unless a UML guest can be booted here."""
    if os.geteuid() != 0:
        pytest.skip("the UML kernel peer needs root (network namespaces, TAP devices)")
    reason = UmlPeer.available()
    if reason is not None:
        pytest.skip(f"the UML kernel peer cannot run here: {reason}")


@pytest.fixture(scope="session")
def uml_peer(uml_available: None) -> Iterator[UmlPeer]:
    """One UML guest for the whole test session, on a TAP in its own network namespace."""
    with UmlPeer() as peer:
        yield peer


@pytest.fixture
def uml_clean(uml_peer: UmlPeer) -> Iterator[UmlPeer]:
    """The session's UML guest with no XFRM states or policies, before and after the test."""
    flush = "ip xfrm state flush; ip xfrm policy flush"
    uml_peer.check(flush)
    yield uml_peer
    uml_peer.check(flush)


@pytest.fixture(scope="session")
def uml_ipsecd(uml_peer: UmlPeer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpsecHost]:
    """Host A: an ipsecd of its own in the UML guest's host-side namespace (on the TAP, 192.0.2.1),
    driven with the real `ipsecadm` like any IpsecHost. The namespace belongs to the UmlPeer."""
    host = IpsecHost("uml", tmp_path_factory.mktemp("ipsecd"))
    host.ns.name = uml_peer.netns  # adopted, not created: delete() only ends what ipsecd started there
    try:
        host.start()
        yield host
    finally:
        host.stop()
        host.ns.delete()
