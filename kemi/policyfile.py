"""Policy files in, a compiled kemi.core.policy.Policy out (through kemi.specfile)."""

from __future__ import annotations

from pathlib import Path

from kemi import specfile
from kemi.core.compile import check, compile_policy
from kemi.core.policy import Policy
from kemi.core.spec import PolicySpec


def parse_spec(text: str, source: str = "<policy>") -> PolicySpec:
    return specfile.parse(PolicySpec, text, source, check)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    return compile_policy(parse_spec(text, source))


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile one policy file; raises SpecError with every problem."""
    return compile_policy(specfile.load(PolicySpec, path, check))
