"""Whatever the command line, ipsecadm ends with an exit status and at most one error line, never an
exception or an internal error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsec_tunnel.cli.ipsecadm import main

from .conftest import FakeServer

WORDS = [
    "sa", "s", "tunnel", "tun", "stats", "algos", "version", "help", "add", "a", "del", "show", "change",
    "modify", "ipsec0", "ipsec1", "--spi", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4",
    "--cipher=aes-gcm", "--cipher=3des", "--cipher-key", "--cipher-keyfile=/dev/null", "--digest=sha1",
    "--digest-hmac=96", "--digest-key", "--duplex", "--all", "--esn", "--encap=udp", "--lifetime-bytes=1K:2K",
    "--local=1.2.3.4", "--remote=::1", "--nextdev=", "--peer-net=10.0.0.0/8", "-s", "-j", "-h", "--", "-",
    "--x", "0x", "ab" * 10, "", "=", "--spi=", "--replay-window=5",
]  # fmt: skip

argv_strategy = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=10)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argv_strategy)
def test_any_command_line_ends_cleanly(
    argv: list[str], server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([f"--socket={server.path}", *argv])
    cap = capsys.readouterr()
    assert rc in (0, 1, 2)
    assert "internal error" not in cap.err
    assert "Traceback" not in cap.err
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("ipsecadm: ") and "warning:" not in ln]
    assert len(errors) <= 1
    if rc == 2:
        assert len(errors) == 1
