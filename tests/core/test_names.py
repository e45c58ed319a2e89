"""The core's named surface: every module says what it exports (`__all__`, exactly its public
definitions), and each protocol constant shared with linux/ and daemon/ is defined once, in core/."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "ipsec_tunnel"
CORE_MODULES = sorted(p.stem for p in (SRC / "core").glob("*.py") if p.stem != "__init__")


def _public_definitions(path: Path) -> set[str]:
    """Module-level classes, functions and assignments whose names do not start with '_'."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(name, ast.Name):
                        names.add(name.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("module", CORE_MODULES)
def test_every_core_module_exports_exactly_its_public_definitions(module: str) -> None:
    mod = importlib.import_module(f"ipsec_tunnel.core.{module}")
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"core/{module}.py has no __all__"
    assert len(exported) == len(set(exported)), "a name listed twice"
    assert set(exported) == _public_definitions(SRC / "core" / f"{module}.py")


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        (r"^NAT_T_PORT\s*=", "core/sa.py"),  # RFC 3948 §2
        (r"^IFNAMSIZ\s*=", "core/tunnel.py"),  # linux/if.h
        (r"Struct\(\"!BBHHHBBH4s4s\"\)", "core/ip.py"),  # the RFC 791 §3.1 header, no options
        (r"Struct\(\"=BBHHHH\"\)", "core/gso.py"),  # struct virtio_net_hdr
        (r"^\s+csum_offset: int", "core/gso.py"),  # ... and its fields (`VnetHeader`)
    ],
)
def test_shared_protocol_constants_are_defined_once_in_the_core(pattern: str, home: str) -> None:
    found = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        for _ in re.finditer(pattern, path.read_text(), re.MULTILINE)
    ]
    assert found == [home]
