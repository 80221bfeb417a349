"""The sole YAML reader: policy files in, a compiled kemi.core.policy.Policy out.

Errors name the file, the line and the field, so an operator can act on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kemi.core.policy import DEFAULT_MEDIA_FLAGS, Policy, Route, Vip


class PolicyError(Exception):
    """A policy file that cannot be used; `problems` lists every reason found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


def load_policy(path: str | Path) -> Policy:
    text = Path(path).read_text(encoding="utf-8")
    return parse_policy(text, str(path))


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise PolicyError(source, ["the top level must be a mapping"])
    problems: list[str] = []
    vips: list[Vip] = []
    for i, raw in enumerate(data.get("vips") or [], start=1):
        address = str(raw.get("address", ""))
        sockets = tuple(str(s) for s in raw.get("rtpengine") or ())
        if not address:
            problems.append(f"vips[{i - 1}].address: missing")
        if not sockets:
            problems.append(f"vips[{i - 1}].rtpengine: a VIP needs at least one ng socket")
        flags = str(raw.get("media_flags", DEFAULT_MEDIA_FLAGS))
        vips.append(Vip(address=address, set_id=i, rtpengine=sockets, media_flags=flags))
    if not vips:
        problems.append("vips: at least one VIP is required")
    routes = data.get("routes") or []
    if not routes or not routes[0].get("destinations"):
        problems.append("routes[0].destinations: a default destination is required")
    if problems:
        raise PolicyError(source, problems)
    first = routes[0]
    default = Route(
        name=str(first.get("name", "default")), destinations=tuple(first["destinations"])
    )
    return Policy.build(str(data.get("version", "unversioned")), tuple(vips), default)
