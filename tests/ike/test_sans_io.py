"""ike/ is sans-I/O like core/: none of its modules imports sockets, OS, threads or clocks, and core/
never imports ike/."""

from __future__ import annotations

import ast
from pathlib import Path

import ipsec_tunnel

SRC = Path(ipsec_tunnel.__file__).parent
FORBIDDEN = {"os", "socket", "fcntl", "threading", "time", "select", "selectors", "asyncio", "subprocess"}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.add("." * node.level + (node.module or ""))
    return out


def test_ike_imports_no_io() -> None:
    files = sorted((SRC / "ike").glob("*.py"))
    assert len(files) >= 10
    for f in files:
        bad = {m for m in _imports(f) if m.split(".")[0] in FORBIDDEN}
        assert not bad, f"{f.name} imports {bad}"


def test_core_never_imports_ike() -> None:
    for f in sorted((SRC / "core").glob("*.py")):
        mods = _imports(f)
        assert not any("ike" in m.split(".") for m in mods), f"{f.name} imports ike"
