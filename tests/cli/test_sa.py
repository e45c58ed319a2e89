"""`ipsecadm sa add|del|show`: the requests sent, keys, local validation and what is printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ipsec_tunnel.core.sa import SAConfig, SAError

from .conftest import DES3_KEY, GCM_KEY, SAMPLE_SA, SHA1_KEY, FakeServer, Run

BASE = ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4")
NO_LIMITS = {"bytes": 0, "packets": 0, "seconds": 0}


def _core_accepts_encryption_only() -> bool:
    try:
        SAConfig(0x1000, "5.6.7.8", "1.2.3.4", "des_ede3-cbc", DES3_KEY).validated()
    except SAError:
        return False
    return True


def test_seed_readme_command_exactly(run: Run, server: FakeServer, keydir: Path) -> None:
    """The README's command. Whether an SA without a digest is allowed is core/sa.py's decision (RFC 8221);
    ipsecadm must agree with it: send the request, or refuse locally in one line that says what to add."""
    r = run("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher=des_ede3-cbc",
            f"--cipher-keyfile={keydir / 'example.key'}", "--duplex")  # fmt: skip
    if _core_accepts_encryption_only():
        assert r.rc == 0, r.err
        args = server.last("sa.add")
        assert args["cipher"] == "des_ede3-cbc"
        assert args["cipher_key"] == DES3_KEY.hex()
        assert args["digest"] is None and args["duplex"] is True
    else:
        assert r.rc == 2
        assert len(r.err_lines) == 1 and "--digest" in r.err_lines[0]
        assert server.requests == []


def test_seed_command_with_a_digest_sends_the_right_request(
    run: Run, server: FakeServer, keydir: Path
) -> None:
    r = run("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher=des_ede3-cbc",
            f"--cipher-keyfile={keydir / 'example.key'}", "--digest=sha1",
            f"--digest-keyfile={keydir / 'sha1.key'}", "--duplex")  # fmt: skip
    assert r.rc == 0, r.err
    assert r.out == "" and r.err == ""
    assert server.requests == [
        (
            "sa.add",
            {
                "spi": 0x1000, "dst": "5.6.7.8", "src": "1.2.3.4",
                "cipher": "des_ede3-cbc", "cipher_key": DES3_KEY.hex(),
                "digest": "sha1", "digest_key": SHA1_KEY.hex(), "digest_bits": None,
                "duplex": True, "replay_window": 128, "esn": False, "encap": None,
                "soft": NO_LIMITS, "hard": NO_LIMITS,
            },
        )
    ]  # fmt: skip


def test_space_separated_values_and_names_are_canonicalised(run: Run, server: FakeServer) -> None:
    r = run("sa", "add", "--spi", "4096", "--dst", "5.6.7.8", "--src", "1.2.3.4", "--cipher", "3DES",
            "--cipher-key", DES3_KEY.hex().upper(), "--digest", "hmac-sha1", "--digest-key", SHA1_KEY.hex(),
            "--digest-hmac", "128")  # fmt: skip
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert (args["spi"], args["cipher"], args["digest"]) == (0x1000, "des_ede3-cbc", "sha1")
    assert args["digest_bits"] == 128
    assert args["cipher_key"] == DES3_KEY.hex()


def test_key_on_the_command_line_warns(run: Run, server: FakeServer) -> None:
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key=0x{GCM_KEY.hex()}")
    assert r.rc == 0, r.err
    assert r.warnings == [
        "ipsecadm: warning: a key on the command line can be seen by other users in the process list and "
        "shell history; use --cipher-keyfile"
    ]
    assert server.last("sa.add")["cipher_key"] == GCM_KEY.hex()


def test_digest_key_on_the_command_line_names_its_option(run: Run) -> None:
    r = run(*BASE, "--digest=sha1", f"--digest-key={SHA1_KEY.hex()}")
    assert r.rc == 0, r.err
    assert len(r.warnings) == 1 and r.warnings[0].endswith("use --digest-keyfile")


def test_group_readable_key_file_warns(run: Run, keydir: Path) -> None:
    path = keydir / "gcm.key"
    os.chmod(path, 0o644)
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-keyfile={path}")
    assert r.rc == 0, r.err
    assert r.warnings == [f"ipsecadm: warning: key file {path} is readable by group/others; chmod 600 it"]


def test_private_key_file_gives_no_warning(run: Run, keydir: Path) -> None:
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-keyfile={keydir / 'gcm.key'}")
    assert (r.rc, r.err) == (0, "")


def test_key_file_is_raw_even_when_it_looks_like_hex(run: Run, server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "hex.key"
    path.write_text(DES3_KEY.hex() + "\n")  # 49 bytes of text, not a 24-byte key
    os.chmod(path, 0o600)
    r = run(*BASE, "--cipher=des_ede3-cbc", f"--cipher-keyfile={path}", "--digest=sha1",
            f"--digest-keyfile={path}")  # fmt: skip
    assert r.rc == 2
    assert "got 49 bytes" in r.err
    assert DES3_KEY.hex() not in r.err
    assert server.requests == []


def test_key_file_content_is_sent_byte_for_byte(run: Run, server: FakeServer, tmp_path: Path) -> None:
    key = b"0123456789abcd\n\x00\xff\x10\x20\x30"  # text-like bytes, a newline, binary: 20 key bytes
    path = tmp_path / "odd.key"
    path.write_bytes(key)
    os.chmod(path, 0o600)
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-keyfile={path}")
    assert r.rc == 0, r.err
    assert server.last("sa.add")["cipher_key"] == key.hex()


@pytest.mark.parametrize(
    ("cipher", "extra", "icv_bits"),
    [
        ("aes-gcm", [], 128),
        ("aes-gcm-16", [], 128),
        ("aes-gcm-12", [], 96),
        ("aes-gcm-8", [], 64),
        ("rfc4106(gcm(aes))", [], 128),
        ("aes-gcm", ["--digest-hmac=96"], 96),
        ("aes-gcm", ["--digest-hmac", "64"], 64),
        ("aes-gcm-12", ["--digest-hmac=96"], 96),
    ],
)
def test_aead_icv_by_name_or_digest_hmac(
    run: Run, server: FakeServer, cipher: str, extra: list[str], icv_bits: int
) -> None:
    r = run(*BASE, f"--cipher={cipher}", f"--cipher-key={GCM_KEY.hex()}", *extra)
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert (args["cipher"], args["digest"], args["digest_bits"]) == ("aes-gcm", None, icv_bits)


def test_chacha20_poly1305(run: Run, server: FakeServer) -> None:
    r = run(*BASE, "--cipher=chacha20poly1305", "--cipher-key=" + "ab" * 36)
    assert r.rc == 0, r.err
    assert server.last("sa.add")["digest_bits"] == 128


def test_authentication_only_sa(run: Run, server: FakeServer, keydir: Path) -> None:
    r = run(*BASE, "--digest=sha256", "--digest-key=" + "cd" * 32)
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert (args["cipher"], args["cipher_key"], args["digest"]) == (None, "", "sha256")


def test_new_options(run: Run, server: FakeServer) -> None:
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--replay-window=0", "--esn",
            "--encap=udp", "--lifetime-bytes=900M:1G", "--lifetime-packets=:1M",
            "--lifetime-seconds=50m:1h")  # fmt: skip
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert args["replay_window"] == 0 and args["esn"] is True
    assert args["encap"] == {"sport": 4500, "dport": 4500, "keepalive": 20}
    assert args["soft"] == {"bytes": 900 << 20, "packets": 0, "seconds": 3000}
    assert args["hard"] == {"bytes": 1 << 30, "packets": 1_000_000, "seconds": 3600}


def test_encap_ports_and_soft_only_lifetime(run: Run, server: FakeServer) -> None:
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--encap=udp:4501:4502",
            "--lifetime-seconds=600")  # fmt: skip
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert args["encap"] == {"sport": 4501, "dport": 4502, "keepalive": 20}
    assert args["soft"]["seconds"] == 600 and args["hard"]["seconds"] == 0


def test_ipv6_sa(run: Run, server: FakeServer) -> None:
    r = run("sa", "add", "--spi=0x2000", "--dst=2001:DB8::2", "--src=2001:db8:0::1", "--cipher=aes-gcm",
            f"--cipher-key={GCM_KEY.hex()}")  # fmt: skip
    assert r.rc == 0, r.err
    args = server.last("sa.add")
    assert (args["dst"], args["src"]) == ("2001:db8::2", "2001:db8::1")


def test_daemon_refusal_is_one_line_exit_1(run: Run, server: FakeServer) -> None:
    server.fail("sa.add", "EEXIST", "SA already exists")
    r = run(*BASE, "--cipher=aes-gcm", "--cipher-keyfile=/dev/null")
    assert r.rc == 2  # /dev/null is an empty key file: refused locally
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}")
    assert r.rc == 1
    assert r.err_lines == ["ipsecadm: SA already exists"]


def test_sa_add_json_prints_the_result(run: Run, server: FakeServer) -> None:
    r = run("-j", *BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--duplex")
    assert r.rc == 0
    added = json.loads(r.out)["added"]
    assert [(a["dst"], a["src"]) for a in added] == [("5.6.7.8", "1.2.3.4"), ("1.2.3.4", "5.6.7.8")]


# -- sa del ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--all"], {"all": True, "duplex": False}),
        (["--spi=0x1000"], {"spi": 0x1000, "all": False, "duplex": False}),
        (["--dst", "5.6.7.8", "--src=1.2.3.4", "--spi=4096", "--duplex"],
         {"dst": "5.6.7.8", "src": "1.2.3.4", "spi": 0x1000, "all": False, "duplex": True}),
        (["--src=1.2.3.4"], {"src": "1.2.3.4", "all": False, "duplex": False}),
    ],
)  # fmt: skip
def test_sa_del_requests(run: Run, server: FakeServer, argv: list[str], expected: dict[str, object]) -> None:
    r = run("sa", "del", *argv)
    assert (r.rc, r.out, r.err) == (0, "", "")
    assert server.last("sa.del") == expected


def test_sa_del_nothing_matched(run: Run, server: FakeServer) -> None:
    server.fail("sa.del", "ENOENT", "No such SA!")
    r = run("sa", "del", "--spi=0x1000")
    assert r.rc == 1
    assert r.err_lines == ["ipsecadm: No such SA!"]


# -- sa show ---------------------------------------------------------------------------------------------


def test_sa_show_table(run: Run, server: FakeServer) -> None:
    r = run("sa", "show")
    assert r.rc == 0
    header, row = r.out.splitlines()
    assert header.split()[:5] == ["Destination", "Source", "SPI", "Cipher/bits", "Digest-HMAC/bits"]
    assert row.split()[:5] == ["5.6.7.8", "1.2.3.4", "0x1000", "des_ede3-cbc/192", "sha1-96/160"]
    assert server.last("sa.show") == {"stats": False}


def test_sa_show_nothing(run: Run, server: FakeServer) -> None:
    server.results["sa.show"] = []
    r = run("sa", "show")
    assert (r.rc, r.out) == (0, "No such SA!\n")
    r = run("sa", "show", "--spi=0x1234")
    assert (r.rc, r.out) == (1, "No such SA!\n")
    r = run("-j", "sa", "show", "--spi=0x1234")
    assert (r.rc, json.loads(r.out)) == (1, [])


def test_sa_show_json_is_the_result(run: Run, server: FakeServer) -> None:
    r = run("sa", "show", "-j")
    assert json.loads(r.out) == [SAMPLE_SA]


def test_sa_show_json_never_passes_a_key_on(run: Run, server: FakeServer) -> None:
    """Even a daemon bug that put keys in a result must not reach stdout."""
    server.results["sa.show"] = [{**SAMPLE_SA, "cipher_key": DES3_KEY.hex(), "digest_key": SHA1_KEY.hex()}]
    for argv in (["-j", "sa", "show"], ["sa", "show"], ["sa", "show", "-s"]):
        r = run(*argv)
        assert DES3_KEY.hex() not in r.out and SHA1_KEY.hex() not in r.out


def test_keepalive_interval(run: Run, server: FakeServer) -> None:
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--encap=udp", "--keepalive=5s")
    assert r.rc == 0, r.err
    assert server.last("sa.add")["encap"] == {"sport": 4500, "dport": 4500, "keepalive": 5}
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--keepalive=5")
    assert (
        r.rc != 0
        and r.err.splitlines()[-1] == "ipsecadm: --keepalive needs --encap=udp (NAT-keepalives are UDP)"
    )
