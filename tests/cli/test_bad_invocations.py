"""Bad command lines: each gives exactly one line on stderr (warnings aside), nothing on stdout, exit 2,
no traceback, and sends nothing to ipsecd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import DES3_KEY, GCM_KEY, SHA1_KEY, FakeServer, Run

SA = ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3.4")
GCM = (*SA, "--cipher=aes-gcm", f"--cipher-key={GCM_KEY.hex()}")
SHA1 = ("--digest=sha1", f"--digest-key={SHA1_KEY.hex()}")
DES = (*SA, "--cipher=des_ede3-cbc", f"--cipher-key={DES3_KEY.hex()}", *SHA1)
WEAK_3DES = "0101010101010101" + "0123456789abcdef" + "fedcba9876543210"
DEGENERATE_3DES = "0123456789abcdef" * 2 + "fedcba9876543210"

# (id, argv, a fragment of the error line). "{keys}" in an argument is the key directory.
BAD: list[tuple[str, tuple[str, ...], str]] = [
    ("unknown cipher", (*SA, "--cipher=rot13", "--cipher-key=00", *SHA1), "Unknown cipher or digest"),
    ("unknown digest", (*GCM[:5], "--digest=crc32", "--digest-key=00"), "Unknown cipher or digest"),
    ("bad hex", (*SA, "--cipher=aes-gcm", "--cipher-key=zz" + "00" * 19), "hexadecimal"),
    ("odd-length hex", (*SA, "--cipher=aes-gcm", "--cipher-key=" + "0" * 39), "odd number"),
    ("empty hex", (*SA, "--cipher=aes-gcm", "--cipher-key="), "empty"),
    ("short 3DES key", (*SA, "--cipher=des_ede3-cbc", "--cipher-key=" + "ab" * 16, *SHA1), "Bad key"),
    ("long 3DES key", (*SA, "--cipher=des_ede3-cbc", "--cipher-key=" + "ab" * 40, *SHA1), "Key too long"),
    ("wrong HMAC key size", (*SA, "--digest=sha256", "--digest-key=" + "ab" * 20), "32 bytes"),
    ("weak DES key", (*SA, "--cipher=3des", f"--cipher-key={WEAK_3DES}", *SHA1), "weak"),
    ("degenerate 3DES", (*SA, "--cipher=3des", f"--cipher-key={DEGENERATE_3DES}", *SHA1), "single DES"),
    ("missing key file", (*SA, "--cipher=aes-gcm", "--cipher-keyfile={keys}/nope.key"), "No such file"),
    ("key file is a dir", (*SA, "--cipher=aes-gcm", "--cipher-keyfile={keys}"), "Is a directory"),
    ("key file unreadable", (*SA, "--cipher=aes-gcm", "--cipher-keyfile={keys}/gcm.key/x"),
     "Not a directory"),
    ("empty key file", (*SA, "--cipher=aes-gcm", "--cipher-keyfile=/dev/null"), "empty"),
    ("huge key file", (*SA, "--cipher=aes-gcm", "--cipher-keyfile=/dev/zero"), "raw key bytes"),
    ("key file name empty", (*SA, "--cipher=aes-gcm", "--cipher-keyfile="), "needs a file name"),
    ("SPI 0", ("sa", "add", "--spi=0", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]), "reserved"),
    ("SPI 255", ("sa", "add", "--spi=255", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]), "reserved"),
    ("SPI 0xff", ("sa", "add", "--spi=0xff", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]), "reserved"),
    ("SPI overflow", ("sa", "add", "--spi=0x100000000", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]),
     "out of range"),
    ("SPI not a number", ("sa", "add", "--spi=ten", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]),
     "not a number"),
    ("SPI negative", ("sa", "add", "--spi", "-4096", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]),
     "not a number"),
    ("wildcard dst", ("sa", "add", "--spi=0x1000", "--dst=0.0.0.0", "--src=1.2.3.4", *GCM[5:]), "Wildcard"),
    ("wildcard v6 src", ("sa", "add", "--spi=0x1000", "--dst=::2", "--src=::", *GCM[5:]), "Wildcard"),
    ("multicast dst", ("sa", "add", "--spi=0x1000", "--dst=224.0.0.1", "--src=1.2.3.4", *GCM[5:]),
     "multicast"),
    ("malformed src", ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", "--src=1.2.3", *GCM[5:]), "Bad source"),
    ("hostname dst", ("sa", "add", "--spi=0x1000", "--dst=example.org", "--src=1.2.3.4", *GCM[5:]),
     "Bad destination"),
    ("mixed families", ("sa", "add", "--spi=0x1000", "--dst=2001:db8::1", "--src=1.2.3.4", *GCM[5:]),
     "IPv4 or both IPv6"),
    ("same addresses", ("sa", "add", "--spi=0x1000", "--dst=1.2.3.4", "--src=1.2.3.4", *GCM[5:]), "differ"),
    ("missing --spi", ("sa", "add", "--dst=5.6.7.8", "--src=1.2.3.4", *GCM[5:]), "needs --spi"),
    ("missing --dst", ("sa", "add", "--spi=0x1000", "--src=1.2.3.4", *GCM[5:]), "needs --dst"),
    ("missing --src", ("sa", "add", "--spi=0x1000", "--dst=5.6.7.8", *GCM[5:]), "needs --src"),
    ("no algorithm", SA, "cipher, a digest, or both"),
    ("cipher without key", (*SA, "--cipher=aes-gcm"), "needs --cipher-key"),
    ("digest without key", (*SA, "--digest=sha1"), "needs --digest-key"),
    ("key without cipher", (*SA, f"--cipher-key={GCM_KEY.hex()}", *SHA1), "need --cipher"),
    ("both cipher key forms", (*GCM, "--cipher-keyfile={keys}/gcm.key"), "not both"),
    ("both digest key forms", (*SA, *SHA1, "--digest-keyfile={keys}/sha1.key"), "not both"),
    ("null cipher alone", (*SA, "--cipher=null"), "protects nothing"),
    ("alias says 128 bits", (*SA, "--cipher=aes-128-cbc", "--cipher-key=" + "ab" * 32, *SHA1), "128-bit"),
    ("aes-gcm-128 as key size", (*SA, "--cipher=aes-gcm-128", "--cipher-key=" + "ab" * 36), "ambiguous"),
    ("digest-hmac not /32", (*SA, *SHA1, "--digest-hmac=100"), "multiple of 32"),
    ("digest-hmac too long", (*SA, *SHA1, "--digest-hmac=192"), "96 to 160"),
    ("digest-hmac alone", (*SA, "--digest-hmac=96"), "needs --digest"),
    ("digest with AEAD", (*GCM, *SHA1), "AEAD"),
    ("ICV name conflict", (*SA, "--cipher=aes-gcm-12", f"--cipher-key={GCM_KEY.hex()}", "--digest-hmac=128"),
     "already sets a 96-bit ICV"),
    ("bad AEAD ICV", (*GCM, "--digest-hmac=100"), "128 or 96 or 64"),
    ("unknown option", (*GCM, "--fast"), "unknown option '--fast'"),
    ("unknown short option", (*GCM, "-x"), "unknown option '-x'"),
    ("ambiguous option", (*SA, "--cipher-k=00"), "ambiguous option"),
    ("option twice", (*GCM, "--spi=0x2000"), "given twice"),
    ("flag with a value", (*GCM, "--duplex=yes"), "takes no value"),
    ("value missing", (*GCM, "--replay-window"), "needs a value"),
    ("replay window too big", (*GCM, "--replay-window=99999999"), "Replay window"),
    ("replay window text", (*GCM, "--replay-window=big"), "not a number"),
    ("encap tcp", (*GCM, "--encap=tcp"), "--encap"),
    ("encap port range", (*GCM, "--encap=udp:70000:4500"), "ports"),
    ("encap one port", (*GCM, "--encap=udp:4500"), "udp:SPORT:DPORT"),
    ("lifetime soft above hard", (*GCM, "--lifetime-bytes=1G:900M"), "below the hard"),
    ("lifetime text", (*GCM, "--lifetime-seconds=soon"), "not a number of seconds"),
    ("lifetime three parts", (*GCM, "--lifetime-packets=1:2:3"), "SOFT:HARD"),
    ("lifetime empty", (*GCM, "--lifetime-packets=:"), "SOFT:HARD"),
    ("sa add positional", (*GCM, "extra"), "takes no arguments"),
    ("duplex with sa show", ("sa", "show", "--duplex"), "unknown option '--duplex' for 'sa show'"),
    ("sa del no filter", ("sa", "del"), "needs --dst, --src or --spi"),
    ("sa del all and filter", ("sa", "del", "--all", "--spi=0x1000"), "cannot be combined"),
    ("sa del all duplex", ("sa", "del", "--all", "--duplex"), "drop --duplex"),
    ("sa del reserved SPI", ("sa", "del", "--spi=5"), "reserved"),
    ("sa show bad address", ("sa", "show", "--dst=5.6.7"), "Bad destination"),
    ("sa without command", ("sa",), "needs a command"),
    ("sa unknown command", ("sa", "frob"), "unknown sa command"),
    ("stats with -s", ("stats", "-s"), "applies only to"),
    ("stats with argument", ("stats", "now"), "takes no arguments"),
    ("tunnel add no local", ("tunnel", "add", "ipsec1", "--remote=5.6.7.8"), "needs --local"),
    ("tunnel add wildcard", ("tunnel", "add", "ipsec1", "--local=1.2.3.4", "--remote=0.0.0.0"), "Wildcard"),
    ("tunnel add families", ("tunnel", "add", "t", "--local=1.2.3.4", "--remote=2001:db8::1"),
     "IPv4 or both IPv6"),
    ("tunnel name too long", ("tunnel", "add", "ipsec1234567890x", "--local=1.2.3.4", "--remote=5.6.7.8"),
     "1 to 15 characters"),
    ("tunnel name bad chars", ("tunnel", "add", "ip/sec", "--local=1.2.3.4", "--remote=5.6.7.8"), "may hold"),
    ("tunnel add ipsec0", ("tunnel", "add", "ipsec0", "--local=1.2.3.4", "--remote=5.6.7.8"), "base device"),
    ("tunnel add reserved SPI", ("tunnel", "add", "t1", "--local=1.2.3.4", "--remote=5.6.7.8", "--spi=7"),
     "reserved"),
    ("tunnel bad peer net", ("tunnel", "add", "t1", "--local=1.2.3.4", "--remote=5.6.7.8",
                             "--peer-net=10.0.0.0/33"), "Bad network"),
    ("tunnel empty nextdev", ("tunnel", "add", "t1", "--local=1.2.3.4", "--remote=5.6.7.8", "--nextdev="),
     "interface name"),
    ("tunnel change nothing", ("tunnel", "change", "ipsec1"), "at least one"),
    ("tunnel change no name", ("tunnel", "change", "--spi=any"), "needs a device name"),
    ("tunnel change ipsec0", ("tunnel", "change", "ipsec0", "--local=1.2.3.4"), "cannot be changed"),
    ("tunnel change same ends", ("tunnel", "change", "t1", "--local=1.2.3.4", "--remote=1.2.3.4"), "differ"),
    ("tunnel del nothing", ("tunnel", "del"), "needs a device name or --all"),
    ("tunnel del both", ("tunnel", "del", "ipsec1", "--all"), "not both"),
    ("tunnel del ipsec0", ("tunnel", "del", "ipsec0"), "cannot be removed"),
    ("tunnel show two", ("tunnel", "show", "ipsec1", "ipsec2"), "takes one device name"),
    ("socket twice", ("stats", "--socket=/tmp/a"), "--socket given twice"),
    ("json with a value", ("stats", "--json=yes"), "takes no value"),
]  # fmt: skip


def test_table_is_long_enough() -> None:
    assert len(BAD) >= 40
    assert len({case[0] for case in BAD}) == len(BAD)


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_invocation(
    run: Run, server: FakeServer, keydir: Path, argv: tuple[str, ...], fragment: str
) -> None:
    os.chmod(keydir, 0o700)
    r = run(*(a.replace("{keys}", str(keydir)) for a in argv))
    assert r.rc == 2, (r.out, r.err)
    assert r.out == ""
    assert len(r.err_lines) == 1, r.err
    (line,) = r.err_lines
    assert line.startswith("ipsecadm: ")
    assert fragment in line
    assert "Traceback" not in r.err
    assert server.requests == []
    for key in (DES3_KEY, SHA1_KEY, GCM_KEY):
        assert key.hex() not in r.err.lower()
