"""`--tcp-queue` end to end, against the real kernel's TCP: with the bound at its smallest (64 KiB), a
TCP transfer from A to B (both address families inside, ESP-in-UDP and raw ESP) arrives whole
(SHA-256 at both ends), A lowered the window of the ACKs it delivered to the sender, and nothing is
dropped anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.test_fastpath import restart, transfer
from tests.support.hosts import IpsecHost, TwoHosts

pytestmark = pytest.mark.root


def stats(host: IpsecHost) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(host.adm("-j", "stats").stdout)
    return result


def not_accepted(result: dict[str, Any]) -> dict[str, int]:
    counts = [(k, v) for part in ("receive", "send") for k, v in result[part].items()]
    return {k: v for k, v in counts if k != "accepted" and v}


@pytest.mark.parametrize("inner6", [False, True], ids=["inner4", "inner6"])
@pytest.mark.parametrize("encap", ["udp", "raw"])
def test_a_tcp_transfer_under_the_bound_arrives_whole(hosts: TwoHosts, encap: str, inner6: bool) -> None:
    h = hosts
    restart(h, ["--tcp-queue=64k"])
    h.sa_pair(
        "--cipher=aes-gcm", f"--cipher-keyfile={h.key('k', 20)}", *(["--encap=udp"] if encap == "udp" else [])
    )
    _a_in, b_in = h.tunnels(inner6=inner6)
    transfer(h, b_in, 16 * 1024 * 1024)
    a, b = stats(h.a), stats(h.b)
    assert a["tcp_windows_lowered"] > 0  # the bound acted on the sender's ACKs
    assert b["tcp_windows_lowered"] == 0  # B's local end only received: its ACKs went out, not in
    assert not_accepted(a) == {} and not_accepted(b) == {}
