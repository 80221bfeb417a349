"""kemi.core holds decisions only: no KSR, YAML, Prometheus, clock, network or files."""

from __future__ import annotations

import ast
from pathlib import Path

import kemi.core

FORBIDDEN = {"KSR", "yaml", "prometheus_client", "time", "socket", "os", "redis", "subprocess"}


def test_core_imports_nothing_impure() -> None:
    core = Path(kemi.core.__file__).parent
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
