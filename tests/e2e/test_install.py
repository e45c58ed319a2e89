"""`make install` (the seed's install step) into a staging directory (DESTDIR): ipsecd and ipsecadm run
from where it puts them, out of their own virtual environment, and the man pages and the systemd unit
are where man and systemd look, the unit pointing at the installed ipsecd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ipsec_tunnel import __version__

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/usr/local"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None:
        pytest.fail("make is not installed (`make test` itself needs it)")
    dest = tmp_path_factory.mktemp("destdir")
    res = subprocess.run(
        ["make", "-C", str(ROOT), "install", f"DESTDIR={dest}", f"PREFIX={PREFIX}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return dest


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run an installed program outside the checkout (`python -c` would import from its cwd)."""
    env = {**os.environ, "IPSEC_TUNNEL_SOCKET": "/nonexistent/ipsecd.sock", "PYTHONPATH": ""}
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, env=env, check=False, cwd="/"
    )


def test_the_installed_programs_run_from_their_own_environment(staged: Path) -> None:
    venv = staged / PREFIX.lstrip("/") / "lib" / "ipsec-tunnel"
    daemon = _run(venv / "bin" / "ipsecd", "--version")
    assert daemon.returncode == 0 and daemon.stdout.strip() == f"ipsecd {__version__}", daemon
    adm = _run(venv / "bin" / "ipsecadm", "version")
    assert adm.returncode == 0 and f"ipsecadm {__version__}" in adm.stdout, adm
    assert "not reachable" in adm.stdout and "Traceback" not in adm.stderr
    # the installed copy, not this checkout, with every module (and NumPy) importable
    where = _run(
        venv / "bin" / "python", "-c",
        "import ipsec_tunnel, ipsec_tunnel.daemon.main, ipsec_tunnel.core.tso, ipsec_tunnel.core.gro, numpy;"
        "print(ipsec_tunnel.__file__)",
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv) and not Path(where.stdout.strip()).is_relative_to(
        ROOT
    )


def test_sbin_links_man_pages_and_the_unit_are_in_place(staged: Path) -> None:
    prefix = staged / PREFIX.lstrip("/")
    for name in ("ipsecd", "ipsecadm"):  # links as they will be once DESTDIR is the root
        assert os.readlink(prefix / "sbin" / name) == f"{PREFIX}/lib/ipsec-tunnel/bin/{name}"
        page = prefix / "share" / "man" / "man8" / f"{name}.8"
        assert page.read_bytes() == (ROOT / "docs" / f"{name}.8").read_bytes()
    unit = (staged / "etc" / "systemd" / "system" / "ipsecd.service").read_text()
    assert f"ExecStart={PREFIX}/sbin/ipsecd -f" in unit and "@SBINDIR@" not in unit


def test_the_test_harnesses_are_not_installed(staged: Path) -> None:
    """The UML booter, the lossy relay and the other harnesses are test-only (tests/support/)."""
    venv = staged / PREFIX.lstrip("/") / "lib" / "ipsec-tunnel"
    for module in ("ipsec_tunnel.testing", "tests.support", "tests"):
        found = _run(venv / "bin" / "python", "-c", f"import {module}")
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, (module, found)
    installed = [p.relative_to(venv) for p in venv.rglob("*") if p.name in ("testing", "support", "tests")]
    assert not [p for p in installed if "ipsec_tunnel" in p.parts], installed
