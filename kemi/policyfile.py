"""The sole YAML reader: policy files in, a compiled kemi.core.policy.Policy out.

Every error names the file, line and column, the field, and the reason; all errors of a file
are reported at once. The YAML is composed into nodes first so that a field's path can be
turned back into the line where it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kemi.core.compile import check, compile_policy
from kemi.core.policy import Policy
from kemi.core.spec import PolicySpec
from kemi.core.structure import Path as FieldPath
from kemi.core.structure import Problem, build, dotted

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Loader = yaml.SafeLoader


_SCALARS = _Loader("")  # constructs scalar nodes (str, int, bool, null) like safe_load does


class PolicyError(Exception):
    """A policy that cannot be used; `messages` are 'file:line:col: field: reason' lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


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


def parse_spec(text: str, source: str = "<policy>") -> PolicySpec:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise PolicyError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if node is None:
        raise PolicyError([f"{source}:1:1: (top level): the file is empty"])
    marks: Marks = {}
    data = _plain(node, (), marks)
    problems: list[Problem] = []
    spec = build(PolicySpec, data, problems)
    if spec is not None:
        problems += _without_cascades(check(spec), problems)
    if spec is not None and not problems:
        return spec
    if spec is None and not problems:
        problems.append(Problem((), "not a usable policy"))
    raise PolicyError(format_problems(source, problems, marks))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    return compile_policy(parse_spec(text, source))


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile one policy file; raises PolicyError with every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_policy(text, str(path))
