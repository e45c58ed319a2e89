"""Keys never appear in anything ipsecadm prints, whatever the command and however it ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DES3_KEY, GCM_KEY, SHA1_KEY, FakeServer, Run

KEYS = (DES3_KEY, SHA1_KEY, GCM_KEY)
SA = ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4")


def _commands(keydir: Path) -> list[tuple[str, ...]]:
    des = (f"--cipher-key={DES3_KEY.hex()}",)
    return [
        (*SA, "--cipher=des_ede3-cbc", *des, "--digest=sha1", f"--digest-key={SHA1_KEY.hex()}", "--duplex"),
        (*SA, "--cipher=des_ede3-cbc", f"--cipher-keyfile={keydir / 'example.key'}", "--digest=sha1",
         f"--digest-keyfile={keydir / 'sha1.key'}"),
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}"),
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}00"),  # wrong size
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}0"),  # odd length
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--digest=sha1",
         f"--digest-key={SHA1_KEY.hex()}"),  # AEAD with a digest
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", "--bogus"),
        (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}", GCM_KEY.hex()),  # stray argument
        (*SA, "--cipher=aes-gcm", "--cipher-key=", GCM_KEY.hex()),  # a space after '='
        (*SA, f"--cipher-k={GCM_KEY.hex()}"),  # ambiguous option
        (*SA, "--cipher=rot13", f"--cipher-key={GCM_KEY.hex()}"),
        ("sa", GCM_KEY.hex()),
        (GCM_KEY.hex(),),
        ("sa", "show"), ("sa", "show", "-s"), ("-j", "sa", "show", "-s"), ("tunnel", "show"), ("stats",),
    ]  # fmt: skip


@pytest.mark.parametrize("json_flag", [(), ("-j",)])
def test_no_key_in_any_output(run: Run, server: FakeServer, keydir: Path, json_flag: tuple[str, ...]) -> None:
    for argv in _commands(keydir):
        r = run(*json_flag, *argv)
        text = (r.out + r.err).lower()
        for key in KEYS:
            assert key.hex() not in text, (argv, r.out, r.err)
        assert "Traceback" not in r.err


def test_no_key_in_daemon_errors(run: Run, server: FakeServer) -> None:
    server.fail("sa.add", "EINVAL", f"Bad key {GCM_KEY.hex()}")  # a daemon bug: still hidden
    r = run(*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}")
    assert r.rc == 1
    assert GCM_KEY.hex() not in r.err and "<hidden>" in r.err
