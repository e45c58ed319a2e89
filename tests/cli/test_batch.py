"""`ipsecadm -b FILE` (as `ip -batch`): one command per line over one connection, errors named by line,
stop at the first error unless -force; 1,000 SAs through the real control server; the daemon's nonce-reuse
check stays constant-time per add."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipsec_tunnel.cli.batch import Batch, split_batch, words
from ipsec_tunnel.cli.grammar import UsageError
from ipsec_tunnel.cli.ipsecadm import main
from ipsec_tunnel.core.sad import SADatabase
from tests.robustness.test_control_server import Served

from .conftest import SHA1_KEY, FakeServer, Run

SA_LINE = "sa add --spi={spi} --dst=5.6.7.8 --src=1.2.3.4 --cipher=aes-cbc --cipher-keyfile={c} " \
          "--digest=sha1 --digest-keyfile={d}"  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, key in (("c", os.urandom(16)), ("d", SHA1_KEY)):
        p = tmp_path / f"{name}.key"
        p.write_bytes(key)
        os.chmod(p, 0o600)
        out[name] = p
    return out


def _own_key_lines(tmp_path: Path, count: int, first_spi: int) -> list[str]:
    """`count` SA_LINEs from SPI `first_spi` on, each with key files of its own (random, mode 0600)."""
    lines = []
    for i in range(count):
        own = {}
        for name, size in (("c", 16), ("d", 20)):
            p = tmp_path / f"{name}{i}.key"
            p.write_bytes(os.urandom(size))
            os.chmod(p, 0o600)
            own[name] = p
        lines.append(SA_LINE.format(spi=hex(first_spi + i), **own))
    return lines


def _batch(tmp_path: Path, *lines: str) -> Path:
    p = tmp_path / "batch"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_split_batch() -> None:
    assert split_batch(["sa", "show"]) is None
    assert split_batch(["-j", "sa", "show", "-b"]) is None  # after the mode word, -b is not ours
    assert split_batch(["-b", "f"]) == Batch("f")
    assert split_batch(["-batch", "-", "-force"]) == Batch("-", True)
    assert split_batch(["-j", "--socket", "/s", "--batch=f"]) == Batch("f", False, ["-j", "--socket", "/s"])
    for bad, why in (
        (["-b"], "needs a file"), (["-b", "f", "sa", "show"], "come from the file"),
        (["-force", "sa", "show"], "only with -b"), (["-b", "f", "-b", "g"], "twice"),
    ):  # fmt: skip
        with pytest.raises(UsageError, match=why):
            split_batch(bad)


def test_words() -> None:
    assert words("  # a comment") == []
    assert words("") == []
    assert words("tunnel add ipsec1 --local=1.2.3.4  # trailing comment") == [
        "tunnel",
        "add",
        "ipsec1",
        "--local=1.2.3.4",
    ]
    assert words("sa add --cipher-keyfile='/etc/my keys/a#1'") == [
        "sa",
        "add",
        "--cipher-keyfile=/etc/my keys/a#1",
    ]
    with pytest.raises(ValueError):
        words("sa add 'unbalanced")


def test_every_line_over_one_connection(
    run: Run, server: FakeServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    path = _batch(
        tmp_path,
        "# provisioning",
        SA_LINE.format(spi="0x1000", **keys),
        "",
        "tunnel add ipsec1 --local=1.2.3.4 --remote=5.6.7.8",
        "   # indented comment",
        "sa show",
    )
    r = run("-b", str(path))
    assert r.rc == 0, r.err
    assert server.ops == ["sa.add", "tunnel.add", "sa.show"]
    assert server.connections == 1
    assert server.last("sa.add")["spi"] == 0x1000
    assert "Destination" in r.out


def test_the_first_error_stops_the_batch_and_names_its_line(
    run: Run, server: FakeServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A batch that is not all adds goes line by line: the lines before the error stay applied."""
    path = _batch(tmp_path, SA_LINE.format(spi="0x1000", **keys), "sa add --spi=0x1001 --bogus",
                  SA_LINE.format(spi="0x1002", **keys), "sa show")  # fmt: skip
    r = run("-b", str(path))
    assert r.rc == 2
    assert [a["spi"] for op, a in server.requests] == [0x1000]  # the line before stays applied
    assert r.err_lines[0].startswith(f"ipsecadm: {path}:2: unknown option '--bogus'")
    assert "stopped at line 2; the 1 command(s) before it were carried out" in r.err_lines[-1]


def test_a_batch_of_adds_is_one_transaction(
    run: Run, server: FakeServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    """Issue 12: `sa add` and `tunnel add` lines only go as one `batch` request, all or none; a wrong
    line is found before anything is sent."""
    lines = [SA_LINE.format(spi="0x1000", **keys), "tunnel add --local=1.2.3.4 --remote=5.6.7.8",
             SA_LINE.format(spi="0x1002", **keys)]  # fmt: skip
    r = run("-b", str(_batch(tmp_path, *lines)))
    assert r.rc == 0, r.err
    assert server.ops == ["batch"] and server.connections == 1
    sent = server.last("batch")["requests"]
    assert [(q["op"], q["args"].get("spi")) for q in sent] == [("sa.add", 0x1000), ("tunnel.add", 0),
                                                                ("sa.add", 0x1002)]  # fmt: skip
    assert r.out == "ipsec7\n"  # the name ipsecd picked, printed as the line alone would
    server.requests.clear()
    path = _batch(tmp_path, lines[0], "sa add --spi=0x1001 --bogus", lines[2])
    r = run("-b", str(path))
    assert r.rc == 2 and server.requests == []  # nothing sent
    assert r.err_lines[0].startswith(f"ipsecadm: {path}:2: unknown option '--bogus'")
    assert (
        r.err_lines[-1]
        == f"ipsecadm: {path}: nothing applied: line 2 is wrong (a batch of adds is all or none)"
    )


def test_force_goes_on_past_errors(
    run: Run, server: FakeServer, tmp_path: Path, keys: dict[str, Path]
) -> None:
    server.fail("tunnel.add", "EEXIST", "tunnel ipsec1 already exists")
    path = _batch(tmp_path, SA_LINE.format(spi="0x1000", **keys), "tunnel add ipsec1 --local=1.2.3.4 "
                  "--remote=5.6.7.8", SA_LINE.format(spi="0x1002", **keys))  # fmt: skip
    r = run("-b", str(path), "-force")
    assert r.rc == 1
    assert server.ops == ["sa.add", "tunnel.add", "sa.add"]
    assert r.err_lines == [f"ipsecadm: {path}:2: tunnel ipsec1 already exists"]
    server.requests.clear()
    r = run("-b", str(path))  # without -force: one transaction, undone
    assert r.rc == 1 and server.ops == ["batch"]
    assert r.err_lines == [
        f"ipsecadm: {path}:2: tunnel ipsec1 already exists",
        f"ipsecadm: {path}: nothing applied: line 2 was refused and the 1 command(s) before it were undone "
        "(a batch of adds is all or none)",
    ]


def test_batch_from_standard_input(
    run: Run, server: FakeServer, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SA_LINE.format(spi="0x1000", **keys) + "\nstats\n"))
    r = run("-b", "-")
    assert r.rc == 0, r.err
    assert server.ops == ["sa.add", "stats"]


def test_a_missing_batch_file_is_one_line(run: Run, server: FakeServer, tmp_path: Path) -> None:
    r = run("-b", str(tmp_path / "nope"))
    assert r.rc == 1 and len(r.err_lines) == 1 and "cannot read batch file" in r.err
    assert server.requests == []
    r = run("-b", str(tmp_path))  # a directory: open() works, reading does not
    assert r.rc == 1 and len(r.err_lines) == 1 and "cannot read batch file" in r.err


def test_unreadable_standard_input_is_one_line(run: Run, server: FakeServer) -> None:
    r = run("-b", "-")  # pytest's stdin refuses reads
    assert r.rc == 1 and len(r.err_lines) == 1 and "cannot read batch file stdin" in r.err_lines[0], r.err


def test_a_thousand_sas_from_one_batch_file(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against the real control server and manager (state in SQLite, fake devices): every SA arrives.
    Each SA has keys of its own: ipsecd refuses a key another SA holds."""
    lines = _own_key_lines(tmp_path, 1000, 0x10000)
    path = _batch(tmp_path, *lines)
    start = time.monotonic()
    rc = main([f"--socket={served.path}", "-b", str(path)])
    elapsed = time.monotonic() - start
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    spis = {sa.config.spi for sa in served.engine.sad}
    assert spis == {0x10000 + i for i in range(1000)}
    assert main([f"--socket={served.path}", "-j", "sa", "show"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1000
    print(f"1,000 SAs from one batch file in {elapsed:.1f} s")


def test_the_nonce_reuse_check_does_not_scan_every_sa(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 counter-mode SAs added one by one: the SA database is walked a handful of times, not once per
    add (which made 1,000 adds quadratic), and the check still refuses a reused key, also after deletes."""
    walks = 0
    real_iter = SADatabase.__iter__

    def counting_iter(self: SADatabase) -> Iterator[object]:
        nonlocal walks
        walks += 1
        return real_iter(self)

    monkeypatch.setattr(SADatabase, "__iter__", counting_iter)
    m = served.manager
    key = {}
    for i in range(1000):
        key[i] = os.urandom(20).hex()
        m.handle("sa.add", {"spi": 0x1000 + i, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "aes-gcm",
                            "cipher_key": key[i], "duplex": True})  # fmt: skip
    assert walks <= 2
    dup = {"spi": 0x9000, "dst": "192.0.2.2", "src": "192.0.2.1", "cipher": "aes-gcm", "cipher_key": key[7]}
    with pytest.raises(Exception, match="already used by SA 0x1007"):
        m.handle("sa.add", dup)
    m.handle("sa.del", {"spi": 0x1007, "duplex": True})
    m.handle("sa.add", dup)  # its owner is gone: allowed now
    with pytest.raises(Exception, match="already used by SA 0x9000"):
        m.handle("sa.add", {**dup, "spi": 0x9001})


def test_keys_written_in_a_batch_file(run: Run, server: FakeServer, open_dir: Path) -> None:
    """A hex key in a batch file is in no process list or shell history: no such warning per line, but one
    warning when the file itself can be read by others."""
    line = "sa add --spi={spi} --dst=5.6.7.8 --src=1.2.3.4 --cipher=aes-gcm --cipher-key=" + "ab" * 20
    path = open_dir / "sas"
    path.write_text("\n".join(line.format(spi=hex(0x1000 + i)) for i in range(3)) + "\n")
    os.chmod(path, 0o600)
    r = run("-b", str(path))
    assert (r.rc, r.err) == (0, "")
    assert [q["op"] for q in server.last("batch")["requests"]] == ["sa.add"] * 3  # one transaction
    os.chmod(path, 0o644)
    r = run("-b", str(path))
    assert r.warnings[:1] == [
        f"ipsecadm: warning: batch file {path} is readable by group/others; if it holds keys, chmod 600 it"
    ]
    assert "process list" not in r.err


def test_a_refused_add_undoes_the_whole_batch_in_ipsecd(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against the real manager: a batch of adds whose fourth line is refused (the SA exists) leaves no
    SA, tunnel or device of the lines before it; the same batch without that line applies whole."""
    lines = _own_key_lines(tmp_path, 2, 0x1000)
    lines.append("tunnel add ipsec1 --local=1.2.3.4 --remote=5.6.7.8")
    path = _batch(tmp_path, *lines, lines[0])  # line 4: the SA of line 1 again
    assert main([f"--socket={served.path}", "-b", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"ipsecadm: {path}:4: SA already exists"
    assert "nothing applied: line 4 was refused and the 3 command(s) before it were undone" in err[-1]
    assert len(served.engine.sad) == 0 and served.engine.tunnels.get("ipsec1") is None
    assert "ipsec1" not in served.devices.names
    path = _batch(tmp_path, *lines)
    assert main([f"--socket={served.path}", "-b", str(path)]) == 0, capsys.readouterr().err
    assert {sa.config.spi for sa in served.engine.sad} == {0x1000, 0x1001}
    assert served.engine.tunnels.get("ipsec1") is not None and "ipsec1" in served.devices.names
