"""Option values (numbers, lifetimes, --encap) and key input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipsec_tunnel.cli.keys import KeyInputError, exposed, load_key, looks_like_hex, parse_hex, read_key_file
from ipsec_tunnel.cli.values import (
    Kind,
    ValueInputError,
    format_count,
    format_lifetime,
    parse_count,
    parse_encap,
    parse_lifetime,
    parse_number,
    redact,
)


@pytest.mark.parametrize(("text", "value"), [("0x1000", 4096), ("4096", 4096), ("0X1F", 31), ("010", 10)])
def test_parse_number(text: str, value: int) -> None:
    assert parse_number(text, "--spi") == value


@pytest.mark.parametrize("text", ["", "0x", "-1", "1e3", "ten", "0b101", " "])
def test_parse_number_refuses(text: str) -> None:
    with pytest.raises(ValueInputError):
        parse_number(text, "--spi")


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("1K", "bytes", 1024), ("900M", "bytes", 900 << 20), ("1GiB", "bytes", 1 << 30),
        ("2tb", "bytes", 2 << 40), ("5", "bytes", 5), ("1k", "packets", 1000), ("1M", "packets", 10**6),
        ("90s", "seconds", 90),
        ("50m", "seconds", 3000), ("1h", "seconds", 3600), ("2d", "seconds", 172800), ("0", "seconds", 0),
    ],
)  # fmt: skip
def test_parse_count(text: str, kind: Kind, value: int) -> None:
    assert parse_count(text, kind, "--x") == value


@pytest.mark.parametrize(
    ("value", "kind"),
    [(900 << 20, "bytes"), (1000, "bytes"), (10**6, "packets"), (3000, "seconds"), (59, "seconds"),
     (86400, "seconds")],
)  # fmt: skip
def test_format_count_round_trips(value: int, kind: Kind) -> None:
    assert parse_count(format_count(value, kind), kind, "--x") == value


def test_lifetime_syntax() -> None:
    assert parse_lifetime("900M:1G", "bytes", "--l") == (900 << 20, 1 << 30)
    assert parse_lifetime(":1G", "bytes", "--l") == (0, 1 << 30)
    assert parse_lifetime("1G", "bytes", "--l") == (1 << 30, 0)
    assert parse_lifetime("0:1h", "seconds", "--l") == (0, 3600)
    assert format_lifetime(900 << 20, 1 << 30, "bytes") == "900M:1G"
    assert format_lifetime(0, 3600, "seconds") == ":1h"
    assert format_lifetime(600, 0, "seconds") == "10m"
    assert format_lifetime(0, 0, "packets") == ""
    for bad in ("1h:50m", "1h:1h", ":", "", "1:2:3", "x:1"):
        with pytest.raises(ValueInputError):
            parse_lifetime(bad, "seconds", "--l")
    with pytest.raises(ValueInputError, match="too large"):
        parse_count("99999999T", "bytes", "--l")


def test_encap() -> None:
    assert parse_encap("udp") == (4500, 4500)
    assert parse_encap("UDP:1:2") == (1, 2)
    for bad in ("tcp", "udp:", "udp:1", "udp:a:b", ""):
        with pytest.raises(ValueInputError):
            parse_encap(bad)


def test_redact_hides_key_shaped_text() -> None:
    assert redact("key 00112233445566778899aabbccddeeff!") == "key <hidden>!"
    assert redact("spi 0x00001000 on 2001:db8::1") == "spi 0x00001000 on 2001:db8::1"


def test_parse_hex() -> None:
    assert parse_hex("00ff", "--k") == b"\x00\xff"
    assert parse_hex(" 0xABcd\n", "--k") == b"\xab\xcd"
    for bad, why in (("0g", "hexadecimal"), ("abc", "odd number"), ("", "empty"), ("0x", "empty"),
                     ("00 ff", "hexadecimal")):  # fmt: skip
        with pytest.raises(KeyInputError, match=why) as exc:
            parse_hex(bad, "--cipher-key")
        assert "--cipher-key" in str(exc.value)


def test_read_key_file(open_dir: Path) -> None:
    p = open_dir / "k"
    p.write_bytes(b"\x00\x01\n")
    os.chmod(p, 0o600)
    warnings: list[str] = []
    assert read_key_file(str(p), "--cipher-keyfile", warnings.append) == b"\x00\x01\n"
    assert warnings == []
    os.chmod(p, 0o604)
    read_key_file(str(p), "--cipher-keyfile", warnings.append)
    assert warnings == [f"warning: key file {p} is readable by group/others; chmod 600 it"]


@pytest.mark.parametrize("dir_mode", [0o500, 0o700, 0o750])
def test_a_directory_closed_to_others_protects_its_key_files(open_dir: Path, dir_mode: int) -> None:
    """The seed's `mkdir /etc/ipsec; chmod 500 /etc/ipsec`, then dd (a 644 file): as ssh judges a key's
    path, the directory keeps others out, so no warning (750: group members may enter, but the file's
    group bits are clear)."""
    d = open_dir / "ipsec"
    d.mkdir()
    p = d / "example.key"
    p.write_bytes(b"\x01" * 24)
    os.chmod(p, 0o604)
    os.chmod(d, dir_mode)
    try:
        warnings: list[str] = []
        read_key_file(str(p), "--cipher-keyfile", warnings.append)
        assert warnings == []
        link = open_dir / "link.key"  # a link from an open place still leads through the closed directory
        link.symlink_to(p)
        read_key_file(str(link), "--cipher-keyfile", warnings.append)
        assert warnings == []
    finally:
        os.chmod(d, 0o700)


def test_a_group_readable_key_in_a_group_searchable_directory_warns(open_dir: Path) -> None:
    d = open_dir / "ipsec"
    d.mkdir(mode=0o750)
    os.chmod(d, 0o750)
    p = d / "k"
    p.write_bytes(b"\x01" * 24)
    os.chmod(p, 0o640)
    assert exposed(str(p), os.stat(p).st_mode)
    os.chmod(d, 0o700)
    assert not exposed(str(p), os.stat(p).st_mode)


@pytest.mark.parametrize(
    ("content", "hexlike"),
    [
        (b"00112233445566778899aabbccddeeff", True), (b"00112233445566778899AABBCCDDEEFF\n", True),
        (b"0011223344556677\r\n", True), (bytes(range(16)), False), (b"00112233445566zz", False),
        (b"abcd", False), (b"00112233445566778899aabbccddeeff\n\n", False),
    ],
)  # fmt: skip
def test_looks_like_hex(content: bytes, hexlike: bool) -> None:
    assert looks_like_hex(content) is hexlike


def test_read_key_file_from_a_pipe() -> None:
    r, w = os.pipe()
    os.write(w, b"\xaa" * 20)
    os.close(w)
    try:
        assert read_key_file(f"/proc/self/fd/{r}", "--k", lambda s: None) == b"\xaa" * 20
    finally:
        os.close(r)


def test_load_key() -> None:
    warnings: list[str] = []
    assert load_key(None, None, "--cipher-key", warnings.append) is None
    assert load_key("00", None, "--cipher-key", warnings.append) == b"\x00"
    assert len(warnings) == 1 and warnings[0].endswith("use --cipher-keyfile")
    with pytest.raises(KeyInputError, match="not both"):
        load_key("00", "/x", "--cipher-key", warnings.append)
