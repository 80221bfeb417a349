"""A strict fake of Kamailio's KSR, built from the real export list (kemi_api.json).

Refresh the list with `make api-list` (it asks the installed Kamailio: app_python.api_list).
- a function Kamailio does not export raises AttributeError;
- a call with the wrong number or type of arguments raises TypeError;
- every call is recorded, in order, as a Call(name, args);
- return values are scripted per test (`returns`): a call nobody scripted raises, so a test
  never passes on a silent default;
- PVs read through KSR.pv come from `pvs`; reading a PV the test did not set raises KeyError;
  a PV set to bytes behaves like app_python3 5.6: valid UTF-8 comes back as str, anything else
  raises UnicodeDecodeError; `$(name{s.encode.hexa})` gives the bytes of `$name` in hex.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

API_FILE = Path(__file__).with_name("kemi_api.json")
PV_NAMES_FILE = Path(__file__).with_name("pv_names.txt")
_PARAM_TYPES: dict[str, type] = {"str": str, "int": int}


class Call(NamedTuple):
    name: str
    args: tuple[Any, ...]


class UnscriptedCall(AssertionError):
    pass


def load_api(path: Path = API_FILE) -> dict[str, list[str]]:
    """'module.name' (or 'name' for core functions) -> parameter types."""
    api: dict[str, list[str]] = {}
    for func in json.loads(path.read_text()):
        params = [p.strip() for p in func["params"].split(",")]
        if params == ["none"]:
            params = []
        name = f"{func['module']}.{func['name']}" if func["module"] else func["name"]
        api[name] = params
    return api


class _Namespace:
    def __init__(self, fake: FakeKSR, module: str) -> None:
        self._fake = fake
        self._module = module

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return self._fake._function(f"{self._module}.{name}")


class FakeKSR:
    def __init__(
        self,
        returns: Mapping[str, Any] | None = None,
        pvs: Mapping[str, Any] | None = None,
        api: Mapping[str, list[str]] | None = None,
    ) -> None:
        self._api = dict(api if api is not None else _API)
        self._modules = {name.split(".", 1)[0] for name in self._api if "." in name}
        self.returns: dict[str, Any] = dict(returns or {})
        self.pvs: dict[str, Any] = dict(pvs or {})
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._modules:
            return _Namespace(self, name)
        return self._function(name)

    def _function(self, qualified: str) -> Callable[..., Any]:
        if qualified not in self._api:
            raise AttributeError(f"KSR.{qualified} is not exported by this Kamailio")
        params = self._api[qualified]

        def call(*args: Any) -> Any:
            if len(args) != len(params):
                raise TypeError(f"KSR.{qualified} takes {len(params)} arguments, got {len(args)}")
            for value, kind in zip(args, params, strict=True):
                expected = _PARAM_TYPES.get(kind)
                if expected and (not isinstance(value, expected) or isinstance(value, bool)):
                    raise TypeError(f"KSR.{qualified}: {value!r} is not {kind}")
            self.calls.append(Call(qualified, args))
            return self._result(qualified, args)

        return call

    def _result(self, qualified: str, args: tuple[Any, ...]) -> Any:
        if qualified.startswith("pv."):
            check_pv_name(args[0])
        if qualified in ("pv.get", "pv.getw", "pv.gete", "pv.geti", "pv.getvs"):
            return self._pv(args[0])
        if qualified in ("pv.sets", "pv.seti"):
            self.pvs[args[0]] = args[1]
            return 1
        if qualified == "pv.unset":
            self.pvs[args[0]] = None  # reads back as $null
            return None
        if qualified in self.returns:
            value = self.returns[qualified]
            return value(*args) if callable(value) else value
        if self._api_ret_is_none(qualified):
            return None
        raise UnscriptedCall(f"KSR.{qualified}{args} returns a value the test did not script")

    def _pv(self, name: str) -> Any:
        hexa = _HEXA.fullmatch(name)
        if hexa:
            value = self._pv_value(f"${hexa.group(1)}")
            if value is None:
                return None
            return (value if isinstance(value, bytes) else str(value).encode()).hex()
        value = self._pv_value(name)
        return value.decode() if isinstance(value, bytes) else value  # strict, like app_python3

    def _pv_value(self, name: str) -> Any:
        if name not in self.pvs:
            raise KeyError(f"PV {name} read but not set by the test")
        return self.pvs[name]

    def _api_ret_is_none(self, qualified: str) -> bool:
        return qualified in _RET_NONE

    # ----- assertions helpers ------------------------------------------------------

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def called(self, name: str, *args: Any) -> bool:
        return any(c.name == name and (not args or c.args == args) for c in self.calls)

    def replies(self) -> list[tuple[Any, ...]]:
        return [c.args for c in self.calls if c.name in ("sl.sl_send_reply", "tm.t_send_reply")]


def _ret_none(path: Path = API_FILE) -> set[str]:
    out = set()
    for func in json.loads(path.read_text()):
        if func["ret"] == "none":
            out.add(f"{func['module']}.{func['name']}" if func["module"] else func["name"])
    return out


_HEXA = re.compile(r"\$\((.+)\{s\.encode\.hexa\}\)")
# $name, $name(inner), $(name{transformation}) or $(name(inner){transformation})
_PV_CLASS = re.compile(r"\$\(?([A-Za-z_][A-Za-z0-9_.]*)")
_PV_CLASSES = frozenset(
    line.strip() for line in PV_NAMES_FILE.read_text().splitlines()
    if line.strip() and not line.startswith("#")
)  # fmt: skip


def check_pv_name(name: str) -> None:
    """A PV Kamailio 5.6 does not define fails here as it would in Kamailio (pv_names.txt)."""
    match = _PV_CLASS.match(name)
    if match is None or match.group(1) not in _PV_CLASSES:
        raise ValueError(f"{name!r} is not a PV Kamailio 5.6 defines")


_API = load_api()
_RET_NONE = _ret_none()
