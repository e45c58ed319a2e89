"""`ipsecadm sa add|del|show`: the requests sent, keys, local validation and what is printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import DES3_KEY, GCM_KEY, SAMPLE_SA, SHA1_KEY, FakeServer, Run

BASE = ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4")
NO_LIMITS = {"bytes": 0, "packets": 0, "seconds": 0}


def test_seed_readme_command_exactly(run: Run, server: FakeServer, tmp_path: Path) -> None:
    """The seed's walk-through, word for word: `mkdir /etc/ipsec; chmod 500 /etc/ipsec; dd ... bs=24`
    (a file of mode 644 under umask 022), then the SA without a digest. Accepted, as the original and the
    Linux kernel accept it, with one warning that says what is missing and what to add; no warning about
    the key file's mode, which the directory protects."""
    etc = tmp_path / "ipsec"
    etc.mkdir()
    key = etc / "example.key"
    key.write_bytes(DES3_KEY)
    os.chmod(key, 0o644)
    os.chmod(etc, 0o500)
    try:
        r = run("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4", "--cipher=des_ede3-cbc",
                f"--cipher-keyfile={key}", "--duplex")  # fmt: skip
    finally:
        os.chmod(etc, 0o700)
    assert r.rc == 0, r.err
    assert r.out == ""
    assert len(r.warnings) == 1, r.err
    warning = r.warnings[0]
    assert "no integrity protection" in warning
    assert "--digest=sha1 --digest-keyfile=" in warning and "aes-gcm" in warning
    args = server.last("sa.add")
    assert args["cipher"] == "des_ede3-cbc"
    assert args["cipher_key"] == DES3_KEY.hex()
    assert args["digest"] is None and args["digest_key"] == "" and args["duplex"] is True


def test_sa_show_marks_an_sa_without_integrity(run: Run, server: FakeServer) -> None:
    enc_only = {**SAMPLE_SA, "digest": None, "digest_bits": 0, "digest_key_bits": 0, "integrity": False}
    server.results["sa.show"] = [enc_only, SAMPLE_SA]
    r = run("sa", "show")
    lines = r.out.splitlines()
    assert "NO-INTEGRITY" in lines[1] and "NO-INTEGRITY" not in lines[2]
    j = run("-j", "sa", "show")
    assert [sa["integrity"] for sa in json.loads(j.out)] == [False, True]


def test_a_hex_text_key_file_warns_and_suggests_xxd(run: Run, server: FakeServer, tmp_path: Path) -> None:
    """16 random bytes written as hex: 32 bytes of text, a valid AES-256 length, with 128 bits of entropy.
    Used as raw bytes (as the original did) but with a warning naming the conversion."""
    path = tmp_path / "hex.key"
    path.write_text(os.urandom(16).hex())
    os.chmod(path, 0o600)
    r = run(*BASE, "--cipher=aes-cbc", f"--cipher-keyfile={path}", "--digest=sha1",
            f"--digest-keyfile={path.parent / 'x' / 'sha1.key'}")  # fmt: skip
    assert r.rc == 2 and "cannot read key file" in r.err  # (no such digest key file: nothing sent)
    sha1 = tmp_path / "sha1.key"
    sha1.write_bytes(SHA1_KEY)
    os.chmod(sha1, 0o600)
    r = run(
        *BASE, "--cipher=aes-cbc", f"--cipher-keyfile={path}", "--digest=sha1", f"--digest-keyfile={sha1}"
    )
    assert r.rc == 0, r.err
    assert r.warnings == [
        f"ipsecadm: warning: key file {path} looks like hex text, but a key file holds the raw key bytes; "
        f"convert it with: xxd -r -p {path} > {path}.bin"
    ]
    assert len(bytes.fromhex(server.last("sa.add")["cipher_key"])) == 32


def test_a_wrong_length_error_says_the_file_looks_like_hex(
    run: Run, server: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "hex.key"
    path.write_text(os.urandom(16).hex() + "\n")  # echo adds a newline: 33 bytes
    os.chmod(path, 0o600)
    r = run(*BASE, "--cipher=aes-gcm", f"--cipher-keyfile={path}")
    assert r.rc == 2 and server.requests == []
    assert len(r.err_lines) == 1
    assert "got 33 bytes" in r.err_lines[0] and "looks like hex text" in r.err_lines[0]
    assert f"xxd -r -p {path}" in r.err_lines[0]


def test_the_same_key_for_cipher_and_digest_warns(run: Run, server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(bytes.fromhex("8f3a5c71e2d94b06a7c3e18f5d2b9064c1f7a83e"))  # 20 bytes: AES-CTR, SHA-1
    os.chmod(path, 0o600)
    r = run(
        *BASE, "--cipher=aes-ctr", f"--cipher-keyfile={path}", "--digest=sha1", f"--digest-keyfile={path}"
    )
    assert r.rc == 0, r.err
    assert r.warnings == [
        "ipsecadm: warning: the cipher key and the digest key are the same bytes; use two independent keys"
    ]


@pytest.mark.parametrize(
    ("cipher", "key_len", "ok"),
    [
        ("aes-128-cbc", 16, True), ("aes-128-cbc", 32, False), ("aes128-cbc", 24, False),
        ("aes-256-cbc", 32, True), ("aes-256-cbc", 16, False), ("aes-cbc", 32, True),
        ("aes-gcm-128", 20, True), ("aes-gcm-128", 36, False), ("aes-gcm", 36, True),
    ],
)  # fmt: skip
def test_an_alias_whose_number_contradicts_the_key_is_refused(
    run: Run, server: FakeServer, tmp_path: Path, cipher: str, key_len: int, ok: bool
) -> None:
    path = tmp_path / "k"
    path.write_bytes(os.urandom(key_len))
    os.chmod(path, 0o600)
    digest = () if "gcm" in cipher else ("--digest=sha1", f"--digest-key={SHA1_KEY.hex()}")
    r = run(*BASE, f"--cipher={cipher}", f"--cipher-keyfile={path}", *digest)
    if ok:
        assert r.rc == 0, r.err
    else:
        assert r.rc == 2 and server.requests == [], r.err
        assert len(r.err_lines) == 1 and cipher in r.err_lines[0]


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
                "duplex": True, "replay_window": 4096, "esn": False, "encap": None,
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


def test_group_readable_key_file_warns(run: Run, open_dir: Path) -> None:
    path = open_dir / "gcm.key"
    path.write_bytes(GCM_KEY)
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
    """No SAs: nothing on stdout (a script counting lines gets 0), status 0, as `tunnel show`. A filter
    that matches nothing: the seed's "No such SA!" on stderr and status 1, as `tunnel show ipsec9`."""
    server.results["sa.show"] = []
    r = run("sa", "show")
    assert (r.rc, r.out, r.err) == (0, "", "")
    r = run("-j", "sa", "show")
    assert (r.rc, json.loads(r.out)) == (0, [])
    r = run("sa", "show", "--spi=0x1234")
    assert (r.rc, r.out, r.err_lines) == (1, "", ["ipsecadm: No such SA!"])
    r = run("-j", "sa", "show", "--spi=0x1234")
    assert (r.rc, r.out, r.err_lines) == (1, "", ["ipsecadm: No such SA!"])


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
