"""cProfile inside Kamailio, for one measured run (never in production).

With KEMI_HA_PROFILE=<dir> in Kamailio's environment, kemi/entry.py wraps the router: every
process profiles its KEMI callbacks and writes `<dir>/<pid>.prof` at most every 2 s (Kamailio
stops its children by signal: no exit hook would run). Read them with
`python -m pstats` or bench/profile_report.py.
"""

from __future__ import annotations

import cProfile
import os
import time
from typing import Any

PROFILE_ENV = "KEMI_HA_PROFILE"
# The KEMI entries profiled (the end of an answered call runs its record).
ENTRIES = ("ksr_request_route", "ksr_sl_reply", "ksr_onreply_manage", "ksr_branch_manage",
           "ksr_failure_manage", "ksr_dialog_end")  # fmt: skip


def profiled(router: Any, directory: str) -> Any:
    """The router with each KEMI entry run under one per-process profiler."""
    state = {"profiler": None, "pid": 0, "dumped": 0.0}

    def wrap(func: Any) -> Any:
        def entry(*args: Any) -> Any:
            pid = os.getpid()
            if state["pid"] != pid:
                # CPU time, not wall time: a loaded machine preempts the workers
                profiler = cProfile.Profile(time.process_time)
                state.update(profiler=profiler, pid=pid, dumped=time.monotonic())
            profiler = state["profiler"]
            try:
                return profiler.runcall(func, *args)
            finally:
                now = time.monotonic()
                if now - state["dumped"] > 2.0:
                    profiler.dump_stats(os.path.join(directory, f"{pid}.prof"))
                    state["dumped"] = now

        return entry

    for name in ENTRIES:
        setattr(router, name, wrap(getattr(router, name)))
    return router
