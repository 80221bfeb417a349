"""Thread CPU of each kemi-ha callback inside Kamailio: where a worker's time goes, per message.

cProfile inside Kamailio costs more than the routes it measures (docs/performance.md); this
wraps each callback of the router kemi.entry builds with two `time.thread_time_ns()` reads
(~0.6 us each: a syscall) and nothing else, per process, keyed by callback and method (request
route) or event (dialog events). The sums are written to KEMI_HA_CALLBACK_CPU_DIR/<pid>.json
every 100 callbacks (Kamailio's workers end by signal, with no exit hook).

Use:
    make bench-cpu BENCH_CPU_ARGS="--kemi-script bench/callback_cpu.py --only sip --pairs 1 \
        --ramp ''"   (the kemi side runs wrapped: its CPU per call includes the reads)
    .venv/bin/python bench/callback_cpu.py run/bench-cpu/callback-cpu CALLS
A callback's time includes what Kamailio does inside the KSR calls it makes (t_relay, the
rtpengine round trip) and the dialog events those raise (a BYE's `dialog:end`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DIR_ENV = "KEMI_HA_CALLBACK_CPU_DIR"
ENTRIES = ("ksr_request_route", "ksr_sl_reply", "ksr_onreply_manage", "ksr_branch_manage",
           "ksr_failure_manage", "ksr_dialog_end")  # fmt: skip


class Timed:
    """The router, with each entry of ENTRIES timed; any other attribute is the router's."""

    def __init__(self, router: Any, ksr: Any, directory: Path) -> None:
        self.router = router
        self.directory = directory
        self.sums: dict[str, list[int]] = {}
        self.count = 0
        for name in ENTRIES:
            setattr(self, name, self.wrap(name, getattr(router, name), ksr))

    def wrap(self, name: str, func: Any, ksr: Any) -> Any:
        def entry(*args: Any) -> Any:
            start = time.thread_time_ns()
            try:
                return func(*args)
            finally:
                spent = time.thread_time_ns() - start
                if len(args) > 1:
                    key = f"{name}:{args[1]}"
                elif name == "ksr_request_route":
                    key = f"{name}:{ksr.pv.get('$rm')}"
                else:
                    key = name
                sums = self.sums.setdefault(key, [0, 0])
                sums[0] += 1
                sums[1] += spent
                self.count += 1
                if self.count % 100 == 0:
                    self.dump()

        return entry

    def dump(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}.json"
        path.write_text(json.dumps(self.sums))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)


def mod_init() -> Any:
    """app_python3's entry when this file is the KEMI script (kemi.entry does the work)."""
    import KSR  # type: ignore[import-not-found]  # inside Kamailio only

    from kemi import entry

    directory = Path(
        os.environ.get(DIR_ENV) or Path(os.environ["KEMI_HA_RUN_DIR"]) / "callback-cpu"
    )
    return Timed(entry.mod_init(), KSR, directory)


def report(directory: Path, calls: int) -> str:
    totals: dict[str, list[int]] = {}
    for path in directory.glob("*.json"):
        for key, (count, spent) in json.loads(path.read_text()).items():
            total = totals.setdefault(key, [0, 0])
            total[0] += count
            total[1] += spent
    lines = []
    for key, (count, spent) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{key:34s} {count:8d} x {spent / count / 1000:7.1f} us = "
                     f"{spent / calls / 1000:7.1f} us per call")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]), int(sys.argv[2])))
