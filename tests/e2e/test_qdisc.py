"""ipsecd sets the root qdisc of its tunnel devices itself (--qdisc), whatever the host default is, and
leaves the host default with --qdisc=none."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_tunnel.linux.qdisc import root_kind, show_command
from tests.support.hosts import IpsecHost
from tests.support.netns import netns_available

pytestmark = pytest.mark.root

LOCAL, REMOTE = "192.0.2.1", "192.0.2.2"


@pytest.fixture
def host() -> Iterator[IpsecHost]:
    """A namespace with a veth addressed LOCAL (its peer end in the same namespace); ipsecd not started."""
    reason = netns_available()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="ipsec-tunnel-lat-"))
    h = IpsecHost("latA", work)
    try:
        h.ns.create()
        h.sh("ip link add lat0 type veth peer name lat1 && ip link set lat0 up")
        h.sh(f"ip addr add {LOCAL}/24 dev lat0")
        yield h
    finally:
        try:
            h.stop()
        finally:
            h.ns.delete()
            shutil.rmtree(work, ignore_errors=True)


def kind_of(h: IpsecHost, device: str) -> str | None:
    return root_kind(h.sh(show_command(device)).stdout)


def host_default(h: IpsecHost) -> str | None:
    """The root qdisc a fresh TUN device like ipsecd's tunnel devices gets on this host: one with
    several queues (--flow-queues), mq on Linux."""
    h.sh("ip tuntap add dev latprobe mode tun multi_queue && ip link set latprobe up")
    try:
        return kind_of(h, "latprobe")
    finally:
        h.sh("ip link del latprobe", check=False)


def kernel_has(h: IpsecHost, kind: str) -> bool:
    h.sh("ip tuntap add dev latprobe mode tun")
    try:
        return h.sh(["tc", "qdisc", "replace", "dev", "latprobe", "root", kind], check=False).returncode == 0
    finally:
        h.sh("ip link del latprobe", check=False)


def add_tunnel(h: IpsecHost) -> None:
    h.adm("tunnel", "add", "ipsec1", f"--local={LOCAL}", f"--remote={REMOTE}")
    h.sh("ip link set ipsec1 up")


@pytest.mark.parametrize("kind", ["fq_codel", "cake", "pfifo"])
def test_tunnel_devices_get_the_configured_qdisc(host: IpsecHost, kind: str) -> None:
    if not kernel_has(host, kind):
        pytest.skip(f"this kernel has no {kind} qdisc")
    assert host_default(host) != kind  # otherwise the test could not tell
    host.start(f"--qdisc={kind}")
    add_tunnel(host)
    assert kind_of(host, "ipsec1") == kind
    assert kind_of(host, "ipsec0") == kind


def test_qdisc_none_leaves_the_host_default(host: IpsecHost) -> None:
    default = host_default(host)
    host.start("--qdisc=none")
    add_tunnel(host)
    assert kind_of(host, "ipsec1") == default


def test_a_kernel_without_fq_codel_keeps_the_default_and_says_so_once(host: IpsecHost) -> None:
    if kernel_has(host, "fq_codel"):
        pytest.skip("this kernel has fq_codel")
    default = host_default(host)
    host.start()  # --qdisc=fq_codel by default
    add_tunnel(host)
    host.adm("tunnel", "add", "ipsec2", f"--local={LOCAL}", "--remote=192.0.2.3")
    assert kind_of(host, "ipsec1") == default
    log = host.log.read_text()
    assert log.count("keep the host's default qdisc: this kernel has no fq_codel qdisc") == 1
    assert "Traceback" not in log
