"""JSON Schema (draft 2020-12) derived from the spec dataclasses: the committed
policies/policy.schema.json must equal json_schema() (a test checks it)."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Literal, Union

from kemi.core.spec import PolicySpec

SCHEMA_ID = "https://kemi-ha.example/policy.schema.json"


def json_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    root = _object(PolicySpec, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "kemi-ha policy",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def _object(cls: Any, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = _type(hints[f.name], defs)
        prop["description"] = f.metadata.get("doc", "")
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            is_spec = dataclasses.is_dataclass(value)
            prop["default"] = dataclasses.asdict(value) if is_spec else value
        elif f.default is dataclasses.MISSING:
            required.append(f.name)
        props[f.name] = prop
    out: dict[str, Any] = {
        "type": "object",
        # cleandoc: Python 3.13 dedents docstrings itself, 3.11 does not (Debian 13 vs 12)
        "description": inspect.cleandoc(cls.__doc__) if cls.__doc__ else cls.__name__,
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _type(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return {"anyOf": [_type(args[0], defs), {"type": "null"}]}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _type(typing.get_args(tp)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type(typing.get_args(tp)[1], defs)}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}
            defs[name] = _object(tp, defs)
        return {"$ref": f"#/$defs/{name}"}
    return {"type": {str: "string", int: "integer", bool: "boolean"}[tp]}
