"""`make drill-all`: every drill scenario, at sizes CI has no time for, into one table.

CI runs each scenario once at small size (tests/integration/test_drill.py); this runs them all
with more calls and runs, and writes the outcome table (docs/drill-all.md) that docs/ha.md
quotes, with the date and the machine it was measured on.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kemi.lab.drill import DrillCase, RunResult, report, run_case

CASES: tuple[DrillCase, ...] = (
    DrillCase("power-off", calls=100, repeat=4),
    DrillCase("power-off", calls=500, repeat=2),  # 5x the reference's 100-105 calls
    DrillCase("power-off", calls=20, repeat=3, transient=10),
    DrillCase("power-off", nodes=3, calls=60, repeat=3),
    DrillCase("power-off", calls=20, repeat=2, qdevice=True),
    DrillCase("one-link-lost", calls=20, repeat=2),
    DrillCase("link-cut", calls=20, repeat=2),
    DrillCase("fenced", calls=20, repeat=2),
    DrillCase("rejoin", calls=20),
    DrillCase("failback", calls=20),
    DrillCase("kamailio-crash", calls=20, repeat=2, transient=5),
    DrillCase("rtpengine-crash", calls=20, repeat=2),
    DrillCase("redis-crash", calls=20),
)

# The observed lines worth a place in the table, by what they start with or contain.
HIGHLIGHTS = (
    "completed (caller's SIPp)",
    "membership changes",
    "quorum:",
    "VIP held by two nodes",
    "moved back in",
    "worst RTP gap of",
    "started after the fence",
    "started BEFORE the fence",
    "random fence delay",
    "after the kill",
    "killed ",
)


def label(case: DrillCase) -> str:
    extras = [f"{case.nodes} nodes"]
    if case.qdevice or case.scenario == "link-cut":
        extras.append("qdevice")
    if case.links > 1 or case.scenario == "one-link-lost":
        extras.append("2 links")
    if case.transient:
        extras.append(f"+{case.transient} of each transient kind")
    return f"`{case.scenario}` ({', '.join(extras)})"


def highlights(results: Sequence[RunResult]) -> str:
    seen: list[str] = []
    for r in results:
        for line in r.observed:
            if any(key in line for key in HIGHLIGHTS) and line not in seen:
                seen.append(line)
    takeovers = sorted({r.takeover for r in results if r.takeover != "no takeover"})
    return "; ".join(seen + [f"rtpengine: {t}" for t in takeovers]) or "-"


def row(case: DrillCase, results: Sequence[RunResult], minutes: float) -> str:
    gaps = [c.gap_ms for r in results for c in r.failover_calls if c.media_resumed]
    medians = [
        statistics.median(g)
        for r in results
        if (g := [c.gap_ms for c in r.failover_calls if c.media_resumed])
    ]
    others = [c.gap_ms for r in results for c in r.calls
              if c not in r.failover_calls and c.media_resumed]  # fmt: skip
    dropped = sum(r.dropped for r in results)
    medians_text = ", ".join(f"{m:.0f}" for m in medians) or "-"
    worst = f"{max(gaps):.0f}" if gaps else "-"
    other = f"{max(others):.0f}" if others else "-"
    return (
        f"| {label(case)} | {case.calls} x {len(results)} | **{dropped}** | {medians_text} | "
        f"{worst} | {other} | {highlights(results)} | {minutes:.1f} |"
    )


def machine() -> str:
    debian = Path("/etc/debian_version").read_text().strip()
    return f"Debian {debian}, kernel {platform.release()}, {os.cpu_count()} cores"


def drill_all(out: Path, cases: Sequence[DrillCase] = CASES) -> int:
    """Run every case, print each report as it ends, then write the table to `out`."""
    rows: list[str] = []
    summaries: list[str] = []
    failed = 0
    for case in cases:
        start = time.monotonic()
        try:
            results = run_case(case)
        except (OSError, RuntimeError, ValueError) as exc:  # NotReady is a RuntimeError
            # One case that cannot run (a daemon that would not start...) is a finding of the
            # table, not the end of it.
            print(f"drill-all: {label(case)} did not run: {exc!r}", flush=True)
            traceback.print_exc(file=sys.stdout)  # where: "timed out" alone says nothing
            rows.append(f"| {label(case)} | - | **not run** | - | - | - | {exc} | - |")
            summaries.append(f"{label(case)}: not run: {exc}")
            failed += case.calls
            continue
        text, summary = report(results, case.calls, case.profile, case.scenario)
        print(text + "\n" + summary, flush=True)
        rows.append(row(case, results, (time.monotonic() - start) / 60))
        summaries.append(f"{label(case)}: {summary}")
        failed += sum(r.dropped for r in results)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = "\n".join(
        [
            "# `make drill-all`: every failover scenario, measured",
            "",
            f"Written by `make drill-all` on {when} ({machine()}). Gaps are RTP silences in ms "
            "of the calls on the VIP that moved (every call when none moved); `others` is the "
            "worst gap of the calls on VIPs that did not move. A call is dropped if its media "
            "did not resume through the relay, its BYE failed, or (transient calls) any leg of "
            "its flow failed. docs/ha.md explains each scenario.",
            "",
            "| scenario | calls x runs | dropped | per-run median gap | worst gap | others | "
            "observed | min |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Summary lines:",
            "",
            *[f"- {s}" for s in summaries],
            "",
        ]
    )
    out.write_text(table)
    print(table)
    print(f"drill-all: {len(cases)} cases, dropped={failed}, table in {out}")
    return 0 if failed == 0 else 1
