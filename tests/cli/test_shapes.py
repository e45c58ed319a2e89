"""Output shapes and messages that must agree with each other and with the documentation: `sa del` and
`tunnel del` answer alike, an encryption-only SA is marked by ipsecd, ipsecadm(8) names what `stats`
prints, `ipsecd --help` explains every option."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ipsec_tunnel.cli import render
from ipsec_tunnel.cli.ipsecadm import main
from tests.robustness.test_control_server import Served

from .conftest import DES3_KEY, SAMPLE_STATS

ROOT = Path(__file__).resolve().parents[2]


def test_sa_del_and_tunnel_del_answer_with_the_same_shape(served: Served) -> None:
    m = served.manager
    m.handle("sa.add", {"spi": 0x1000, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "aes-gcm",
                        "cipher_key": "11" * 20, "duplex": True})  # fmt: skip
    m.handle("tunnel.add", {"name": "ipsec2", "local": "192.0.2.1", "remote": "192.0.2.2"})
    sa_del = m.handle("sa.del", {"spi": 0x1000, "duplex": True})
    tunnel_del = m.handle("tunnel.del", {"name": "ipsec2"})
    assert set(sa_del) == set(tunnel_del) == {"deleted"}
    assert isinstance(sa_del["deleted"], list) and isinstance(tunnel_del["deleted"], list)
    assert tunnel_del["deleted"] == ["ipsec2"]
    assert sorted((d["dst"], d["src"], d["spi"]) for d in sa_del["deleted"]) == [
        ("192.0.2.1", "192.0.2.2", 0x1000), ("192.0.2.2", "192.0.2.1", 0x1000),
    ]  # fmt: skip


def test_ipsecd_marks_an_sa_without_integrity(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    m = served.manager
    m.handle("sa.add", {"spi": 0x1000, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "des_ede3-cbc",
                        "cipher_key": DES3_KEY.hex(), "duplex": True})  # fmt: skip
    m.handle("sa.add", {"spi": 0x2000, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "aes-gcm",
                        "cipher_key": "22" * 20})  # fmt: skip
    assert main([f"--socket={served.path}", "-j", "sa", "show"]) == 0
    shown = {sa["spi"]: sa["integrity"] for sa in json.loads(capsys.readouterr().out)}
    assert shown == {0x1000: False, 0x2000: True}
    assert main([f"--socket={served.path}", "sa", "show"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert sum("NO-INTEGRITY" in ln for ln in lines) == 2 and len(lines) == 3


def test_the_man_page_names_what_stats_prints() -> None:
    page = (ROOT / "docs" / "ipsecadm.8").read_text()
    text = re.sub(r"\\-", "-", page)
    for line in render.stats_text(SAMPLE_STATS).splitlines():
        label = line.strip().rsplit(None, 1)[0] if line[-1].isdigit() else line.strip()
        if not label.startswith("dropped") and label not in ("Receive:", "Send:", "accepted"):
            assert label in text, label
    assert "keepalives and ICMP errors sent" not in text


def test_ipsecd_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ipsec_tunnel.daemon.main", "--help"], capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    options = out[out.index("options:") :]
    for entry in re.split(r"\n  (?=-)", options)[1:]:
        words = entry.split()
        assert len(words) > 2 or "," in entry, f"no help text: {entry.strip()}"
    assert re.search(r"--log-level \{[^}]*\}\s+\S", options)
