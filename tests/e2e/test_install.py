"""`make install` (the seed's install step) into a staging directory (DESTDIR), as a package build does:
the tree is built for its final PREFIX, so once copied there ipsecd and ipsecadm run from their own
environment, on the system's python3; the man pages and the systemd unit are where man and systemd look;
`mandb` is not run on the live system. `make uninstall` removes the files and the directories install
created, disables the unit first where systemd runs, and keeps the state directory.

Nothing here needs root: the install runs from a copy of the checkout in a temporary directory (the build
writes into its source tree, which an ordinary user running the suite may not own)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsec_tunnel import __version__
from tests.support.userns import in_user_namespace

ROOT = Path(__file__).resolve().parents[2]

# pip fetches the build dependencies; the network namespace of a user-namespace session has no route out
pytestmark = pytest.mark.skipif(
    in_user_namespace(), reason="make install needs the network for pip (IPSEC_TEST_USERNS=0 runs it)"
)

# Stand-ins for mandb and systemctl: they log their arguments (and whether the unit file is there).
FAKE = """#!/bin/sh
echo "$(basename "$0") $* unit=$([ -e "$UNIT" ] && echo present || echo absent)" >> "$CALLS"
"""


# What a build does not need, as .gitignore lists it (plus .git)
NOT_COPIED = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache",
              ".hypothesis", "build", "dist")  # fmt: skip


@dataclass
class Staged:
    top: Path  # everything lives under here
    source: Path  # the copy of the checkout make runs in
    prefix: str  # the final PREFIX: top/final
    dest: Path  # DESTDIR: top/stage
    calls: Path
    env: dict[str, str]
    output: str

    @property
    def staged_prefix(self) -> Path:
        return self.dest / self.prefix.lstrip("/")

    def make(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _make(self.env, *args, f"DESTDIR={self.dest}", f"PREFIX={self.prefix}", source=self.source)


def _make(env: dict[str, str], *args: str, source: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "-C", str(source), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )


def _fakes(top: Path, unit: Path) -> tuple[Path, dict[str, str]]:
    fake_bin = top / "fakebin"
    fake_bin.mkdir()
    for name in ("mandb", "systemctl"):
        p = fake_bin / name
        p.write_text(FAKE)
        p.chmod(0o755)
    calls = top / "calls"
    calls.touch()
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "CALLS": str(calls), "UNIT": str(unit)}
    env.pop("MAKEFLAGS", None)
    return calls, env


@pytest.fixture(scope="module")
def staged() -> Iterator[Staged]:
    if shutil.which("make") is None:
        pytest.fail("make is not installed (`make test` itself needs it)")
    top = Path(tempfile.mkdtemp(prefix="ocl-install-", dir="/tmp"))
    try:
        prefix = str(top / "final")
        source = top / "source"
        shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
        calls, env = _fakes(top, top / "stage" / "etc" / "systemd" / "system" / "ipsecd.service")
        s = Staged(top, source, prefix, top / "stage", calls, env, "")
        res = s.make("install")
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        s.output = res.stdout
        yield s
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an installed program outside the checkout (`python -c` would import from its cwd)."""
    env = {**os.environ, "IPSEC_TUNNEL_SOCKET": "/nonexistent/ipsecd.sock", "PYTHONPATH": ""}
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, env=env, check=False, cwd="/"
    )


def test_the_staged_tree_names_its_final_path_only(staged: Staged) -> None:
    venv = staged.staged_prefix / "lib" / "ipsec-tunnel"
    for name in ("ipsecd", "ipsecadm"):
        first = (venv / "bin" / name).read_text().splitlines()[0]
        assert first == f"#!{staged.prefix}/lib/ipsec-tunnel/bin/python"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert str(staged.dest) not in cfg
    home = next(line.split("=", 1)[1].strip() for line in cfg.splitlines() if line.startswith("home"))
    assert not home.startswith(("/root", "/home")), f"the venv runs on {home}, which ProtectHome= hides"
    staging = str(staged.dest).encode()
    leaks = [
        p for p in staged.dest.rglob("*")
        if p.is_file() and not p.is_symlink() and staging in p.read_bytes()
    ]  # fmt: skip
    assert leaks == [], leaks[:5]


def test_mandb_is_not_run_on_the_live_system(staged: Staged) -> None:
    assert "mandb" not in staged.calls.read_text()


def test_sbin_links_man_pages_and_the_unit_are_in_place(staged: Staged) -> None:
    prefix = staged.staged_prefix
    for name in ("ipsecd", "ipsecadm"):  # links as they will be once DESTDIR is the root
        assert os.readlink(prefix / "sbin" / name) == f"{staged.prefix}/lib/ipsec-tunnel/bin/{name}"
        page = prefix / "share" / "man" / "man8" / f"{name}.8"
        assert page.read_bytes() == (ROOT / "docs" / f"{name}.8").read_bytes()
    unit = (staged.dest / "etc" / "systemd" / "system" / "ipsecd.service").read_text()
    assert f"ExecStart={staged.prefix}/sbin/ipsecd -f" in unit and "@SBINDIR@" not in unit


def test_the_tree_runs_once_moved_to_its_final_place(staged: Staged) -> None:
    """What a package does: the staged tree copied to /, the staging directory gone."""
    final = Path(staged.prefix)
    shutil.copytree(staged.staged_prefix, final, symlinks=True)
    hidden = staged.top / "stage-hidden"
    staged.dest.rename(hidden)
    try:
        daemon = _run(final / "sbin" / "ipsecd", "--version")
        assert daemon.returncode == 0 and daemon.stdout.strip() == f"ipsecd {__version__}", daemon
        adm = _run(final / "sbin" / "ipsecadm", "version")
        assert adm.returncode == 0 and f"ipsecadm {__version__}" in adm.stdout, adm
        assert "not reachable" in adm.stdout and "Traceback" not in adm.stderr
        venv = final / "lib" / "ipsec-tunnel"
        # the installed copy, not this checkout, with every module (and NumPy) importable
        where = _run(
            venv / "bin" / "python", "-c",
            "import ipsec_tunnel, ipsec_tunnel.daemon.main, ipsec_tunnel.core.tso, ipsec_tunnel.core.gro,"
            " numpy; print(ipsec_tunnel.__file__)",
        )  # fmt: skip
        assert where.returncode == 0, where.stderr
        assert Path(where.stdout.strip()).is_relative_to(venv)
        assert not Path(where.stdout.strip()).is_relative_to(ROOT)
        assert not Path(where.stdout.strip()).is_relative_to(staged.source)
    finally:
        hidden.rename(staged.dest)
        shutil.rmtree(final, ignore_errors=True)


def test_the_test_harnesses_are_not_installed(staged: Staged) -> None:
    """The UML booter, the lossy relay and the other harnesses are test-only (tests/support/)."""
    venv = staged.staged_prefix / "lib" / "ipsec-tunnel"
    for module in ("ipsec_tunnel.testing", "tests.support", "tests"):
        found = _run(venv / "bin" / "python", "-c", f"import {module}")
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, (module, found)
    installed = [p.relative_to(venv) for p in venv.rglob("*") if p.name in ("testing", "support", "tests")]
    assert not [p for p in installed if "ipsec_tunnel" in p.parts], installed


def test_uninstall_from_the_staging_directory_leaves_nothing(staged: Staged) -> None:
    res = staged.make("uninstall")
    assert res.returncode == 0, res.stderr
    assert list(staged.dest.iterdir()) == []  # files and the directories install made
    assert "Kept: the state directory /var/lib/ipsec-tunnel" in res.stdout
    assert "systemctl" not in staged.calls.read_text()  # DESTDIR: not the live system's unit


def test_uninstall_disables_the_unit_first_and_removes_only_the_directories_it_made(tmp_path: Path) -> None:
    """Without DESTDIR, where systemd runs (here: a fake systemctl and a stand-in for /run/systemd/system).
    Only the uninstall is run, on a tree laid out as install leaves it."""
    prefix, unitdir, booted = tmp_path / "p", tmp_path / "etc-systemd", tmp_path / "booted"
    booted.mkdir()
    (prefix / "share" / "man" / "man8").mkdir(parents=True)
    (prefix / "share" / "man" / "man8" / "other.8").write_text("someone else's page")
    venv = prefix / "lib" / "ipsec-tunnel"
    (venv / "bin").mkdir(parents=True)
    (prefix / "sbin").mkdir()
    unitdir.mkdir()
    for name in ("ipsecd", "ipsecadm"):
        (prefix / "sbin" / name).symlink_to(venv / "bin" / name)
        (prefix / "share" / "man" / "man8" / f"{name}.8").write_text(".TH")
    unit = unitdir / "ipsecd.service"
    unit.write_text("[Unit]\n")
    # install made lib and sbin; share/man/man8 and the unit directory were there before
    (venv / "installed-dirs").write_text(f"{prefix / 'lib'}\n{prefix / 'sbin'}\n")
    calls, env = _fakes(tmp_path, unit)
    res = _make(env, "uninstall", f"PREFIX={prefix}", f"UNITDIR={unitdir}", f"SYSTEMD_BOOTED={booted}")
    assert res.returncode == 0, res.stderr
    log = calls.read_text().splitlines()
    assert log[0] == "systemctl disable --now ipsecd.service unit=present"  # before the unit goes
    assert "systemctl daemon-reload unit=absent" in log
    assert not (prefix / "lib").exists() and not (prefix / "sbin").exists()
    assert sorted(p.name for p in (prefix / "share" / "man" / "man8").iterdir()) == ["other.8"]
    assert unitdir.is_dir() and not unit.exists()
    assert "Kept: the state directory" in res.stdout
