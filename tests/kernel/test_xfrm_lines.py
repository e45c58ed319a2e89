"""tests/kernel/xfrm.py: the `ip xfrm` lines derived from `ipsecadm sa add` options, and the README's
Interoperability section, which must show exactly those lines. Needs neither root nor the UML guest."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ipsec_tunnel.core.algorithms import find_auth, find_cipher

from . import xfrm

README = Path(__file__).resolve().parents[2] / "README.md"


def keyfile(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_aead_state_carries_the_key_file_bytes_salt_last(tmp_path: Path) -> None:
    key = keyfile(tmp_path, "k", bytes(range(16)) + b"\xa0\xa1\xa2\xa3")
    argv = [
        "--spi=0x2001",
        "--dst=192.0.2.2",
        "--src=192.0.2.1",
        "--cipher=aes-gcm",
        f"--cipher-keyfile={key}",
    ]
    assert xfrm.state_lines(argv, reqid=1) == [
        "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x2001 reqid 1 mode tunnel"
        " replay-window 128 aead 'rfc4106(gcm(aes))' 0x000102030405060708090a0b0c0d0e0fa0a1a2a3 128"
    ]


def test_cipher_and_digest_use_auth_trunc(tmp_path: Path) -> None:
    enc, auth = keyfile(tmp_path, "e", b"\x11" * 24), keyfile(tmp_path, "a", b"\x22" * 20)
    o = xfrm.SaOptions.parse(
        ["--spi=4096", "--dst=2001:db8::2", "--src=2001:db8::1", "--cipher=des_ede3-cbc",
         f"--cipher-keyfile={enc}", "--digest=sha1", f"--digest-keyfile={auth}"]
    )  # fmt: skip
    assert xfrm.algorithms(o) == f"enc 'cbc(des3_ede)' 0x{'11' * 24} auth-trunc 'hmac(sha1)' 0x{'22' * 20} 96"


def test_authentication_only_esn_window_encap_and_icv_bits(tmp_path: Path) -> None:
    auth = keyfile(tmp_path, "a", b"\x33" * 32)
    (line,) = xfrm.state_lines(
        ["--spi=0x300", "--dst=192.0.2.2", "--src=192.0.2.1", "--digest=sha256", f"--digest-keyfile={auth}",
         "--digest-hmac=192", "--esn", "--replay-window=1024", "--encap=udp:4500:4501"],
        reqid=7, sel=("2001:db8:1::/64", "2001:db8:2::/64"), extra="replay-seq 0x10",
    )  # fmt: skip
    assert line == (
        "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x300 reqid 7 mode tunnel"
        " replay-window 1024 flag esn encap espinudp 4500 4501 0.0.0.0 replay-seq 0x10"
        f" sel src 2001:db8:1::/64 dst 2001:db8:2::/64 enc 'ecb(cipher_null)' ''"
        f" auth-trunc 'hmac(sha256)' 0x{'33' * 32} 192"
    )


def test_duplex_is_two_states_with_one_spi_and_key(tmp_path: Path) -> None:
    key = keyfile(tmp_path, "k", b"\x44" * 36)
    lines = xfrm.state_lines(
        ["--spi=0x3000", "--dst=192.0.2.2", "--src=192.0.2.1", "--cipher=chacha20-poly1305",
         f"--cipher-keyfile={key}", "--duplex"],
        reqid=1,
    )  # fmt: skip
    assert len(lines) == 2
    assert "src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x3000" in lines[0]
    assert "src 192.0.2.2 dst 192.0.2.1 proto esp spi 0x3000" in lines[1]
    assert all(f"aead 'rfc7539esp(chacha20,poly1305)' 0x{'44' * 36} 128" in line for line in lines)


def test_key_xxd_is_a_shell_word_for_documentation() -> None:
    assert xfrm.key_xxd(Path("/etc/ipsec/a b.key")) == "0x$(xxd -p -c 256 '/etc/ipsec/a b.key')"


def test_unknown_options_are_refused() -> None:
    with pytest.raises(xfrm.XfrmError):
        xfrm.SaOptions.parse(["--spi=0x300", "--cipher-key=00"])
    with pytest.raises(xfrm.XfrmError):
        xfrm.SaOptions.parse(["--encap=tcp"])


def test_helper_table_agrees_with_ipsecd_registry() -> None:
    """The helper's table is written independently; ipsecd's registry must name the same kernel algorithms."""
    for name, (kind, kernel, icv_bits) in xfrm.CIPHERS.items():
        alg, icv = find_cipher(name)
        assert alg.kernel == kernel, name
        assert alg.aead == (kind == "aead"), name
        assert (icv * 8 if icv is not None else None) == icv_bits, name
    for name, (kernel, bits) in xfrm.DIGESTS.items():
        auth = find_auth(name)
        assert (auth.kernel, auth.default_icv_bits) == (kernel, bits), name


SAMPLE = """\
src 192.0.2.2 dst 192.0.2.1
\tproto esp spi 0x00002002(8194) reqid 1(0x00000001) mode tunnel
\treplay-window 0 seq 0x00000000 flag esn (0x10000000)
\taead rfc4106(gcm(aes)) 0x00 (160 bits) 128
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x0, oseq-hi 0x1, oseq 0x24
\t replay_window 1024, bitmap-length 32
\tlifetime current:
\t  1103464(bytes), 776(packets)
\t  add 2026-11-27 12:55:56 use 2026-11-27 12:55:57
\tstats:
\t  replay-window 0 replay 2 failed 1
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00002001(8193) reqid 0(0x00000000) mode tunnel
\treplay-window 0 seq 0x00000000 flag  (0x00000000)
\tanti-replay context: seq 0x5, oseq 0x0, bitmap 0x0000001f
\tlifetime current:
\t  420(bytes), 5(packets)
\tstats:
\t  replay-window 3 replay 0 failed 0
"""


def test_parse_state_stats() -> None:
    stats = xfrm.parse_state_stats(SAMPLE)
    esn = stats["192.0.2.2", "192.0.2.1", 0x2002]
    assert (esn.packets, esn.bytes, esn.replay, esn.integrity_failed, esn.oseq) == (
        776,
        1103464,
        2,
        1,
        1 << 32 | 0x24,
    )
    legacy = stats["192.0.2.1", "192.0.2.2", 0x2001]
    assert (legacy.packets, legacy.seq, legacy.replay_window) == (5, 5, 3)


def readme_commands() -> list[str]:
    """The commands in the README's Interoperability section, continuation lines joined."""
    text = README.read_text()
    section = text[text.index("\n## Interoperability\n") :]
    commands: list[str] = []
    pending = ""
    for line in section.splitlines():
        if not line.startswith("    "):
            continue
        pending += " " + line.strip() if pending else line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append(pending)
        pending = ""
    return commands


def test_readme_shows_the_derived_lines() -> None:
    """Each `ip xfrm state add` line in the README is what the helper derives from the `ipsecadm sa add`
    lines before it (in order), with the keys read by xxd; the policies are the helper's too."""
    commands = readme_commands()
    sa_adds = [shlex.split(c)[3:] for c in commands if c.startswith("ipsecadm sa add ")]
    states = [c for c in commands if c.startswith("ip xfrm state add ")]
    policies = [c for c in commands if c.startswith("ip xfrm policy add ")]
    assert len(sa_adds) == len(states) == 4
    derived = [line for argv in sa_adds for line in xfrm.state_lines(argv, reqid=1, key=xfrm.key_xxd)]
    assert states == derived
    assert policies == [
        xfrm.policy_add("10.0.2.0/24", "10.0.1.0/24", "out", "192.0.2.2", "192.0.2.1", 1),
        xfrm.policy_add("10.0.1.0/24", "10.0.2.0/24", "in", "192.0.2.1", "192.0.2.2", 1),
    ]
