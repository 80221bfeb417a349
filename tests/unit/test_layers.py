"""Layers point one way: core <- shell <- entry; core <- ops <- cli; ops <- lab.

What runs on a node (core, shell, entry, ops, cli, the file readers) never imports the lab
(drill, namespaces, SIPp, test harness). Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kemi

PACKAGE = Path(kemi.__file__).parent

# layer -> the kemi layers it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "shell": {"core", "shell"},
    "files": {"core", "files"},  # kemi.specfile, kemi.policyfile: the YAML readers
    "ops": {"core", "files", "ops"},
    "entry": {"core", "files", "ops", "shell", "entry"},
    "cli": {"core", "files", "ops", "cli"},
    "lab": {"core", "files", "ops", "lab"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "kemi" or len(parts) == 1:
        return ""
    name = parts[1]
    if name in ("specfile", "policyfile"):
        return "files"
    return name


def kemi_imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [m for m in out if m == "kemi" or m.startswith("kemi.")]


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _p in modules()])
def test_imports_point_one_way(module: str, path: Path) -> None:
    own = layer_of(module)
    if not own:
        return  # kemi/__init__.py
    assert own in ALLOWED, f"{module}: unknown layer {own!r}: add it to ALLOWED"
    for imported in kemi_imports(path):
        target = layer_of(imported)
        if not target or target not in ALLOWED:
            continue  # `from kemi import x` where x is a module: checked as kemi.x
        assert target in ALLOWED[own], f"{module} imports {imported} ({own} -> {target})"


def test_the_rules_catch_a_wrong_import() -> None:
    assert "lab" not in ALLOWED["ops"] and "ops" not in ALLOWED["shell"]
    assert layer_of("kemi.lab.drill") == "lab" and layer_of("kemi.policyfile") == "files"
