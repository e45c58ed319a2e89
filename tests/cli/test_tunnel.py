"""`ipsecadm tunnel add|change|del|show`, `stats`, `version` and `algos`."""

from __future__ import annotations

import json

import pytest

from .conftest import SAMPLE_STATS, SAMPLE_TUNNEL, FakeServer, Run


def test_seed_tunnel_add(run: Run, server: FakeServer) -> None:
    r = run("tunnel", "add", "ipsec1", "--local=1.2.3.4", "--remote=5.6.7.8")
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert server.requests == [
        ("tunnel.add", {"name": "ipsec1", "local": "1.2.3.4", "remote": "5.6.7.8", "spi": 0, "nextdev": None,
                        "peer_nets": []})
    ]  # fmt: skip


def test_tunnel_add_with_everything(run: Run, server: FakeServer) -> None:
    r = run("tun", "a", "--local", "1.2.3.4", "ipsec2", "--remote=5.6.7.8", "--spi=0x1000", "--nextdev=eth0",
            "--peer-net=10.0.2.0/24", "--peer-net", "10.0.3.7/24")  # fmt: skip
    assert r.rc == 0, r.err
    assert server.last("tunnel.add") == {
        "name": "ipsec2", "local": "1.2.3.4", "remote": "5.6.7.8", "spi": 0x1000, "nextdev": "eth0",
        "peer_nets": ["10.0.2.0/24", "10.0.3.0/24"],
    }  # fmt: skip


def test_tunnel_add_without_a_name_prints_the_one_ipsecd_picked(run: Run, server: FakeServer) -> None:
    r = run("tunnel", "add", "--local=1.2.3.4", "--remote=5.6.7.8")
    assert (r.rc, r.out) == (0, "ipsec7\n")
    assert server.last("tunnel.add")["name"] == ""


def test_tunnel_change_sends_only_given_fields(run: Run, server: FakeServer) -> None:
    assert run("tunnel", "change", "ipsec1", "--remote=9.9.9.9").rc == 0
    assert server.last("tunnel.change") == {"name": "ipsec1", "remote": "9.9.9.9"}
    assert run("tunnel", "modify", "ipsec1", "--nextdev=", "--peer-net=").rc == 0
    assert server.last("tunnel.change") == {"name": "ipsec1", "nextdev": None, "peer_nets": []}
    assert run("tunnel", "change", "ipsec1", "--spi=0x2000", "--local=1.1.1.1", "--remote=2.2.2.2").rc == 0
    assert server.last("tunnel.change") == {"name": "ipsec1", "spi": 0x2000, "local": "1.1.1.1",
                                            "remote": "2.2.2.2"}  # fmt: skip


def test_tunnel_del(run: Run, server: FakeServer) -> None:
    assert run("tunnel", "del", "ipsec1").rc == 0
    assert server.last("tunnel.del") == {"name": "ipsec1", "all": False}
    assert run("tunnel", "del", "--all").rc == 0
    assert server.last("tunnel.del") == {"all": True}


def test_tunnel_show_table(run: Run, server: FakeServer) -> None:
    r = run("tunnel", "show")
    assert r.rc == 0
    header, row = r.out.splitlines()
    assert header.startswith("Name  ")
    assert row.split() == ["ipsec1", "1.2.3.4", "5.6.7.8", "any", "-", "1419", "0x1000", "any"]
    assert server.last("tunnel.show") == {"stats": False}


def test_tunnel_show_one_with_stats(run: Run, server: FakeServer) -> None:
    server.results["tunnel.show"] = [
        {**SAMPLE_TUNNEL, "stats": {"rx_packets": 1, "rx_bytes": 2, "tx_packets": 3, "tx_bytes": 4,
                                    "rx_drops": {"replayed": 5}, "tx_drops": {}}}
    ]  # fmt: skip
    r = run("tunnel", "show", "ipsec1", "-s")
    assert r.rc == 0
    assert server.last("tunnel.show") == {"name": "ipsec1", "stats": True}
    assert r.out.splitlines()[1].split()[-6:] == ["1", "2", "3", "4", "replayed=5", "0"]


def test_tunnel_show_missing(run: Run, server: FakeServer) -> None:
    server.fail("tunnel.show", "ENOENT", "No such tunnel: ipsec9")
    r = run("tunnel", "show", "ipsec9")
    assert (r.rc, r.err_lines) == (1, ["ipsecadm: No such tunnel: ipsec9"])


def test_no_tunnels(run: Run, server: FakeServer) -> None:
    """As an empty `sa show`: nothing on stdout, status 0."""
    server.results["tunnel.show"] = []
    r = run("tunnel", "show")
    assert (r.rc, r.out, r.err) == (0, "", "")
    r = run("-j", "tunnel", "show")
    assert (r.rc, r.out) == (0, "[]\n")


def test_stats(run: Run, server: FakeServer) -> None:
    r = run("stats")
    assert r.rc == 0
    lines = [ln.rstrip() for ln in r.out.splitlines()]
    assert lines[0] == "Receive:"
    assert lines[1].split() == ["accepted", "10"]
    assert lines[2].split() == ["dropped,", "unknown", "SA", "1"]
    assert "Send:" in lines
    assert lines[-1].split()[-1] == "6"
    assert json.loads(run("stats", "-j").out) == SAMPLE_STATS


def test_version_with_and_without_ipsecd(
    run: Run, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run("version")
    assert r.rc == 0
    assert r.out.splitlines() == [
        "ipsecadm 0.10.0 (control protocol 1)",
        "ipsecd 0.10.0 (control protocol 1)",
    ]
    from ipsec_tunnel.cli.ipsecadm import main

    assert main(["version", "--socket=/nonexistent/ipsecd.sock"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ipsecadm 0.10.0")
    assert "not reachable at /nonexistent/ipsecd.sock" in out


def test_version_json(run: Run) -> None:
    data = json.loads(run("-j", "version").out)
    assert data["ipsecadm"] == "0.10.0" and data["ipsecd"] == {"version": "0.10.0", "protocol": 1}


@pytest.mark.parametrize("json_flag", [[], ["-j"]])
def test_algos_needs_no_daemon(capsys: pytest.CaptureFixture[str], json_flag: list[str]) -> None:
    from ipsec_tunnel.cli.ipsecadm import main

    assert main([*json_flag, "algos", "--socket=/nonexistent/ipsecd.sock"]) == 0
    out = capsys.readouterr().out
    if json_flag:
        data = json.loads(out)
        gcm = next(c for c in data["ciphers"] if c["name"] == "aes-gcm")
        assert (gcm["key_bits"], gcm["salt_bits"]) == ([128, 192, 256], 32)
        assert gcm["icv_bits"] == [128, 96, 64]
        assert data["icv_names"]["aes-gcm-12"] == {"cipher": "aes-gcm", "icv_bits": 96}
    else:
        assert "des_ede3-cbc" in out and "cbc(des3_ede)" in out and "RFC 4106" in out


def test_stats_last_drops(run: Run, server: FakeServer) -> None:
    drop = {"time": 1.0, "reason": "unknown_sa", "spi": 0x1000, "src": "203.0.113.254", "dst": "203.0.113.2",
            "sport": 4500}  # fmt: skip
    server.results["stats"] = {**SAMPLE_STATS, "last_drops": [drop]}
    r = run("stats", "--last-drops")
    assert r.rc == 0, r.err
    assert server.last("stats") == {"last_drops": True}
    assert r.out.splitlines()[-1] == "  unknown SA: SPI 0x1000 from 203.0.113.254:4500 to 203.0.113.2"
