"""`ipsecadm ike add|show|up|down|del`: the requests sent, the PSK read from its file and never shown,
one-line errors, the `ike show` table and the IKE marker in `sa show`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ipsec_tunnel.cli.ike import peer_table

from .conftest import SAMPLE_SA, SAMPLE_STATS, FakeServer, Run

PSK = "a pre-shared key for the cli tests"
PEER: dict[str, Any] = {
    "name": "gw", "local": "192.0.2.1", "remote": "192.0.2.2", "local_id": None, "remote_id": None,
    "local_nets": ["10.1.0.0/24"], "remote_nets": ["10.2.0.0/24"], "proposals": ["default"],
    "esp_proposals": ["default"], "tunnel": None, "start": "now", "dpd": 0, "device": "ipsec1",
    "state": "established", "reason": None, "remote_seen": "198.51.100.1:4500", "proposal": "x",
    "ike_spi_i": 1, "ike_spi_r": 2,
    "children": [{"spi_in": 0xC1, "spi_out": 0xD1, "local_ts": "10.1.0.0/24", "remote_ts": "10.2.0.0/24",
                  "cipher": "aes-gcm", "encap": [4500, 4500], "packets_in": 3, "packets_out": 4,
                  "bytes_in": 300, "bytes_out": 400}],
}  # fmt: skip


@pytest.fixture
def psk_file(tmp_path: Path) -> Path:
    p = tmp_path / "gw.psk"
    p.write_text(PSK + "\n")
    p.chmod(0o600)
    return p


def _add(run: Run, psk_file: Path, *extra: str) -> Any:
    return run("ike", "add", "gw", "--local=192.0.2.1", "--remote=192.0.2.2", f"--psk-file={psk_file}",
               "--local-net=10.1.0.0/24", "--remote-net=10.2.0.7/24,10.3.0.0/16", *extra)  # fmt: skip


def test_ike_add_sends_the_psk_without_its_newline(run: Run, server: FakeServer, psk_file: Path) -> None:
    server.results["ike.add"] = PEER
    r = _add(run, psk_file, "--start=now", "--dpd=30", "--proposals=aes128gcm16-prfsha256-x25519,default")
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert server.last("ike.add") == {
        "name": "gw", "local": "192.0.2.1", "remote": "192.0.2.2", "psk": PSK.encode().hex(),
        "local_nets": ["10.1.0.0/24"], "remote_nets": ["10.2.0.0/24", "10.3.0.0/16"],
        "proposals": ["aes128gcm16-prfsha256-x25519", "default"], "start": "now", "dpd": 30,
    }  # fmt: skip


def test_ike_add_by_prefixes_and_on_traffic(run: Run, server: FakeServer, psk_file: Path) -> None:
    server.results["ike.add"] = PEER
    r = run("ik", "a", "gw", "--local=192.0.2.1", "--remote=%any", f"--psk={psk_file}",
            "--local-n=10.1.0.0/24", "--remote-n=10.2.0.0/24", "--star=on", "--tun=ipsec5")  # fmt: skip
    assert r.rc == 0, r.err
    args = server.last("ike.add")
    assert (args["remote"], args["start"], args["tunnel"]) == ("%any", "on-traffic", "ipsec5")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--start=later",), "Bad --start"),
        (("--dpd=soon",), "Bad --dpd"),
        (("--local-net=10.1.0.0/33",), "Bad --local-net"),
        (("--proposals=",), "empty proposal list"),
    ],
)
def test_ike_add_bad_values(
    run: Run, server: FakeServer, psk_file: Path, extra: tuple[str, ...], message: str
) -> None:
    r = _add(run, psk_file, *extra)
    assert r.rc == 2 and message in r.err and len(r.err.splitlines()) == 1
    assert "ike.add" not in server.ops


def test_ike_add_missing_things(run: Run, server: FakeServer, psk_file: Path, tmp_path: Path) -> None:
    r = run("ike", "add", "gw", "--local=192.0.2.1", "--remote=192.0.2.2", "--local-net=10.1.0.0/24",
            "--remote-net=10.2.0.0/24")  # fmt: skip
    assert r.rc == 2 and "needs --psk-file" in r.err
    r = run("ike", "add", "--local=192.0.2.1")
    assert r.rc == 2 and "needs a peer name" in r.err
    r = _add(run, tmp_path / "nope")
    assert r.rc == 2 and "cannot read PSK file" in r.err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = _add(run, empty)
    assert r.rc == 2 and "is empty" in r.err
    assert server.ops == []


def test_psk_never_printed(run: Run, server: FakeServer, psk_file: Path) -> None:
    server.fail("ike.add", "EINVAL", "something is wrong")
    r = _add(run, psk_file)
    assert r.rc == 1 and PSK not in r.out + r.err and PSK.encode().hex() not in r.out + r.err
    server.results["ike.show"] = [{**PEER, "psk": PSK.encode().hex()}]  # even if a daemon sent it
    r = run("ike", "show", "-j")
    assert PSK.encode().hex() not in r.out


def test_ike_show_table(run: Run, server: FakeServer) -> None:
    down = {**PEER, "name": "b", "state": "down", "children": [], "device": None,
            "reason": "AUTHENTICATION_FAILED", "remote_seen": None}  # fmt: skip
    server.results["ike.show"] = [PEER, down]
    r = run("ike", "show")
    lines = r.out.splitlines()
    assert r.rc == 0 and len(lines) == 3
    assert lines[1].split()[:5] == ["gw", "established", "192.0.2.1", "192.0.2.2", "(198.51.100.1:4500)"]
    assert "0xc1/0xd1" in lines[1] and lines[1].endswith("-")
    assert lines[2].split()[:2] == ["b", "down"] and lines[2].endswith("AUTHENTICATION_FAILED")
    assert server.last("ike.show") == {"stats": False}
    r = run("ike", "sh", "gw", "-s")
    assert server.last("ike.show") == {"stats": True, "name": "gw"}
    assert "3/4" in r.out and "300/400" in r.out


def test_ike_show_empty(run: Run, server: FakeServer) -> None:
    server.results["ike.show"] = []
    assert run("ike", "show").out == "No IKE peers.\n"


@pytest.mark.parametrize("word", ["up", "down", "del", "delete"])
def test_ike_named_commands(run: Run, server: FakeServer, word: str) -> None:
    op = {"delete": "del"}.get(word, word)
    server.results[f"ike.{op}"] = PEER
    r = run("ike", word, "gw")
    assert (r.rc, r.out) == (0, "")
    assert server.last(f"ike.{op}") == {"name": "gw"}
    assert run("ike", word).rc == 2


def test_sa_show_marks_ike_sas(run: Run, server: FakeServer) -> None:
    server.results["sa.show"] = [
        {**SAMPLE_SA, "origin": "manual"},
        {**SAMPLE_SA, "spi": 0x2000, "origin": "ike:gw"},
    ]
    lines = run("sa", "show").out.splitlines()
    assert "Origin" in lines[0] and lines[1].split()[-1] == "manual" and lines[2].split()[-1] == "ike:gw"
    server.results["sa.show"] = [SAMPLE_SA]  # an ipsecd without IKE: no column
    assert "Origin" not in run("sa", "show").out


def test_stats_show_ike_counters(run: Run, server: FakeServer) -> None:
    server.results["stats"] = {**SAMPLE_STATS, "ike": {"received": 12, "drops": {"malformed": 3}}}
    out = run("stats").out
    assert "IKE:" in out and "dropped, malformed" in out
    server.results["stats"] = SAMPLE_STATS  # an ipsecd without IKE
    assert "IKE:" not in run("stats").out


def test_peer_table_with_stats_columns() -> None:
    text = peer_table([PEER], stats=True)
    assert "Packets in/out" in text.splitlines()[0]
