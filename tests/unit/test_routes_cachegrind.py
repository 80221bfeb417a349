"""bench/routes_cachegrind.py: cachegrind's totals read right, and the call it simulates runs
(the same routes_bench call, kemi-ha and the floor) without valgrind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = """==31878== I   refs:      1,253,379,832
==31878== I1  misses:       11,752,835
==31878== LLi misses:          246,441
==31878== D   refs:        541,282,214  (358,566,764 rd   + 182,715,450 wr)
==31878== D1  misses:       30,159,909  ( 19,992,495 rd   +  10,167,414 wr)
==31878== LLd misses:       19,581,355  ( 10,912,519 rd   +   8,668,836 wr)
==31878== LL misses:        19,827,796  ( 11,158,960 rd   +   8,668,836 wr)
"""


def bench() -> ModuleType:
    path = ROOT / "bench" / "routes_cachegrind.py"
    spec = importlib.util.spec_from_file_location("routes_cachegrind", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("routes_cachegrind", module)
    spec.loader.exec_module(module)
    return module


def test_totals_are_read_per_event_and_per_call() -> None:
    module = bench()
    counts = module.parse_counts(SUMMARY)
    assert counts == {"I refs": 1_253_379_832, "I1 misses": 11_752_835,
                      "D1 misses": 30_159_909, "LL misses": 19_827_796}  # fmt: skip
    more = {event: value + 100 * 7 for event, value in counts.items()}
    assert module.per_call(counts, more) == dict.fromkeys(module.EVENTS, 7.0)


def test_a_summary_without_totals_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no 'LL misses' total"):
        bench().parse_counts(SUMMARY.split("==31878== LL misses")[0])


def test_the_simulated_calls_run(capsys: pytest.CaptureFixture[str]) -> None:
    module = bench()
    for load in ("sip", "sdp"):
        for router in ("kemi", "floor"):
            module.inner(ROOT, load, router, 2)
    assert capsys.readouterr().err == ""
