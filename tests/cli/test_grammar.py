"""ipsecadm's grammar: mode and command prefixes, option spellings, global options, help."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipsec_tunnel.cli.grammar import UsageError, brief_help, parse_argv

from .conftest import FakeServer, Run


@pytest.mark.parametrize(
    ("words", "op"),
    [
        (["sa", "show"], "sa.show"),
        (["sa", "s"], "sa.show"),
        (["sa", "sh"], "sa.show"),
        (["sa", "list"], "sa.show"),
        (["tun", "sh"], "tunnel.show"),
        (["t", "s"], "tunnel.show"),
        (["tunnel", "show"], "tunnel.show"),
        (["st"], "stats"),
        (["stats"], "stats"),
    ],
)
def test_prefixes_reach_the_same_operation(run: Run, server: FakeServer, words: list[str], op: str) -> None:
    r = run(*words)
    assert r.rc == 0, r.err
    assert server.ops == [op]


def test_sa_a_is_sa_add(run: Run, server: FakeServer, keydir: Path) -> None:
    r = run("sa", "a", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher=aes-gcm",
            f"--cipher-keyfile={keydir / 'gcm.key'}")  # fmt: skip
    assert r.rc == 0, r.err
    assert server.ops == ["sa.add"]


@pytest.mark.parametrize("word", ["d", "de", "del", "delete"])
def test_aliases_sharing_a_target_are_not_ambiguous(run: Run, server: FakeServer, word: str) -> None:
    r = run("sa", word, "--all")
    assert r.rc == 0, r.err
    assert server.last("sa.del") == {"all": True, "duplex": False}


@pytest.mark.parametrize("word", ["modify", "mod", "m", "change", "ch", "c"])
def test_tunnel_change_and_modify(run: Run, server: FakeServer, word: str) -> None:
    r = run("tunnel", word, "ipsec1", "--spi=any")
    assert r.rc == 0, r.err
    assert server.last("tunnel.change") == {"name": "ipsec1", "spi": 0}


def test_ambiguous_mode_prints_brief_help_and_one_error(run: Run, server: FakeServer) -> None:
    r = run("s")
    assert r.rc == 2
    assert r.out == ""
    assert r.err.startswith("Usage: ipsecadm")
    assert r.err.splitlines()[-1] == "ipsecadm: ambiguous mode 's': sa, stats"
    assert server.requests == []


def test_unknown_mode_prints_brief_help(run: Run, server: FakeServer) -> None:
    r = run("frobnicate")
    assert r.rc == 2
    assert "ipsecadm sa add --spi=SPI" in r.err
    assert r.err.splitlines()[-1].startswith("ipsecadm: unknown mode 'frobnicate'")
    assert server.requests == []


def test_no_parameters_prints_brief_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ipsec_tunnel.cli.ipsecadm import main

    assert main([]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "ipsecadm tunnel add [DEV] --local=IP --remote=IP" in cap.err


@pytest.mark.parametrize(
    "argv", [["help"], ["h"], ["--help"], ["-h"], ["sa", "--help"], ["sa", "add", "-h"], ["help", "tun"]]
)
def test_help_goes_to_stdout_and_succeeds(run: Run, server: FakeServer, argv: list[str]) -> None:
    r = run(*argv)
    assert r.rc == 0
    assert r.out.startswith("Usage: ipsecadm")
    assert r.err == ""
    assert server.requests == []


def test_help_for_a_mode_lists_only_its_commands() -> None:
    text = brief_help("tunnel")
    assert "tunnel add" in text and "tunnel show" in text
    assert "sa add" not in text


def test_both_option_forms(run: Run, server: FakeServer) -> None:
    assert run("sa", "show", "--dst=5.6.7.8", "--spi=0x1000").rc == 0
    assert run("sa", "show", "--dst", "5.6.7.8", "--spi", "4096").rc == 0
    first, second = (args for _, args in server.requests)
    assert first == second == {"dst": "5.6.7.8", "spi": 0x1000, "stats": False}


def test_option_prefixes_like_getopt_long(run: Run, server: FakeServer) -> None:
    assert run("sa", "show", "--ds=5.6.7.8", "--sp", "0x1000").rc == 0
    assert server.last("sa.show") == {"dst": "5.6.7.8", "spi": 0x1000, "stats": False}


def test_exact_option_name_wins_over_longer_ones(run: Run, server: FakeServer) -> None:
    # --cipher is also a prefix of --cipher-key and --cipher-keyfile
    r = run("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher", "aes-gcm",
            "--cipher-key", GCM_HEX)  # fmt: skip
    assert r.rc == 0, r.err
    assert server.last("sa.add")["cipher"] == "aes-gcm"


GCM_HEX = "c4e1a9375b0d82f6e3197ac54d28b06f9a3e7c15"


@pytest.mark.parametrize(
    "argv",
    [
        ["-j", "sa", "show"],
        ["sa", "-j", "show"],
        ["sa", "show", "-j"],
        ["sa", "show", "--json"],
        ["--js", "sa", "show"],
    ],
)
def test_json_anywhere(run: Run, server: FakeServer, argv: list[str]) -> None:
    r = run(*argv)
    assert r.rc == 0
    assert r.out.lstrip().startswith("[")


@pytest.mark.parametrize("argv", [["-s", "sa", "show"], ["sa", "show", "-s"], ["sa", "show", "-js"]])
def test_stats_flag(run: Run, server: FakeServer, argv: list[str]) -> None:
    assert run(*argv).rc == 0
    assert server.last("sa.show") == {"stats": True}


def test_socket_from_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipsec_tunnel.cli.ipsecadm import main

    monkeypatch.setenv("IPSEC_TUNNEL_SOCKET", server.path)
    assert main(["stats"]) == 0
    assert server.ops == ["stats"]


def test_double_dash_ends_options() -> None:
    inv = parse_argv(["tunnel", "show", "--", "-odd"])
    assert inv.positional == ["-odd"]


def test_parse_keeps_repeated_peer_nets() -> None:
    inv = parse_argv(["tunnel", "add", "x", "--peer-net=10.0.0.0/24", "--peer-net", "10.0.1.0/24"])
    assert inv.values("peer-net") == ["10.0.0.0/24", "10.0.1.0/24"]


def test_parse_errors_carry_the_mode_for_the_hint() -> None:
    with pytest.raises(UsageError) as exc:
        parse_argv(["tunnel", "add", "--bogus"])
    assert exc.value.topic == "tunnel"
    assert "--bogus" in str(exc.value)


def test_usage_error_points_at_the_help(run: Run) -> None:
    r = run("sa", "show", "--bogus")
    assert r.err_lines == ["ipsecadm: unknown option '--bogus' for 'sa show' (see 'ipsecadm help sa')"]
