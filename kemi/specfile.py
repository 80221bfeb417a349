"""The one YAML reader: a file in, a validated spec dataclass out (policy, cluster, node).

Every error names the file, line and column, the field, and the reason; all errors of a file
are reported at once. The YAML is composed into nodes first so that a field's path can be
turned back into the line where it is written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kemi.core.structure import Path as FieldPath
from kemi.core.structure import Problem, SpecError, build, dotted

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Loader = yaml.SafeLoader

T = TypeVar("T")
Check = Callable[[T], list[Problem]]

_SCALARS = _Loader("")  # constructs scalar nodes (str, int, bool, null) like safe_load does

Marks = dict[FieldPath, tuple[int, int]]


def _plain(node: yaml.Node, path: FieldPath, marks: Marks) -> Any:
    """Node tree -> plain data, remembering where each path starts (1-based line, column)."""
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            out[key] = _plain(value_node, (*path, key), marks)
            marks[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), marks) for i, item in enumerate(node.value)]
    return _SCALARS.construct_object(node)


def _where(source: str, path: FieldPath, marks: Marks) -> str:
    probe = path
    while probe not in marks and probe:
        probe = probe[:-1]
    line, col = marks.get(probe, (1, 1))
    return f"{source}:{line}:{col}"


def format_problems(source: str, problems: list[Problem], marks: Marks) -> list[str]:
    ordered = sorted(problems, key=lambda p: marks.get(p.path, (0, 0)))
    return [f"{_where(source, p.path, marks)}: {dotted(p.path)}: {p.message}" for p in ordered]


def _without_cascades(semantic: list[Problem], structural: list[Problem]) -> list[Problem]:
    """Drop a check on a list that only failed because a broken item in it was left out."""
    broken = [p.path for p in structural]
    return [
        p for p in semantic
        if not any(len(b) > len(p.path) and b[: len(p.path)] == p.path for b in broken)
    ]  # fmt: skip


def _no_checks(spec: Any) -> list[Problem]:
    return []


def parse(cls: type[T], text: str, source: str, check: Check[T] = _no_checks) -> T:
    """YAML text -> `cls`, with the structural rules of kemi.core.structure and `check`."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise SpecError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if node is None:
        raise SpecError([f"{source}:1:1: (top level): the file is empty"])
    marks: Marks = {}
    data = _plain(node, (), marks)
    problems: list[Problem] = []
    spec = build(cls, data, problems)
    if spec is not None:
        problems += _without_cascades(check(spec), problems)
    if spec is not None and not problems:
        return spec
    if spec is None and not problems:
        problems.append(Problem((), f"not a usable {cls.__name__}"))
    raise SpecError(format_problems(source, problems, marks))


def load(cls: type[T], path: str | Path, check: Check[T] = _no_checks) -> T:
    """Read and parse one file; SpecError (with every problem) if it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse(cls, text, str(path), check)
