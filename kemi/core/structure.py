"""Plain YAML data -> spec dataclasses, collecting every error with the path where it is.

Rules: unknown keys are errors (reported, then ignored so that the rest is still checked); a
field without a default is required; a broken list item is reported and left out; types come
from the annotations (str, int, bool, X | None, list[X], dict[str, X], Literal[...],
nested dataclasses).
A path is a tuple of keys and indexes, e.g. ("vips", 0, "address"); the file reader turns it
into a line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

Path = tuple[str | int, ...]
T = TypeVar("T")
FAILED: Any = object()  # a value that could not be converted (its problem is recorded)


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    message: str


class SpecError(Exception):
    """A file that cannot be used; `messages` are 'file:line:col: field: reason' lines."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages
        super().__init__("\n".join(messages))


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def build(cls: type[T], data: Any, problems: list[Problem], path: Path = ()) -> T | None:
    value = _convert(cls, data, problems, path)
    return None if value is FAILED else value  # type: ignore[no-any-return]


def _convert(tp: Any, value: Any, problems: list[Problem], path: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None  # an explicit null where None is allowed
        return _convert(args[0], value, problems, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            problems.append(Problem(path, f"must be one of {', '.join(map(str, choices))}"))
            return FAILED
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(Problem(path, "must be a list"))
            return FAILED
        (item,) = typing.get_args(tp)
        items = [_convert(item, v, problems, (*path, i)) for i, v in enumerate(value)]
        return [v for v in items if v is not FAILED]  # a broken item is reported, then left out
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(Problem(path, "must be a mapping"))
            return FAILED
        key_tp, item_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            key = _convert(key_tp, k, problems, (*path, str(k)))
            item = _convert(item_tp, v, problems, (*path, str(k)))
            if key is not FAILED and item is not FAILED:
                out[key] = item
        return out  # a broken entry is reported, then left out
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, problems, path)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(Problem(path, "must be true or false"))
            return FAILED
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(path, "must be an integer"))
            return FAILED
        return value
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(Problem(path, "must be a string"))
            return FAILED
        return str(value)
    raise TypeError(f"unsupported type in the policy model: {tp!r}")


def _dataclass(cls: Any, value: Any, problems: list[Problem], path: Path) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(path, "must be a mapping"))
        return FAILED
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            hint = _did_you_mean(str(key), fields)
            problems.append(Problem((*path, str(key)), f"unknown key{hint}"))
    kwargs: dict[str, Any] = {}
    broken = False
    for name, f in fields.items():
        has_default = not (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if name in value:
            converted = _convert(hints[name], value[name], problems, (*path, name))
            if converted is not FAILED:
                kwargs[name] = converted
            else:  # reported; keep checking the rest with the default, if there is one
                broken |= not has_default
        elif not has_default:
            problems.append(Problem((*path, name), "is required"))
            broken = True
    if broken:
        return FAILED
    return cls(**kwargs)


def _did_you_mean(key: str, fields: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
