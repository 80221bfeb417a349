"""bench/native.cfg stays the same Kamailio as kamailio.cfg, routing in cfg instead of Python:
the same global parameters, modules (app_python3 aside) and modparams, and every bench define
it uses written by bench/cpu_bench.py."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
KEMI_CFG = (ROOT / "kamailio.cfg").read_text()
NATIVE_CFG = (ROOT / "bench" / "native.cfg").read_text()
# What only a KEMI configuration has; native.cfg has event routes and a cfg route instead.
KEMI_ONLY = ('"app_python3"', '"event_callback"', 'modparam("rtimer", "exec"')
# Names a KEMI method in kamailio.cfg, the cfg route of the same job in native.cfg.
CALLBACK_NAMES = {
    'modparam("tm", "on_sl_reply", "ksr_sl_reply")': 'modparam("tm", "on_sl_reply", "SL_REPLY")'
}


def cpu_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpu_bench", ROOT / "bench" / "cpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cpu_bench", module)
    spec.loader.exec_module(module)
    return module


def without_dmq(cfg: str) -> str:
    """The configuration of a node alone (the bench runs no DMQ peer): #!ifdef WITH_DMQ
    blocks dropped, their #!else branches kept."""
    return re.sub(r"#!ifdef WITH_DMQ\n.*?(?:#!else\n(.*?))?#!endif\n", r"\1", cfg, flags=re.S)


def lines(cfg: str, pattern: str) -> set[str]:
    return {line.strip() for line in cfg.splitlines() if re.match(pattern, line.strip())}


def test_native_loads_kamailio_cfgs_modules_but_python() -> None:
    kemi = lines(without_dmq(KEMI_CFG), r'loadmodule "')
    native = lines(NATIVE_CFG, r'loadmodule "')
    assert native == kemi - {'loadmodule "app_python3.so"'}


def test_native_has_kamailio_cfgs_modparams_and_global_parameters() -> None:
    kemi = {
        CALLBACK_NAMES.get(p, p)
        for p in lines(without_dmq(KEMI_CFG), r"modparam\(")
        if not any(k in p for k in KEMI_ONLY)
    }
    assert kemi - lines(NATIVE_CFG, r"modparam\(") == set()
    globals_ = lines(KEMI_CFG, r"[a-z_]+=") - lines(KEMI_CFG, r"kemi\.")
    assert globals_ - lines(NATIVE_CFG, r"[a-z_]+=") == set()


def test_every_bench_define_native_cfg_uses_is_written() -> None:
    written = set(re.findall(r"#!define (BENCH_\w+)", cpu_bench().native_values()))
    assert set(re.findall(r"\bBENCH_\w+", NATIVE_CFG.split("####### Global")[1])) <= written


def test_native_rewrites_the_number_as_the_bench_route_does() -> None:
    bench = cpu_bench()
    assert f"$(rU{{s.substr,{bench.REWRITE_STRIP},0}})" in NATIVE_CFG
    assert f'#!define BENCH_REWRITE_PREFIX "{bench.REWRITE_PREFIX}"' in bench.native_values()
