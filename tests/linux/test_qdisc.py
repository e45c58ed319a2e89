"""linux.qdisc: the tc commands built, the answers read, a kernel without the qdisc told once; and (root)
the qdisc really set on a TUN device, again on one that already has it."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator, Sequence

import pytest

from ipsec_tunnel.linux.qdisc import (
    DEFAULT_QDISC,
    KINDS,
    NONE,
    Qdisc,
    replace_command,
    root_kind,
    show_command,
)
from tests.support.netns import Netns, netns_available

UNKNOWN = "Error: Specified qdisc kind is unknown."


class FakeTc:
    """Records the commands; answers with `returncode` and `stderr`."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.returncode = returncode
        self.stderr = stderr

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), self.returncode, "", self.stderr)


def test_the_default_is_fq_codel_and_replace_is_the_command() -> None:
    assert DEFAULT_QDISC == "fq_codel"
    assert replace_command("ipsec1", "cake") == ["tc", "qdisc", "replace", "dev", "ipsec1", "root", "cake"]
    assert show_command("ipsec1") == ["tc", "-j", "qdisc", "show", "dev", "ipsec1"]


@pytest.mark.parametrize("kind", [NONE, "fq_codel; reboot", "", "htb"])
def test_no_command_for_none_or_an_unknown_kind(kind: str) -> None:
    with pytest.raises(ValueError):
        replace_command("ipsec1", kind)


def test_an_unknown_kind_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="unknown qdisc"):
        Qdisc("codel")
    assert all(Qdisc(k).kind == k for k in KINDS)


def test_every_device_gets_the_configured_qdisc() -> None:
    tc = FakeTc()
    q = Qdisc("cake", run=tc)
    assert q.apply("ipsec0") and q.apply("ipsec1")
    assert tc.calls == [replace_command("ipsec0", "cake"), replace_command("ipsec1", "cake")]


def test_none_runs_nothing() -> None:
    tc = FakeTc()
    assert Qdisc(NONE, run=tc).apply("ipsec1")
    assert tc.calls == []


def test_a_kernel_without_the_qdisc_is_told_once_and_not_asked_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tc = FakeTc(2, UNKNOWN)
    q = Qdisc("fq_codel", run=tc)
    with caplog.at_level(logging.WARNING):
        assert not q.apply("ipsec0")
        assert not q.apply("ipsec1")
    assert len(tc.calls) == 1
    assert q.refused is not None and "no fq_codel qdisc" in q.refused
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "host's default qdisc" in warnings[0]


def test_a_device_problem_is_logged_and_the_next_device_tried(caplog: pytest.LogCaptureFixture) -> None:
    tc = FakeTc(2, 'Cannot find device "ipsec7"')
    q = Qdisc("fq_codel", run=tc)
    with caplog.at_level(logging.WARNING):
        assert not q.apply("ipsec7")
        assert not q.apply("ipsec8")
    assert len(tc.calls) == 2 and q.refused is None
    assert "ipsec7: cannot set qdisc fq_codel" in caplog.text


def test_a_missing_tc_is_a_refusal_not_a_traceback() -> None:
    def missing(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", "tc")

    q = Qdisc("fq_codel", run=missing)
    assert not q.apply("ipsec1") and not q.apply("ipsec2")
    assert q.refused is not None and "tc failed" in q.refused


def test_root_kind_reads_tc_json() -> None:
    text = '[{"kind":"fq_codel","handle":"8001:","root":true,"refcnt":2,"options":{"limit":10240}}]'
    assert root_kind(text) == "fq_codel"
    assert root_kind('[{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1"}]') is None
    assert root_kind("") is None and root_kind("not json") is None


# -- root: a real TUN device ----------------------------------------------------------------------------


def kernel_has(ns: Netns, kind: str) -> bool:
    """Whether this kernel has qdisc `kind` (tried on a throwaway TUN device in `ns`)."""
    ns.check("ip tuntap add dev latprobe mode tun")
    try:
        return ns.run(["tc", "qdisc", "replace", "dev", "latprobe", "root", kind]).returncode == 0
    finally:
        ns.run("ip link del latprobe")


@pytest.mark.root
@pytest.mark.parametrize("kind", ["fq_codel", "cake", "pfifo"])
def test_the_qdisc_is_set_on_a_tun_device_and_set_again_idempotently(lat_ns: Netns, kind: str) -> None:
    if not kernel_has(lat_ns, kind):
        pytest.skip(f"this kernel has no {kind} qdisc")
    lat_ns.check("ip tuntap add dev ipsec1 mode tun")

    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return lat_ns.run(list(argv))

    q = Qdisc(kind, run=run)
    assert q.apply("ipsec1")
    assert root_kind(lat_ns.check(show_command("ipsec1"))) == kind
    assert q.apply("ipsec1")  # a device that outlived a daemon: the same again, no error
    assert root_kind(lat_ns.check(show_command("ipsec1"))) == kind


@pytest.fixture
def lat_ns() -> Iterator[Netns]:
    reason = netns_available()
    if reason is not None:
        pytest.skip(reason)
    ns = Netns("latq")
    ns.create()
    try:
        yield ns
    finally:
        ns.delete()
