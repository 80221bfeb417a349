"""Cache misses of kemi-ha's routes per call, from cold caches, counted by cachegrind.

Inside Kamailio a worker starts each message from cold caches (docs/performance.md); timing
that regime (`routes_bench.py --cold`) moves by 5-10 % between two runs of the same code on a
shared machine, more than most single changes are worth. Cachegrind simulates the caches
instead: the same code gives the same counts (PYTHONHASHSEED fixed), so two versions can be
compared by a few hundred misses per call (up to ~150 move with where objects land, the
floor's too when the routes module changes: a smaller difference is none).

What runs: routes_bench.py's call (the same stub KSR, policy and messages), a 4 MiB copy before
each message (twice the simulated 2 MiB last-level cache: every message starts cold), under
`valgrind --tool=cachegrind` with 32 KiB L1s and a 2 MiB LL. Per call = (counts of 120 calls -
counts of 20 calls) / 100: start-up, imports and the warm-up cancel out; the copy is the same
for every router, so a difference between two routers (kemi-ha and the floor script, or two
versions) is theirs. The floor (bench/kemi_floor.py: the same KSR calls, straight-line) shows
what kemi-ha's own structure costs. Misses of the stub's Python KSR functions are counted too
(identical for both routers); Kamailio's C is not simulated.

Run: make bench-cache  (or .venv/bin/python bench/routes_cachegrind.py [--tree DIR]
[--load sip|sdp]); --tree counts another checkout's routes (`git archive REV | tar -x -C
DIR`) for a before/after.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
EVENTS = ("I refs", "I1 misses", "D1 misses", "LL misses")
CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=2097152,16,64")
EVICT_BYTES = 4 << 20
CALLS = (20, 120)


def parse_counts(summary: str) -> dict[str, int]:
    """The totals of cachegrind's summary (stderr), by event."""
    counts = {}
    for event in EVENTS:
        name = r"\s+".join(map(re.escape, event.split()))  # cachegrind aligns with spaces
        found = re.search(rf"^==\d+== {name}:\s+([\d,]+)", summary, re.M)
        if found is None:
            raise RuntimeError(f"cachegrind printed no '{event}' total:\n{summary[-2000:]}")
        counts[event] = int(found.group(1).replace(",", ""))
    return counts


def per_call(few: dict[str, int], many: dict[str, int]) -> dict[str, float]:
    span = CALLS[1] - CALLS[0]
    return {event: (many[event] - few[event]) / span for event in EVENTS}


def measure(tree: Path, load: str, router: str, calls: int) -> dict[str, int]:
    """One cachegrind run of `calls` calls (this script's --inner mode)."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", *CACHES,
               "--cachegrind-out-file=/dev/null", sys.executable, __file__, "--inner",
               str(tree), load, router, str(calls)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cachegrind run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return parse_counts(done.stderr)


def inner(tree: Path, load: str, router_kind: str, calls: int) -> None:
    """Under cachegrind: warm up, then `calls` calls with the caches evicted per message."""
    sys.path.insert(0, str(tree))
    path = tree / "bench" / "routes_bench.py"
    spec = importlib.util.spec_from_file_location("routes_bench", path)
    assert spec is not None and spec.loader is not None
    bench: Any = importlib.util.module_from_spec(spec)
    sys.modules["routes_bench"] = bench
    spec.loader.exec_module(bench)
    messages = bench.call(load == "sdp")
    ksr = bench.StubKSR({}, {})
    router = bench.floor_router(ksr) if router_kind == "floor" else bench.build_router(ksr)
    for _ in range(50):
        bench.run_call(router, ksr, messages)
    source, target = bytearray(EVICT_BYTES), bytearray(EVICT_BYTES)

    def evict() -> None:
        target[:] = source

    for _ in range(calls):
        bench.run_call(router, ksr, messages, before=evict)


def line(label: str, counts: dict[str, float]) -> str:
    return f"{label}: " + ", ".join(f"{event} {counts[event]:,.0f}" for event in EVENTS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--inner"]:
        inner(Path(args[1]), args[2], args[3], int(args[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", type=Path, default=BENCH.parent, help="checkout whose routes run")
    ap.add_argument("--load", choices=("sip", "sdp"), action="append")
    opts = ap.parse_args(args)
    if shutil.which("valgrind") is None:
        print("routes-cachegrind: valgrind is not installed (apt-get install valgrind, or make "
              "bench-cache)", file=sys.stderr)  # fmt: skip
        return 2
    for load in opts.load or ["sip", "sdp"]:
        results = {}
        for router in ("kemi", "floor"):
            few, many = (measure(opts.tree, load, router, n) for n in CALLS)
            results[router] = per_call(few, many)
        excess = {e: results["kemi"][e] - results["floor"][e] for e in EVENTS}
        print(f"routes-cachegrind {load}, per call (caches evicted before each message):")
        print("  " + line("kemi-ha", results["kemi"]))
        print("  " + line("floor", results["floor"]))
        print("  " + line("kemi-ha - floor", excess))
    return 0


if __name__ == "__main__":
    sys.exit(main())
